"""Learning dynamics of heads: the positional/symbolic classification at every checkpoint.

PosSym-2026 (SPEC R3) watches accuracy emerge hop by hop on the number task and all
hops together on the letter task, and pure heads emerge with it. `track_heads`
makes that table from a training run directory (``headkit train``): for every
saved checkpoint (or the ``steps`` asked for), in step order,

1. load the checkpoint (`headkit.training.checkpoints.load_checkpoint`);
2. classify every head with `headkit.scores.positional_symbolic.classify_heads`
   on ``n_prompts`` prompts of the run's task, built with the same ``seed`` at
   every step, so the rows differ only because the model changed;
3. evaluate the checkpoint's model on ``eval_n`` fresh prompts of the task
   (`headkit.evaluation.evaluate`, seed ``eval_seed``): exact-match accuracy at
   the answer position, overall and per hop.

Accuracy comes from evaluating rather than from the run's ``metrics.csv``: every
checkpoint is then measured on the same prompts, whatever the run's evaluation
schedule, and a checkpoint without a metrics row still gets one.

Columns (``DYNAMICS_COLUMNS`` then the hop columns): ``step, layer, head,
positional_score, symbolic_score, signal, label, purity, pure, pure_paper_0.1,
pure_paper_0.05, n_prompts, finite, swap, accuracy``, then ``accuracy_hop1 ..
accuracy_hopK`` for tasks with hops. The swap metric is the paper's layer-local
residual swap unless ``classify_options`` is ``ClassifyOptions(swap="tokens")``. One row
per (step, layer, head), sorted by step, layer, head.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from headkit.checks import check_int, options_of
from headkit.errors import HeadkitError
from headkit.evaluation import ALL_HOPS, evaluate
from headkit.scores.positional_symbolic import CLASSIFY_COLUMNS, ClassifyOptions, classify_heads
from headkit.tasks.registry import TaskSpec
from headkit.training.checkpoints import load_checkpoint
from headkit.training.layout import list_checkpoints

log = logging.getLogger(__name__)

DYNAMICS_COLUMNS = ["step", *CLASSIFY_COLUMNS, "accuracy"]


def select_checkpoints(run_dir: str | Path, steps: Sequence[int] | None) -> list[tuple[int, Path]]:
    """(step, path) of the run's checkpoints, all or those of ``steps``; sorted by step."""
    found = list_checkpoints(run_dir)
    if not found:
        raise HeadkitError(f"run directory {run_dir} has no checkpoints (expected checkpoints/step_*/)")
    if steps is None:
        return found
    available = dict(found)
    missing = [s for s in steps if s not in available]
    if missing or not steps:
        raise HeadkitError(
            f"step(s) {missing or list(steps)} have no checkpoint in {run_dir}: "
            f"available steps {', '.join(str(s) for s in available)}"
        )
    return sorted((s, available[s]) for s in set(steps))


def accuracy_columns(evaluation: pd.DataFrame) -> dict[str, float]:
    """``{"accuracy": ..., "accuracy_hop1": ..., ...}`` from an `evaluate` table of one length."""
    out = {}
    for row in evaluation.itertuples():  # pandas-stubs types its fields as any scalar (NA, Period, ...)
        name = "accuracy" if row.hop == ALL_HOPS else f"accuracy_hop{int(row.hop)}"  # pyright: ignore[reportArgumentType]
        out[name] = float(row.accuracy)  # pyright: ignore[reportArgumentType]
    return out


def track_heads(
    run_dir: str | Path,
    *,
    n_prompts: int = 64,
    seed: int = 0,
    steps: Sequence[int] | None = None,
    task: TaskSpec | None = None,
    eval_n: int = 512,
    eval_seed: int = 12345,
    classify_options: ClassifyOptions | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Head classification and accuracy at each checkpoint of a run (module docstring).

    Args:
        run_dir: a run directory with ``checkpoints/step_*/``.
        n_prompts: prompts classified per checkpoint (the same prompts at every step).
        seed: seed of those prompts.
        steps: checkpoint steps to use; None = all of them.
        task: the task to build prompts from; None = the one recorded in each checkpoint.
        eval_n, eval_seed: prompts and seed of the accuracy evaluation.
        classify_options: the options of ``classify_heads``, a `ClassifyOptions` (margin, swap, tau, ...);
            None = its defaults.
        device: where to load the models (None = TransformerLens's default).
        progress: show a progress bar over checkpoints.
    """
    check_int("n_prompts", n_prompts)
    check_int("eval_n", eval_n)
    chosen = select_checkpoints(run_dir, steps)
    options = options_of(ClassifyOptions, classify_options, {}, what="track_heads", name="classify_options")
    frames = []
    for step, path in tqdm(chosen, desc="checkpoints", disable=not progress):
        ckpt = load_checkpoint(path, device=device)
        spec = task if task is not None else ckpt.task
        if spec is None:
            raise HeadkitError(f"checkpoint {path} records no task: pass task= (or --task)")
        prompts = spec.build(n_prompts, seed=seed)
        tokens = prompts.tokens.to(ckpt.model.cfg.device)
        classes = classify_heads(ckpt.model, tokens, options)
        accuracy = accuracy_columns(evaluate(ckpt.model, spec, n_prompts=eval_n, seed=eval_seed))
        log.info("step %d: accuracy %.4f", step, accuracy["accuracy"])
        frames.append(classes.assign(step=step, **accuracy))
    table = pd.concat(frames, ignore_index=True)
    hop_columns = sorted(
        (c for c in table.columns if c.startswith("accuracy_hop")), key=lambda c: int(c[len("accuracy_hop"):])
    )
    return table[DYNAMICS_COLUMNS + hop_columns].sort_values(["step", "layer", "head"]).reset_index(drop=True)
