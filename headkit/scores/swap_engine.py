"""The swap metric's engine: swap plans, swapped inputs, attention rows, pair scores.

Shared by `headkit.scores.positional_symbolic` (one attention row per head) and
`headkit.scores.rope` (one row per head and rotary frequency). What is read is a
`RowReader`: per layer, temporary hooks that store the query's attention rows.
Where the swap happens is ``swap``:

- ``"residual"`` (PosSym-2026's code, ``get_attention_weights.py``): run the model
  once, keep ``blocks.{l}.hook_resid_pre``, exchange two of its rows and run block
  ``l`` alone on the result, with the original positions. All pairs of a chunk of
  prompts go through ``blocks[l]`` as one batch; the block stops right after its
  attention pattern (the MLP is never run).
- ``"tokens"`` (headkit's end-to-end variant): exchange two input tokens and rerun
  the model up to the last layer asked for.

Scores are `torch.nn.functional.cosine_similarity` cosines (each norm clamped at
1e-8, as in the paper's ``lib/metrics.py``), weighted over pairs by
``softmax(|d_i - d_j| / tau)``. A row that is not a finite attention distribution
(NaN or inf anywhere, or a row that does not sum to 1: TransformerLens replaces a
NaN pattern by zeros) makes its (prompt, unit) ``finite = False`` and its scores
NaN, and a `RuntimeWarning` names the units.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from headkit.checks import Head, check_position
from headkit.distributed import map_cells
from headkit.errors import HeadkitError

log = logging.getLogger(__name__)

SWAP_MODES = ("residual", "tokens")
# position encodings that leave no absolute position in the residual stream
RELATIVE_POSITION_TYPES = ("rotary", "alibi")
ROW_SUM_TOLERANCE = 1e-2  # an attention row summing further from 1 was not a finite softmax

HookList = list[tuple[str, Callable[..., None]]]
# (layer, query_pos, store) -> temporary hooks that put the layer's rows
# [batch, unit_of_layer, key_pos] into store[layer]
LayerHooks = Callable[[int, int, dict[int, Tensor]], HookList]


@dataclass(frozen=True)
class RowReader:
    """Which attention rows to read: the layers, and the hooks that read each one.

    Units come out layer by layer (ascending), in the order each layer's hooks store them.
    """

    layers: tuple[int, ...]  # ascending
    hooks: LayerHooks


@dataclass(frozen=True)
class SwapPlan:
    """Which key blocks get swapped, for every prompt of one query position."""

    query_pos: int  # resolved (non-negative) query position
    blocks: Int[Tensor, "n_blocks block_size"]  # key positions of each block
    pairs: Int[Tensor, "batch n_pairs 2"]  # block indices (i, j), i < j, per prompt


class _BlockDone(Exception):
    """Raised by the last hook of a lone block run: the attention pattern is all we need."""


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


def check_swap(model: HookedTransformer, swap: Any) -> str:
    """``swap`` checked against the model: ``"residual"`` needs relative positions."""
    if swap not in SWAP_MODES:
        raise HeadkitError(f"swap={swap!r} is not known: allowed {', '.join(map(repr, SWAP_MODES))}")
    kind = model.cfg.positional_embedding_type
    if swap == "residual" and kind not in RELATIVE_POSITION_TYPES:
        raise HeadkitError(
            f"swap='residual' needs a residual stream without absolute positions (rotary or "
            f"ALiBi models); this model's positional embeddings are {kind!r}, so exchanging two "
            f"residual rows would move their positions with their content: use swap='tokens'"
        )
    return swap


def heads_by_layer(heads: Sequence[Head]) -> dict[int, list[int]]:
    """The heads of every layer named in ``heads``: layers ascending, heads in the given order."""
    layers = sorted({l for l, _ in heads})
    return {l: [h for ll, h in heads if ll == l] for l in layers}


def resolve_query_positions(tokens: Tensor, query_pos: int | Tensor) -> Int[Tensor, " batch"]:
    """One resolved (non-negative) query position per prompt, from an int or a [batch] tensor."""
    batch, length = tokens.shape
    if isinstance(query_pos, Tensor):
        if query_pos.shape != (batch,) or query_pos.dtype.is_floating_point or query_pos.dtype == torch.bool:
            raise HeadkitError(
                f"query_pos tensor must hold one integer position per prompt, shape ({batch},); "
                f"got shape {tuple(query_pos.shape)} and dtype {query_pos.dtype}"
            )
        values = query_pos.detach().cpu().long()
        resolved = {int(v): check_position(length, int(v), name="query_pos") for v in values.unique()}
        return torch.tensor([resolved[int(v)] for v in values], dtype=torch.long)
    if isinstance(query_pos, bool) or not isinstance(query_pos, int):
        raise HeadkitError(f"query_pos={query_pos!r} must be an integer or a [batch] tensor of integers")
    return torch.full((batch,), check_position(length, query_pos, name="query_pos"), dtype=torch.long)


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
    q, block_pos = resolve_blocks(tokens.shape[1], query_pos=query_pos, block_size=block_size, blocks=blocks)
    pairs = plan_swaps(tokens.shape[0], block_pos.shape[0], max_pairs=max_pairs, seed=seed)
    return SwapPlan(query_pos=q, blocks=block_pos, pairs=pairs)


def plan_groups(
    tokens: Tensor,
    *,
    query_pos: int | Tensor,
    block_size: int = 1,
    blocks: Sequence[Sequence[int]] | None = None,
    max_pairs: int | None = None,
    seed: int = 0,
) -> tuple[Int[Tensor, " batch"], list[tuple[Int[Tensor, " n"], SwapPlan]]]:
    """Per-prompt query positions, and (prompt indices, plan) for each distinct one.

    Every plan is made (and checked) before any forward pass.
    """
    queries = resolve_query_positions(tokens, query_pos)
    groups = []
    for q in queries.unique().tolist():
        idx = (queries == q).nonzero().squeeze(1)  # prompts with this query position
        plan = make_plan(
            tokens[idx], query_pos=q, block_size=block_size, blocks=blocks, max_pairs=max_pairs, seed=seed
        )
        groups.append((idx, plan))
    return queries, groups


# ---------------------------------------------------------------------------
# swapped inputs and rows


def swap_sources(plan: SwapPlan, batch: int, pos: int) -> Int[Tensor, "batch n_pairs pos"]:
    """For every planned swap, the position each slot reads from (identity but for the pair)."""
    n_pairs = plan.pairs.shape[1]
    pos_i = plan.blocks[plan.pairs[..., 0]]  # [batch, n_pairs, block_size]
    pos_j = plan.blocks[plan.pairs[..., 1]]  # [batch, n_pairs, block_size]
    source = torch.arange(pos).expand(batch, n_pairs, pos).clone()  # slot -> position read
    source.scatter_(-1, pos_i, pos_j)
    source.scatter_(-1, pos_j, pos_i)
    return source


def swapped_tokens(tokens: Int[Tensor, "batch pos"], plan: SwapPlan) -> Int[Tensor, "batch n_pairs pos"]:
    """Every prompt with the contents of each planned block pair exchanged."""
    batch, pos = tokens.shape
    source = swap_sources(plan, batch, pos)
    return torch.gather(tokens.cpu()[:, None, :].expand(batch, source.shape[1], pos), -1, source)


def swapped_rows(
    x: Float[Tensor, "batch pos d_model"], source: Int[Tensor, "batch n_pairs pos"]
) -> Float[Tensor, "batch n_pairs pos d_model"]:
    """Rows of ``x`` (e.g. a residual stream) rearranged by ``source`` (`swap_sources`)."""
    prompt = torch.arange(x.shape[0], device=x.device)[:, None, None]  # [batch, 1, 1]
    return x[prompt, source.to(x.device)]


def block_means(
    rows: Float[Tensor, "... key_pos"], blocks: Int[Tensor, "n_blocks block_size"]
) -> Float[Tensor, "... n_blocks"]:
    """Mean attention over each block's key positions."""
    return rows[..., blocks.to(rows.device)].mean(-1)  # [..., n_blocks, block_size] -> mean


def rows_ok(rows: Float[Tensor, "... key_pos"]) -> Bool[Tensor, "..."]:
    """True where a row is a finite attention distribution (finite, sums to 1)."""
    rows = rows.float()
    return torch.isfinite(rows).all(-1) & ((rows.sum(-1) - 1).abs() <= ROW_SUM_TOLERANCE)


def reduce_rows(
    rows: Float[Tensor, "n unit key_pos"], blocks: Int[Tensor, "n_blocks block_size"]
) -> tuple[Float[Tensor, "n unit n_blocks"], Bool[Tensor, "n unit"]]:
    """Block means of rows and whether each row was finite, on the CPU."""
    rows = rows.float()
    return block_means(rows, blocks).cpu(), rows_ok(rows).cpu()


def model_rows(
    model: HookedTransformer,
    reader: RowReader,
    tokens: Int[Tensor, "batch pos"],
    query_pos: int,
    *,
    keep_resid: bool = False,
) -> tuple[Float[Tensor, "batch unit key_pos"], dict[int, Tensor]]:
    """The reader's rows on ``tokens`` (forward stopped after the last layer read).

    With ``keep_resid``, also each read layer's input ``blocks.{l}.hook_resid_pre``.
    """
    store: dict[int, Tensor] = {}
    resid: dict[int, Tensor] = {}

    def keep(x: Tensor, hook: Any, *, layer: int) -> None:
        resid[layer] = x.detach()  # [batch, pos, d_model]

    hooks = [h for l in reader.layers for h in reader.hooks(l, query_pos, store)]
    if keep_resid:
        hooks += [(f"blocks.{l}.hook_resid_pre", partial(keep, layer=l)) for l in reader.layers]
    with torch.no_grad():
        model.run_with_hooks(
            tokens.to(model.cfg.device), fwd_hooks=hooks, return_type=None, stop_at_layer=max(reader.layers) + 1
        )
    return torch.cat([store[l] for l in reader.layers], dim=1), resid  # [batch, unit, key_pos]


def block_rows(
    model: HookedTransformer,
    reader: RowReader,
    layer: int,
    resid: Float[Tensor, "n pos d_model"],
    query_pos: int,
) -> Float[Tensor, "n unit_of_layer key_pos"]:
    """The reader's rows of one layer when ``blocks[layer]`` alone runs on ``resid``.

    Positions are the original ``0..pos-1``; the block stops after its attention pattern.
    """
    store: dict[int, Tensor] = {}

    def done(pattern: Tensor, hook: Any) -> None:
        raise _BlockDone

    hooks = reader.hooks(layer, query_pos, store) + [(f"blocks.{layer}.attn.hook_pattern", done)]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        try:
            model.blocks[layer](resid)
        except _BlockDone:
            pass
    return store[layer]


# ---------------------------------------------------------------------------
# the metric


def pair_scores(
    d: Float[Tensor, "batch unit n_blocks"],
    d_swapped: Float[Tensor, "batch n_pairs unit n_blocks"],
    pairs: Int[Tensor, "batch n_pairs 2"],
    informative: Bool[Tensor, "batch n_pairs unit"],
    *,
    tau: float,
) -> dict[str, Tensor]:
    """Steps 3-4 of the metric: per (prompt, unit) scores from block means.

    ``informative`` marks the pairs that count (all of them in the paper's metric).
    Returns [batch, unit] tensors ``positional_score``, ``symbolic_score``,
    ``signal``, ``n_pairs``, ``n_signal_pairs``; scores and signal are NaN where no
    pair counts.
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
    s_pos = F.cosine_similarity(v_new, v, dim=-1)  # [batch, n_pairs, unit]; norms clamped at 1e-8
    s_sym = F.cosine_similarity(v_new, v_mirror, dim=-1)
    gap = (d_i - d_j).abs()
    mask = informative.to(gap.device)
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


def collect_rows(
    row_fn: Callable[[Tensor], Tensor],
    inputs: Tensor,
    blocks: Int[Tensor, "n_blocks block_size"],
    *,
    batch_size: int,
    split: bool = False,
) -> tuple[Float[Tensor, "n unit n_blocks"], Bool[Tensor, "n unit"]]:
    """``reduce_rows`` of ``row_fn`` over ``inputs`` in chunks of ``batch_size``.

    ``split``: the chunks are split across the ranks of a torch.distributed process
    group (`headkit.distributed.map_cells`; a plain loop without one). Never split
    inside another split loop: a cell runs on one rank only.
    """
    starts = list(range(0, inputs.shape[0], batch_size))

    def run_chunk(start: int) -> tuple[Tensor, Tensor]:
        return reduce_rows(row_fn(inputs[start : start + batch_size]), blocks)

    done = map_cells(run_chunk, starts, desc="swap metric") if split else [run_chunk(s) for s in starts]
    means, oks = zip(*done)
    return torch.cat(means), torch.cat(oks)


Swaps = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]  # d, ok, d_swapped, ok_swapped, changed


def token_swaps(
    model: HookedTransformer, reader: RowReader, tokens: Tensor, plan: SwapPlan, *, batch_size: int
) -> Swaps:
    """Rows on the prompts and on every prompt with two tokens exchanged (end to end)."""
    batch, pos = tokens.shape
    q = plan.query_pos

    def rows(t: Tensor) -> Tensor:
        return model_rows(model, reader, t, q)[0]

    d, ok = collect_rows(rows, tokens, plan.blocks, batch_size=batch_size)  # [batch, unit, n_blocks]
    swapped = swapped_tokens(tokens, plan)  # [batch, n_pairs, pos]
    n_pairs = swapped.shape[1]
    flat = swapped.reshape(batch * n_pairs, pos).to(tokens.device)  # [batch * n_pairs, pos]
    log.info("token swaps: %d prompts x %d pairs = %d forwards", batch, n_pairs, len(flat))
    d_sw, ok_sw = collect_rows(rows, flat, plan.blocks, batch_size=batch_size, split=True)
    n_units = d.shape[1]
    changed = (swapped != tokens.cpu()[:, None, :]).any(-1)  # [batch, n_pairs]
    return (
        d,
        ok,
        d_sw.reshape(batch, n_pairs, n_units, -1),  # [batch, n_pairs, unit, n_blocks]
        ok_sw.reshape(batch, n_pairs, n_units),
        changed[:, :, None].expand(batch, n_pairs, n_units),
    )


def residual_swaps(
    model: HookedTransformer, reader: RowReader, tokens: Tensor, plan: SwapPlan, *, batch_size: int
) -> Swaps:
    """Rows on the prompts and, layer by layer, with two residual rows exchanged.

    Prompts go in chunks of ``max(1, batch_size // n_pairs)``: one forward keeps each
    read layer's ``hook_resid_pre``; then every pair of the chunk runs through
    ``blocks[l]`` as one batch (split if longer than ``batch_size``).
    """
    batch, pos = tokens.shape
    q, blocks = plan.query_pos, plan.blocks
    source = swap_sources(plan, batch, pos)  # [batch, n_pairs, pos]
    n_pairs = source.shape[1]
    per_chunk = max(1, batch_size // n_pairs)
    log.info("residual swaps: %d prompts x %d pairs per layer, %d prompts per chunk", batch, n_pairs, per_chunk)
    def run_chunk(start: int) -> Swaps:
        chunk = tokens[start : start + per_chunk]
        c = chunk.shape[0]
        rows, resids = model_rows(model, reader, chunk, q, keep_resid=True)
        d, ok = reduce_rows(rows, blocks)  # [c, unit, n_blocks], [c, unit]
        layer_means, layer_ok, layer_changed = [], [], []
        for l in reader.layers:
            x = resids[l]  # [c, pos, d_model]
            swapped = swapped_rows(x, source[start : start + c])  # [c, n_pairs, pos, d_model]
            changed = (swapped != x[:, None]).flatten(2).any(-1).cpu()  # [c, n_pairs]
            flat = swapped.reshape(c * n_pairs, pos, -1)  # [c * n_pairs, pos, d_model]
            m, o = collect_rows(
                lambda r, l=l: block_rows(model, reader, l, r, q), flat, blocks, batch_size=batch_size
            )  # [c * n_pairs, unit_of_layer, n_blocks]
            units = m.shape[1]
            layer_means.append(m.reshape(c, n_pairs, units, -1))
            layer_ok.append(o.reshape(c, n_pairs, units))
            layer_changed.append(changed[:, :, None].expand(c, n_pairs, units))
        return d, ok, torch.cat(layer_means, 2), torch.cat(layer_ok, 2), torch.cat(layer_changed, 2)

    # chunks split across the ranks of a torch.distributed group, if any (headkit.distributed)
    out = map_cells(run_chunk, list(range(0, batch, per_chunk)), desc="residual swaps")
    return tuple(torch.cat(parts) for parts in zip(*out))  # type: ignore[return-value]


SWAPPERS: dict[str, Callable[..., Swaps]] = {"residual": residual_swaps, "tokens": token_swaps}


def swap_metric(
    model: HookedTransformer,
    reader: RowReader,
    tokens: Int[Tensor, "batch pos"],
    plan: SwapPlan,
    *,
    swap: str,
    tau: float,
    batch_size: int,
    skip_identical: bool,
) -> dict[str, Tensor]:
    """The swap metric of every unit ``reader`` reads, for prompts of one query position.

    Returns [batch, unit] tensors: `pair_scores`'s, plus ``finite``. A pair whose
    swap leaves the swapped input unchanged (identical tokens, or identical residual
    rows) counts unless ``skip_identical``.
    """
    d, ok, d_sw, ok_sw, changed = SWAPPERS[swap](model, reader, tokens, plan, batch_size=batch_size)
    informative = changed if skip_identical else torch.ones_like(changed)
    scores = pair_scores(d, d_sw, plan.pairs, informative, tau=tau)
    finite = ok & ok_sw.all(1)  # [batch, unit]
    for key in ("positional_score", "symbolic_score", "signal"):
        scores[key] = torch.where(finite, scores[key], torch.full_like(scores[key], math.nan))
    scores["finite"] = finite
    return scores


def grouped_swap_metric(
    model: HookedTransformer,
    reader: RowReader,
    tokens: Int[Tensor, "batch pos"],
    groups: list[tuple[Tensor, SwapPlan]],
    *,
    n_units: int,
    unit_names: Sequence[str],
    progress: bool = False,
    **options: Any,
) -> dict[str, Tensor]:
    """`swap_metric` for each query-position group, put back in prompt order.

    ``unit_names`` name the units in the warning about non-finite attention.
    """
    batch = tokens.shape[0]
    out: dict[str, Tensor] = {}
    for idx, plan in tqdm(groups, desc="query positions", disable=not progress or len(groups) == 1):
        scores = swap_metric(model, reader, tokens[idx.to(tokens.device)], plan, **options)
        for key, value in scores.items():
            if key not in out:
                out[key] = torch.zeros((batch, n_units), dtype=value.dtype)
            out[key][idx] = value
    bad = ~out["finite"]
    if bad.any():
        units = [unit_names[u] for u in bad.any(0).nonzero().squeeze(1).tolist()]
        warnings.warn(
            f"non-finite attention (NaN/inf scores or weights) in {int(bad.sum())} of {bad.numel()} "
            f"(prompt, unit) scores, units {', '.join(units[:10])}{' ...' if len(units) > 10 else ''}: "
            f"their scores are NaN and finite=False; check the model's weights for NaN/inf",
            RuntimeWarning,
            stacklevel=3,
        )
    return out
