"""The swap metric's engine: swapped inputs, their attention rows, pair scores.

Shared by `headkit.scores.positional_symbolic` (one attention row per head) and
`headkit.scores.rope` (one row per head and rotary frequency). The plans (which
pairs, which query) come from `headkit.scores.swap_plan`; what is read is a
`headkit.scores.capture.RowReader`: per layer, temporary hooks that store the
query's attention rows, run by `capture.model_rows` and `capture.block_rows`.
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
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from headkit.bridge.blocks import recorded_inputs
from headkit.distributed import map_cells
from headkit.memory import batches
from headkit.model_types import Model
from headkit.scores.capture import RowReader, block_rows, model_rows
from headkit.scores.swap_plan import (
    SwapPlan,
    SwapRun,
)

log = logging.getLogger(__name__)

ROW_SUM_TOLERANCE = 1e-2  # an attention row summing further from 1 was not a finite softmax
# the columns a swap-metric table has for each unit (after its own key columns)
METRIC_COLUMNS = ["positional_score", "symbolic_score", "signal", "n_pairs", "n_signal_pairs", "finite", "swap"]


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
    chunks = batches(inputs, batch_size)

    def run_chunk(chunk: Tensor) -> tuple[Tensor, Tensor]:
        return reduce_rows(row_fn(chunk), blocks)

    done = map_cells(run_chunk, chunks, desc="swap metric") if split else [run_chunk(c) for c in chunks]
    means, oks = zip(*done)
    return torch.cat(means), torch.cat(oks)


Swaps = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]  # d, ok, d_swapped, ok_swapped, changed


def token_swaps(
    model: Model, reader: RowReader, tokens: Tensor, plan: SwapPlan, *, batch_size: int
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
    model: Model, reader: RowReader, tokens: Tensor, plan: SwapPlan, *, batch_size: int
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
    def run_chunk(ids: range) -> Swaps:
        chunk = tokens[ids.start : ids.stop]
        c = chunk.shape[0]
        rows, resids = model_rows(model, reader, chunk, q, keep_resid=True)
        inputs = recorded_inputs(model, chunk[:1], stop_at_layer=max(reader.layers) + 1)  # a bridge's block inputs
        d, ok = reduce_rows(rows, blocks)  # [c, unit, n_blocks], [c, unit]
        layer_means, layer_ok, layer_changed = [], [], []
        for l in reader.layers:
            x = resids[l]  # [c, pos, d_model]
            swapped = swapped_rows(x, source[ids.start : ids.stop])  # [c, n_pairs, pos, d_model]
            changed = (swapped != x[:, None]).flatten(2).any(-1).cpu()  # [c, n_pairs]
            flat = swapped.reshape(c * n_pairs, pos, -1)  # [c * n_pairs, pos, d_model]
            m, o = collect_rows(
                lambda r, l=l: block_rows(model, reader, l, r, q, inputs), flat, blocks, batch_size=batch_size
            )  # [c * n_pairs, unit_of_layer, n_blocks]
            units = m.shape[1]
            layer_means.append(m.reshape(c, n_pairs, units, -1))
            layer_ok.append(o.reshape(c, n_pairs, units))
            layer_changed.append(changed[:, :, None].expand(c, n_pairs, units))
        return d, ok, torch.cat(layer_means, 2), torch.cat(layer_ok, 2), torch.cat(layer_changed, 2)

    # chunks split across the ranks of a torch.distributed group, if any (headkit.distributed)
    out = map_cells(run_chunk, batches(range(batch), per_chunk), desc="residual swaps")
    return tuple(torch.cat(parts) for parts in zip(*out))  # type: ignore[return-value]


SWAPPERS: dict[str, Callable[..., Swaps]] = {"residual": residual_swaps, "tokens": token_swaps}


def swap_metric(
    model: Model,
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
    model: Model,
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
        bad_units: list[int] = bad.any(0).nonzero().squeeze(1).tolist()
        units = [unit_names[u] for u in bad_units]
        warnings.warn(
            f"non-finite attention (NaN/inf scores or weights) in {int(bad.sum())} of {bad.numel()} "
            f"(prompt, unit) scores, units {', '.join(units[:10])}{' ...' if len(units) > 10 else ''}: "
            f"their scores are NaN and finite=False; check the model's weights for NaN/inf",
            RuntimeWarning,
            stacklevel=3,
        )
    return out


def run_swaps(
    model: Model, run: SwapRun, reader: RowReader, *, unit_names: Sequence[str]
) -> dict[str, Tensor]:
    """`grouped_swap_metric` of a prepared run (`headkit.scores.swap_plan.prepare_swaps`):
    [batch, unit] tensors, unit ``u`` named ``unit_names[u]``."""
    opts = run.options
    return grouped_swap_metric(
        model, reader, run.tokens, run.groups, n_units=len(unit_names), unit_names=unit_names,
        swap=opts.swap, tau=opts.tau, batch_size=opts.batch_size, skip_identical=opts.skip_identical,
    )  # fmt: skip
