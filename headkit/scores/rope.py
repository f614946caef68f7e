"""Rotary frequencies of a head: the swap metric per frequency, and frequency use (PosSym-2026 Table 1).

Rotary embeddings rotate each 2-D slice of a query/key head vector by an angle
proportional to its position. GPT-J rotates adjacent pairs: within the first
``rotary_dim`` dimensions, dims ``(2f, 2f+1)`` turn by ``θ_f = base^(-2f/rotary_dim)``
radians per position (GPT-NeoX pairs ``f`` with ``f + rotary_dim/2`` instead; both
are handled). Dimensions past ``rotary_dim`` are not rotated and form one more
component, ``"nope"``. The attention logit is a sum over these components,

    logit(q, k) = Σ_c  q_c · k_c / attn_scale,

read from ``hook_rot_q`` / ``hook_rot_k`` (post-rotation queries and keys; the scale
is the model's own, ``sqrt(d_head)`` for GPT-J).

Two views:

- `rope_frequency_use` (PosSym-2026 Table 1, "which rotary frequency a head uses"):
  at the query, find the key with the head's largest logit and split that logit into
  its components; ``value`` is each component's share of it in logit units, averaged
  over prompts. The component with the largest value is the frequency the head's
  largest logit uses (`dominant_frequency`).
- `rope_frequency_scores` (PosSym-2025's per-frequency view, kept): for each
  component alone, ``pattern_c = causal softmax(logits_c)`` at the query, and the
  swap metric of `headkit.scores.positional_symbolic` applied to ``pattern_c``
  (``swap="residual"`` by default, as there). A component that contributes nothing
  (zero query or key) gives a uniform ``pattern_c`` and so zero ``signal``.

Only the query's rotated query vector and the component logits are kept per
forward pass, never a full cache.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from headkit.bridge.probe import require
from headkit.checks import Head, check_int, check_model, check_tokens, options_of
from headkit.errors import HeadkitError
from headkit.interventions.sites import hook_name
from headkit.model_types import Model, attn_scale
from headkit.scores.capture import RowReader, heads_by_layer, model_rows, query_chunks, resolve_heads
from headkit.scores.swap_engine import METRIC_COLUMNS, run_swaps
from headkit.scores.swap_plan import DEFAULT_BATCH_SIZE, SwapOptions, prepare_swaps

ROPE_COLUMNS = ["prompt", "layer", "head", "component", "frequency", *METRIC_COLUMNS]
USE_COLUMNS = ["layer", "head", "component", "theta", "value"]


def rotary_components(model: Model) -> tuple[list[str], Tensor, list[float]]:
    """Component names, a [component, d_head] 0/1 membership matrix, and θ per component.

    Components ``f0 .. f{rotary_dim/2 - 1}`` are the rotary frequency pairs (θ in
    radians per position, NaN for ``nope``), then ``nope`` if ``rotary_dim < d_head``.
    """
    cfg = model.cfg
    if cfg.positional_embedding_type == "rotary":
        require(model, "rotary")  # a bridge's rotary hooks and pre-softmax scores, probed
    if cfg.positional_embedding_type != "rotary":
        raise HeadkitError(
            f"rotary frequencies need a rotary model; this one has positional embedding "
            f"type {cfg.positional_embedding_type!r}"
        )
    rotary_dim, d_head = int(cfg.rotary_dim), cfg.d_head  # pyright: ignore[reportArgumentType]  (set: rotary)
    half = rotary_dim // 2
    names, rows, thetas = [], [], []
    for f in range(half):
        dims = (2 * f, 2 * f + 1) if cfg.rotary_adjacent_pairs else (f, f + half)
        row = torch.zeros(d_head)
        row[list(dims)] = 1.0
        names.append(f"f{f}")
        rows.append(row)
        thetas.append(float(cfg.rotary_base) ** (-2 * f / rotary_dim))
    if rotary_dim < d_head:
        row = torch.zeros(d_head)
        row[rotary_dim:] = 1.0
        names.append("nope")
        rows.append(row)
        thetas.append(math.nan)
    return names, torch.stack(rows), thetas


def component_logits(
    rot_q: Float[Tensor, "batch head_index d_head"],
    rot_k: Float[Tensor, "batch key_pos head_index d_head"],
    membership: Float[Tensor, "component d_head"],
    attn_scale: float,
) -> Float[Tensor, "batch head_index component key_pos"]:
    """``logits_c = Σ_{d in c} q_d k_d / attn_scale``: one query against all keys."""
    return torch.einsum("bhd,bkhd,cd->bhck", rot_q, rot_k, membership) / attn_scale


def logit_reader(model: Model, heads: Sequence[Head], membership: Tensor) -> RowReader:
    """Per-component logits of ``heads`` at the query over keys ``0..query``:
    ``[batch, head * component, query + 1]``.

    The ``hook_rot_q`` hook keeps the query's rotated vector; the ``hook_rot_k``
    hook (which runs next in the same layer) turns it into component logits.
    """
    by_layer = heads_by_layer(heads)
    n_comp = membership.shape[0]

    def hooks(layer: int, query_pos: int, store: dict[int, Tensor]) -> list:
        index = by_layer[layer]
        query: dict[str, Tensor] = {}

        def keep_q(rot_q: Tensor, hook: Any) -> None:
            # rot_q: [batch, pos, head_index, d_head] -> [batch, head, d_head] at the query
            query["q"] = rot_q[:, query_pos, index, :].detach()

        def logits(rot_k: Tensor, hook: Any) -> None:
            q = query.pop("q").float()  # [batch, head, d_head]
            k = rot_k[:, : query_pos + 1, index, :].detach().float()  # [batch, key, head, d_head]
            scale = attn_scale(model, layer)
            out = component_logits(q, k, membership.to(q.device), scale)  # [batch, head, comp, key]
            store[layer] = out.reshape(out.shape[0], len(index) * n_comp, -1)  # [batch, head*comp, key]

        return [
            (hook_name("rot_q", layer), keep_q),
            (hook_name("rot_k", layer), logits),
        ]

    # one query per prompt: this reader is never given query_pos=None (every query)
    return RowReader(layers=tuple(by_layer), hooks=hooks)  # pyright: ignore[reportArgumentType]


def component_reader(model: Model, heads: Sequence[Head], membership: Tensor) -> RowReader:
    """Per-component attention rows ``[batch, head * component, key_pos]`` at the query.

    ``pattern_c`` = softmax of `logit_reader`'s logits over keys ``0..query``; keys
    after the query get 0, as under the causal mask.
    """
    logit = logit_reader(model, heads, membership)

    def hooks(layer: int, query_pos: int, store: dict[int, Tensor]) -> list:
        inner: dict[int, Tensor] = {}
        (q_name, keep_q), (k_name, logits) = logit.hooks(layer, query_pos, inner)

        def pattern(rot_k: Tensor, hook: Any) -> None:
            logits(rot_k, hook)
            rows = torch.softmax(inner.pop(layer), dim=-1)  # [batch, unit, key<=query]
            full = rows.new_zeros(*rows.shape[:2], rot_k.shape[1])  # keys after the query: 0
            full[..., : query_pos + 1] = rows
            store[layer] = full

        return [(q_name, keep_q), (k_name, pattern)]

    return RowReader(layers=logit.layers, hooks=hooks)  # pyright: ignore[reportArgumentType]  (query_pos: as above)


def component_rows(model: Model, heads: Sequence[Head], query_pos: int, membership: Tensor):
    """A function tokens -> `component_reader` rows ``[batch, head * component, key_pos]``."""
    reader = component_reader(model, sorted(heads), membership)

    def rows(tokens: Tensor) -> Float[Tensor, "batch unit key_pos"]:
        return model_rows(model, reader, tokens, query_pos)[0]

    return rows


def rope_frequency_scores(
    model: Model, tokens: Int[Tensor, "batch pos"], options: SwapOptions | None = None, **fields: Any
) -> pd.DataFrame:
    """Swap-metric scores of each rotary frequency component of each head, per prompt.

    ``options`` as in `positional_symbolic_scores`: a `headkit.scores.swap_plan.SwapOptions`,
    or its fields as keywords (``fields``; not both).
    Returns one row per (prompt, layer, head, component) with columns
    ``ROPE_COLUMNS``: ``prompt, layer, head, component`` (``f0``.. fastest first,
    then ``nope``), ``frequency`` (θ in radians per position; NaN for ``nope``),
    ``positional_score, symbolic_score, signal, n_pairs, n_signal_pairs, finite,
    swap``. Average over prompts with `average_over_prompts`.
    """
    check_model(model)
    names, membership, thetas = rotary_components(model)
    run = prepare_swaps(model, tokens, options_of(SwapOptions, options, fields, what="rope_frequency_scores"))
    head_list, swap = run.heads, run.options.swap
    n_heads, n_comp = len(head_list), len(names)
    scores = run_swaps(
        model, run, component_reader(model, head_list, membership),
        unit_names=[f"{l}.{h}:{c}" for l, h in head_list for c in names],
    )  # fmt: skip
    batch = run.tokens.shape[0]
    table = pd.DataFrame(
        {
            "prompt": torch.arange(batch).repeat_interleave(n_heads * n_comp).numpy(),
            "layer": [l for l, _ in head_list for _ in names] * batch,  # unit = head * n_comp + comp
            "head": [h for _, h in head_list for _ in names] * batch,
            "component": names * (batch * n_heads),
            "frequency": thetas * (batch * n_heads),
            **{k: v.reshape(-1).numpy() for k, v in scores.items()},  # [batch, unit] row-major
            "swap": swap,
        }
    )
    return table[ROPE_COLUMNS]


def average_over_prompts(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean scores and signal over prompts of a `rope_frequency_scores` table.

    One row per (layer, head, component): ``layer, head, component, frequency,
    positional_score, symbolic_score, signal`` (NaN-aware means) and ``n_prompts``.
    """
    keys = ["layer", "head", "component"]
    grouped = scores.groupby(keys, sort=False)
    out = grouped[["frequency", "positional_score", "symbolic_score", "signal"]].mean()
    out["n_prompts"] = grouped.size()
    return out.reset_index()


def rope_frequency_use(
    model: Model,
    tokens: Int[Tensor, "batch pos"],
    *,
    query_pos: int | Int[Tensor, " batch"] = -1,
    batch_size: int = DEFAULT_BATCH_SIZE,
    heads: Sequence[Sequence[int]] | None = None,
) -> pd.DataFrame:
    """Which rotary frequencies a head's largest attention logit uses (PosSym-2026 Table 1).

    Per prompt and head: the key ``k*`` with the largest logit at the query (keys
    ``0..query``); ``value_c`` = component ``c``'s part of that logit,
    ``q_c · k*_c / attn_scale`` (the parts add up to the logit); averaged over
    prompts. `dominant_frequency` picks, per head, the component with the largest value.

    Returns:
        One row per (layer, head, component), columns ``USE_COLUMNS``: ``layer, head,
        component`` (``f0``.., then ``nope``), ``theta`` (radians per position; NaN for
        ``nope``), ``value`` (mean logit contribution). A prompt whose logits are not
        finite is left out of the mean, with a `RuntimeWarning`; a head with no finite
        prompt gets NaN.
    """
    tokens = check_tokens(model, tokens)
    head_list = resolve_heads(model, heads)
    names, membership, thetas = rotary_components(model)
    batch_size = check_int("batch_size", batch_size)
    n_heads, n_comp = len(head_list), len(names)
    reader = logit_reader(model, head_list, membership)
    parts = torch.full((tokens.shape[0], n_heads, n_comp), math.nan, dtype=torch.float64)
    for chunk, q in query_chunks(tokens, query_pos, batch_size=batch_size):
        logits, _ = model_rows(model, reader, tokens[chunk.to(tokens.device)], q)  # [n, head*comp, key]
        logits = logits.double().cpu().reshape(len(chunk), n_heads, n_comp, -1)
        best = logits.sum(2).argmax(-1)  # [n, head]: key of the largest logit
        at_best = logits.gather(-1, best[:, :, None, None].expand(-1, -1, n_comp, 1))[..., 0]
        ok = torch.isfinite(logits).all(-1).all(-1, keepdim=True)  # [n, head, 1]
        parts[chunk] = torch.where(ok, at_best, torch.full_like(at_best, math.nan))
    bad = torch.isnan(parts).any(-1)  # [batch, head]
    if bad.any():
        named = [f"{l}.{h}" for (l, h), b in zip(head_list, bad.any(0).tolist()) if b]
        warnings.warn(
            f"non-finite attention logits in {int(bad.sum())} (prompt, head) pairs, heads "
            f"{', '.join(named)}: those prompts are left out of rope_frequency_use",
            RuntimeWarning,
            stacklevel=2,
        )
    mean = parts.nanmean(0)  # [head, comp]
    return pd.DataFrame(
        {
            "layer": [l for l, _ in head_list for _ in names],
            "head": [h for _, h in head_list for _ in names],
            "component": names * n_heads,
            "theta": thetas * n_heads,
            "value": mean.reshape(-1).numpy(),
        }
    )[USE_COLUMNS]


def dominant_frequency(use: pd.DataFrame) -> pd.DataFrame:
    """Per head, the `rope_frequency_use` row with the largest value: ``layer, head, component, theta, value``."""
    valid = use.dropna(subset=["value"])
    best = valid.loc[valid.groupby(["layer", "head"])["value"].idxmax()]
    return best.sort_values(["layer", "head"]).reset_index(drop=True)[USE_COLUMNS]
