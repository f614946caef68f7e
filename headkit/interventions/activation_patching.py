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
caps the rows (prompts x patches) of one such pass to bound memory. `sweep_patches`
is this engine; ablation sweeps use it too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Mapping, NamedTuple, Sequence, TypeVar

import einops
import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.components import TransformerBlock
from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

from headkit.checks import check_finite, check_heads, check_layer, check_tokens
from headkit.distributed import map_cells
from headkit.errors import HeadkitError
from headkit.interventions.metrics import Metric, check_scalar

logger = logging.getLogger(__name__)

COLUMNS = ("layer", "head", "position", "value", "normalised")
ALL = -1  # the head column of a layer site, the position column of an all-position patch
T = TypeVar("T")


class Patch(NamedTuple):
    """One patch: where to write the source activation into the base run."""

    layer: int
    head: int  # head index; ALL (-1) for layer sites
    position: int | Sequence[int] | slice  # position(s) written; slice(None) = all


# --- where a site's activation lives and how a patch writes into it -----------------


def _set_head_vector(
    act: Float[Tensor, "batch pos head_index d_head"],
    source: Float[Tensor, "batch pos head_index d_head"],
    patch: Patch,
) -> None:
    act[:, patch.position, patch.head] = source[:, patch.position, patch.head]


def _set_head_pattern(
    act: Float[Tensor, "batch head_index query_pos key_pos"],
    source: Float[Tensor, "batch head_index query_pos key_pos"],
    patch: Patch,
) -> None:
    act[:, patch.head, patch.position] = source[:, patch.head, patch.position]


def _set_layer_vector(
    act: Float[Tensor, "batch pos d_model"], source: Float[Tensor, "batch pos d_model"], patch: Patch
) -> None:
    act[:, patch.position] = source[:, patch.position]


@dataclass(frozen=True)
class Site:
    """A patchable activation: its hook inside a block and how to write one patch."""

    hook: str  # hook name inside ``blocks.{layer}.``
    per_head: bool  # head site (rows per head) or layer site (head = -1)
    write: Callable[[Tensor, Tensor, Patch], None]  # (one copy's activation, source, patch)

    def hook_name(self, layer: int) -> str:
        return f"blocks.{layer}.{self.hook}"


SITES: dict[str, Site] = {
    "z": Site("attn.hook_z", True, _set_head_vector),
    "q": Site("attn.hook_q", True, _set_head_vector),
    "k": Site("attn.hook_k", True, _set_head_vector),
    "v": Site("attn.hook_v", True, _set_head_vector),
    "pattern": Site("attn.hook_pattern", True, _set_head_pattern),
    "resid_pre": Site("hook_resid_pre", False, _set_layer_vector),
    "resid_mid": Site("hook_resid_mid", False, _set_layer_vector),
    "attn_out": Site("hook_attn_out", False, _set_layer_vector),
    "mlp_out": Site("hook_mlp_out", False, _set_layer_vector),
}


def available_sites(model: HookedTransformer) -> list[str]:
    """The sites this model has: ``resid_mid`` only with sequential attention then
    MLP, ``mlp_out`` only with MLPs."""
    missing = set(_missing_sites(model))
    return [name for name in SITES if name not in missing]


def _missing_sites(model: HookedTransformer) -> dict[str, str]:
    """Site name -> why this model does not have it."""
    missing = {}
    if "blocks.0.hook_resid_mid" not in model.hook_dict:
        why = (
            "it computes attention and MLP in parallel from resid_pre (GPT-J style), so no "
            "residual stream lies between them"
            if model.cfg.parallel_attn_mlp
            else "it has no MLPs, so no residual stream lies between attention and MLP"
        )
        missing["resid_mid"] = why
    if model.cfg.attn_only:
        missing["mlp_out"] = "it has no MLPs (attention-only)"
    return missing


def check_site(model: HookedTransformer, site: str) -> Site:
    """The `Site` called ``site``; unknown or absent in this model is an error listing the allowed."""
    allowed = ", ".join(available_sites(model))
    missing = _missing_sites(model)
    if site in missing:
        raise HeadkitError(f"site {site!r} does not exist in this model: {missing[site]}; allowed {allowed}")
    if site not in SITES:
        raise HeadkitError(f"unknown site {site!r}: allowed {allowed}")
    return SITES[site]


def site_heads(model: HookedTransformer, site: str) -> int:
    """Heads at a head site: k and v have ``n_key_value_heads`` in grouped-query models."""
    n_kv = model.cfg.n_key_value_heads
    if site in ("k", "v") and n_kv is not None and not model.cfg.ungroup_grouped_query_attention:
        return n_kv
    return model.cfg.n_heads


# --- the engine: many patches, few forward passes ------------------------------------

RESUME_AFTER_ATTENTION = ("z", "attn_out")  # sites whose patched layer need not rerun its attention


def resumes_after_attention(model: HookedTransformer, site: str) -> bool:
    """Whether a patch at ``site`` can skip recomputing its own layer's attention.

    Patching ``z`` or ``attn_out`` leaves the layer's queries, keys, values and
    pattern unchanged, so the patched layer's output is rebuilt from the cached
    activations: ``attn_out = z W_O + b_O`` (the same ``F.linear`` TransformerLens
    uses), then the block's residual sums (parallel: ``resid_pre + attn_out +
    mlp_out``; sequential: ``resid_mid = resid_pre + attn_out``, MLP recomputed).
    Only for plain pre-norm blocks; any other architecture reruns the whole layer.
    """
    cfg = model.cfg
    plain = (
        not cfg.use_attn_result
        and not cfg.load_in_4bit
        and not cfg.use_normalization_before_and_after
        and not cfg.use_hook_mlp_in
        and cfg.original_architecture not in POST_NORM_ARCHITECTURES
        and cfg.n_devices == 1
        and all(type(block) is TransformerBlock for block in model.blocks)
    )
    return plain and site in RESUME_AFTER_ATTENTION


def _layer_output(
    model: HookedTransformer,
    layer: int,
    site: str,
    cache: Mapping[str, Tensor],
    k: int,
    write: Callable[[Tensor], None],
) -> Float[Tensor, "copies_batch pos d_model"]:
    """Output of block ``layer`` for ``k`` stacked copies, ``write`` patching ``site`` in each."""
    block, cfg = model.blocks[layer], model.cfg
    if site == "z":
        z = cache[f"blocks.{layer}.attn.hook_z"].repeat(k, 1, 1, 1)  # [k*batch, pos, head_index, d_head]
        write(z)
        w = einops.rearrange(block.attn.W_O, "head_index d_head d_model -> d_model (head_index d_head)")
        z = z.reshape(z.shape[0], z.shape[1], cfg.n_heads * cfg.d_head)  # [k*batch, pos, head_index*d_head]
        attn_out = F.linear(z, w.contiguous(), block.attn.b_O)  # [k*batch, pos, d_model]
    else:
        attn_out = cache[f"blocks.{layer}.hook_attn_out"].repeat(k, 1, 1)  # [k*batch, pos, d_model]
        write(attn_out)
    resid_pre = cache[f"blocks.{layer}.hook_resid_pre"].repeat(k, 1, 1)  # [k*batch, pos, d_model]
    if cfg.attn_only:
        return resid_pre + attn_out
    if cfg.parallel_attn_mlp:  # the MLP read resid_pre: its output is unchanged
        return resid_pre + attn_out + cache[f"blocks.{layer}.hook_mlp_out"].repeat(k, 1, 1)
    resid_mid = resid_pre + attn_out
    return resid_mid + block.apply_mlp(block.ln2(resid_mid))


AUTO_ELEMENTS = 2**20  # activation elements per forward pass when batch_size is None


def auto_batch_size(model: HookedTransformer, tokens: Tensor) -> int:
    """Rows per stacked pass keeping its widest activation near `AUTO_ELEMENTS` elements.

    Stacking saves Python overhead per pass, but on a CPU a pass whose activations
    outgrow the caches gets slower per row (the elementwise GELU is memory-bound):
    about 4 MB of float32 per activation keeps both small. On a GPU pass a larger
    ``batch_size``.
    """
    cfg = model.cfg
    widest = max(cfg.d_model, cfg.d_mlp or 0, cfg.d_vocab, cfg.n_heads * tokens.shape[1])
    return max(tokens.shape[0], AUTO_ELEMENTS // (tokens.shape[1] * widest))


def sweep_patches(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    sources: Mapping[str, Tensor],
    site: str,
    patches: Sequence[Patch],
    evaluate: Callable[[Tensor], Tensor],
    *,
    batch_size: int | None = None,
    progress: bool = False,
) -> list[Tensor]:
    """``evaluate(logits)`` of the run on ``tokens`` with each patch applied alone.

    ``sources[hook_name]`` is what a patch writes at that hook, shaped like the
    activation ([batch, ...], or a batch axis of 1 to broadcast). Inputs are assumed
    already checked. Runs without gradients; returns one detached result per patch,
    in the order of ``patches``.

    1. One forward pass caches, for every patched layer, the residual stream at its
       input (and, when `resumes_after_attention`, its z, attn_out and mlp_out).
    2. For each layer ``l``, its patches run ``k`` at a time (up to ``batch_size``
       rows per pass) as ``k`` stacked copies of the batch, copy ``i`` carrying
       patch ``i``: either the model runs from layer ``l`` on with a hook writing the
       patches, or layer ``l``'s output is rebuilt from the cache with the patches
       written in and the model runs from layer ``l + 1`` on.
    3. The logits are split back into copies and evaluated one copy at a time.

    Under a torch.distributed process group the passes of step 2 are split across
    the ranks and gathered in order (`headkit.distributed.map_cells`).
    """
    spec = SITES[site]
    batch = tokens.shape[0]
    by_layer: dict[int, list[int]] = {}
    for i, patch in enumerate(patches):
        by_layer.setdefault(patch.layer, []).append(i)
    if not by_layer:
        return []
    after_attention = resumes_after_attention(model, site)
    rows = batch_size if batch_size is not None else auto_batch_size(model, tokens)
    per_pass = max(1, rows // batch)  # copies per forward pass
    chunks = [
        (layer, ids[start : start + per_pass])
        for layer, ids in sorted(by_layer.items())
        for start in range(0, len(ids), per_pass)
    ]
    results: list[Tensor | None] = [None] * len(patches)

    with torch.no_grad():
        # 1. what each patched layer reads, from one pass
        _, _, shortformer, attention_mask = model.input_to_embed(tokens)
        hooks = ("hook_resid_pre", "attn.hook_z", "hook_attn_out", "hook_mlp_out")
        names = [f"blocks.{l}.{h}" for l in by_layer for h in hooks[: 4 if after_attention else 1]]
        _, cache = model.run_with_cache(
            tokens, names_filter=names, stop_at_layer=max(by_layer) + 1, return_cache_object=False
        )

        def run_chunk(chunk: tuple[int, list[int]]) -> list[Tensor]:
            layer, ids = chunk
            k, name = len(ids), spec.hook_name(layer)

            def write(act: Tensor, ids: list[int] = ids, k: int = k, source: Tensor = sources[name]) -> None:
                copies = act.unflatten(0, (k, batch))  # [k, batch, ...] view of [k*batch, ...]
                for copy, i in zip(copies, ids):
                    spec.write(copy, source, patches[i])

            def write_hook(act: Tensor, hook: object, write: Callable[[Tensor], None] = write) -> Tensor:
                write(act)
                return act

            # 2. every patch of this chunk in one pass
            extras = dict(
                shortformer_pos_embed=None if shortformer is None else shortformer.repeat(k, 1, 1),
                attention_mask=None if attention_mask is None else attention_mask.repeat(k, 1),
            )
            if after_attention:
                resid = _layer_output(model, layer, site, cache, k, write)  # [k*batch, pos, d_model]
                logits = model(resid, start_at_layer=layer + 1, **extras)
            else:
                resid = cache[f"blocks.{layer}.hook_resid_pre"].repeat(k, 1, 1)  # [k*batch, pos, d_model]
                with model.hooks(fwd_hooks=[(name, write_hook)]):
                    logits = model(resid, start_at_layer=layer, **extras)
            # 3. one evaluation per copy, of finite logits only
            values = []
            for copy_logits, i in zip(logits.unflatten(0, (k, batch)), ids):  # [batch, pos, d_vocab]
                check_finite(copy_logits, where=f"the logits of the run with {_describe(site, patches[i])} replaced")
                values.append(evaluate(copy_logits).detach())
            return values

        # chunks split across the ranks of a torch.distributed group, if any (headkit.distributed)
        done = map_cells(run_chunk, chunks, desc=f"patching {site}", progress=progress, device=tokens.device)
        for (_, ids), values in zip(chunks, done):
            for i, value in zip(ids, values):  # value: evaluate's output on copy i
                results[i] = value
    return results  # type: ignore[return-value]


def _describe(site: str, patch: Patch) -> str:
    """``"z of head 1.0"``, ``"resid_pre of layer 2 at position 3"``: a patch in words."""
    unit = f"layer {patch.layer}" if patch.head == ALL else f"head {patch.layer}.{patch.head}"
    where = "" if isinstance(patch.position, slice) else f" at position {patch.position}"
    return f"{site} of {unit}{where}"


# --- activation patching -------------------------------------------------------------


def _denoise(clean: T, corrupted: T) -> tuple[T, T]:
    """Run corrupted, patch clean in: (base, source), for tokens or metric values."""
    return corrupted, clean


def _noise(clean: T, corrupted: T) -> tuple[T, T]:
    """Run clean, patch corrupted in: (base, source), for tokens or metric values."""
    return clean, corrupted


DIRECTIONS: dict[str, Callable[[T, T], tuple[T, T]]] = {
    "denoise": _denoise,
    "noise": _noise,
}


def _patches(
    model: HookedTransformer,
    site: str,
    *,
    by_position: bool,
    length: int,
    heads: Sequence[tuple[int, int]] | None,
    layers: Sequence[int] | None,
) -> list[Patch]:
    """Every patch of the sweep, ordered by layer, head, position."""
    spec = SITES[site]
    positions: list[int | slice] = list(range(length)) if by_position else [slice(None)]
    if heads is not None:
        units = sorted(check_heads(model, heads))
    else:
        chosen = range(model.cfg.n_layers) if layers is None else sorted({check_layer(model, l) for l in layers})
        per_layer = range(site_heads(model, site)) if spec.per_head else [ALL]
        units = [(layer, head) for layer in chosen for head in per_layer]
    return [Patch(layer, head, pos) for layer, head in units for pos in positions]


def _check_inputs(
    model: HookedTransformer,
    clean_tokens: Tensor,
    corrupted_tokens: Tensor,
    site: str,
    *,
    direction: str,
    heads: Sequence[tuple[int, int]] | None,
    layers: Sequence[int] | None,
    batch_size: int | None,
) -> None:
    spec = check_site(model, site)
    if direction not in DIRECTIONS:
        raise HeadkitError(f"unknown direction {direction!r}: allowed {', '.join(DIRECTIONS)}")
    check_tokens(model, clean_tokens, name="clean_tokens")
    check_tokens(model, corrupted_tokens, name="corrupted_tokens")
    if clean_tokens.shape != corrupted_tokens.shape:
        raise HeadkitError(
            f"clean_tokens shape {tuple(clean_tokens.shape)} != corrupted_tokens shape "
            f"{tuple(corrupted_tokens.shape)}: patching needs prompts of the same shape"
        )
    if heads is not None and layers is not None:
        raise HeadkitError("give heads or layers, not both")
    if heads is not None:
        if not spec.per_head:
            raise HeadkitError(f"heads= applies to head sites only; {site!r} is a layer site: use layers=")
        n = site_heads(model, site)
        for layer, head in check_heads(model, heads):
            if head >= n:
                raise HeadkitError(f"head {layer}.{head}: site {site!r} has heads 0..{n - 1} per layer")
        if not heads:
            raise HeadkitError("heads is empty: give at least one (layer, head)")
    if layers is not None:
        if not layers:
            raise HeadkitError("layers is empty: give at least one layer")
        for layer in layers:
            check_layer(model, layer)
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise HeadkitError(f"batch_size={batch_size!r} must be a positive integer")


def normalise(values: Tensor, *, base: float, source: float) -> Tensor:
    """``(values - base) / (source - base)``; NaN (with a warning) when source == base."""
    if source == base:
        logger.warning(
            "the clean and corrupted runs give the same metric (%g): normalised effects are NaN", base
        )
        return torch.full_like(values, float("nan"))
    return (values - base) / (source - base)


def activation_patching(
    model: HookedTransformer,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    *,
    site: str = "z",
    by_position: bool = False,
    direction: str = "denoise",
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
    _check_inputs(
        model, clean_tokens, corrupted_tokens, site,
        direction=direction, heads=heads, layers=layers, batch_size=batch_size,
    )  # fmt: skip
    device = model.cfg.device
    clean_tokens, corrupted_tokens = clean_tokens.to(device), corrupted_tokens.to(device)
    base_tokens, source_tokens = DIRECTIONS[direction](clean_tokens, corrupted_tokens)
    patches = _patches(
        model, site, by_position=by_position, length=clean_tokens.shape[1], heads=heads, layers=layers
    )
    names = sorted({SITES[site].hook_name(p.layer) for p in patches})

    with torch.no_grad():  # the clean run first: a metric without a scalar fails before the sweep
        clean_logits, clean_cache = model.run_with_cache(
            clean_tokens, names_filter=names, return_cache_object=False
        )
        check_finite(clean_logits, where="the logits of the clean run")
        clean_value = check_scalar(metric(clean_logits), where="metric on the clean run").item()
        corrupted_logits, corrupted_cache = model.run_with_cache(
            corrupted_tokens, names_filter=names, return_cache_object=False
        )
        check_finite(corrupted_logits, where="the logits of the corrupted run")
        corrupted_value = check_scalar(metric(corrupted_logits), where="metric on the corrupted run").item()
    base_value, source_value = DIRECTIONS[direction](clean_value, corrupted_value)
    _, sources = DIRECTIONS[direction](clean_cache, corrupted_cache)

    def evaluate(logits: Tensor) -> Tensor:
        return check_scalar(metric(logits), where="metric on a patched run")

    values = sweep_patches(
        model, base_tokens, sources, site, patches, evaluate, batch_size=batch_size, progress=progress
    )
    value = torch.stack(values).double().cpu() if values else torch.zeros(0, dtype=torch.float64)
    normalised = normalise(value, base=base_value, source=source_value)
    return pd.DataFrame(
        {
            "layer": [p.layer for p in patches],
            "head": [p.head for p in patches],
            "position": [ALL if isinstance(p.position, slice) else int(p.position) for p in patches],
            "value": value.numpy(),
            "normalised": normalised.numpy(),
        },
        columns=list(COLUMNS),
    )
