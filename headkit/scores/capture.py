"""Capture: attention rows, patterns or logits of chosen heads at chosen queries.

Every score of `headkit.scores` that reads attention goes through this module, in
one forward pass per chunk of prompts, stopped after the last layer it needs
(``stop_at_layer``), with temporary hooks that keep only what is asked for:

- `capture` (the public entry): for heads ``[(layer, head), ...]`` and a ``site``
  (``"pattern"``: post-softmax ``blocks.{l}.attn.hook_pattern``; ``"logits"``:
  pre-softmax ``blocks.{l}.attn.hook_attn_scores``, already divided by the
  attention scale), the row at ``query_pos`` (an int, or one position per prompt)
  ``[batch, unit, key_pos]``, or with ``query_pos=None`` the whole
  ``[batch, unit, query_pos, key_pos]`` pattern. ``reduce`` turns each layer's
  values into something smaller inside the hook, so no full pattern outlives its
  layer (the detectors' scores).
- `RowReader` (a layer list and the hooks that read each layer), `head_reader`,
  `model_rows` (one forward, optionally keeping ``hook_resid_pre``) and
  `block_rows` (one block alone on a given residual stream, stopped after its
  attention pattern): the pieces `capture` is made of, which the swap metric
  (`headkit.scores.swap_engine`) and the rotary views (`headkit.scores.rope`) use
  with their own readers.
- `finite_hooks`: every forward here refuses activations that are not finite (the
  attention output ``z`` of each layer it runs, `headkit.checks.check_finite`): finite
  weights can still give NaN activations (a negative LayerNorm epsilon), which
  TransformerLens turns into all-zero patterns that score as "inactive" heads.
  One head's NaN query or key weights leave ``z`` finite (its pattern is zeroed),
  so such a head is still flagged per head (``finite = False``) by the swap metric.
- `resolve_heads`, `heads_by_layer`, `resolve_query_positions`, `query_chunks`:
  which heads, which queries, which prompts per forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Protocol, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from headkit.bridge.blocks import BlockInputs, run_blocks, run_until
from headkit.checks import Head, check_finite, check_heads, check_int, check_position, check_tokens
from headkit.errors import HeadkitError
from headkit.interventions.sites import hook_name
from headkit.memory import batches, grouped_batches
from headkit.model_types import Model

# what can be captured -> the site (`headkit.interventions.sites.hook_name`) of block l's
# attention that holds it, [batch, head_index, query_pos, key_pos]
SITES = {"pattern": "pattern", "logits": "attn_scores"}

HookList = list[tuple[str, Callable[..., None]]]
# (layer, query_pos or None for every query, store) -> temporary hooks that put the
# layer's values [batch, unit_of_layer, ...] into store[layer]
LayerHooks = Callable[[int, int | None, dict[int, Tensor]], HookList]


class Reduce(Protocol):
    """reduce(values, tokens=chunk): a layer's values [batch, unit_of_layer, ...] and the
    chunk's tokens [batch, pos] -> smaller values [batch, unit_of_layer, ...]"""

    def __call__(self, values: Tensor, /, *, tokens: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class RowReader:
    """Which attention values to read: the layers, and the hooks that read each one.

    Units come out layer by layer (ascending), in the order each layer's hooks store them.
    """

    layers: tuple[int, ...]  # ascending
    hooks: LayerHooks


class _BlockDone(Exception):
    """Raised by the last hook of a lone block run: the attention pattern is all we need."""


# ---------------------------------------------------------------------------
# which heads, which queries


def resolve_heads(model: Model, heads: Sequence[Sequence[int]] | None) -> list[Head]:
    """All heads of the model, or the given (layer, head) pairs checked and sorted."""
    if heads is None:
        return [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    checked = check_heads(model, heads)
    if not checked:
        raise HeadkitError("heads is empty: give at least one (layer, head) pair, or None for all")
    return sorted(set(checked))


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


def query_chunks(
    tokens: Tensor, query_pos: int | Tensor | None, *, batch_size: int
) -> list[tuple[Int[Tensor, " n"], int | None]]:
    """(prompt indices, query position) of each forward: prompts of one query, ``batch_size`` at a time.

    ``query_pos=None`` (every query) keeps the prompts in order. All positions are
    checked before the first forward.
    """
    if query_pos is None:
        return [(idx, None) for idx in batches(torch.arange(tokens.shape[0]), batch_size)]
    queries = resolve_query_positions(tokens, query_pos)
    by_query = {q: (queries == q).nonzero().squeeze(1) for q in queries.unique().tolist()}  # prompts of each query
    return [(idx, q) for q, idx in grouped_batches(by_query, batch_size)]


# ---------------------------------------------------------------------------
# readers and the forwards that run them


def head_reader(
    heads: Sequence[Head], *, site: str = "pattern", reduce: Callable[[Tensor], Tensor] | None = None
) -> RowReader:
    """``site`` values of ``heads``: the query's row ``[batch, unit_of_layer, key_pos]``
    (query None: ``[batch, unit_of_layer, query_pos, key_pos]``), then ``reduce`` if given."""
    held_at = SITES[site]  # the site whose hook holds these values
    by_layer = heads_by_layer(heads)

    def keep(values: Tensor, hook: Any, *, layer: int, query_pos: int | None, store: dict[int, Tensor]) -> None:
        index = by_layer[layer]  # values: [batch, head_index, query_pos, key_pos]
        mine = values if index == list(range(values.shape[1])) else values[:, index]  # [batch, unit, query, key]
        mine = (mine if query_pos is None else mine[:, :, query_pos, :]).detach()
        store[layer] = mine if reduce is None else reduce(mine)

    def hooks(layer: int, query_pos: int | None, store: dict[int, Tensor]) -> HookList:
        return [(hook_name(held_at, layer), partial(keep, layer=layer, query_pos=query_pos, store=store))]

    return RowReader(layers=tuple(by_layer), hooks=hooks)


def finite_hooks(layers: Sequence[int]) -> HookList:
    """Hooks that raise `NonFiniteError` when a layer's attention output ``z`` holds NaN or infinity."""

    def check(z: Tensor, hook: Any, *, layer: int) -> None:
        check_finite(z.detach(), where=f"the attention output (z) of layer {layer}")

    return [(hook_name("z", l), partial(check, layer=l)) for l in layers]


def model_rows(
    model: Model,
    reader: RowReader,
    tokens: Int[Tensor, "batch pos"],
    query_pos: int | None,
    *,
    keep_resid: bool = False,
) -> tuple[Float[Tensor, "batch unit ..."], dict[int, Tensor]]:
    """The reader's values on ``tokens`` (forward stopped after the last layer read).

    With ``keep_resid``, also each read layer's input ``blocks.{l}.hook_resid_pre``.
    Activations that are not finite raise `NonFiniteError` (`finite_hooks`).
    """
    store: dict[int, Tensor] = {}
    resid: dict[int, Tensor] = {}

    def keep(x: Tensor, hook: Any, *, layer: int) -> None:
        resid[layer] = x.detach()  # [batch, pos, d_model]

    hooks = [h for l in reader.layers for h in reader.hooks(l, query_pos, store)] + finite_hooks(reader.layers)
    if keep_resid:
        hooks += [(hook_name("resid_pre", l), partial(keep, layer=l)) for l in reader.layers]
    with torch.no_grad():
        run_until(model, tokens.to(model.cfg.device), max(reader.layers) + 1, hooks)
    return torch.cat([store[l] for l in reader.layers], dim=1), resid  # [batch, unit, ...]


def block_rows(
    model: Model,
    reader: RowReader,
    layer: int,
    resid: Float[Tensor, "n pos d_model"],
    query_pos: int,
    inputs: BlockInputs | None = None,
) -> Float[Tensor, "n unit_of_layer key_pos"]:
    """The reader's rows of one layer when ``blocks[layer]`` alone runs on ``resid``.

    Positions are the original ``0..pos-1``; the block stops after its attention pattern.
    A TransformerBridge's block gets ``inputs``, the block inputs recorded on a forward
    of the same length (`headkit.bridge.blocks.recorded_inputs`).
    """
    store: dict[int, Tensor] = {}

    def done(pattern: Tensor, hook: Any) -> None:
        raise _BlockDone

    hooks = reader.hooks(layer, query_pos, store) + [(hook_name("pattern", layer), done)]
    # TransformerLens 3.x types fwd_hooks as an invariant list[tuple[str | Callable, Callable]]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):  # pyright: ignore[reportArgumentType]
        try:
            run_blocks(model, resid, layer, layer + 1, inputs=inputs)
        except _BlockDone:
            pass
    return store[layer]


# ---------------------------------------------------------------------------
# the public entry


def capture(
    model: Model,
    tokens: Int[Tensor, "batch pos"],
    heads: Sequence[Sequence[int]],
    *,
    site: str = "pattern",
    query_pos: int | Tensor | None = -1,  # a [batch] tensor of ints; shape and dtype checked here
    reduce: Reduce | None = None,
    batch_size: int = 64,
    desc: str = "capture",
) -> Float[Tensor, "batch unit ..."]:
    """``site`` values of ``heads`` on every prompt, one stopped forward per chunk.

    Args:
        tokens: prompts [batch, pos].
        heads: (layer, head) pairs, each once; unit ``u`` of the result is ``heads[u]``.
        site: ``"pattern"`` (post-softmax attention) or ``"logits"`` (pre-softmax,
            ``hook_attn_scores``: scaled, masked entries ``-inf``).
        query_pos: the query row read (negative counts from the end), one per
            prompt as a [batch] tensor, or None for every query.
        reduce: ``reduce(values, tokens=chunk_tokens)`` applied to each layer's
            ``[n, unit_of_layer, ...]`` values inside its hook.
        batch_size: prompts per forward pass.
        desc: the progress bar's label (shown for more than one chunk).

    Returns:
        ``[batch, unit, key_pos]`` rows (``query_pos=None``: ``[batch, unit,
        query_pos, key_pos]``; with ``reduce``: its output per unit), on the model's
        device, in the activations' dtype.
    """
    tokens = check_tokens(model, tokens).to(model.cfg.device)  # reduce sees the chunk where the values are
    head_list = check_heads(model, heads)
    if not head_list:
        raise HeadkitError("heads is empty: give at least one (layer, head) pair")
    if site not in SITES:
        raise HeadkitError(f"site={site!r} is not known: allowed {', '.join(map(repr, SITES))}")
    batch_size = check_int("batch_size", batch_size)
    chunks = query_chunks(tokens, query_pos, batch_size=batch_size)
    out: Tensor | None = None
    for idx, q in tqdm(chunks, desc=desc, disable=len(chunks) == 1, leave=False):
        chunk = tokens[idx.to(tokens.device)]
        layer_reduce = None if reduce is None else partial(reduce, tokens=chunk)
        values, _ = model_rows(model, head_reader(head_list, site=site, reduce=layer_reduce), chunk, q)
        if out is None:
            out = values.new_empty((tokens.shape[0], *values.shape[1:]))
        out[idx.to(out.device)] = values
    assert out is not None  # tokens are non-empty (check_tokens)
    order = [(l, h) for l, hs in heads_by_layer(head_list).items() for h in hs]  # units as read
    return out if order == head_list else out[:, [order.index(h) for h in head_list]]
