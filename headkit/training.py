"""Training Hugging Face's GPT-J from scratch on a headkit task.

PosSym-2026 (SPEC 2.3) trained `transformers.GPTJForCausalLM` with the Hugging
Face Trainer; headkit trains the same model class (`headkit.gptj_hf`: its
dropouts, scaled-dot-product attention) with its own small loop, and every
analysis then loads a checkpoint through `headkit.load_gptj` into a
HookedTransformer (`headkit.checkpoints`). The recipe:

1. Online data. Update ``k`` (1-based) trains on a fresh batch built by the task's
   own builder with a seed derived from ``(cfg.seed, k)`` alone, so a resumed run
   sees exactly the data an uninterrupted run would have seen. A fixed held-out
   evaluation batch of ``eval_n`` prompts comes from a separate seed stream.
2. Loss: cross-entropy on the batch's ``targets`` (positions holding ``IGNORE``
   are not scored). For the number and letter tasks only the last position is
   scored, as in the paper's code (``logits[:, -1]`` vs ``labels[:, -1]``); the
   logits are then computed at that position only (``logits_to_keep=1``).
3. AdamW (weight decay on matrices only, not on biases or LayerNorm gains), the
   learning rate rising linearly over ``warmup_steps`` and then held constant
   (``schedule="constant"``, the default, so a run can be extended by raising
   ``steps``), decayed linearly to 0 at ``steps`` (``"linear"``, the paper's
   code) or along a cosine to 10% (``"cosine"``); gradient norm clipped at
   ``grad_clip``. Dropout (``dropout``, PosSym-2026: 0.1) draws from the global
   torch RNG, seeded from ``cfg.seed`` and saved with every checkpoint, so
   resuming is exact; the caller's RNG state is restored afterwards.
4. Optional hop curriculum (``curriculum_every=k``): the largest hop of training
   prompts starts at the task's ``min_hops`` and rises by one every ``k`` updates
   up to ``max_hops``. Evaluation always uses every hop.
5. Every ``eval_every`` updates, at every checkpoint step and at the last step,
   one row of metrics (columns in `METRIC_COLUMNS`, plus ``accuracy_hop1`` ...
   ``accuracy_hopK`` for tasks with hops), from the Hugging Face model itself in
   eval mode: the mean training loss since the previous row, the held-out loss
   and exact-match accuracy at the answer position, overall and per hop.
6. Device: ``device="auto"`` (the default) trains on CUDA when a GPU is present,
   else on the CPU; on CUDA the forward runs under bf16 autocast (weights and
   optimizer stay float32). On the CPU everything is float32 and bit-exact.
7. Safety: a non-finite loss stops training at once with a one-line error (the
   last checkpoint written stays the last good one); a batch whose activations
   cannot fit in memory is refused up front (`estimate_memory`).

The run directory (`headkit.runs`) holds ``run.json`` (the `TrainConfig`,
written once the first update succeeded, so a failure before it leaves nothing
to clean up), ``metrics.csv`` (rewritten atomically after every row) and
``checkpoints/step_NNNNNNN/`` (`headkit.checkpoints`, with optimizer and RNG
state), written at ``checkpoint_steps`` and the final step. A process holds the
run's lock (`headkit.runs.RunLock`) while it writes. ``resume=True`` continues
from the newest valid checkpoint (from step 0 if there is none) and refuses a
config that differs from ``run.json`` in anything but ``steps`` and ``device``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformers import GPTJForCausalLM

from headkit.checks import check_device
from headkit.errors import HeadkitError, NonFiniteError
from headkit.evaluation import BatchScore, check_batch_fits, score_batch
from headkit.gptj_hf import HFLogits, autocast, build_hf_model
from headkit.io import write_csv, write_json
from headkit.models import DEFAULT_N_CTX, ModelConfig
from headkit.runs import METRICS_FILE, RUN_FILE
from headkit.tasks.base import IGNORE, TaskBatch, TaskSpec

logger = logging.getLogger(__name__)

# fixed columns of metrics.csv; tasks with hops add accuracy_hop1 .. accuracy_hopK after accuracy
METRIC_COLUMNS = ("step", "train_loss", "eval_loss", "accuracy", "lr", "elapsed_s")

_TRAIN_STREAM, _EVAL_STREAM, _DROPOUT_STREAM = 0, 1, 2  # seed streams: training batches, held-out batch, dropout


# --- learning-rate schedules: (step, cfg) -> multiplier of cfg.lr after warm-up ---


def _constant(step: int, cfg: "TrainConfig") -> float:
    return 1.0


def _linear(step: int, cfg: "TrainConfig") -> float:
    """Linear decay to 0 at the last step (Hugging Face's "linear", the paper's code)."""
    return max(cfg.steps - step, 0) / max(cfg.steps - cfg.warmup_steps, 1)


def _cosine(step: int, cfg: "TrainConfig") -> float:
    span = max(cfg.steps - cfg.warmup_steps, 1)
    progress = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


SCHEDULES: dict[str, Callable[[int, "TrainConfig"], float]] = {
    "constant": _constant,
    "linear": _linear,
    "cosine": _cosine,
}


def resolved_task(spec: TaskSpec) -> TaskSpec:
    """``spec`` with every builder parameter filled in: the ``params`` a batch of it records.

    A run's ``run.json`` then names the task in full (``{"max_hops": 4, "n_letters": 120,
    ...}``, not ``{}``), so changing a builder default later does not change what an
    old run means. A parameter whose builder default is ``None`` and that ``spec``
    leaves unset stays ``None``: it is decided per call (``length``: the trained
    length; ``balance``: joint, or hops when the window protocol enlarges the target
    window), so recording one call's choice would break the others. Unknown
    parameters are refused by name first.
    """
    import inspect

    from headkit.checkpoints import check_task_params

    check_task_params(spec)
    signature = inspect.signature(spec.builder()).parameters
    auto = {k for k, p in signature.items() if p.default is None and spec.params.get(k) is None}
    built = spec.build(1, seed=0).params
    return TaskSpec(spec.name, {k: (None if k in auto else v) for k, v in built.items()})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (stored as ``run.json``)."""

    task: TaskSpec  # task name + builder parameters, resolved in full (`resolved_task`)
    model: ModelConfig  # model sizes; d_vocab must equal the task's vocabulary size
    steps: int = 1500  # optimizer updates in total
    batch_size: int = 128  # prompts per update, each batch freshly generated
    lr: float = 1e-3  # peak learning rate (reached after warm-up)
    weight_decay: float = 0.01  # AdamW decay on weight matrices (not biases / LayerNorm)
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW moment decay rates
    warmup_steps: int = 200  # linear warm-up from 0 to lr over these many updates
    schedule: str = "constant"  # after warm-up: "constant", "linear" (to 0) or "cosine" (to 10% of lr)
    grad_clip: float | None = 1.0  # clip the global gradient norm; None = no clipping
    eval_every: int = 100  # updates between held-out evaluations
    eval_n: int = 512  # size of the fixed held-out batch (its own seed stream)
    checkpoint_steps: tuple[int, ...] = ()  # extra steps to save at; the final step always is
    seed: int = 0  # model initialisation and the data seed streams
    curriculum_every: int | None = None  # raise the largest training hop every k updates
    device: str = "auto"  # torch device; "auto" = CUDA when a GPU is present, else CPU
    dropout: float = 0.0  # attn_pdrop = resid_pdrop = embd_pdrop of the GPT-J (paper: 0.1)

    def __post_init__(self) -> None:
        if not isinstance(self.task, TaskSpec):
            raise HeadkitError(f"task must be a TaskSpec, got {type(self.task).__name__}")
        if not isinstance(self.model, ModelConfig):
            raise HeadkitError(f"model must be a ModelConfig, got {type(self.model).__name__}")
        object.__setattr__(self, "task", resolved_task(self.task))
        for name in ("steps", "batch_size", "eval_every", "eval_n"):
            _check_int(name, getattr(self, name), low=1)
        _check_int("warmup_steps", self.warmup_steps, low=0)
        _check_int("seed", self.seed, low=0)
        if self.curriculum_every is not None:
            _check_int("curriculum_every", self.curriculum_every, low=1)
        for name in ("lr", "weight_decay", "dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise HeadkitError(f"{name}={value!r} must be a finite number")
        if self.lr <= 0:
            raise HeadkitError(f"lr={self.lr} must be positive")
        if not 0 <= self.dropout < 1:
            raise HeadkitError(f"dropout={self.dropout} must be in [0, 1)")
        if self.weight_decay < 0:
            raise HeadkitError(f"weight_decay={self.weight_decay} must be 0 or more")
        betas = tuple(self.betas)
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise HeadkitError(f"betas={self.betas!r} must be two numbers in [0, 1)")
        object.__setattr__(self, "betas", (float(betas[0]), float(betas[1])))
        if self.grad_clip is not None and not (
            isinstance(self.grad_clip, (int, float)) and self.grad_clip > 0
        ):
            raise HeadkitError(f"grad_clip={self.grad_clip!r} must be positive or None")
        if self.schedule not in SCHEDULES:
            raise HeadkitError(
                f"schedule={self.schedule!r} is unknown: allowed {', '.join(SCHEDULES)}"
            )
        steps = tuple(sorted(set(self.checkpoint_steps)))
        for s in steps:
            _check_int("checkpoint step", s, low=1)
            if s > self.steps:
                raise HeadkitError(
                    f"checkpoint step {s} is beyond the run: allowed 1..{self.steps} (steps)"
                )
        object.__setattr__(self, "checkpoint_steps", steps)
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                raise HeadkitError(f"device={self.device!r} is not a torch device (e.g. auto, cpu, cuda)") from None

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["task"] = self.task.to_dict()
        out["model"] = self.model.to_dict()
        out["betas"] = list(self.betas)
        out["checkpoint_steps"] = list(self.checkpoint_steps)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise HeadkitError(f"unknown training config fields: {', '.join(unknown)}")
        for name in ("task", "model"):
            if name not in data:
                raise HeadkitError(f"training config has no {name!r} field")
        values = dict(data)
        values["task"] = TaskSpec.from_dict(values["task"])
        values["model"] = ModelConfig.from_dict(values["model"])
        values["betas"] = tuple(values.get("betas", (0.9, 0.98)))
        values["checkpoint_steps"] = tuple(values.get("checkpoint_steps", ()))
        return cls(**values)


def _check_int(name: str, value: Any, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise HeadkitError(f"{name}={value!r} must be an integer >= {low}")


@dataclass
class TrainResult:
    """What `train` returns."""

    model: HookedTransformer  # the trained model as analyses see it (via load_gptj), eval mode
    metrics: pd.DataFrame  # every metrics row of the run (the content of metrics.csv)
    run_dir: Path | None  # where the run was written, or None
    step: int  # updates done
    hf_model: GPTJForCausalLM | None = None  # the Hugging Face model that was trained, eval mode


# --- presets --------------------------------------------------------------------

# "cpu": task -> (builder parameters, model sizes, training settings) sized for a 2-core CPU
_CPU: dict[str, tuple[dict, dict, dict]] = {
    "number": (
        {},
        dict(n_layers=6, d_model=64, n_heads=1, n_ctx=DEFAULT_N_CTX),
        dict(steps=2000, lr=1e-3, warmup_steps=200),
    ),
    "letter": (
        {"n_symbols": 24},
        dict(n_layers=6, d_model=64, n_heads=1, n_ctx=DEFAULT_N_CTX),
        dict(steps=2000, lr=3e-3, warmup_steps=200, curriculum_every=250),  # 93.9% at 1500, 96.9% at 1600
    ),
    "tree": (
        {},
        dict(n_layers=6, d_model=64, n_heads=1),
        dict(steps=3000, lr=1e-3, warmup_steps=200),
    ),
    "copy": (
        {},
        dict(n_layers=1, d_model=32, n_heads=1, attn_only=True),
        dict(steps=500, lr=3e-3, warmup_steps=50),
    ),
    "induction": (
        {},
        dict(n_layers=2, d_model=64, n_heads=4, attn_only=True),
        dict(steps=2000, lr=1e-3, warmup_steps=100),
    ),
}

# "paper": PosSym-2026's model and schedule (docs/training.md gives the source of each value).
# Text: 12 layers, 1 head, d_model 128, rotary over the whole head, GELU, dropout 0.1,
# batch 64, 750 warm-up, 432,000 training sequences (6,750 updates), no curriculum.
# Code copy (Position_symbolic_dynamics/code, schemas.py + multihop_exp.py): lr 1e-4,
# AdamW betas (0.95, 0.999), weight decay 1e-4, linear decay after warm-up, exact GELU.
_PAPER_MODEL = dict(n_layers=12, d_model=128, n_heads=1, n_ctx=DEFAULT_N_CTX, act_fn="gelu")
_PAPER_TRAIN = dict(
    steps=432_000 // 64, batch_size=64, lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-4,
    warmup_steps=750, schedule="linear", dropout=0.1, grad_clip=1.0, eval_every=250,
)
_PAPER: dict[str, tuple[dict, dict, dict]] = {
    "number": ({}, _PAPER_MODEL, _PAPER_TRAIN),
    # the paper's letter vocabulary: symbols a-h x digits 1-8 (128 tokens), the builder's defaults
    "letter": ({"n_symbols": 8, "n_digits": 8}, _PAPER_MODEL, _PAPER_TRAIN),
}

PRESETS: dict[str, dict[str, tuple[dict, dict, dict]]] = {"cpu": _CPU, "paper": _PAPER}


def default_config(task: str, /, *, preset: str = "cpu", **overrides: Any) -> TrainConfig:
    """A preset's config for a task (``cpu``, the default, or ``paper``); ``overrides``
    replace `TrainConfig` fields.

    The model's ``d_vocab`` is the task's vocabulary size and its ``n_ctx`` is
    at least `headkit.models.DEFAULT_N_CTX` (2,048; PosSym-2026 adds up to 996
    tokens to its 17-token prompts), or twice the task's length if that is more:
    in GPT-J ``n_ctx`` sizes only the rotary table (Hugging Face's
    ``n_positions``) and TransformerLens's causal mask, no parameter. Overriding ``task`` (a TaskSpec) re-derives ``d_vocab`` unless
    ``model`` is overridden too.
    """
    if preset not in PRESETS:
        raise HeadkitError(f"unknown preset {preset!r}: allowed {', '.join(PRESETS)}")
    table = PRESETS[preset]
    if task not in table:
        raise HeadkitError(f"unknown task {task!r} for preset {preset!r}: allowed {', '.join(table)}")
    params, model_sizes, settings = table[task]
    spec = overrides.pop("task", None) or TaskSpec(task, dict(params))
    spec = resolved_task(spec)  # unknown parameters refused by name, before the probe below
    model = overrides.pop("model", None)
    if model is None:
        probe = spec.build(1, seed=0)
        sizes = {"n_ctx": max(DEFAULT_N_CTX, 2 * probe.length), **model_sizes}
        model = ModelConfig(d_vocab=len(probe.vocab), **sizes)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise HeadkitError(f"unknown training config fields: {', '.join(unknown)}")
    return TrainConfig(task=spec, model=model, **{**settings, **overrides})


# --- seeds, schedule, curriculum ---------------------------------------------


def _stream_seed(seed: int, *key: int) -> int:
    """A 63-bit seed from ``(seed, *key)``; distinct keys give independent streams."""
    state = np.random.SeedSequence(seed, spawn_key=key).generate_state(1, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))


def train_seed(cfg: TrainConfig, step: int) -> int:
    """Seed of the training batch of update ``step`` (1-based)."""
    return _stream_seed(cfg.seed, _TRAIN_STREAM, step)


def eval_seed(cfg: TrainConfig) -> int:
    """Seed of the fixed held-out batch (a stream disjoint from training's)."""
    return _stream_seed(cfg.seed, _EVAL_STREAM)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of update ``step`` (1-based): linear warm-up, then the schedule."""
    if step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    return cfg.lr * SCHEDULES[cfg.schedule](step, cfg)


def _hop_range(spec: TaskSpec) -> tuple[int, int]:
    """(min_hops, max_hops) of a task: its parameters over the builder's defaults."""
    signature = inspect.signature(spec.builder()).parameters
    if "min_hops" not in signature or "max_hops" not in signature:
        raise HeadkitError(
            f"curriculum_every needs a task with min_hops/max_hops; task {spec.name!r} has none"
        )
    low = spec.params.get("min_hops", signature["min_hops"].default)
    high = spec.params.get("max_hops", signature["max_hops"].default)
    return int(low), int(high)


def curriculum_overrides(cfg: TrainConfig, step: int) -> dict[str, int]:
    """Builder overrides for update ``step``: ``{"max_hops": h}`` under a curriculum."""
    if cfg.curriculum_every is None:
        return {}
    low, high = _hop_range(cfg.task)
    return {"max_hops": min(high, low + (step - 1) // cfg.curriculum_every)}


def training_batch(cfg: TrainConfig, step: int) -> TaskBatch:
    """The batch update ``step`` trains on (a pure function of cfg and step)."""
    return cfg.task.build(cfg.batch_size, seed=train_seed(cfg, step), **curriculum_overrides(cfg, step))


# --- run directories ------------------------------------------------------------


def read_run_config(run_dir: str | Path) -> TrainConfig:
    """The `TrainConfig` stored in ``run_dir/run.json``; a clear error if absent or broken."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise HeadkitError(f"{run_dir} is not a headkit run directory: {RUN_FILE} is missing")
    try:
        data = json.loads(path.read_text())
        return TrainConfig.from_dict(data)
    except (json.JSONDecodeError, TypeError, KeyError, AttributeError) as exc:
        raise HeadkitError(f"{path} is corrupted: {exc}") from None
    except HeadkitError as exc:
        raise HeadkitError(f"{path} is corrupted: {exc}") from None


def read_metrics(run_dir: str | Path) -> pd.DataFrame:
    """The metrics rows of a run (``metrics.csv``)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise HeadkitError(f"{run_dir}: {METRICS_FILE} is missing")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise HeadkitError(f"{path} is corrupted: {exc}") from None
    missing = [c for c in METRIC_COLUMNS if c not in df.columns]
    if missing:
        raise HeadkitError(f"{path} is corrupted: columns {', '.join(missing)} are missing")
    return df


def config_differences(a: TrainConfig, b: TrainConfig, *, ignore: tuple[str, ...] = ()) -> list[str]:
    """Names of the fields in which two configs differ (``model.n_ctx``, ``task.params`` ...)."""
    da, db = a.to_dict(), b.to_dict()
    out = []
    for key in da:
        if key in ignore:
            continue
        if isinstance(da[key], dict) and isinstance(db[key], dict):
            out += [f"{key}.{k}" for k in sorted(set(da[key]) | set(db[key])) if da[key].get(k) != db[key].get(k)]
        elif da[key] != db[key]:
            out.append(key)
    return out


# --- devices, memory -------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when a GPU is present, else CPU; a device this machine lacks is refused
    (`headkit.checks.check_device`); training runs on cpu or cuda."""
    device = torch.device(check_device(name))
    if device.type not in ("cpu", "cuda"):
        raise HeadkitError(f"device {name!r} is not supported for training: allowed auto, cpu, cuda[:N]")
    return device


def estimate_memory(cfg: TrainConfig, length: int) -> int:
    """Rough bytes one training update needs: weights + optimizer, and float32
    activations kept for the backward pass (per token and layer: residual, LN,
    Q/K/V/O, MLP in/out, attention scores, dropout masks), with a 2x margin."""
    m = cfg.model
    d_mlp = 1 if m.attn_only else (m.d_mlp or 4 * m.d_model)
    n_params = m.n_layers * (4 * m.d_model**2 + 2 * m.d_model * d_mlp) + 2 * m.d_vocab * m.d_model
    per_token_layer = 12 * m.d_model + 3 * d_mlp + 3 * m.n_heads * length
    per_token = m.n_layers * per_token_layer + 4 * m.d_model + m.d_vocab
    return 4 * (4 * n_params + 2 * cfg.batch_size * length * per_token) + 8 * 4 * cfg.batch_size * length


def _memory_available(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[1])
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _check_memory(cfg: TrainConfig, length: int, device: torch.device) -> None:
    need, have = estimate_memory(cfg, length), _memory_available(device)
    if need > have:
        raise HeadkitError(
            f"batch_size={cfg.batch_size} needs about {need / 2**30:.1f} GiB per update on {device} "
            f"(prompts of length {length}) but the device has {have / 2**30:.1f} GiB: use a smaller batch size"
        )


# --- training -------------------------------------------------------------------


def make_optimizer(model: GPTJForCausalLM, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, weight decay on matrices only."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def batch_loss(model: GPTJForCausalLM, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy on the non-IGNORE ``targets``; logits only at the last
    position when that is the only one scored (number and letter tasks)."""
    if not bool((targets[:, :-1] != IGNORE).any()):
        logits = model(input_ids=tokens, logits_to_keep=1).logits[:, -1]  # [batch, d_vocab]
        return F.cross_entropy(logits.float(), targets[:, -1], ignore_index=IGNORE)
    logits = model(input_ids=tokens).logits  # [batch, pos, d_vocab]
    return F.cross_entropy(
        logits.float().flatten(0, 1),  # [batch * pos, d_vocab]
        targets.flatten(),  # [batch * pos]
        ignore_index=IGNORE,
    )


def train_step(
    model: GPTJForCausalLM,
    optimizer: torch.optim.Optimizer,
    batch: TaskBatch,
    *,
    lr: float,
    grad_clip: float | None,
) -> float:
    """One update on ``batch`` (already on the model's device); returns its loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    device = batch.tokens.device
    with autocast(device):
        loss = batch_loss(model, batch.tokens, batch.targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], grad_clip)
    optimizer.step()
    return loss.item()


def _check_task_fits(cfg: TrainConfig) -> TaskBatch:
    """Build a 2-prompt probe of the task and check it against the model's sizes."""
    from headkit.checkpoints import check_task_params

    check_task_params(cfg.task)
    probe = cfg.task.build(2, seed=0)
    if probe.length > cfg.model.n_ctx:
        raise HeadkitError(
            f"task {cfg.task.name!r} prompts have length {probe.length} but the model's "
            f"n_ctx is {cfg.model.n_ctx}: allowed lengths are 1..{cfg.model.n_ctx}"
        )
    if len(probe.vocab) != cfg.model.d_vocab:
        raise HeadkitError(
            f"task {cfg.task.name!r} has a vocabulary of {len(probe.vocab)} tokens but the "
            f"model's d_vocab is {cfg.model.d_vocab}: they must be equal"
        )
    if cfg.curriculum_every is not None:
        _hop_range(cfg.task)
    return probe


def _metrics_row(step: int, losses: list[float], score: BatchScore, lr: float, elapsed: float) -> dict:
    row = {
        "step": step,
        "train_loss": float(np.mean(losses)) if losses else float("nan"),
        "eval_loss": score.loss,
        "accuracy": score.accuracy,
    }
    row.update({f"accuracy_hop{h}": acc for h, acc in score.accuracy_by_hop().items()})
    row.update({"lr": lr, "elapsed_s": elapsed})
    return row


@dataclass
class _State:
    """Where a run stands: model, optimizer, step done, metrics so far, time spent."""

    model: GPTJForCausalLM
    optimizer: torch.optim.AdamW
    step: int
    rows: list[dict] = field(default_factory=list)
    elapsed: float = 0.0
    last_saved: int | None = None  # step of the last checkpoint written or resumed from


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Mapping[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _fresh_state(cfg: TrainConfig, device: torch.device) -> _State:
    model = build_hf_model(cfg.model, seed=cfg.seed, dropout=cfg.dropout, device=device)
    torch.manual_seed(_stream_seed(cfg.seed, _DROPOUT_STREAM))
    return _State(model=model, optimizer=make_optimizer(model, cfg), step=0)


def _resumed_state(cfg: TrainConfig, run_dir: Path, device: torch.device) -> _State:
    from headkit.checkpoints import list_checkpoints, load_hf_model
    from headkit.runs import newest_valid_checkpoint

    stored = read_run_config(run_dir) if (run_dir / RUN_FILE).is_file() else None
    if stored is None:  # failed before its first update: nothing to continue
        if list_checkpoints(run_dir):
            raise HeadkitError(f"cannot resume {run_dir}: it has checkpoints but no {RUN_FILE}")
        logger.info("%s holds no run yet: training from step 0", run_dir)
        return _fresh_state(cfg, device)
    differ = config_differences(stored, cfg, ignore=("steps", "device"))
    if differ:
        raise HeadkitError(
            f"cannot resume {run_dir}: the config differs from its {RUN_FILE} in "
            f"{', '.join(differ)} (only steps may change)"
        )
    ckpt = newest_valid_checkpoint(run_dir, device="cpu")
    if ckpt is None:  # stopped before its first (valid) checkpoint: start again from step 0
        if list_checkpoints(run_dir):
            logger.warning("%s has no valid checkpoint: training from step 0", run_dir)
        else:
            logger.info("%s has no checkpoint yet: training from step 0", run_dir)
        return _fresh_state(cfg, device)
    if ckpt.step > cfg.steps:
        raise HeadkitError(
            f"cannot resume {run_dir} to steps={cfg.steps}: it is already at step {ckpt.step}"
        )
    if ckpt.optimizer_state is None:
        raise HeadkitError(f"cannot resume {run_dir}: checkpoint {ckpt.path} has no optimizer state")
    model = load_hf_model(ckpt.path, dropout=cfg.dropout, device=device)
    optimizer = make_optimizer(model, cfg)
    optimizer.load_state_dict(ckpt.optimizer_state)
    if ckpt.rng_state is not None:
        _set_rng_state(ckpt.rng_state, device)
    else:  # a checkpoint of headkit before dropout: no RNG was used
        torch.manual_seed(_stream_seed(cfg.seed, _DROPOUT_STREAM, ckpt.step))
    history = read_metrics(run_dir)
    rows = history[history["step"] <= ckpt.step].to_dict("records")
    elapsed = float(rows[-1]["elapsed_s"]) if rows else 0.0
    logger.info("resuming %s from step %d", run_dir, ckpt.step)
    return _State(model=model, optimizer=optimizer, step=ckpt.step, rows=rows, elapsed=elapsed, last_saved=ckpt.step)


def _save(cfg: TrainConfig, run_dir: Path, state: _State, device: torch.device) -> None:
    from headkit.checkpoints import checkpoint_dir, save_checkpoint

    save_checkpoint(
        checkpoint_dir(run_dir, state.step),
        state.model,
        model_config=cfg.model,
        step=state.step,
        task=cfg.task,
        metrics=state.rows[-1] if state.rows else None,
        train_config=cfg.to_dict(),
        optimizer_state=state.optimizer.state_dict(),
        rng_state=_rng_state(device),
    )
    state.last_saved = state.step


def hooked_from_hf(model: GPTJForCausalLM, cfg: ModelConfig) -> HookedTransformer:
    """The HookedTransformer analyses see for a trained Hugging Face model: written
    as a checkpoint into a temporary directory and loaded through `headkit.load_gptj`."""
    import tempfile

    from headkit.checkpoints import load_checkpoint, save_checkpoint

    with tempfile.TemporaryDirectory(prefix="headkit-") as tmp:
        path = save_checkpoint(Path(tmp) / "model", model, model_config=cfg, step=0)
        return load_checkpoint(path, device=next(model.parameters()).device).model


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate" in text or "failed to allocate" in text)


def train(
    cfg: TrainConfig,
    *,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.task`` for ``cfg.steps`` updates (module docstring).

    With ``out_dir`` the run is written there (``run.json``, ``metrics.csv``,
    checkpoints) under the run's lock; an existing run there is an error unless
    ``resume=True``, which continues it from its newest valid checkpoint.
    Everything that can be wrong with the config or the directory is checked
    before the first update.
    """
    from headkit.runs import RunLock, check_new_run, clean_temporaries

    # 1. checks, before any work
    run_dir = None if out_dir is None else Path(out_dir)
    if resume and run_dir is None:
        raise HeadkitError("resume=True needs out_dir, the run directory to continue")
    if run_dir is not None and run_dir.exists() and not run_dir.is_dir():
        raise HeadkitError(f"{run_dir} exists and is not a directory")
    if resume and not (run_dir is not None and run_dir.is_dir()):
        raise HeadkitError(f"cannot resume {run_dir}: it is not a headkit run directory (it does not exist)")
    device = resolve_device(cfg.device)
    probe = _check_task_fits(cfg)
    _check_memory(cfg, probe.length, device)

    devices = [device.index or 0] if device.type == "cuda" else []
    with contextlib.ExitStack() as stack:
        if run_dir is not None:
            stack.enter_context(RunLock(run_dir))
            clean_temporaries(run_dir)
            if not resume:
                check_new_run(run_dir)  # under the lock: a writer in progress is named first
        stack.enter_context(torch.random.fork_rng(devices=devices))
        # 2. the model and optimizer: fresh, or from the newest valid checkpoint
        state = _resumed_state(cfg, run_dir, device) if resume else _fresh_state(cfg, device)
        return _loop(cfg, state, run_dir, device, progress=progress)


def _diverged(state: _State, what: str, lr: float) -> HeadkitError:
    """The one-line error of a run whose loss or weights stopped being finite."""
    kept = "no checkpoint was written" if state.last_saved is None else f"the last good checkpoint is step {state.last_saved}"
    return HeadkitError(f"training diverged: {what} (lr={lr:.3g}); {kept}; lower the learning rate")


def _loop(cfg: TrainConfig, state: _State, run_dir: Path | None, device: torch.device, *, progress: bool) -> TrainResult:
    """Steps 3-5 of the module docstring, from ``state`` to ``cfg.steps``."""
    eval_batch = cfg.task.build(cfg.eval_n, seed=eval_seed(cfg))
    scorer = HFLogits(state.model)
    check_batch_fits(scorer, eval_batch)
    wrote_config = False

    def write_config() -> None:
        nonlocal wrote_config
        if run_dir is not None and not wrote_config:
            write_json(run_dir / RUN_FILE, cfg.to_dict())
            wrote_config = True

    if state.step > 0:  # resumed: run.json records the new steps at once (a reused run is left untouched)
        if read_run_config(run_dir) == cfg:
            wrote_config = True
        else:
            write_config()

    def record(losses: list[float], lr: float) -> None:
        try:
            score = score_batch(scorer, eval_batch)
        except NonFiniteError:  # an update made the weights (or the logits they give) NaN/inf
            raise _diverged(state, f"the held-out logits are not finite after step {state.step}", lr) from None
        state.rows.append(_metrics_row(state.step, losses, score, lr, state.elapsed))
        if run_dir is not None and wrote_config:
            write_csv(run_dir / METRICS_FILE, pd.DataFrame(state.rows))
        shown["acc"] = f"{score.accuracy:.3f}"  # held-out accuracy of the last evaluation
        bar.set_postfix(shown)
        logger.info("step %d: %s", state.step, state.rows[-1])

    # 3. the loop: one fresh batch per update, metrics rows and checkpoints on schedule
    bar = tqdm(total=cfg.steps, initial=state.step, desc=f"train {cfg.task.name}", disable=not progress)
    shown: dict[str, str] = {}  # the bar's postfix: running train loss, last held-out accuracy
    try:
        if state.step == 0:
            state.rows = []
            record([], 0.0)
        losses: list[float] = []
        state.model.train()
        started = time.perf_counter() - state.elapsed
        while state.step < cfg.steps:
            step = state.step + 1
            lr = lr_at(cfg, step)
            batch = training_batch(cfg, step).to(device)
            try:
                loss = train_step(state.model, state.optimizer, batch, lr=lr, grad_clip=cfg.grad_clip)
            except (MemoryError, RuntimeError) as error:
                if not _is_out_of_memory(error):
                    raise
                raise HeadkitError(
                    f"out of memory at step {step} (batch_size={cfg.batch_size} on {device}): use a smaller batch size"
                ) from None
            if not math.isfinite(loss):
                raise _diverged(state, f"the loss is {loss} at step {step}", lr)
            losses.append(loss)
            state.step = step
            shown["loss"] = f"{np.mean(losses):.3f}"  # mean train loss since the last evaluation
            bar.set_postfix(shown, refresh=False)
            if run_dir is not None and not wrote_config:  # the first update worked: now the run exists
                write_config()
                write_csv(run_dir / METRICS_FILE, pd.DataFrame(state.rows))
            bar.update(1)
            is_checkpoint = step in cfg.checkpoint_steps or step == cfg.steps
            if step % cfg.eval_every == 0 or is_checkpoint:
                state.elapsed = time.perf_counter() - started
                record(losses, lr)
                losses = []
                state.model.train()
            if is_checkpoint and run_dir is not None:
                _save(cfg, run_dir, state, device)
    finally:
        bar.close()
        state.model.eval()
    if run_dir is not None:
        from headkit.checkpoints import checkpoint_dir, load_checkpoint

        hooked = load_checkpoint(checkpoint_dir(run_dir, state.step), device=device).model
    else:
        hooked = hooked_from_hf(state.model, cfg.model)
    return TrainResult(
        model=hooked, metrics=pd.DataFrame(state.rows), run_dir=run_dir, step=state.step, hf_model=state.model
    )
