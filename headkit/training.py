"""Training a GPT-J-style model from scratch on a headkit task.

The recipe follows PosSym-2026 (SPEC 2.3), scaled down to run on a laptop CPU:

1. Online data. Update ``k`` (1-based) trains on a fresh batch built by the task's
   own builder with a seed derived from ``(cfg.seed, k)`` alone, so a resumed run
   sees exactly the data an uninterrupted run would have seen. A fixed held-out
   evaluation batch of ``eval_n`` prompts comes from a separate seed stream.
2. Loss: cross-entropy on the batch's ``targets`` (positions holding ``IGNORE``
   are not scored; for the number and letter tasks only the query position is).
3. AdamW (weight decay on matrices only, not on biases or LayerNorm gains), the
   learning rate rising linearly over ``warmup_steps`` and then held constant
   (``schedule="constant"``, the default, so a run can be extended by raising
   ``steps``) or decayed along a cosine to 10% (``schedule="cosine"``), gradient
   norm clipped at ``grad_clip``.
4. Optional hop curriculum (``curriculum_every=k``): the largest hop of training
   prompts starts at the task's ``min_hops`` and rises by one every ``k`` updates
   up to ``max_hops``; SPEC 2.3 needed it for the letter task. Evaluation always
   uses every hop.
5. Every ``eval_every`` updates, at every checkpoint step and at the last step,
   one row of metrics (columns in `METRIC_COLUMNS`, plus ``accuracy_hop1`` ...
   ``accuracy_hopK`` for tasks with hops): the mean training loss since the
   previous row, the held-out loss and exact-match accuracy at the answer
   position, overall and per hop.

TransformerLens has no dropout, so, unlike the paper (dropout 0.1), training here
is without it. The model stays a true GPT-J while it trains (`train_step`):
TransformerLens gives every attention layer Q/K/V/O bias parameters (zero at
initialisation) and each parallel block two LayerNorms, where GPT-J has no such
biases and one LayerNorm; training leaves the biases at zero and ties ``ln2`` to
``ln1``, so a trained model converts one-to-one to Hugging Face's GPT-J.

A run directory holds ``run.json`` (the `TrainConfig`), ``metrics.csv`` (rewritten
atomically after every row) and ``checkpoints/step_NNNNNNN/`` (`headkit.checkpoints`,
with the optimizer state), written at ``checkpoint_steps`` and the final step.
``resume=True`` continues from the latest checkpoint (from step 0 if the run
stopped before its first one) and refuses a config that differs from ``run.json``
in anything but ``steps`` and ``device``.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
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

from headkit.errors import HeadkitError
from headkit.evaluation import BatchScore, check_batch_fits, score_batch
from headkit.io import write_csv, write_json
from headkit.models import ModelConfig, model_from_config
from headkit.tasks.base import IGNORE, TaskBatch, TaskSpec

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
METRICS_FILE = "metrics.csv"
# fixed columns of metrics.csv; tasks with hops add accuracy_hop1 .. accuracy_hopK after accuracy
METRIC_COLUMNS = ("step", "train_loss", "eval_loss", "accuracy", "lr", "elapsed_s")

_TRAIN_STREAM, _EVAL_STREAM = 0, 1  # seed streams: training batches vs the held-out batch


# --- learning-rate schedules: (step, cfg) -> multiplier of cfg.lr after warm-up ---


def _constant(step: int, cfg: "TrainConfig") -> float:
    return 1.0


def _cosine(step: int, cfg: "TrainConfig") -> float:
    span = max(cfg.steps - cfg.warmup_steps, 1)
    progress = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


SCHEDULES: dict[str, Callable[[int, "TrainConfig"], float]] = {
    "constant": _constant,
    "cosine": _cosine,
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (stored as ``run.json``)."""

    task: TaskSpec  # task name + builder parameters (trained length = the builder's default)
    model: ModelConfig  # model sizes; d_vocab must equal the task's vocabulary size
    steps: int = 1500  # optimizer updates in total
    batch_size: int = 128  # prompts per update, each batch freshly generated
    lr: float = 1e-3  # peak learning rate (reached after warm-up)
    weight_decay: float = 0.01  # AdamW decay on weight matrices (not biases / LayerNorm)
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW moment decay rates
    warmup_steps: int = 200  # linear warm-up from 0 to lr over these many updates
    schedule: str = "constant"  # after warm-up: "constant" or "cosine" (to 10% of lr)
    grad_clip: float | None = 1.0  # clip the global gradient norm; None = no clipping
    eval_every: int = 100  # updates between held-out evaluations
    eval_n: int = 512  # size of the fixed held-out batch (its own seed stream)
    checkpoint_steps: tuple[int, ...] = ()  # extra steps to save at; the final step always is
    seed: int = 0  # model initialisation and the data seed streams
    curriculum_every: int | None = None  # raise the largest training hop every k updates
    device: str = "cpu"  # torch device for the model and batches

    def __post_init__(self) -> None:
        if not isinstance(self.task, TaskSpec):
            raise HeadkitError(f"task must be a TaskSpec, got {type(self.task).__name__}")
        if not isinstance(self.model, ModelConfig):
            raise HeadkitError(f"model must be a ModelConfig, got {type(self.model).__name__}")
        for name in ("steps", "batch_size", "eval_every", "eval_n"):
            _check_int(name, getattr(self, name), low=1)
        _check_int("warmup_steps", self.warmup_steps, low=0)
        _check_int("seed", self.seed, low=0)
        if self.curriculum_every is not None:
            _check_int("curriculum_every", self.curriculum_every, low=1)
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise HeadkitError(f"{name}={value!r} must be a finite number")
        if self.lr <= 0:
            raise HeadkitError(f"lr={self.lr} must be positive")
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
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise HeadkitError(f"device={self.device!r} is not a torch device (e.g. cpu, cuda)") from None

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

    model: HookedTransformer  # the trained model, in eval mode
    metrics: pd.DataFrame  # every metrics row of the run (the content of metrics.csv)
    run_dir: Path | None  # where the run was written, or None
    step: int  # updates done


# --- defaults -----------------------------------------------------------------

# task -> (builder parameters, model sizes, training settings) sized for a 2-core CPU
_DEFAULTS: dict[str, tuple[dict, dict, dict]] = {
    "number": (
        {},
        dict(n_layers=6, d_model=64, n_heads=1, n_ctx=257),
        dict(steps=2000, lr=1e-3, warmup_steps=200),  # passed 95% at step 1600 here
    ),
    "letter": (
        {"n_symbols": 24},
        dict(n_layers=6, d_model=64, n_heads=1, n_ctx=257),
        dict(steps=1500, lr=3e-3, warmup_steps=200, curriculum_every=250),  # 96.5% at 1500 here
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


def default_config(task: str, /, **overrides: Any) -> TrainConfig:
    """CPU-sized defaults for a task; ``overrides`` replace `TrainConfig` fields.

    The model's ``d_vocab`` is the task's vocabulary size and its ``n_ctx`` covers
    the demo's longest evaluation length (257 for number/letter; otherwise twice
    the task's length). Overriding ``task`` (a TaskSpec) re-derives ``d_vocab``
    unless ``model`` is overridden too.
    """
    if task not in _DEFAULTS:
        raise HeadkitError(f"unknown task {task!r}: allowed {', '.join(_DEFAULTS)}")
    params, model_sizes, settings = _DEFAULTS[task]
    spec = overrides.pop("task", None) or TaskSpec(task, dict(params))
    model = overrides.pop("model", None)
    if model is None:
        probe = spec.build(1, seed=0)
        sizes = {"n_ctx": max(257, 2 * probe.length), **model_sizes}
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


# --- training -------------------------------------------------------------------


# GPT-J has no Q/K/V/O biases and one LayerNorm feeding both attention and MLP;
# TransformerLens has bias parameters (zero at initialisation) and separate ln1/ln2.
_FROZEN = ("attn.b_Q", "attn.b_K", "attn.b_V", "attn.b_O")  # kept at zero


def tied_layernorms(model: HookedTransformer) -> list[tuple[torch.nn.Parameter, torch.nn.Parameter]]:
    """(ln1, ln2) parameter pairs that GPT-J shares (blocks with parallel attention + MLP)."""
    if not model.cfg.parallel_attn_mlp or model.cfg.attn_only:
        return []
    return [(b.ln1.w, b.ln2.w) for b in model.blocks] + [(b.ln1.b, b.ln2.b) for b in model.blocks]


def trained_parameters(model: HookedTransformer) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters a GPT-J has: all but the Q/K/V/O biases and the tied ln2 copies."""
    copies = {id(ln2) for _, ln2 in tied_layernorms(model)}
    return [
        (name, p)
        for name, p in model.named_parameters()
        if not name.endswith(_FROZEN) and id(p) not in copies
    ]


def make_optimizer(model: HookedTransformer, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over `trained_parameters`, weight decay on matrices only."""
    params = trained_parameters(model)
    groups = [
        {"params": [p for _, p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for _, p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def train_step(
    model: HookedTransformer,
    optimizer: torch.optim.Optimizer,
    batch: TaskBatch,
    *,
    lr: float,
    grad_clip: float | None,
) -> float:
    """One update on ``batch``; returns its loss. Keeps the model a GPT-J (see above).

    A tied LayerNorm gets the sum of the gradients of its two uses (into ln1,
    which the optimizer updates; ln2 is then copied from it), exactly as one
    shared parameter would.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    logits = model(batch.tokens, return_type="logits")  # [batch, pos, d_vocab]
    loss = F.cross_entropy(
        logits.flatten(0, 1),  # [batch * pos, d_vocab]
        batch.targets.flatten(),  # [batch * pos]
        ignore_index=IGNORE,
    )
    model.zero_grad(set_to_none=True)
    loss.backward()
    tied = tied_layernorms(model)
    for ln1, ln2 in tied:
        ln1.grad += ln2.grad
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], grad_clip)
    optimizer.step()
    with torch.no_grad():
        for ln1, ln2 in tied:
            ln2.copy_(ln1)
    return loss.item()


def _check_task_fits(cfg: TrainConfig) -> TaskBatch:
    """Build a 2-prompt probe of the task and check it against the model's sizes."""
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

    model: HookedTransformer
    optimizer: torch.optim.AdamW
    step: int
    rows: list[dict] = field(default_factory=list)
    elapsed: float = 0.0


def _fresh_state(cfg: TrainConfig, run_dir: Path | None) -> _State:
    if run_dir is not None and ((run_dir / RUN_FILE).exists() or (run_dir / "checkpoints").exists()):
        raise HeadkitError(
            f"{run_dir} already holds a run: resume it (resume=True / --resume) or choose another directory"
        )
    model = model_from_config(cfg.model, seed=cfg.seed, device=cfg.device)
    return _State(model=model, optimizer=make_optimizer(model, cfg), step=0)


def _resumed_state(cfg: TrainConfig, run_dir: Path) -> _State:
    from headkit.checkpoints import list_checkpoints, load_checkpoint

    stored = read_run_config(run_dir)
    differ = config_differences(stored, cfg, ignore=("steps", "device"))
    if differ:
        raise HeadkitError(
            f"cannot resume {run_dir}: the config differs from its {RUN_FILE} in "
            f"{', '.join(differ)} (only steps may change)"
        )
    found = list_checkpoints(run_dir)
    if not found:  # stopped before its first checkpoint: start again from step 0
        logger.info("%s has no checkpoint yet: training from step 0", run_dir)
        model = model_from_config(cfg.model, seed=cfg.seed, device=cfg.device)
        return _State(model=model, optimizer=make_optimizer(model, cfg), step=0)
    ckpt = load_checkpoint(found[-1][1], device=cfg.device, with_optimizer=True)
    if ckpt.step > cfg.steps:
        raise HeadkitError(
            f"cannot resume {run_dir} to steps={cfg.steps}: it is already at step {ckpt.step}"
        )
    if ckpt.optimizer_state is None:
        raise HeadkitError(f"cannot resume {run_dir}: checkpoint {ckpt.path} has no optimizer state")
    optimizer = make_optimizer(ckpt.model, cfg)
    optimizer.load_state_dict(ckpt.optimizer_state)
    history = read_metrics(run_dir)
    rows = history[history["step"] <= ckpt.step].to_dict("records")
    elapsed = float(rows[-1]["elapsed_s"]) if rows else 0.0
    logger.info("resuming %s from step %d", run_dir, ckpt.step)
    return _State(model=ckpt.model, optimizer=optimizer, step=ckpt.step, rows=rows, elapsed=elapsed)


def _save(cfg: TrainConfig, run_dir: Path, state: _State) -> None:
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
    )


def train(
    cfg: TrainConfig,
    *,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.task`` for ``cfg.steps`` updates (module docstring).

    With ``out_dir`` the run is written there (``run.json``, ``metrics.csv``,
    checkpoints); an existing run there is an error unless ``resume=True``, which
    continues it from its latest checkpoint. Everything that can be wrong with
    the config or the directory is checked before the first update.
    """
    # 1. checks, before any work
    run_dir = None if out_dir is None else Path(out_dir)
    if resume and run_dir is None:
        raise HeadkitError("resume=True needs out_dir, the run directory to continue")
    if run_dir is not None and run_dir.exists() and not run_dir.is_dir():
        raise HeadkitError(f"{run_dir} exists and is not a directory")
    _check_task_fits(cfg)

    # 2. the model and optimizer: fresh, or from the latest checkpoint
    state = _resumed_state(cfg, run_dir) if resume else _fresh_state(cfg, run_dir)
    eval_batch = cfg.task.build(cfg.eval_n, seed=eval_seed(cfg))
    check_batch_fits(state.model, eval_batch)
    if run_dir is not None:
        write_json(run_dir / RUN_FILE, cfg.to_dict())

    def record(losses: list[float], lr: float) -> None:
        score = score_batch(state.model, eval_batch)
        state.rows.append(_metrics_row(state.step, losses, score, lr, state.elapsed))
        if run_dir is not None:
            write_csv(run_dir / METRICS_FILE, pd.DataFrame(state.rows))
        shown["acc"] = f"{score.accuracy:.3f}"  # held-out accuracy of the last evaluation
        bar.set_postfix(shown)
        logger.info("step %d: %s", state.step, state.rows[-1])

    # 3. the loop: one fresh batch per update, metrics rows and checkpoints on schedule
    bar = tqdm(total=cfg.steps, initial=state.step, desc=f"train {cfg.task.name}", disable=not progress)
    shown: dict[str, str] = {}  # the bar's postfix: running train loss, last held-out accuracy
    try:
        if state.step == 0:
            record([], 0.0)
        losses: list[float] = []
        state.model.train()
        started = time.perf_counter() - state.elapsed
        while state.step < cfg.steps:
            step = state.step + 1
            lr = lr_at(cfg, step)
            batch = training_batch(cfg, step).to(cfg.device)
            losses.append(train_step(state.model, state.optimizer, batch, lr=lr, grad_clip=cfg.grad_clip))
            state.step = step
            shown["loss"] = f"{np.mean(losses):.3f}"  # mean train loss since the last evaluation
            bar.set_postfix(shown, refresh=False)
            bar.update(1)
            is_checkpoint = step in cfg.checkpoint_steps or step == cfg.steps
            if step % cfg.eval_every == 0 or is_checkpoint:
                state.elapsed = time.perf_counter() - started
                record(losses, lr)
                losses = []
                state.model.train()
            if is_checkpoint and run_dir is not None:
                _save(cfg, run_dir, state)
    finally:
        bar.close()
        state.model.eval()
    return TrainResult(
        model=state.model, metrics=pd.DataFrame(state.rows), run_dir=run_dir, step=state.step
    )
