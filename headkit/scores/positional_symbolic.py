"""Positional versus symbolic attention heads: the swap metric (PosSym-2025).

A head that attends *positionally* keeps looking at the same slot whatever token
sits there; a head that attends *symbolically* follows a token's content wherever
it moves. The swap metric tells them apart on one prompt:

1. Take the head's post-softmax attention row at the query position and average
   it over each key block: ``d`` (default blocks: every single key before the query).
2. For a pair of blocks ``i, j`` swap their tokens, rerun, and read the same head's
   row at the same slots: ``d'``.
3. With ``v = (d_i, d_j)`` and ``v' = (d'_i, d'_j)``:
   ``s_pos = cos(v', v)`` (attention stayed at the slot) and
   ``s_sym = cos(v', (d_j, d_i))`` (attention moved with the content).
4. Average over pairs with weights ``softmax_pairs(|d_i - d_j| / tau)``: pairs the
   head hardly tells apart carry no information about it.

Choices of ours (SPEC 3.1 leaves them open): ``tau = 0.05``; a pair whose two
blocks hold identical tokens is skipped (swapping it changes nothing, so it would
score any head as positional); ``n_pairs`` counts the pairs actually used.

**Signal.** If the two blocks get similar attention, ``v`` and its mirror image
``(d_j, d_i)`` are nearly parallel, and both cosines are close to 1 whatever the
head does: a near-uniform head looks "both" (PosSym-2025's exclusion theorem says
a head that is both must be uniform). ``signal`` is the weighted mean of
``|d_i - d_j|`` under the same pair weights: the gap in attention the scores rest
on. ``n_signal_pairs`` counts the pairs with ``|d_i - d_j| >= tau``. `classify_heads`
labels a head ``inactive`` on a prompt whose signal is below ``min_signal``.

**How it runs.** Swapped prompts go through the model in batches of ``batch_size``;
a hook on ``blocks.{l}.attn.hook_pattern`` keeps only the query row of the heads
asked for, and the forward pass stops after the last layer asked for, so no
activation cache is built. `swap_metric` is the engine, shared with the
per-RoPE-frequency view (`headkit.scores.rope`): it takes any function that maps
a batch of prompts to attention rows.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Sequence

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from headkit.checks import Head, check_heads, check_position, check_tokens
from headkit.distributed import map_cells
from headkit.errors import HeadkitError

log = logging.getLogger(__name__)

SCORE_COLUMNS = [
    "prompt",
    "layer",
    "head",
    "positional_score",
    "symbolic_score",
    "signal",
    "n_pairs",
    "n_signal_pairs",
]
CLASSIFY_COLUMNS = [
    "layer",
    "head",
    "positional_score",
    "symbolic_score",
    "signal",
    "label",
    "purity",
    "pure",
    "n_prompts",
]
LABELS = ("inactive", "mixed", "positional", "symbolic")

DEFAULT_TAU = 0.05
DEFAULT_BATCH_SIZE = 512
DEFAULT_MARGIN = 0.2
DEFAULT_MIN_SIGNAL = 0.1
DEFAULT_PURITY = 0.8

# tokens [batch, pos] -> attention rows [batch, unit, key_pos] at the query position
RowFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class SwapPlan:
    """Which key blocks get swapped, for every prompt."""

    query_pos: int  # resolved (non-negative) query position
    blocks: Int[Tensor, "n_blocks block_size"]  # key positions of each block
    pairs: Int[Tensor, "batch n_pairs 2"]  # block indices (i, j), i < j, per prompt


# ---------------------------------------------------------------------------
# input checks


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HeadkitError(f"{name}={value!r} must be a positive integer (1 or more)")
    return value


def check_positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise HeadkitError(f"{name}={value!r} must be a positive number")
    return float(value)


def resolve_heads(model: HookedTransformer, heads: Sequence[Sequence[int]] | None) -> list[Head]:
    """All heads of the model, or the given (layer, head) pairs checked and sorted."""
    if heads is None:
        return [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    checked = check_heads(model, heads)
    if not checked:
        raise HeadkitError("heads is empty: give at least one (layer, head) pair, or None for all")
    return sorted(set(checked))


def resolve_blocks(
    length: int,
    *,
    query_pos: int,
    block_size: int = 1,
    blocks: Sequence[Sequence[int]] | None = None,
) -> tuple[int, Int[Tensor, "n_blocks block_size"]]:
    """The resolved query position and the key blocks, checked.

    Default blocks tile the keys before the query, ``0..q-1``, in runs of
    ``block_size``, which must divide ``q``. Explicit ``blocks`` are lists of key
    positions before the query, disjoint and of equal size.
    """
    q = check_position(length, query_pos, name="query_pos")
    if q < 2:
        raise HeadkitError(
            f"query_pos {query_pos} leaves {q} key(s) before it in prompts of length {length}: "
            f"need at least 2 to swap; allowed query positions are 2..{length - 1} "
            f"(or {-length + 2}..-1)"
        )
    if blocks is None:
        size = check_positive_int("block_size", block_size)
        if q % size:
            allowed = [s for s in range(1, q // 2 + 1) if q % s == 0]
            raise HeadkitError(
                f"block_size={size} does not divide the {q} keys before query position {q}: "
                f"allowed block sizes {', '.join(map(str, allowed))}"
            )
        if q // size < 2:
            raise HeadkitError(
                f"block_size={size} makes only {q // size} block of the {q} keys before the "
                f"query: need at least 2 blocks (block_size at most {q // 2})"
            )
        return q, torch.arange(q).reshape(q // size, size)  # [n_blocks, block_size]
    if block_size != 1:
        raise HeadkitError("give either blocks or block_size, not both (blocks fix their own size)")
    lists = [list(b) for b in blocks]
    if len(lists) < 2:
        raise HeadkitError(f"blocks: got {len(lists)} block(s), need at least 2 to swap")
    size = len(lists[0])
    seen: dict[int, int] = {}
    for i, block in enumerate(lists):
        if len(block) != size or size == 0:
            raise HeadkitError(
                f"blocks: block {i} has {len(block)} positions but block 0 has {size}: "
                "swapped blocks must be non-empty and of equal size"
            )
        for p in block:
            if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < q:
                raise HeadkitError(
                    f"blocks: block {i} has position {p!r}: allowed key positions are "
                    f"0..{q - 1} (before query position {q})"
                )
            if p in seen:
                raise HeadkitError(f"blocks: position {p} is in block {seen[p]} and block {i}")
            seen[p] = i
    return q, torch.tensor(lists, dtype=torch.long)  # [n_blocks, block_size]


def plan_swaps(
    n_prompts: int,
    n_blocks: int,
    *,
    max_pairs: int | None,
    seed: int,
) -> Int[Tensor, "batch n_pairs 2"]:
    """Block pairs (i < j) per prompt: all of them, or ``max_pairs`` sampled per prompt."""
    all_pairs = torch.combinations(torch.arange(n_blocks), r=2)  # [n_all, 2]
    n_all = all_pairs.shape[0]
    if max_pairs is None or max_pairs >= n_all:
        return all_pairs.expand(n_prompts, n_all, 2)
    gen = torch.Generator().manual_seed(seed)
    picks = torch.stack([torch.randperm(n_all, generator=gen)[:max_pairs] for _ in range(n_prompts)])
    return all_pairs[picks]  # [batch, max_pairs, 2]


def make_plan(
    tokens: Tensor,
    *,
    query_pos: int = -1,
    block_size: int = 1,
    blocks: Sequence[Sequence[int]] | None = None,
    max_pairs: int | None = None,
    seed: int = 0,
) -> SwapPlan:
    """Check the swap options against prompts ``tokens`` [batch, pos] and plan the swaps."""
    if max_pairs is not None:
        check_positive_int("max_pairs", max_pairs)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise HeadkitError(f"seed={seed!r} must be an integer")
    q, block_pos = resolve_blocks(
        tokens.shape[1], query_pos=query_pos, block_size=block_size, blocks=blocks
    )
    pairs = plan_swaps(tokens.shape[0], block_pos.shape[0], max_pairs=max_pairs, seed=seed)
    return SwapPlan(query_pos=q, blocks=block_pos, pairs=pairs)


# ---------------------------------------------------------------------------
# the metric


def swapped_tokens(
    tokens: Int[Tensor, "batch pos"], plan: SwapPlan
) -> Int[Tensor, "batch n_pairs pos"]:
    """Every prompt with the contents of each planned block pair exchanged."""
    batch, pos = tokens.shape
    n_pairs = plan.pairs.shape[1]
    pos_i = plan.blocks[plan.pairs[..., 0]]  # [batch, n_pairs, block_size]
    pos_j = plan.blocks[plan.pairs[..., 1]]  # [batch, n_pairs, block_size]
    source = torch.arange(pos).expand(batch, n_pairs, pos).clone()  # slot -> position read
    source.scatter_(-1, pos_i, pos_j)
    source.scatter_(-1, pos_j, pos_i)
    return torch.gather(tokens.cpu()[:, None, :].expand(batch, n_pairs, pos), -1, source)


def block_means(
    rows: Float[Tensor, "... key_pos"], blocks: Int[Tensor, "n_blocks block_size"]
) -> Float[Tensor, "... n_blocks"]:
    """Mean attention over each block's key positions."""
    return rows[..., blocks.to(rows.device)].mean(-1)  # [..., n_blocks, block_size] -> mean


def collect_block_means(
    row_fn: RowFn,
    tokens: Int[Tensor, "n pos"],
    blocks: Int[Tensor, "n_blocks block_size"],
    *,
    batch_size: int,
) -> Float[Tensor, "n unit n_blocks"]:
    """Block means of ``row_fn``'s rows, in chunks of ``batch_size`` prompts.

    Rows are reduced to block means chunk by chunk, so memory holds one chunk of
    rows, not one row per swapped prompt. Under a torch.distributed process group
    the chunks are split across the ranks (`headkit.distributed.map_cells`).
    """
    starts = range(0, tokens.shape[0], batch_size)

    def run_chunk(start: int) -> Tensor:
        rows = row_fn(tokens[start : start + batch_size]).float()  # [chunk, unit, key_pos]
        return block_means(rows, blocks).cpu()  # [chunk, unit, n_blocks]

    # chunks split across the ranks of a torch.distributed group, if any (headkit.distributed)
    chunks = map_cells(run_chunk, starts, desc="swap forwards", progress=None, leave=False)
    return torch.cat(chunks)


def _cos(a: Float[Tensor, "... 2"], b: Float[Tensor, "... 2"]) -> Float[Tensor, "..."]:
    norm = a.norm(dim=-1) * b.norm(dim=-1)
    return (a * b).sum(-1) / norm.clamp_min(1e-30)


def pair_scores(
    d: Float[Tensor, "batch unit n_blocks"],
    d_swapped: Float[Tensor, "batch n_pairs unit n_blocks"],
    pairs: Int[Tensor, "batch n_pairs 2"],
    informative: Tensor,
    *,
    tau: float,
) -> dict[str, Tensor]:
    """Steps 3-4 of the metric: per (prompt, unit) scores from block means.

    ``informative`` [batch, n_pairs] marks the pairs whose swap changed the prompt.
    Returns [batch, unit] tensors ``positional_score``, ``symbolic_score``,
    ``signal``, ``n_pairs``, ``n_signal_pairs``; scores and signal are NaN where no
    pair is informative.
    """
    d = d.double()
    d_swapped = d_swapped.double()
    n_units = d.shape[1]
    idx_i = pairs[..., 0][:, :, None].expand(-1, -1, n_units)  # [batch, n_pairs, unit]
    idx_j = pairs[..., 1][:, :, None].expand(-1, -1, n_units)
    d_pairs = d[:, None, :, :].expand(-1, pairs.shape[1], -1, -1)  # [batch, n_pairs, unit, n_blocks]
    d_i = torch.gather(d_pairs, -1, idx_i[..., None])[..., 0]  # [batch, n_pairs, unit]
    d_j = torch.gather(d_pairs, -1, idx_j[..., None])[..., 0]
    s_i = torch.gather(d_swapped, -1, idx_i[..., None])[..., 0]  # d'_i at the same slots
    s_j = torch.gather(d_swapped, -1, idx_j[..., None])[..., 0]
    v = torch.stack([d_i, d_j], -1)  # [batch, n_pairs, unit, 2]
    v_mirror = torch.stack([d_j, d_i], -1)
    v_new = torch.stack([s_i, s_j], -1)
    s_pos = _cos(v_new, v)  # [batch, n_pairs, unit]
    s_sym = _cos(v_new, v_mirror)
    gap = (d_i - d_j).abs()
    mask = informative[:, :, None].expand_as(gap).to(gap.device)
    logits = torch.where(mask, gap / tau, torch.full_like(gap, -math.inf))
    weights = torch.softmax(logits, dim=1).nan_to_num(0.0)  # over pairs; all-masked -> 0
    n_pairs = mask.sum(1)  # [batch, unit]
    empty = n_pairs == 0
    nan = torch.tensor(math.nan, dtype=gap.dtype)

    def weighted(x: Tensor) -> Tensor:
        return torch.where(empty, nan, (weights * x).sum(1))

    return {
        "positional_score": weighted(s_pos),
        "symbolic_score": weighted(s_sym),
        "signal": weighted(gap),
        "n_pairs": n_pairs,
        "n_signal_pairs": ((gap >= tau) & mask).sum(1),
    }


def swap_metric(
    row_fn: RowFn,
    tokens: Int[Tensor, "batch pos"],
    plan: SwapPlan,
    *,
    tau: float = DEFAULT_TAU,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, Tensor]:
    """The swap metric of every attention row ``row_fn`` reads; see `pair_scores`."""
    batch, pos = tokens.shape
    n_pairs = plan.pairs.shape[1]
    # 1. block means of the rows on the original prompts
    d = collect_block_means(row_fn, tokens, plan.blocks, batch_size=batch_size)
    # 2. the same rows on every swapped prompt, batched
    swapped = swapped_tokens(tokens, plan)  # [batch, n_pairs, pos]
    flat = swapped.reshape(batch * n_pairs, pos)  # [batch * n_pairs, pos]
    log.info("swap metric: %d prompts x %d pairs = %d swapped forwards", batch, n_pairs, len(flat))
    d_swapped = collect_block_means(row_fn, flat.to(tokens.device), plan.blocks, batch_size=batch_size)
    d_swapped = d_swapped.reshape(batch, n_pairs, *d_swapped.shape[1:])  # [batch, n_pairs, unit, n_blocks]
    informative = (swapped != tokens.cpu()[:, None, :]).any(-1)  # [batch, n_pairs]
    # 3-4. cosines, weighted over pairs
    return pair_scores(d, d_swapped, plan.pairs, informative, tau=tau)


def heads_by_layer(heads: Sequence[Head]) -> dict[int, list[int]]:
    """The heads of every layer named in ``heads``: layers ascending, heads in the given order."""
    layers = sorted({l for l, _ in heads})
    return {l: [h for ll, h in heads if ll == l] for l in layers}


def run_head_rows(
    model: HookedTransformer,
    tokens: Tensor,
    hooks: list[tuple[str, Callable[..., None]]],
    store: dict[int, Tensor],
    *,
    heads: Sequence[Head],
    by_layer: dict[int, list[int]],
) -> Tensor:
    """Run ``hooks`` (they fill ``store``) up to the last layer needed; rows in the order of ``heads``.

    ``store[l][:, k]`` belongs to head ``by_layer[l][k]``; the result is
    ``[batch, unit, ...]`` with one unit per entry of ``heads``.
    """
    with torch.no_grad():
        model.run_with_hooks(
            tokens.to(model.cfg.device), fwd_hooks=hooks, return_type=None,
            stop_at_layer=max(by_layer) + 1,
        )
    per_head = {(l, h): store[l][:, k] for l, hs in by_layer.items() for k, h in enumerate(hs)}
    return torch.stack([per_head[lh] for lh in heads], dim=1)  # [batch, unit, ...]


def pattern_rows(model: HookedTransformer, heads: Sequence[Head], query_pos: int) -> RowFn:
    """A row function: post-softmax attention rows of ``heads`` at ``query_pos``.

    Hooks ``blocks.{l}.attn.hook_pattern`` (temporarily), keeps
    ``pattern[:, heads, query_pos, :]`` and stops after the last layer needed.
    Units come out in the order of ``heads``.
    """
    by_layer = heads_by_layer(heads)

    def rows(tokens: Tensor) -> Float[Tensor, "batch unit key_pos"]:
        store: dict[int, Tensor] = {}

        def keep(pattern: Tensor, hook: Any, *, layer: int) -> None:
            # pattern: [batch, head_index, query_pos, key_pos]
            store[layer] = pattern[:, by_layer[layer], query_pos, :].detach()

        hooks = [
            (f"blocks.{l}.attn.hook_pattern", partial(keep, layer=l)) for l in by_layer
        ]
        # [batch, unit, key_pos]
        return run_head_rows(model, tokens, hooks, store, heads=heads, by_layer=by_layer)

    return rows


# ---------------------------------------------------------------------------
# public API


def positional_symbolic_scores(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    *,
    query_pos: int = -1,
    block_size: int = 1,
    blocks: Sequence[Sequence[int]] | None = None,
    max_pairs: int | None = None,
    tau: float = DEFAULT_TAU,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    heads: Sequence[Sequence[int]] | None = None,
) -> pd.DataFrame:
    """Swap-metric scores of each head on each prompt (PosSym-2025).

    Args:
        tokens: prompts [batch, pos], all of one length.
        query_pos: the query position whose attention row is scored (default last).
        block_size: size of the default key blocks, which tile ``0..query_pos-1``.
        blocks: explicit key blocks (lists of positions before the query, equal size).
        max_pairs: sample at most this many block pairs per prompt (seeded); None = all.
        tau: temperature of the pair weights ``softmax(|d_i - d_j| / tau)``.
        seed: seed of the pair sampling.
        batch_size: swapped prompts per forward pass.
        heads: (layer, head) pairs; None = every head.

    Returns:
        One row per (prompt, layer, head) with columns ``SCORE_COLUMNS``:
        ``prompt, layer, head, positional_score, symbolic_score, signal, n_pairs,
        n_signal_pairs`` (see the module docstring).
    """
    tokens = check_tokens(model, tokens)
    head_list = resolve_heads(model, heads)
    plan = make_plan(
        tokens, query_pos=query_pos, block_size=block_size, blocks=blocks,
        max_pairs=max_pairs, seed=seed,
    )
    tau = check_positive_float("tau", tau)
    batch_size = check_positive_int("batch_size", batch_size)
    scores = swap_metric(
        pattern_rows(model, head_list, plan.query_pos), tokens, plan, tau=tau, batch_size=batch_size
    )
    batch = tokens.shape[0]
    layer = torch.tensor([l for l, _ in head_list])
    head = torch.tensor([h for _, h in head_list])
    table = {
        "prompt": torch.arange(batch)[:, None].expand(batch, len(head_list)),
        "layer": layer.expand(batch, -1),
        "head": head.expand(batch, -1),
        **scores,
    }
    return pd.DataFrame({c: table[c].reshape(-1).numpy() for c in SCORE_COLUMNS})


def _check_label_options(*, margin: float, min_signal: float) -> None:
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 2:
        raise HeadkitError(f"margin={margin!r} is out of range: allowed 0 <= margin < 2")
    if isinstance(min_signal, bool) or not isinstance(min_signal, (int, float)) or not min_signal >= 0:
        raise HeadkitError(f"min_signal={min_signal!r} is out of range: allowed 0 or more")


def prompt_labels(
    scores: pd.DataFrame,
    *,
    margin: float = DEFAULT_MARGIN,
    min_signal: float = DEFAULT_MIN_SIGNAL,
) -> pd.Series:
    """Per-row label of a `positional_symbolic_scores` table.

    ``inactive`` if no pair was usable or ``signal < min_signal``; else
    ``positional`` if ``s_pos - s_sym > margin``, ``symbolic`` if
    ``s_sym - s_pos > margin``, ``mixed`` otherwise.
    """
    _check_label_options(margin=margin, min_signal=min_signal)
    diff = scores["positional_score"] - scores["symbolic_score"]
    label = pd.Series("mixed", index=scores.index, dtype=object)
    label[diff > margin] = "positional"
    label[-diff > margin] = "symbolic"
    inactive = (scores["n_pairs"] == 0) | ~(scores["signal"] >= min_signal)
    label[inactive] = "inactive"
    return label


def _dominant(labels: pd.Series) -> tuple[str, float]:
    """The most common label and its share; a tie is ``inactive`` if that is among
    the tied labels, else ``mixed``."""
    counts = labels.value_counts()
    best = counts.max()
    tied = [l for l in LABELS if counts.get(l, 0) == best]
    label = tied[0] if len(tied) == 1 else ("inactive" if "inactive" in tied else "mixed")
    return label, best / len(labels)


def classify_scores(
    scores: pd.DataFrame,
    *,
    margin: float = DEFAULT_MARGIN,
    min_signal: float = DEFAULT_MIN_SIGNAL,
    purity_threshold: float = DEFAULT_PURITY,
) -> pd.DataFrame:
    """Per-head labels from a `positional_symbolic_scores` table; see `classify_heads`."""
    _check_classify_options(margin=margin, min_signal=min_signal, purity_threshold=purity_threshold)
    scores = scores.assign(label=prompt_labels(scores, margin=margin, min_signal=min_signal))
    out = []
    for (layer, head), group in scores.groupby(["layer", "head"], sort=True):
        label, purity = _dominant(group["label"])
        out.append(
            {
                "layer": int(layer),
                "head": int(head),
                "positional_score": group["positional_score"].mean(),
                "symbolic_score": group["symbolic_score"].mean(),
                "signal": group["signal"].mean(),
                "label": label,
                "purity": purity,
                "pure": bool(purity >= purity_threshold and label in ("positional", "symbolic")),
                "n_prompts": len(group),
            }
        )
    return pd.DataFrame(out, columns=CLASSIFY_COLUMNS)


def _check_classify_options(*, margin: float, min_signal: float, purity_threshold: float) -> None:
    _check_label_options(margin=margin, min_signal=min_signal)
    if (
        isinstance(purity_threshold, bool)
        or not isinstance(purity_threshold, (int, float))
        or not 0.5 < purity_threshold <= 1
    ):
        raise HeadkitError(
            f"purity_threshold={purity_threshold!r} is out of range: allowed 0.5 < value <= 1"
        )


def classify_heads(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    *,
    margin: float = DEFAULT_MARGIN,
    min_signal: float = DEFAULT_MIN_SIGNAL,
    purity_threshold: float = DEFAULT_PURITY,
    **score_options: Any,
) -> pd.DataFrame:
    """Label each head positional / symbolic / mixed / inactive over a prompt set.

    Scores each prompt with `positional_symbolic_scores` (``score_options`` are
    passed on), labels each prompt with `prompt_labels`, and per head reports the
    mean scores and signal over prompts (NaN-aware), the dominant label (a tie
    gives ``inactive`` if that is among the tied labels, else ``mixed``), its share of prompts
    (``purity``) and ``pure`` = purity >= ``purity_threshold`` and the label is
    positional or symbolic. Defaults: ``margin`` 0.2, ``min_signal`` 0.1,
    ``purity_threshold`` 0.8 (see docs/positional_symbolic.md for the evidence).

    Returns:
        One row per (layer, head), columns ``CLASSIFY_COLUMNS``.
    """
    _check_classify_options(margin=margin, min_signal=min_signal, purity_threshold=purity_threshold)
    scores = positional_symbolic_scores(model, tokens, **score_options)
    return classify_scores(
        scores, margin=margin, min_signal=min_signal, purity_threshold=purity_threshold
    )
