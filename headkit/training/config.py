"""What defines a training run: `TrainConfig`, its presets, its schedule, and reading a run back.

`TrainConfig` is a frozen dataclass, checked on creation and stored as a run's
``run.json`` (`to_dict` / `from_dict`; `read_run_config` reads it back, refusing an
unknown field by name). Its ``task`` is a `headkit.tasks.TaskSpec` written out in
full (`resolved_task`), its ``model`` a `headkit.model_config.ModelConfig`.
`default_config` gives a preset's config for a task: ``"cpu"`` (sized for a 2-core
CPU; a task without its own entry gets `_CPU_OTHER`) or ``"paper"`` (PosSym-2026's
model and schedule, docs/training.md gives the source of each value); the model's
``d_vocab`` and ``n_ctx`` come from the task's parameters (`TaskSpec.d_vocab`,
`TaskSpec.length`), without building a prompt. `lr_at` is the learning-rate
schedule (`SCHEDULES`). The training loop itself is `headkit.training`, which
re-exports everything here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd
import torch

from headkit.checks import check_int, check_optional_int
from headkit.errors import HeadkitError
from headkit.io import stored_fields
from headkit.model_config import DEFAULT_N_CTX, ModelConfig
from headkit.tasks.registry import TASKS, TaskSpec
from headkit.training.layout import METRICS_FILE, RUN_FILE, read_run_json

FLOAT32_MAX = float(torch.finfo(torch.float32).max)  # training computes in float32 (models.model_from_config)

# fixed columns of metrics.csv; tasks with hops add accuracy_hop1 .. accuracy_hopK after accuracy
METRIC_COLUMNS = ("step", "train_loss", "eval_loss", "accuracy", "lr", "elapsed_s")


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


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of update ``step`` (1-based): linear warm-up, then the schedule."""
    if step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    return cfg.lr * SCHEDULES[cfg.schedule](step, cfg)


def resolved_task(spec: TaskSpec) -> TaskSpec:
    """``spec`` with every builder parameter written out (`TaskSpec.resolved`).

    A run's ``run.json`` then names the task in full (``{"max_hops": 4, "n_letters": 120,
    ...}``, not ``{}``), so changing a builder default later does not change what an
    old run means. A parameter whose default is ``None`` stays ``None`` unless set: it
    is decided per call (``length``: the trained length; ``balance``: joint, or hops
    when the window protocol enlarges the target window).
    """
    return spec.resolved()


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
        self._check_counts()
        self._check_optimizer()
        if self.schedule not in SCHEDULES:
            raise HeadkitError(f"schedule={self.schedule!r} is unknown: allowed {', '.join(SCHEDULES)}")
        steps = tuple(sorted(set(self.checkpoint_steps)))
        for s in steps:
            check_int("checkpoint step", s)
            if s > self.steps:
                raise HeadkitError(f"checkpoint step {s} is beyond the run: allowed 1..{self.steps} (steps)")
        object.__setattr__(self, "checkpoint_steps", steps)
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                raise HeadkitError(f"device={self.device!r} is not a torch device (e.g. auto, cpu, cuda)") from None

    def _check_counts(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "eval_n"):
            check_int(name, getattr(self, name))
        check_int("warmup_steps", self.warmup_steps, low=0)
        check_int("seed", self.seed, low=0)
        check_optional_int("curriculum_every", self.curriculum_every)
        if self.curriculum_every is not None and self.task.hop_range is None:
            raise HeadkitError(
                f"curriculum_every needs a task with min_hops/max_hops; task {self.task.name!r} has none"
            )

    def _check_optimizer(self) -> None:
        for name in ("lr", "weight_decay", "dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise HeadkitError(f"{name}={value!r} must be a finite number")
            if name != "dropout" and abs(value) > FLOAT32_MAX:  # finite in Python, inf in the float32 update
                raise HeadkitError(
                    f"{name}={value!r} is too large: it overflows float32 (largest {FLOAT32_MAX!r}), "
                    "the precision training computes in"
                )
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

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["task"] = self.task.to_dict()
        out["model"] = self.model.to_dict()
        out["betas"] = list(self.betas)
        out["checkpoint_steps"] = list(self.checkpoint_steps)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        values = stored_fields(cls, data, what="training config")
        for name in ("task", "model"):
            if name not in values:
                raise HeadkitError(f"training config has no {name!r} field")
        values["task"] = TaskSpec.from_dict(values["task"])
        values["model"] = ModelConfig.from_dict(values["model"])
        values["betas"] = tuple(values.get("betas", (0.9, 0.98)))
        values["checkpoint_steps"] = tuple(values.get("checkpoint_steps", ()))
        return cls(**values)


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

# "cpu" for a task without its own entry above (a new task): a small model and short run
_CPU_OTHER: tuple[dict, dict, dict] = (
    {},
    dict(n_layers=2, d_model=64, n_heads=1),
    dict(steps=1000, lr=1e-3, warmup_steps=100),
)

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
    at least `headkit.model_config.DEFAULT_N_CTX` (2,048; PosSym-2026 adds up to 996
    tokens to its 17-token prompts), or twice the task's length if that is more:
    in GPT-J ``n_ctx`` sizes only the rotary table (Hugging Face's
    ``n_positions``) and TransformerLens's causal mask, no parameter. Overriding
    ``task`` (a TaskSpec) re-derives ``d_vocab`` unless ``model`` is overridden too.
    A task of the registry without a ``cpu`` entry gets `_CPU_OTHER`.
    """
    if preset not in PRESETS:
        raise HeadkitError(f"unknown preset {preset!r}: allowed {', '.join(PRESETS)}")
    table = PRESETS[preset]
    if task not in table and (preset != "cpu" or task not in TASKS):
        raise HeadkitError(f"unknown task {task!r} for preset {preset!r}: allowed {', '.join(table)}")
    params, model_sizes, settings = table.get(task, _CPU_OTHER)
    spec = resolved_task(overrides.pop("task", None) or TaskSpec(task, dict(params)))
    model = overrides.pop("model", None)
    if model is None:
        sizes = {"n_ctx": max(DEFAULT_N_CTX, 2 * spec.length), **model_sizes}
        model = ModelConfig(d_vocab=spec.d_vocab, **sizes)
    stored_fields(TrainConfig, overrides, what="training config")  # unknown names refused first
    return TrainConfig(task=spec, model=model, **{**settings, **overrides})


# --- run directories ------------------------------------------------------------


def read_run_config(run_dir: str | Path) -> TrainConfig:
    """The `TrainConfig` stored in ``run_dir/run.json``; a clear error if absent or broken.

    The file is read by `headkit.training.layout.read_run_json` (the one reader of
    ``run.json``: absent, not JSON, no task or step count), then built into a
    `TrainConfig`, whose checks name what is wrong (``run.json is corrupted: ...``).
    """
    data = read_run_json(run_dir)
    try:
        return TrainConfig.from_dict(data)
    except (TypeError, KeyError, AttributeError, HeadkitError) as exc:
        raise HeadkitError(f"{Path(run_dir) / RUN_FILE} is corrupted: {exc}") from None


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
    steps = pd.to_numeric(df["step"], errors="coerce")
    if steps.isna().any():
        row = int(steps.isna().to_numpy().argmax()) + 2  # 1-based, after the header
        raise HeadkitError(f"{path} is corrupted: line {row} has no step number ({df['step'].iloc[row - 2]!r})")
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

