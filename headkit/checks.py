"""Input checks shared by every analysis: heads, layers, token batches.

Each check raises `HeadkitError` with a message that names the bad value and the
allowed range, and runs before any forward pass, so bad input costs nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Sequence

import torch
from torch import Tensor

if TYPE_CHECKING:  # TransformerLens is slow to import; only the type is needed here
    from transformer_lens import HookedTransformer

from headkit.errors import HeadkitError

Head = tuple[int, int]  # (layer, head)


def check_layer(model: HookedTransformer, layer: int) -> int:
    n = model.cfg.n_layers
    if not isinstance(layer, int) or not 0 <= layer < n:
        raise HeadkitError(f"layer {layer} is out of range: this model has layers 0..{n - 1}")
    return layer


def check_heads(model: HookedTransformer, heads: Iterable[Sequence[int]]) -> list[Head]:
    """Validate (layer, head) pairs against the model; returns them as int tuples."""
    out: list[Head] = []
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    for item in heads:
        if len(item) != 2:
            raise HeadkitError(f"head {item!r} must be a (layer, head) pair")
        layer, head = int(item[0]), int(item[1])
        if not 0 <= layer < n_layers:
            raise HeadkitError(
                f"head {layer}.{head}: layer {layer} is out of range: "
                f"this model has layers 0..{n_layers - 1}"
            )
        if not 0 <= head < n_heads:
            raise HeadkitError(
                f"head {layer}.{head}: head {head} is out of range: "
                f"this model has heads 0..{n_heads - 1} in each layer"
            )
        out.append((layer, head))
    return out


def parse_head(spec: str) -> Head:
    """``"5.0"`` -> ``(5, 0)``; anything else is an error naming the spec."""
    parts = spec.strip().split(".")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise HeadkitError(f"head spec {spec!r} must look like LAYER.HEAD, e.g. 5.0")
    return int(parts[0]), int(parts[1])


def parse_heads(specs: str) -> list[Head]:
    """``"0.1,3.0"`` -> ``[(0, 1), (3, 0)]``."""
    items = [s for s in specs.split(",") if s.strip()]
    if not items:
        raise HeadkitError(f"no heads given in {specs!r}: expected LAYER.HEAD[,LAYER.HEAD...]")
    return [parse_head(s) for s in items]


def parse_int_list(text: str, *, name: str, low: int = 1) -> list[int]:
    """``"17,33,65"`` -> ``[17, 33, 65]``; a malformed or too-small number names itself."""
    values = []
    for part in text.split(","):
        part = part.strip()
        try:
            value = int(part)
        except ValueError:
            raise HeadkitError(f"{name}: {part!r} is not an integer (expected e.g. 17,33,65)") from None
        if value < low:
            raise HeadkitError(f"{name}: {value} is too small: allowed {low} or more")
        values.append(value)
    if not values:
        raise HeadkitError(f"{name}: no values given")
    return values


def check_tokens(model: HookedTransformer, tokens: Tensor, *, name: str = "tokens") -> Tensor:
    """A non-empty [batch, pos] integer tensor of ids the model knows, within its context."""
    if not isinstance(tokens, Tensor):
        raise HeadkitError(f"{name} must be a torch tensor of token ids, got {type(tokens).__name__}")
    if tokens.ndim != 2:
        raise HeadkitError(f"{name} must have shape [batch, pos], got shape {tuple(tokens.shape)}")
    if tokens.dtype in (torch.float16, torch.float32, torch.float64, torch.bfloat16, torch.bool):
        raise HeadkitError(f"{name} must hold integer token ids, got dtype {tokens.dtype}")
    batch, pos = tokens.shape
    if batch == 0 or pos == 0:
        raise HeadkitError(f"{name} is empty (shape {tuple(tokens.shape)}): give at least one prompt")
    if pos > model.cfg.n_ctx:
        raise HeadkitError(
            f"{name} length {pos} exceeds the model's context n_ctx={model.cfg.n_ctx}: "
            f"allowed lengths are 1..{model.cfg.n_ctx}"
        )
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= model.cfg.d_vocab:
        bad = (tokens < 0) | (tokens >= model.cfg.d_vocab)
        p, t = (int(x) for x in bad.nonzero()[0])
        raise HeadkitError(
            f"{name}: prompt {p}, position {t} has token id {int(tokens[p, t])}, "
            f"outside the model's vocabulary 0..{model.cfg.d_vocab - 1}"
        )
    return tokens


def check_token_pair(model: HookedTransformer, clean: Tensor, corrupted: Tensor) -> None:
    """Check ``clean_tokens`` and ``corrupted_tokens`` for ``model``, and that their shapes agree."""
    check_tokens(model, clean, name="clean_tokens")
    check_tokens(model, corrupted, name="corrupted_tokens")
    if clean.shape != corrupted.shape:
        raise HeadkitError(
            f"clean_tokens shape {tuple(clean.shape)} and corrupted_tokens shape "
            f"{tuple(corrupted.shape)} differ: patching needs prompts of the same shape"
        )


def check_position(model_or_length: int, position: int, *, name: str = "position") -> int:
    """Resolve a (possibly negative) position in a sequence of the given length."""
    length = model_or_length
    if not -length <= position < length:
        raise HeadkitError(
            f"{name} {position} is out of range for prompts of length {length}: "
            f"allowed {-length}..{length - 1}"
        )
    return position % length
