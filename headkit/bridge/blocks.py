"""Run transformer blocks alone, exactly as the full forward runs them.

A bridge block is Hugging Face's block: it takes the hidden state *and* what the
model computes once before its first block (rotary embeddings, the causal mask,
ALiBi biases, position ids); which of them it needs, and what it does without one,
differs by architecture and transformers release (TransformerLens 4.3's check of
the bridge found blocks given rotary embeddings but no mask running non-causal). `record_block_inputs` records, in one
ordinary forward, the arguments the model hands each block; `run_blocks` replays
them with another hidden state, so a block run alone gets exactly what the full
forward gave it, for every architecture, with no per-architecture code. On a
HookedTransformer (TransformerLens 3.9) the blocks take the residual alone and
apply rotary and the mask themselves; `run_blocks` calls them that way.

Used for the swap metric (PosSym-2025: block ``l`` rerun on a residual with two
rows exchanged) and for restarts at a layer (path patching's steps 2-3).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from headkit.errors import HeadkitError
from headkit.model_types import is_bridge


@dataclass
class BlockInputs:
    """What the full forward handed each block besides the hidden state (keyword arguments)."""

    batch: int
    n_pos: int
    kwargs: dict[int, dict[str, Any]] = field(default_factory=dict)  # layer -> keyword arguments

    def for_layer(self, layer: int, batch: int) -> dict[str, Any]:
        if layer not in self.kwargs:
            raise HeadkitError(f"no recorded inputs for block {layer}: record_block_inputs saw blocks {sorted(self.kwargs)}")
        if batch != self.batch and self.batch > 1 and batch % self.batch:
            raise HeadkitError(f"a batch of {batch} cannot reuse block inputs recorded on a batch of {self.batch}")
        return {name: _repeat(name, value, self.batch, batch) for name, value in self.kwargs[layer].items()}


def _repeat(name: str, value: Any, recorded: int, batch: int) -> Any:
    """Tile a recorded input along the batch: ``batch // recorded`` copies of the recorded batch.

    A tensor whose leading dimension is the recorded batch is tiled (a leading 1
    broadcasts and stays); BLOOM's ``alibi`` is laid out ``[batch * heads, 1, key]``.
    """
    if isinstance(value, tuple):
        return tuple(_repeat(name, v, recorded, batch) for v in value)
    if not isinstance(value, Tensor) or value.dim() == 0 or batch == recorded:
        return value
    copies = batch // recorded
    if name == "alibi":  # [recorded * heads, 1, key] -> [batch * heads, 1, key]
        per_row = value.reshape(recorded, -1, *value.shape[1:])
        return per_row.repeat(copies, *([1] * (per_row.dim() - 1))).reshape(-1, *value.shape[1:])
    if recorded > 1 and value.shape[0] == recorded:
        return value.repeat(copies, *([1] * (value.dim() - 1)))
    return value


_DROP = {"cache", "past_key_value", "past_key_values", "layer_past", "use_cache", "output_attentions", "cache_position"}


@contextlib.contextmanager
def record_block_inputs(model: Any, *, batch: int, n_pos: int) -> Iterator[BlockInputs]:
    """Record, during the forward run inside the ``with``, the keyword arguments each block receives."""
    inputs = BlockInputs(batch=batch, n_pos=n_pos)
    if not is_bridge(model):
        yield inputs
        return
    handles = []

    def keep(layer: int):
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            inputs.kwargs[layer] = {k: v for k, v in kwargs.items() if k not in _DROP and k != "hidden_states"}

        return hook

    try:
        for layer, block in enumerate(model.blocks):
            handles.append(block.register_forward_pre_hook(keep(layer), with_kwargs=True))
        yield inputs
    finally:
        for handle in handles:
            handle.remove()


def recorded_inputs(model: Any, tokens: Tensor, *, stop_at_layer: int | None = None) -> BlockInputs | None:
    """The block inputs of one forward of ``tokens`` (None for a HookedTransformer, which needs none).

    For prompts without a padding mask the inputs depend on the length alone, so one
    prompt's (``tokens[:1]``) serve any batch of that length.
    """
    if not is_bridge(model):
        return None
    stop = model.cfg.n_layers if stop_at_layer is None else stop_at_layer
    with torch.no_grad(), record_block_inputs(model, batch=tokens.shape[0], n_pos=tokens.shape[1]) as inputs:
        run_until(model, tokens, stop)
    return inputs


class _Stop(Exception):
    """Raised by a hook to end a forward after the last block needed."""


def run_until(model: Any, tokens: Tensor, stop: int, fwd_hooks: list | tuple = ()) -> None:
    """Forward ``tokens`` with ``fwd_hooks`` through blocks ``0 … stop-1`` and no further.

    ``stop_at_layer=stop`` does this, except on a bridge with ``stop`` the last
    block, where TransformerLens then runs the final norm and the unembedding too: a
    hook on the last block's output ends that forward there.
    """
    hooks = list(fwd_hooks)
    if not (is_bridge(model) and stop >= model.cfg.n_layers):
        model.run_with_hooks(tokens, fwd_hooks=hooks, return_type=None, stop_at_layer=stop)
        return

    def end(x: Tensor, hook: Any) -> None:
        raise _Stop

    try:  # run_with_hooks removes its hooks on the way out
        model.run_with_hooks(tokens, fwd_hooks=[*hooks, (f"blocks.{model.cfg.n_layers - 1}.hook_resid_post", end)], return_type=None)
    except _Stop:
        pass


def _output(out: Any) -> Tensor:
    return out[0] if isinstance(out, tuple) else out


def run_blocks(model: Any, resid: Tensor, start: int, stop: int | None = None, *, inputs: BlockInputs | None = None) -> Tensor:
    """Blocks ``start … stop-1`` (default: to the last) on ``resid`` [batch, pos, d_model].

    A bridge needs ``inputs`` recorded by `record_block_inputs` on a forward of the
    same length; a HookedTransformer needs none.
    """
    n_layers: int = model.cfg.n_layers
    stop = n_layers if stop is None else stop
    if not 0 <= start <= stop <= model.cfg.n_layers:
        raise HeadkitError(f"blocks {start}..{stop - 1} are not blocks of this {model.cfg.n_layers}-layer model")
    if not is_bridge(model):
        for layer in range(start, stop):
            resid = model.blocks[layer](resid)
        return resid
    if inputs is None:
        raise HeadkitError("a TransformerBridge block runs alone only with the inputs of a recorded forward (record_block_inputs)")
    if resid.shape[1] != inputs.n_pos:
        raise HeadkitError(f"block inputs were recorded at {inputs.n_pos} positions, the residual has {resid.shape[1]}")
    for layer in range(start, stop):
        resid = _output(model.blocks[layer](resid, **inputs.for_layer(layer, resid.shape[0])))
    return resid


def unembed(model: Any, resid: Tensor) -> Tensor:
    """Final LayerNorm and unembedding of a residual [batch, pos, d_model] -> logits."""
    return model.unembed(model.ln_final(resid))
