"""Discrepancy: how far a head's top attention logit stands above the runner-up.

PosSym-2026 define, for a head and inputs of length ``n``,

    Δ(n) = (largest attention logit) - (second-largest attention logit)

at the query (last) position, before the softmax. Their theory: an *index*
(positional) head, which must single out one offset among ``n`` with rotary
angles, has Δ(n) shrinking like O(1/n²), so it blurs on longer inputs; a
*retrieval* (symbolic) head, which matches content, keeps Δ bounded away from 0.
Measuring Δ(n) per head against length shows which kind a trained head is
(SPEC R4).

Logits are read at ``blocks.{l}.attn.hook_attn_scores`` (already divided by the
attention scale); only the last row is kept and masked entries (``-inf``, none
at the last row of a causal model) are excluded. Prompts come from a task
specification, built fresh at each length with the same seed.
"""

from __future__ import annotations

import logging
from typing import Protocol, Sequence, runtime_checkable

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from headkit.bridge.probe import require
from headkit.checks import Head, check_int, check_length, check_model, check_tokens
from headkit.errors import HeadkitError
from headkit.model_types import Model
from headkit.scores.capture import capture, resolve_heads
from headkit.tasks.base import TaskBatch

log = logging.getLogger(__name__)

DISCREPANCY_COLUMNS = ["layer", "head", "length", "discrepancy", "discrepancy_std", "n_prompts", "discrepancy_max"]


@runtime_checkable
class TaskLike(Protocol):
    """What `discrepancy` needs of a task: `headkit.tasks.TaskSpec` has it."""

    def build(self, n_prompts: int, *, seed: int, length: int) -> TaskBatch: ...


def last_row_logits(
    model: Model, tokens: Int[Tensor, "batch pos"], heads: Sequence[Head], *, batch_size: int
) -> Float[Tensor, "batch unit key_pos"]:
    """Pre-softmax attention logits of ``heads`` at the last position, in chunks (float32, on the CPU)."""
    logits = capture(model, tokens, heads, site="logits", query_pos=-1, batch_size=batch_size, desc="logits")
    return logits.float().cpu()


def top_gap(logits: Float[Tensor, "... key_pos"]) -> Float[Tensor, "..."]:
    """Largest minus second-largest finite entry along the last axis."""
    finite = torch.where(torch.isfinite(logits), logits, torch.full_like(logits, -torch.inf))
    top2 = finite.topk(2, dim=-1).values  # [..., 2]
    return top2[..., 0] - top2[..., 1]


def discrepancy(
    model: Model,
    task: TaskLike,
    *,
    lengths: Sequence[int],
    n_prompts: int = 64,
    seed: int = 0,
    heads: Sequence[Sequence[int]] | None = None,
    batch_size: int = 256,
) -> pd.DataFrame:
    """Δ(n) of each head at each prompt length (PosSym-2026).

    Args:
        task: a `headkit.tasks.TaskSpec` (anything with ``build(n_prompts, *, seed, length)``
            returning a `TaskBatch`); prompts are built at each length with ``seed``.
        lengths: prompt lengths, each 2..n_ctx (checked before any work).
        n_prompts: prompts per length.
        heads: (layer, head) pairs; None = every head.
        batch_size: prompts per forward pass.

    Returns:
        One row per (layer, head, length): ``layer, head, length, discrepancy``
        (mean Δ over prompts), ``discrepancy_std`` (their standard deviation,
        0 for one prompt), ``n_prompts`` and ``discrepancy_max`` (the largest Δ
        over the prompts: PosSym-2026's Δ(n) is a maximum over inputs of length n,
        Thm 3.2; the mean is headkit's typical-input view).
    """
    check_model(model)
    require(model, "discrepancy")  # a bridge must hold pre-softmax scores in hook_attn_scores
    if not callable(getattr(task, "build", None)):
        raise HeadkitError(
            f"task must be a TaskSpec (with build(n_prompts, *, seed, length)), got {type(task).__name__}"
        )
    lengths = list(lengths)
    if not lengths:
        raise HeadkitError("lengths is empty: give at least one prompt length")
    for length in lengths:
        if isinstance(length, bool) or not isinstance(length, int) or length < 2:
            raise HeadkitError(f"length {length!r} is not allowed: lengths are integers 2..{model.cfg.n_ctx}")
        check_length(length, model.cfg.n_ctx, name="prompt length")
    check_int("n_prompts", n_prompts)
    batch_size = check_int("batch_size", batch_size)
    head_list = resolve_heads(model, heads)
    rows = []
    for length in lengths:
        batch = task.build(n_prompts, seed=seed, length=length)
        tokens = check_tokens(model, batch.tokens, name=f"prompts of length {length}")
        if tokens.shape[1] != length:
            raise HeadkitError(
                f"task built prompts of length {tokens.shape[1]} when asked for {length}"
            )
        gaps = top_gap(last_row_logits(model, tokens, head_list, batch_size=batch_size))  # [batch, unit]
        mean, top = gaps.mean(0), gaps.max(0).values
        std = gaps.std(0, unbiased=True) if gaps.shape[0] > 1 else torch.zeros_like(mean)
        log.info("discrepancy at length %d: %d prompts", length, gaps.shape[0])
        for k, (layer, head) in enumerate(head_list):
            rows.append((layer, head, length, float(mean[k]), float(std[k]), int(gaps.shape[0]), float(top[k])))
    return pd.DataFrame(rows, columns=DISCREPANCY_COLUMNS)
