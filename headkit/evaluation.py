"""Accuracy of a trained model on fresh prompts of its task, at any length.

PosSym-2026 (SPEC 2.3) scores a model by exact match: the argmax of the logits at
the answer (query) position must be the answer token. `score_batch` does that for
one batch and also returns the cross-entropy loss on the batch's scored targets
(training uses it on its held-out batch). `evaluate` builds ``n`` fresh prompts per
length with the task's own builder, refuses any length beyond the model's context
before a single forward pass (TransformerLens's rotary tables stop at ``n_ctx`` and
would otherwise fail with an unclear shape error), and returns a tidy DataFrame:

========  ==============================================================
column    meaning
========  ==============================================================
task      the task name (``TaskSpec.name``)
length    prompt length in tokens
hop       number of hops of the prompts in this row (an int), or the
          string ``"all"`` for the row that pools every prompt of the length
n         number of prompts in the row
accuracy  fraction of those prompts whose argmax at ``answer_pos`` equals
          the answer
========  ==============================================================

Tasks without hops (copy, induction, tree) get only the ``"all"`` rows. Length
extrapolation follows the builder's ``length`` parameter (SPEC 2.3: the number and
letter tasks extend the distractor window, keeping pointers in the trained range).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from headkit.checks import check_finite
from headkit.errors import HeadkitError
from headkit.models import check_fits_context
from headkit.tasks.base import IGNORE, TaskBatch, TaskSpec

logger = logging.getLogger(__name__)

COLUMNS = ("task", "length", "hop", "n", "accuracy")
ALL_HOPS = "all"  # value of the hop column in the row pooling every hop


@dataclass(frozen=True)
class BatchScore:
    """Loss and per-prompt correctness of a model on one batch."""

    loss: float  # mean cross-entropy over the batch's non-IGNORE targets
    correct: Bool[Tensor, " batch"]  # argmax at answer_pos == answer (on CPU)
    hops: Int[Tensor, " batch"] | None  # the batch's hops (on CPU), if the task has them

    @property
    def accuracy(self) -> float:
        return float(self.correct.double().mean())

    def accuracy_by_hop(self) -> dict[int, float]:
        """Hop -> accuracy of the prompts with that many hops (empty without hops)."""
        if self.hops is None:
            return {}
        return {
            int(h): float(self.correct[self.hops == h].double().mean())
            for h in torch.unique(self.hops).tolist()
        }


def check_batch_fits(model: HookedTransformer, batch: TaskBatch) -> None:
    """Refuse a batch whose length or token ids the model cannot take."""
    check_fits_context(model, batch.length, what=f"{batch.task} prompt")
    if len(batch.vocab) != model.cfg.d_vocab:
        raise HeadkitError(
            f"task {batch.task!r} has a vocabulary of {len(batch.vocab)} tokens but the model's "
            f"d_vocab is {model.cfg.d_vocab}: they must be equal"
        )


def score_batch(model: HookedTransformer, batch: TaskBatch, *, batch_size: int = 256) -> BatchScore:
    """Exact-match correctness at ``answer_pos`` and the target loss, in chunks.

    The loss is summed over chunks and divided by the number of scored targets,
    so it equals the loss of one forward pass over the whole batch.
    """
    check_batch_fits(model, batch)
    if batch_size < 1:
        raise HeadkitError(f"batch_size={batch_size} must be a positive integer")
    device = model.cfg.device
    was_training = model.training
    model.eval()
    loss_sum, n_targets, correct = 0.0, 0, []
    try:
        with torch.inference_mode():
            for start in range(0, batch.n, batch_size):
                chunk = batch.select(torch.arange(start, min(start + batch_size, batch.n)))
                tokens = chunk.tokens.to(device)
                targets = chunk.targets.to(device)
                logits = model(tokens, return_type="logits")  # [batch, pos, d_vocab]
                # all-NaN logits have argmax 0: refuse them rather than report an accuracy
                check_finite(logits, where=f"the model's logits on {batch.task} prompts of length {batch.length}")
                loss_sum += float(
                    F.cross_entropy(
                        logits.flatten(0, 1),  # [batch * pos, d_vocab]
                        targets.flatten(),  # [batch * pos]
                        ignore_index=IGNORE,
                        reduction="sum",
                    )
                )
                n_targets += int((targets != IGNORE).sum())
                rows = torch.arange(chunk.n, device=device)
                predicted = logits[rows, chunk.answer_pos.to(device)].argmax(-1)  # [batch]
                correct.append((predicted == chunk.answers.to(device)).cpu())
    finally:
        model.train(was_training)
    return BatchScore(
        loss=loss_sum / max(n_targets, 1),
        correct=torch.cat(correct),
        hops=None if batch.hops is None else batch.hops.cpu(),
    )


def _rows(task: str, score: BatchScore, length: int) -> list[dict]:
    rows = [
        {"task": task, "length": length, "hop": hop, "n": int((score.hops == hop).sum()), "accuracy": acc}
        for hop, acc in score.accuracy_by_hop().items()
    ]
    rows.append(
        {"task": task, "length": length, "hop": ALL_HOPS, "n": int(score.correct.numel()), "accuracy": score.accuracy}
    )
    return rows


def evaluate(
    model: HookedTransformer,
    task: TaskSpec,
    *,
    lengths: Sequence[int] | None = None,
    n: int = 512,
    seed: int = 12345,
    batch_size: int = 256,
    progress: bool = False,
) -> pd.DataFrame:
    """Exact-match accuracy of ``model`` on ``n`` fresh prompts per length, by hop.

    ``lengths=None`` evaluates at the task's own (trained) length only. Every
    length is checked against ``model.cfg.n_ctx`` before any prompt is built or
    any forward pass is run. The same ``seed`` gives the same prompts at a length.
    Returns one row per (length, hop) and one ``hop="all"`` row per length, with
    the columns ``task, length, hop, n, accuracy`` (module docstring).
    """
    if not isinstance(n, int) or n < 1:
        raise HeadkitError(f"n={n!r} must be a positive integer (prompts per length)")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise HeadkitError(f"batch_size={batch_size!r} must be a positive integer")
    if lengths is not None:
        lengths = list(lengths)
        if not lengths:
            raise HeadkitError("lengths is empty: give at least one prompt length")
        for length in lengths:
            if not isinstance(length, int) or length < 1:
                raise HeadkitError(f"length {length!r} must be a positive integer")
            check_fits_context(model, length, what="evaluation")
    builder = task.builder()  # an unknown task name fails here, before any work
    if lengths is not None and "length" not in inspect.signature(builder).parameters:
        raise HeadkitError(f"task {task.name!r} has no length parameter: evaluate it with lengths=None")
    overrides = [{}] if lengths is None else [{"length": length} for length in lengths]
    rows: list[dict] = []
    for override in tqdm(overrides, desc=f"evaluate {task.name}", disable=not progress):
        batch = task.build(n, seed=seed, **override)
        check_batch_fits(model, batch)
        score = score_batch(model, batch, batch_size=batch_size)
        logger.info("%s length %d: accuracy %.4f", task.name, batch.length, score.accuracy)
        rows.extend(_rows(task.name, score, batch.length))
    return pd.DataFrame(rows, columns=list(COLUMNS))


def accuracy_table(frame: pd.DataFrame) -> pd.DataFrame:
    """`evaluate`'s tidy rows, wide: one row per (task, length), columns ``hop1``.. and ``all``.

    For printing; the tidy frame is what gets written as CSV.
    """
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise HeadkitError(f"accuracy frame lacks columns {', '.join(missing)}: expected {', '.join(COLUMNS)}")
    label = frame["hop"].map(lambda h: ALL_HOPS if str(h) == ALL_HOPS else f"hop{int(h)}")
    wide = frame.assign(hop=label).pivot_table(
        index=["task", "length"], columns="hop", values="accuracy", sort=False
    )
    hop_columns = sorted((c for c in wide.columns if c != ALL_HOPS), key=lambda c: int(c[3:]))
    wide = wide[hop_columns + [ALL_HOPS]]
    wide.columns.name = None
    return wide.reset_index()
