"""The models headkit's analyses accept, on TransformerLens 3.9 and 4.x.

An analysis reads and writes activations through TransformerLens hook points with
HookedTransformer's names, so it takes either kind of model:

- a `TransformerBridge` (TransformerLens 3.9 and 4.x; what `headkit.bridge.build.wrap`
  makes, in compatibility mode), or
- a `HookedTransformer` (TransformerLens 3.9 only: 4.0 removed it).

This module is the one place that knows whether ``HookedTransformer`` exists; nothing
else in headkit's analyses imports it, so they import on TransformerLens 4.x.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias, Union

from transformer_lens.model_bridge import TransformerBridge

try:  # removed in TransformerLens 4.0
    from transformer_lens import HookedTransformer
except ImportError:  # pragma: no cover - exercised by CI's TransformerLens 4.x environment
    HookedTransformer = None  # type: ignore[assignment,misc]

if TYPE_CHECKING:  # a type alias for the type checker (pyright): either kind of model; on TransformerLens 4.x
    # the import resolves through transformer_lens's module __getattr__ to TransformerBridge, so Model is the bridge
    from transformer_lens import HookedTransformer as _HookedTransformer

    Model: TypeAlias = Union[TransformerBridge, _HookedTransformer]
else:
    Model = TransformerBridge if HookedTransformer is None else Union[TransformerBridge, HookedTransformer]


def has_hooked_transformer() -> bool:
    """Whether the installed TransformerLens still ships ``HookedTransformer`` (3.x)."""
    return HookedTransformer is not None


def is_bridge(model: Any) -> bool:
    return isinstance(model, TransformerBridge)


def is_hooked(model: Any) -> bool:
    return HookedTransformer is not None and isinstance(model, HookedTransformer)


def attn_scale(model: Any, layer: int) -> float:
    """What layer ``layer``'s attention scores are divided by (``sqrt(d_head)`` in most models).

    A HookedTransformer keeps it as ``attn.attn_scale``; a bridge's Hugging Face
    attention keeps its reciprocal, ``scaling``.
    """
    attn = model.blocks[layer].attn
    if not is_bridge(model):
        return float(attn.attn_scale)
    scaling = getattr(getattr(attn, "original_component", None), "scaling", None)
    return 1.0 / float(scaling) if scaling else float(model.cfg.d_head) ** 0.5
