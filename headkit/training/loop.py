"""Training Hugging Face's GPT-J from scratch on a headkit task.

PosSym-2026 (SPEC 2.3) trained `transformers.GPTJForCausalLM` with the Hugging
Face Trainer; headkit trains the same model class (`headkit.gptj_hf`: its
dropouts, scaled-dot-product attention) with its own small loop, and every
analysis then sees the trained model wrapped in TransformerLens's `TransformerBridge`
(`headkit.training.checkpoints`, `headkit.bridge.build.wrap`). What defines a run (`TrainConfig`, its
presets and learning-rate schedule) lives in `headkit.training.config`, re-exported
here. The recipe:

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
   cannot fit in the device's available memory is refused up front (`estimate_memory`,
   `headkit.memory.check_memory`).

The run directory (`headkit.training.layout`) holds ``run.json`` (the `TrainConfig`,
written once the first update succeeded, so a failure before it leaves nothing
to clean up), ``metrics.csv`` (rewritten atomically after every row) and
``checkpoints/step_NNNNNNN/`` (`headkit.training.checkpoints`, with optimizer and RNG
state), written at ``checkpoint_steps`` and the final step. A process holds the
run's lock (`headkit.training.layout.RunLock`) while it writes. A new run goes only into an
absent or empty directory. ``resume=True`` continues from the newest valid
checkpoint (from step 0 if the run has none; refused, naming why, if it has
checkpoints and none loads) and refuses a config that differs from ``run.json``
in anything but ``steps`` and ``device``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, cast

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import GPTJForCausalLM

from headkit.bridge.build import wrap
from headkit.checks import check_device, check_length
from headkit.errors import DiskFullError, HeadkitError, NonFiniteError, is_out_of_memory
from headkit.evaluation import BatchScore, check_batch_fits, score_batch
from headkit.gptj_hf import HFLogits, autocast, build_hf_model
from headkit.io import write_csv, write_json
from headkit.memory import check_memory
from headkit.model_config import ModelConfig
from headkit.model_types import Model
from headkit.models import synthetic
from headkit.tasks.base import IGNORE, TaskBatch
from headkit.training.checkpoints import save_checkpoint
from headkit.training.config import (
    TrainConfig,
    config_differences,
    lr_at,
    read_metrics,
    read_run_config,
)
from headkit.training.layout import (
    METRICS_FILE,
    RUN_FILE,
    RunLock,
    check_new_run,
    check_no_foreign_files,
    checkpoint_dir,
    clean_temporaries,
    list_checkpoints,
)
from headkit.training.runs import existing_run, newest_valid_checkpoint

logger = logging.getLogger(__name__)

_TRAIN_STREAM, _EVAL_STREAM, _DROPOUT_STREAM = 0, 1, 2  # seed streams: training batches, held-out batch, dropout


@dataclass
class TrainResult:
    """What `train` returns."""

    model: Model  # the trained model as analyses see it (a TransformerBridge), eval mode
    metrics: pd.DataFrame  # every metrics row of the run (the content of metrics.csv)
    run_dir: Path | None  # where the run was written, or None
    step: int  # updates done
    hf_model: GPTJForCausalLM | None = None  # the Hugging Face model that was trained, eval mode


# --- seeds, curriculum ----------------------------------------------------------


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


def curriculum_overrides(cfg: TrainConfig, step: int) -> dict[str, int]:
    """Builder overrides for update ``step``: ``{"max_hops": h}`` under a curriculum."""
    if cfg.curriculum_every is None:
        return {}
    hop_range = cfg.task.hop_range
    assert hop_range is not None  # a task with hops: TrainConfig refuses a curriculum otherwise
    low, high = hop_range
    return {"max_hops": min(high, low + (step - 1) // cfg.curriculum_every)}


def training_batch(cfg: TrainConfig, step: int) -> TaskBatch:
    """The batch update ``step`` trains on (a pure function of cfg and step)."""
    return cfg.task.build(cfg.batch_size, seed=train_seed(cfg, step), **curriculum_overrides(cfg, step))


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


def _check_task_fits(cfg: TrainConfig) -> None:
    """Check the task's prompt length and vocabulary (from its parameters) against the model's sizes."""
    check_length(cfg.task.length, cfg.model.n_ctx, name=f"task {cfg.task.name!r} prompt length")
    if cfg.task.d_vocab != cfg.model.d_vocab:
        raise HeadkitError(
            f"task {cfg.task.name!r} has a vocabulary of {cfg.task.d_vocab} tokens but the "
            f"model's d_vocab is {cfg.model.d_vocab}: they must be equal"
        )


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
    # loaded once, onto the device (checkpoints none of which loads: refused, naming why)
    ckpt = newest_valid_checkpoint(run_dir, dropout=cfg.dropout, device=device)
    if ckpt is None:  # stopped before its first checkpoint: start again from step 0
        logger.info("%s has no checkpoint yet: training from step 0", run_dir)
        return _fresh_state(cfg, device)
    if ckpt.step > cfg.steps:
        raise HeadkitError(
            f"cannot resume {run_dir} to steps={cfg.steps}: it is already at step {ckpt.step}"
        )
    if ckpt.optimizer_state is None:
        raise HeadkitError(f"cannot resume {run_dir}: checkpoint {ckpt.path} has no optimizer state")
    model = ckpt.model
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
    save_checkpoint(
        checkpoint_dir(run_dir, state.step),
        state.model,
        model_config=cfg.model,
        step=state.step,
        task=cfg.task,
        metrics=state.rows[-1] if state.rows else None,
        train_config=cfg,
        optimizer_state=state.optimizer.state_dict(),
        rng_state=_rng_state(device),
    )
    state.last_saved = state.step


def wrapped_copy(model: GPTJForCausalLM, cfg: ModelConfig) -> Model:
    """The model analyses see for a trained Hugging Face model: a copy of it, wrapped
    (`headkit.bridge.build.wrap` changes the module it wraps; training keeps its own)."""
    import copy

    return synthetic(wrap(copy.deepcopy(model).eval()), attn_only=cfg.attn_only)


def train(
    cfg: TrainConfig,
    *,
    out_dir: str | os.PathLike | None = None,
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
    # 1. checks, before any work
    if out_dir is not None and os.fspath(out_dir) == "":
        raise HeadkitError("out_dir is empty: give the run directory (None to train without writing)")
    run_dir = None if out_dir is None else Path(out_dir)
    if resume and run_dir is None:
        raise HeadkitError("resume=True needs out_dir, the run directory to continue")
    if run_dir is not None and run_dir.exists() and not run_dir.is_dir():
        raise HeadkitError(f"{run_dir} exists and is not a directory")
    if resume and not (run_dir is not None and run_dir.is_dir()):
        raise HeadkitError(f"cannot resume {run_dir}: it is not a headkit run directory (it does not exist)")
    device = resolve_device(cfg.device)
    _check_task_fits(cfg)
    check_memory(
        estimate_memory(cfg, cfg.task.length),
        what=f"one update of batch_size={cfg.batch_size} (prompts of length {cfg.task.length})",
        advice="use a smaller batch size",
        device=device,
    )

    devices = [device.index or 0] if device.type == "cuda" else []
    with contextlib.ExitStack() as stack:
        if run_dir is not None:
            stack.enter_context(RunLock(run_dir))
            # under the lock (a writer in progress is named first), and before cleaning: a user's folder is never touched
            if resume:
                check_no_foreign_files(run_dir)
            else:
                check_new_run(run_dir)
            clean_temporaries(run_dir)
        stack.enter_context(torch.random.fork_rng(devices=devices))
        # 2. the model and optimizer: fresh, or from the newest valid checkpoint
        # resume: run_dir is given (checked above)
        state = _resumed_state(cfg, cast(Path, run_dir), device) if resume else _fresh_state(cfg, device)
        return _loop(cfg, state, run_dir, device, progress=progress)


def _diverged(state: _State, what: str, lr: float) -> HeadkitError:
    """The one-line error of a run whose loss or weights stopped being finite."""
    kept = "no checkpoint was written" if state.last_saved is None else f"the last good checkpoint is step {state.last_saved}"
    return HeadkitError(f"training diverged: {what} (lr={lr:.3g}); {kept}; lower the learning rate")


def _loop(  # long: the closures share the run's state (config written yet, progress bar, losses)
    cfg: TrainConfig, state: _State, run_dir: Path | None, device: torch.device, *, progress: bool
) -> TrainResult:
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
        if read_run_config(cast(Path, run_dir)) == cfg:  # a resumed run has its directory
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
            loss, lr = _update(cfg, state, step, device)
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
    except DiskFullError as error:  # metrics.csv or a checkpoint: what was written stays as it was
        kept = "no checkpoint was written" if state.last_saved is None else f"the last checkpoint is step {state.last_saved}"
        raise DiskFullError(f"{error}; training stopped at step {state.step}, {kept} (--resume continues from it)") from None
    finally:
        bar.close()
        state.model.eval()
    return _result(cfg, state, run_dir, device)


def _update(cfg: TrainConfig, state: _State, step: int, device: torch.device) -> tuple[float, float]:
    """Update ``step`` (1-based) on its own fresh batch; returns ``(loss, lr)``.

    Running out of memory and a non-finite loss are one-line errors.
    """
    lr = lr_at(cfg, step)
    batch = training_batch(cfg, step).to(device)
    try:
        loss = train_step(state.model, state.optimizer, batch, lr=lr, grad_clip=cfg.grad_clip)
    except (MemoryError, RuntimeError) as error:
        if not is_out_of_memory(error):
            raise
        raise HeadkitError(
            f"out of memory at step {step} (batch_size={cfg.batch_size} on {device}): use a smaller batch size"
        ) from None
    if not math.isfinite(loss):
        raise _diverged(state, f"the loss is {loss} at step {step}", lr)
    return loss, lr


def _result(cfg: TrainConfig, state: _State, run_dir: Path | None, device: torch.device) -> TrainResult:
    """What `train` returns: the trained model as analyses see it (no read-back of the checkpoint)."""
    return TrainResult(
        model=wrapped_copy(state.model, cfg.model), metrics=pd.DataFrame(state.rows), run_dir=run_dir, step=state.step, hf_model=state.model
    )


def train_or_reuse(
    cfg: "TrainConfig", run_dir: str | os.PathLike, *, progress: bool = True, ignore: tuple[str, ...] = ("device",)
) -> Any:
    """Train ``cfg`` into ``run_dir``: reuse a complete run of the same config, resume
    an interrupted one, start a new one in an empty or absent directory; a run of
    another config is refused (`existing_run`). Returns the `TrainResult`."""

    resume = existing_run(run_dir, cfg, ignore=ignore)
    return train(cfg, out_dir=run_dir, resume=resume, progress=progress)
