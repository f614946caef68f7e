"""The swap metric per rotary frequency: which parts of a head are positional.

Rotary embeddings rotate each 2-D slice of a query/key head vector by an angle
proportional to its position. GPT-J rotates adjacent pairs: within the first
``rotary_dim`` dimensions, dims ``(2f, 2f+1)`` turn by ``θ_f = base^(-2f/rotary_dim)``
radians per position (GPT-NeoX pairs ``f`` with ``f + rotary_dim/2`` instead; both
are handled). Dimensions past ``rotary_dim`` are not rotated and form one more
component, ``"nope"``. The attention logit is a sum over these components,

    logit(q, k) = Σ_c  q_c · k_c / attn_scale,

read from ``hook_rot_q`` / ``hook_rot_k`` (post-rotation queries and keys; the scale
is the model's own, ``sqrt(d_head)`` for GPT-J). PosSym-2025 split a head this way:
for each component alone, ``pattern_c = causal softmax(logits_c)`` at the query,
and the swap metric of `headkit.scores.positional_symbolic` is applied to
``pattern_c``. High frequencies tend to behave positionally, low frequencies and
the unrotated part symbolically. A component that contributes nothing (zero
query or key) gives a uniform ``pattern_c`` and so zero ``signal``.

Only the query's rotated query vector and the component logits are kept per
forward pass, never a full cache.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Sequence

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from headkit.checks import Head, check_tokens
from headkit.errors import HeadkitError
from headkit.scores.positional_symbolic import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_TAU,
    RowFn,
    check_positive_float,
    check_positive_int,
    heads_by_layer,
    make_plan,
    resolve_heads,
    run_head_rows,
    swap_metric,
)

ROPE_COLUMNS = [
    "prompt",
    "layer",
    "head",
    "component",
    "frequency",
    "positional_score",
    "symbolic_score",
    "signal",
    "n_pairs",
    "n_signal_pairs",
]


def rotary_components(model: HookedTransformer) -> tuple[list[str], Tensor, list[float]]:
    """Component names, a [component, d_head] 0/1 membership matrix, and θ per component.

    Components ``f0 .. f{rotary_dim/2 - 1}`` are the rotary frequency pairs (θ in
    radians per position, NaN for ``nope``), then ``nope`` if ``rotary_dim < d_head``.
    """
    cfg = model.cfg
    if cfg.positional_embedding_type != "rotary":
        raise HeadkitError(
            f"rope_frequency_scores needs a rotary model; this one has positional embedding "
            f"type {cfg.positional_embedding_type!r}"
        )
    rotary_dim, d_head = int(cfg.rotary_dim), cfg.d_head
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


def component_rows(
    model: HookedTransformer, heads: Sequence[Head], query_pos: int, membership: Tensor
) -> RowFn:
    """A row function: per-component attention rows ``[batch, head * component, key_pos]``.

    The ``hook_rot_q`` hook keeps the query's rotated vector; the ``hook_rot_k``
    hook (which runs next in the same layer) turns it into component logits over
    the keys ``0..query_pos`` and a softmax per component; keys after the query
    get 0, as under the causal mask.
    """
    by_layer = heads_by_layer(heads)
    n_comp = membership.shape[0]

    def rows(tokens: Tensor) -> Float[Tensor, "batch unit key_pos"]:
        queries: dict[int, Tensor] = {}
        patterns: dict[int, Tensor] = {}

        def keep_q(rot_q: Tensor, hook: Any, *, layer: int) -> None:
            # rot_q: [batch, pos, head_index, d_head] -> [batch, head, d_head] at the query
            queries[layer] = rot_q[:, query_pos, by_layer[layer], :].detach()

        def component_pattern(rot_k: Tensor, hook: Any, *, layer: int) -> None:
            attn = model.blocks[layer].attn
            q = queries.pop(layer).float()  # [batch, head, d_head]
            k = rot_k[:, : query_pos + 1, by_layer[layer], :].detach().float()  # [batch, key, head, d_head]
            logits = component_logits(q, k, membership.to(q.device), attn.attn_scale)
            pattern = torch.softmax(logits, dim=-1)  # [batch, head, component, key<=query]
            full = pattern.new_zeros(*pattern.shape[:3], rot_k.shape[1])  # keys after the query: 0
            full[..., : query_pos + 1] = pattern
            patterns[layer] = full

        hooks = []
        for l in by_layer:
            hooks.append((f"blocks.{l}.attn.hook_rot_q", partial(keep_q, layer=l)))
            hooks.append(
                (f"blocks.{l}.attn.hook_rot_k", partial(component_pattern, layer=l))
            )
        stacked = run_head_rows(
            model, tokens, hooks, patterns, heads=heads, by_layer=by_layer
        )  # [batch, head, comp, key]
        return stacked.reshape(stacked.shape[0], len(heads) * n_comp, -1)  # [batch, head*comp, key]

    return rows


def rope_frequency_scores(
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
    """Swap-metric scores of each rotary frequency component of each head, per prompt.

    Options as in `positional_symbolic_scores`. Returns one row per (prompt, layer,
    head, component) with columns ``ROPE_COLUMNS``: ``prompt, layer, head,
    component`` (``f0``.. fastest first, then ``nope``), ``frequency`` (θ in radians
    per position; NaN for ``nope``), ``positional_score, symbolic_score, signal,
    n_pairs, n_signal_pairs``. Average over prompts with `average_over_prompts`.
    """
    tokens = check_tokens(model, tokens)
    head_list = resolve_heads(model, heads)
    names, membership, thetas = rotary_components(model)
    plan = make_plan(
        tokens, query_pos=query_pos, block_size=block_size, blocks=blocks,
        max_pairs=max_pairs, seed=seed,
    )
    tau = check_positive_float("tau", tau)
    batch_size = check_positive_int("batch_size", batch_size)
    row_fn = component_rows(model, head_list, plan.query_pos, membership)
    scores = swap_metric(row_fn, tokens, plan, tau=tau, batch_size=batch_size)
    batch, n_heads, n_comp = tokens.shape[0], len(head_list), len(names)
    unit_layer = [l for l, _ in head_list for _ in names]  # unit = head * n_comp + comp
    unit_head = [h for _, h in head_list for _ in names]
    table = pd.DataFrame(
        {
            "prompt": torch.arange(batch).repeat_interleave(n_heads * n_comp).numpy(),
            "layer": unit_layer * batch,
            "head": unit_head * batch,
            "component": names * (batch * n_heads),
            "frequency": thetas * (batch * n_heads),
            **{k: v.reshape(-1).numpy() for k, v in scores.items()},  # [batch, unit] row-major
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
