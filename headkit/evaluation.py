"""Accuracy of a trained model on fresh prompts of its task, at any length.

PosSym-2026 (SPEC 2.3) scores a model by exact match: the argmax of the logits at
the answer (query) position must be the answer token. `score_batch` does that for
one batch and also returns the cross-entropy loss on the batch's scored targets
(training uses it on its held-out batch). `evaluate` builds ``n_prompts`` fresh prompts per
length with the task's own builder, refuses any length beyond the model's context
before a single forward pass (TransformerLens's rotary tables stop at ``n_ctx`` and
would otherwise fail with an unclear shape error), and returns a tidy DataFrame:

========  ==============================================================
column    meaning
========  ==============================================================
task      the task name (``TaskSpec.name``)
extend    how prompts were lengthened: ``"prefix"`` (PosSym-2026's
          protocol: tokens added in front of an unchanged prompt) or
          ``"window"`` (ours: the chain redrawn over an enlarged window)
length    prompt length in tokens
added     tokens added to the trained length (``length - trained length``)
hop       number of hops of the prompts in this row (an int), or the
          string ``"all"`` for the row that pools every prompt of the length
n         number of prompts in the row
accuracy  fraction of those prompts whose argmax at ``answer_pos`` equals
          the answer
========  ==============================================================

Tasks without hops (copy, induction, tree) get only the ``"all"`` rows. Length
extrapolation follows the builder's ``length`` and ``extend`` parameters. PosSym-2026
(SPEC 2.3, Fig. 5) lengthens a prompt by adding symbols *before* the window that
holds the target, so the last 17 tokens stay a training-distribution prompt, and
plots accuracy against the tokens added (+46, +96, +296, +996, +4,996): that is
``extend="prefix"``, the default; ``added=`` takes those numbers directly.
``extend="window"`` is headkit's harder variant that redraws the chain over an
enlarged target window.

Before any prompt is built, `evaluate` refuses a length beyond the model's
context, a repeated length, and a request whose prompts or activations cannot fit
in memory (`estimate_bytes`, checked by `headkit.memory.check_memory` against the
host's available memory).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Int
from torch import Tensor
from tqdm.auto import tqdm

from headkit.checks import check_finite, check_int, check_length, check_model
from headkit.errors import HeadkitError
from headkit.memory import batches, check_memory
from headkit.model_types import Model
from headkit.tasks.base import IGNORE, TENSORS_PER_POSITION, TaskBatch
from headkit.tasks.params import EXTENDS, require_choice
from headkit.tasks.registry import TaskSpec

if TYPE_CHECKING:
    from headkit.gptj_hf import HFLogits  # training scores its Hugging Face model through this view

logger = logging.getLogger(__name__)

COLUMNS = ("task", "extend", "length", "added", "hop", "n", "accuracy")
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


def check_batch_fits(model: Model | HFLogits, batch: TaskBatch) -> None:
    """Refuse a batch whose length or token ids the model cannot take."""
    check_length(batch.length, model.cfg.n_ctx, name=f"{batch.task} prompt length")
    if len(batch.vocab) != model.cfg.d_vocab:
        raise HeadkitError(
            f"task {batch.task!r} has a vocabulary of {len(batch.vocab)} tokens but the model's "
            f"d_vocab is {model.cfg.d_vocab}: they must be equal"
        )


def score_batch(model: Model | HFLogits, batch: TaskBatch, *, batch_size: int = 256) -> BatchScore:
    """Exact-match correctness at ``answer_pos`` and the target loss, in chunks.

    The loss is summed over chunks and divided by the number of scored targets,
    so it equals the loss of one forward pass over the whole batch.
    """
    check_batch_fits(model, batch)
    check_int("batch_size", batch_size)
    device = model.cfg.device
    was_training = model.training
    model.eval()
    loss_sum, n_targets, correct = 0.0, 0, []
    try:
        with torch.inference_mode():
            for ids in batches(range(batch.n), batch_size):
                chunk = batch.select(torch.arange(ids.start, ids.stop))
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


def _rows(task: str, score: BatchScore, *, extend: str, length: int, added: int) -> list[dict]:
    key = {"task": task, "extend": extend, "length": length, "added": added}
    rows = [
        {**key, "hop": hop, "n": int((score.hops == hop).sum()), "accuracy": acc}
        for hop, acc in score.accuracy_by_hop().items()
    ]
    rows.append({**key, "hop": ALL_HOPS, "n": int(score.correct.numel()), "accuracy": score.accuracy})
    return rows


def estimate_bytes(model: Model, *, n_prompts: int, length: int, batch_size: int) -> int:
    """Rough peak memory of evaluating ``n_prompts`` prompts of ``length`` tokens in chunks of ``batch_size``.

    The prompts (all built at once, with their twins) plus one chunk's forward pass:
    the residual-stream activations and the attention scores and pattern.
    """
    cfg = model.cfg
    chunk = min(n_prompts, batch_size)
    element = torch.finfo(cfg.dtype).bits // 8
    prompts = n_prompts * length * 8 * TENSORS_PER_POSITION
    activations = chunk * length * (8 * cfg.d_model + 2 * (cfg.d_mlp or 0) + 4 * cfg.d_vocab) * element
    attention = 3 * chunk * cfg.n_heads * length * length * element
    return prompts + activations + attention


def _check_lengths(values: Sequence[int], *, name: str, one: str, low: int) -> list[int]:
    values = list(values)
    if not values:
        raise HeadkitError(f"{name} is empty: give at least one value")
    for value in values:
        check_int(one, value, low=low)
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise HeadkitError(f"{name} repeats {', '.join(map(str, repeated))}: give each value once")
    return values


def _lengths(
    task: TaskSpec, *, lengths: Sequence[int] | None, added: Sequence[int] | None, extend: str
) -> tuple[list[int], int]:
    """``(lengths to evaluate, trained length)``: checked against what the task takes."""
    trained = task.length
    if lengths is None and added is None:
        lengths = [trained]
    elif added is not None:
        lengths = [trained + a for a in _check_lengths(added, name="added", one="added token count", low=0)]
    else:
        assert lengths is not None  # neither None (first branch) nor added given (second)
        lengths = _check_lengths(lengths, name="lengths", one="length", low=1)
    if lengths != [trained] and not task.config.accepts("length"):
        raise HeadkitError(f"task {task.name!r} has no length parameter: evaluate it at its own length only")
    if extend != "prefix" and not task.config.accepts("extend"):
        raise HeadkitError(f"task {task.name!r} has no extend parameter: leave extend='prefix'")
    return lengths, trained


def _length_override(task: TaskSpec, length: int, *, trained: int, extend: str) -> dict:
    """The builder overrides that make prompts ``length`` long, checked before any prompt is built."""
    if length == trained and task.params.get("length") is None:
        return {}
    override = {"length": length, **({"extend": extend} if task.config.accepts("extend") else {})}
    task.replace(**override)  # a length the task's protocol cannot make is refused here, naming it
    return override


def evaluate(
    model: Model,
    task: TaskSpec,
    *,
    lengths: Sequence[int] | None = None,
    added: Sequence[int] | None = None,
    extend: str = "prefix",
    n_prompts: int = 512,
    seed: int = 12345,
    batch_size: int = 256,
    progress: bool = False,
) -> pd.DataFrame:
    """Exact-match accuracy of ``model`` on ``n_prompts`` fresh prompts per length, by hop.

    ``lengths`` (total prompt lengths) or ``added`` (tokens added to the trained
    length, PosSym-2026's x-axis: 0, 46, 96, 296, 996, 4996), not both; neither
    evaluates at the task's own (trained) length only. ``extend`` is how longer
    prompts are made: ``"prefix"`` (the paper's protocol, default) or ``"window"``
    (module docstring). Every length is checked against ``model.cfg.n_ctx``,
    repeats and memory are refused, all before any prompt is built or any forward
    pass is run. The same ``seed`` gives the same prompts at a length. Returns one
    row per (length, hop) and one ``hop="all"`` row per length, with the columns
    ``task, extend, length, added, hop, n, accuracy`` (module docstring).
    """
    check_model(model)
    check_int("n_prompts", n_prompts)  # prompts per length
    check_int("batch_size", batch_size)
    require_choice("extend", extend, EXTENDS)
    if lengths is not None and added is not None:
        raise HeadkitError("give lengths or added, not both")
    lengths, trained = _lengths(task, lengths=lengths, added=added, extend=extend)
    overrides = [_length_override(task, length, trained=trained, extend=extend) for length in lengths]
    for length in lengths:
        check_length(length, model.cfg.n_ctx, name="evaluation length")
        check_memory(
            estimate_bytes(model, n_prompts=n_prompts, length=length, batch_size=batch_size),
            what=f"evaluating {n_prompts} prompts of length {length}",
            advice="ask for fewer or shorter prompts",
        )
    rows: list[dict] = []
    for override in tqdm(overrides, desc=f"evaluate {task.name}", disable=not progress):
        batch = task.build(n_prompts, seed=seed, **override)
        check_batch_fits(model, batch)
        score = score_batch(model, batch, batch_size=batch_size)
        logger.info("%s length %d (%s): accuracy %.4f", task.name, batch.length, extend, score.accuracy)
        rows.extend(_rows(task.name, score, extend=extend, length=batch.length, added=batch.length - trained))
    return pd.DataFrame(rows, columns=list(COLUMNS))


def accuracy_table(frame: pd.DataFrame) -> pd.DataFrame:
    """`evaluate`'s tidy rows, wide: one row per (task, extend, length, added), columns ``hop1``.. and ``all``.

    For printing; the tidy frame is what gets written as CSV.
    """
    required = ("task", "length", "hop", "n", "accuracy")  # extend and added are optional (older tables)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise HeadkitError(f"accuracy frame lacks columns {', '.join(missing)}: expected {', '.join(COLUMNS)}")
    label = frame["hop"].map(lambda h: ALL_HOPS if str(h) == ALL_HOPS else f"hop{int(h)}")  # pyright: ignore[reportArgumentType]
    index = [c for c in ("task", "extend", "length", "added") if c in frame.columns]
    wide = frame.assign(hop=label).pivot_table(index=index, columns="hop", values="accuracy", sort=False)
    hop_columns = sorted((c for c in wide.columns if c != ALL_HOPS), key=lambda c: int(c[3:]))
    wide = wide[hop_columns + [ALL_HOPS]]
    wide.columns.name = None
    return wide.reset_index()
