"""Activation patching: which activations carry the information a task needs.

Run the model on two inputs of the same shape, a *clean* prompt (the model gives
the right answer) and a *corrupted* twin (it gives another). Then run one of them
again with a single activation replaced by its value from the other run, and
measure a metric (`headkit.interventions.metrics`) on the output (IOI; Heimersheim
& Nanda 2024):

- ``direction="denoise"``: run corrupted, patch the clean activation in. A large
  effect says the activation is *sufficient* to restore (part of) the clean
  behaviour. Normalised effect ``(patched - corrupted) / (clean - corrupted)``:
  0 = no effect, 1 = the clean metric fully restored.
- ``direction="noise"``: run clean, patch the corrupted activation in. A large
  effect says the activation is *necessary*. Normalised effect, the mirror image,
  ``(patched - clean) / (corrupted - clean)``: 0 = no effect, 1 = as broken as the
  corrupted run.

When the clean and corrupted metrics are equal the normalisation is undefined:
``normalised`` is NaN and a warning is logged.

Sites (`available_sites` lists the ones a model has):

======================  ==========================================================
head sites              ``z`` (head output before W_O), ``q``, ``k``, ``v``
                        (before rotary), ``pattern`` (post-softmax attention)
layer sites             ``resid_pre``, ``attn_out``, ``mlp_out``, and ``resid_mid``
                        only in models with a residual stream between attention and
                        MLP: GPT-J-style models (parallel attention and MLP) have
                        none, and models without MLPs have no ``mlp_out``
======================  ==========================================================

``by_position=False`` patches a head's (or a layer's) activation at every
position at once; ``by_position=True`` one position at a time (for ``pattern``:
one query, i.e. destination, row at a time). The result is a tidy DataFrame:

==========  ==================================================================
column      meaning
==========  ==================================================================
layer       layer of the patched activation
head        head index; -1 for layer sites
position    patched position (for ``pattern`` the query position); -1 when
            every position was patched at once (``by_position=False``)
value       metric of the patched run
normalised  normalised effect (formula above for the chosen direction)
==========  ==================================================================

These numbers equal TransformerLens's ``transformer_lens.patching.get_act_patch_*``
(tested to 1e-5 in float32) but come much faster. TransformerLens runs one full
forward pass per patch. Here the unpatched run is cached once at the input of
every layer (``resid_pre``); a patch in layer ``l`` starts from that cache
(``start_at_layer=l``), so the layers below are never recomputed, and several
patches of the same layer run as one forward pass: the batch is stacked ``k``
times along the batch axis and copy ``i`` carries patch ``i``. ``batch_size``
caps the rows (prompts x patches) of one such pass to bound memory. The sites live
in `headkit.interventions.sites`, the engine (`sweep_patches`) in
`headkit.interventions.engine`; ablation sweeps and path patching use it too.
"""

from __future__ import annotations

from typing import Protocol, Sequence, TypeVar, cast

import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor

from headkit.bridge.probe import require
from headkit.checks import check_heads, check_layer, check_optional_int, check_token_pair
from headkit.errors import HeadkitError
from headkit.interventions import sites
from headkit.interventions.engine import (
    sweep_patches,
)
from headkit.interventions.metrics import Metric, normalise, run_value, scalar_metric
from headkit.interventions.sites import (
    ALL,
    SITES,
    Patch,
    check_site,
    site_heads,
)
from headkit.model_types import Model

COLUMNS = ("layer", "head", "position", "value", "normalised")
T = TypeVar("T")


# --- activation patching -------------------------------------------------------------


def _denoise(clean: T, corrupted: T) -> tuple[T, T]:
    """Run corrupted, patch clean in: (base, source), for tokens or metric values."""
    return corrupted, clean


def _noise(clean: T, corrupted: T) -> tuple[T, T]:
    """Run clean, patch corrupted in: (base, source), for tokens or metric values."""
    return clean, corrupted


class _Direction(Protocol):
    def __call__(self, clean: T, corrupted: T, /) -> tuple[T, T]: ...


# direction name (sites.DIRECTIONS: "denoise", "noise") -> (clean, corrupted) -> (base, source)
DIRECTIONS: dict[str, _Direction] = dict(zip(sites.DIRECTIONS, (_denoise, _noise)))


def _checked_patches(
    model: Model,
    clean_tokens: Tensor,
    corrupted_tokens: Tensor,
    site: str,
    *,
    direction: str,
    by_position: bool,
    heads: Sequence[tuple[int, int]] | None,
    layers: Sequence[int] | None,
    batch_size: int | None,
) -> list[Patch]:
    """Every patch of the sweep, ordered by layer, head, position; bad input raises before any work."""
    spec = check_site(model, site)
    if site == "pattern":
        require(model, "patch_pattern")  # a bridge whose pattern edits are dropped is refused
    if direction not in DIRECTIONS:
        raise HeadkitError(f"unknown direction {direction!r}: allowed {', '.join(DIRECTIONS)}")
    check_token_pair(model, clean_tokens, corrupted_tokens)
    if heads is not None and layers is not None:
        raise HeadkitError("give heads or layers, not both")
    if heads is not None:
        if not spec.per_head:
            raise HeadkitError(f"heads= applies to head sites only; {site!r} is a layer site: use layers=")
        n = site_heads(model, site)
        units = sorted(check_heads(model, heads))
        for layer, head in units:
            if head >= n:
                raise HeadkitError(f"head {layer}.{head}: site {site!r} has heads 0..{n - 1} per layer")
        if not heads:
            raise HeadkitError("heads is empty: give at least one (layer, head)")
    else:
        if layers is not None and not layers:
            raise HeadkitError("layers is empty: give at least one layer")
        chosen = range(model.cfg.n_layers) if layers is None else sorted({check_layer(model, l) for l in layers})
        per_layer = range(site_heads(model, site)) if spec.per_head else [ALL]
        units = [(layer, head) for layer in chosen for head in per_layer]
    check_optional_int("batch_size", batch_size)
    positions: list[int | slice] = list(range(clean_tokens.shape[1])) if by_position else [slice(None)]
    return [Patch(layer, head, pos) for layer, head in units for pos in positions]


def activation_patching(
    model: Model,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    *,
    site: str = "z",
    by_position: bool = False,
    direction: str = sites.DEFAULT_DIRECTION,
    heads: Sequence[tuple[int, int]] | None = None,
    layers: Sequence[int] | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Patch every head (or layer) at ``site`` alone; one row per patch.

    ``metric`` maps logits [batch, pos, d_vocab] to a scalar. ``heads`` (head sites)
    or ``layers`` restrict the sweep; default every head of every layer.
    ``batch_size`` caps the rows (prompts x patches) of one forward pass (None:
    `auto_batch_size`, sized for CPU caches; larger is faster on a GPU, smaller saves
    memory). Columns and formulas: see the module docstring.
    """
    patches = _checked_patches(
        model, clean_tokens, corrupted_tokens, site, direction=direction,
        by_position=by_position, heads=heads, layers=layers, batch_size=batch_size,
    )  # fmt: skip
    device = model.cfg.device
    clean_tokens, corrupted_tokens = clean_tokens.to(device), corrupted_tokens.to(device)
    base_tokens, source_tokens = DIRECTIONS[direction](clean_tokens, corrupted_tokens)
    names = sorted({SITES[site].hook_name(p.layer) for p in patches})

    with torch.no_grad():  # the clean run first: a metric without a scalar fails before the sweep
        clean_logits, clean_cache = model.run_with_cache(
            clean_tokens, names_filter=names, return_cache_object=False
        )
        clean_value = run_value(metric, cast(Tensor, clean_logits), run="the clean run").item()
        corrupted_logits, corrupted_cache = model.run_with_cache(
            corrupted_tokens, names_filter=names, return_cache_object=False
        )
        corrupted_value = run_value(metric, cast(Tensor, corrupted_logits), run="the corrupted run").item()
    base_value, source_value = DIRECTIONS[direction](clean_value, corrupted_value)
    _, sources = DIRECTIONS[direction](clean_cache, corrupted_cache)
    evaluate = scalar_metric(metric, where="metric on a patched run")
    values = sweep_patches(
        model, base_tokens, sources, site, patches, evaluate, batch_size=batch_size, progress=progress
    )
    value = torch.stack(values).double().cpu() if values else torch.zeros(0, dtype=torch.float64)
    normalised = normalise(value, base=base_value, source=source_value)
    return pd.DataFrame(
        {
            "layer": [p.layer for p in patches],
            "head": [p.head for p in patches],
            "position": [ALL if isinstance(p.position, slice) else int(cast(int, p.position)) for p in patches],
            "value": value.numpy(),
            "normalised": normalised.numpy(),
        },
        columns=list(COLUMNS),
    )
