"""Ablation: what the output loses when heads stop doing their job.

A head's contribution to the residual stream is its output ``z`` (``hook_z``,
[batch, pos, head_index, d_head], before ``W_O``). Ablating a head replaces ``z``
(at every position, or at chosen ``positions``) with something that carries no
information about the prompt (SPEC 4; IOI uses mean ablation):

- ``method="zero"``: zeros. Simple, but zero may be far from anything the head
  ever outputs, so later layers see an off-distribution input.
- ``method="mean"``: the head's mean ``z`` over a ``reference`` batch, taken per
  position and averaged over the reference prompts, so it keeps what every prompt
  shares at that position and drops what is specific to one prompt (a reference
  of one prompt is warned about: its mean is that prompt).
- ``method="resample"``: the head's ``z`` on another prompt of the ``reference``
  batch, drawn with ``seed``: each prompt gets its own donor (distinct donors
  while the reference has at least as many prompts as the batch), never itself
  when the reference is the batch (possible from two prompts on).

``reference`` defaults to the ablated tokens themselves and must have their
length (mean and resample replace position ``t`` by the reference's position
``t``); zero ablation takes no reference.

`ablate` returns the logits, `ablate_metric` a metric of them (two functions, two
return types). `ablation_sweep` ablates each head alone (or a set together) and
tabulates a metric; `ablation_sweep_by_hop` breaks a per-prompt metric down by
the task's hop count. Single-head sweeps run through the activation patching
engine (`headkit.interventions.engine.sweep_patches`): an ablation is a patch whose
source is the replacement.

Sweep columns:

========  ==============================================================
layer     layer of the ablated head; -1 for a set ablated together
head      head index; -1 for a set ablated together
heads     the ablated head(s) as ``LAYER.HEAD`` joined by ``+``, e.g. ``0.1+3.0``
hop       (by-hop sweep only) the hop count of the prompts in this row
baseline  the metric without ablation
ablated   the metric with the head(s) ablated
delta     ``ablated - baseline``
========  ==============================================================

`attention_knockout` (Backward-chaining, SPEC 4) cuts one query->key edge of one
head: the post-softmax pattern entry is set to 0 (``hook_pattern``). By default
the row is *not* renormalised, so the head's output at that query simply loses
that key's contribution (the SPEC's "zero one edge"); with ``renormalise=True``
the remaining weights are rescaled to sum to 1, which is the same as masking the
edge's score to -inf before the softmax (the other common knockout, e.g. Geva
et al. 2023), i.e. the head redistributes its attention over the other keys.
"""

from __future__ import annotations

import inspect
import logging
from functools import partial
from typing import Any, Callable, Sequence

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from headkit.checks import (
    Head,
    check_finite,
    check_heads,
    check_layer,
    check_model,
    check_optional_int,
    check_position,
    check_seed,
    check_tokens,
)
from headkit.errors import HeadkitError
from headkit.interventions.engine import sweep_patches
from headkit.interventions.metrics import Metric, check_scalar, default_metric, scalar_metric
from headkit.interventions.sites import ABLATION_METHODS, DEFAULT_ABLATION_METHOD, Patch, hook_name
from headkit.model_types import Model
from headkit.tasks.base import TaskBatch, make_generator

logger = logging.getLogger(__name__)

SWEEP_COLUMNS = ("layer", "head", "heads", "baseline", "ablated", "delta")
HOP_COLUMNS = ("layer", "head", "heads", "hop", "baseline", "ablated", "delta")
SET = -1  # layer and head columns of a set of heads ablated together

Replacement = dict[str, Tensor]  # hook_z name -> replacement z [batch or 1, pos, head_index, d_head]


# --- what replaces z: one function per method ----------------------------------------


def _zero(model: Model, tokens: Tensor, layers: list[int], reference: Tensor, seed: int) -> Replacement:
    """Zeros, broadcast over the batch."""
    cfg = model.cfg
    shape = (1, tokens.shape[1], cfg.n_heads, cfg.d_head)  # [1, pos, head_index, d_head]
    return {hook_name("z", l): torch.zeros(shape, dtype=cfg.dtype, device=cfg.device) for l in layers}


def _reference_z(model: Model, reference: Tensor, layers: list[int]) -> Replacement:
    with torch.no_grad():
        _, cache = model.run_with_cache(
            reference.to(model.cfg.device),
            names_filter=[hook_name("z", l) for l in layers],
            stop_at_layer=max(layers) + 1,
            return_cache_object=False,
        )
    return cache


def _mean(model: Model, tokens: Tensor, layers: list[int], reference: Tensor, seed: int) -> Replacement:
    """Mean z over the reference prompts, per position, broadcast over the batch.

    A reference of one prompt is warned about, as resampling a prompt from itself
    is: the mean over one prompt is that prompt (from itself: every delta is 0).
    """
    if reference.shape[0] == 1:
        if reference.shape == tokens.shape and torch.equal(reference.cpu(), tokens.cpu()):
            logger.warning(
                "mean ablation of a single prompt from itself: the mean over one prompt is the prompt, "
                "so nothing is ablated (every delta is 0); give more prompts"
            )
        else:
            logger.warning("mean ablation over a single reference prompt: the mean over one prompt is that prompt's z")
    return {name: z.mean(0, keepdim=True) for name, z in _reference_z(model, reference, layers).items()}


def resample_donors(tokens: Tensor, reference: Tensor, *, seed: int) -> Int[Tensor, " batch"]:
    """For each prompt of ``tokens``, the index of the reference prompt it takes z from.

    Seeded. When the reference is the batch itself, a random cyclic order gives
    every prompt the next one in the cycle, never itself (from two prompts on);
    otherwise a random permutation of the reference, repeated if it is shorter.
    """
    gen = make_generator(check_seed(seed))
    batch, n_ref = tokens.shape[0], reference.shape[0]
    if reference.shape == tokens.shape and torch.equal(reference.cpu(), tokens.cpu()):
        if batch == 1:
            logger.warning("resample ablation of a single prompt from itself: nothing else to draw from")
            return torch.zeros(1, dtype=torch.long)
        order = torch.randperm(batch, generator=gen)
        donors = torch.empty(batch, dtype=torch.long)
        donors[order] = order.roll(-1)  # prompt order[i] takes order[i + 1]
        return donors
    repeats = -(-batch // n_ref)  # ceil(batch / n_ref)
    return torch.randperm(n_ref, generator=gen).repeat(repeats)[:batch]


def _resample(model: Model, tokens: Tensor, layers: list[int], reference: Tensor, seed: int) -> Replacement:
    """Each prompt's z replaced by its donor's z (see `resample_donors`)."""
    donors = resample_donors(tokens, reference, seed=seed).to(model.cfg.device)
    return {name: z[donors] for name, z in _reference_z(model, reference, layers).items()}


# method name (sites.ABLATION_METHODS) -> (model, tokens, layers, reference, seed) -> replacement z
METHODS: dict[str, Callable[[Model, Tensor, list[int], Tensor, int], Replacement]] = dict(
    zip(ABLATION_METHODS, (_zero, _mean, _resample))
)


# --- checks --------------------------------------------------------------------------


def _check_ablation(
    model: Model,
    tokens: Tensor,
    heads: Sequence[Sequence[int]],
    *,
    method: str,
    positions: Sequence[int] | None,
    reference: Tensor | None,
    seed: int,
) -> tuple[list[Head], list[int] | slice, Tensor]:
    """Validated heads, position index and reference; raises before any work."""
    if method not in METHODS:
        raise HeadkitError(f"unknown ablation method {method!r}: allowed {', '.join(METHODS)}")
    check_seed(seed)
    check_tokens(model, tokens)
    checked = check_heads(model, heads)
    length = tokens.shape[1]
    if positions is None:
        index: list[int] | slice = slice(None)
    else:
        if len(positions) == 0:
            raise HeadkitError("positions is empty: give at least one position, or None for all")
        index = [check_position(length, int(p), name="ablated position") for p in positions]
    if reference is None:
        reference = tokens
    elif method == "zero":
        raise HeadkitError("zero ablation takes no reference: pass reference only with method mean or resample")
    else:
        check_tokens(model, reference, name="reference")
        if reference.shape[1] != length:
            raise HeadkitError(
                f"reference length {reference.shape[1]} != tokens length {length}: {method} ablation "
                "replaces each position with the reference's value at the same position"
            )
    return checked, index, reference


# --- ablate --------------------------------------------------------------------------


def ablate(
    model: Model,
    tokens: Int[Tensor, "batch pos"],
    heads: Sequence[Sequence[int]],
    *,
    method: str = DEFAULT_ABLATION_METHOD,
    positions: Sequence[int] | None = None,
    reference: Int[Tensor, "ref_batch pos"] | None = None,
    seed: int = 0,
) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits of ``model`` on ``tokens`` with ``heads`` ((layer, head) pairs) ablated.

    ``positions``: ablate only there (None: everywhere). ``reference`` and ``seed``:
    see the module docstring. Ablating no heads returns the normal logits.
    """
    checked, index, reference = _check_ablation(
        model, tokens, heads, method=method, positions=positions, reference=reference, seed=seed
    )
    tokens = tokens.to(model.cfg.device)
    layers = sorted({layer for layer, _ in checked})
    if not layers:
        return model(tokens)
    replacement = METHODS[method](model, tokens, layers, reference, seed)

    def write(z: Float[Tensor, "batch pos head_index d_head"], hook, *, layer: int) -> Tensor:
        z = z.clone()  # never edit a tensor autograd may have saved
        for l, h in checked:
            if l == layer:
                z[:, index, h] = replacement[hook_name("z", l)][:, index, h]
        return z

    hooks = [(hook_name("z", l), partial(write, layer=l)) for l in layers]
    # TransformerLens 3.x types fwd_hooks as an invariant list[tuple[str | Callable, Callable]]
    with model.hooks(fwd_hooks=hooks):  # pyright: ignore[reportArgumentType]
        return model(tokens)


def ablate_metric(
    model: Model,
    tokens: Int[Tensor, "batch pos"],
    heads: Sequence[Sequence[int]],
    metric: Metric,
    *,
    method: str = DEFAULT_ABLATION_METHOD,
    positions: Sequence[int] | None = None,
    reference: Int[Tensor, "ref_batch pos"] | None = None,
    seed: int = 0,
) -> float:
    """``metric`` of the logits of `ablate` (same arguments), as a float."""
    logits = ablate(model, tokens, heads, method=method, positions=positions, reference=reference, seed=seed)
    check_finite(logits, where=f"ablate_metric: the logits with {_head_label(heads)} ablated")
    return check_scalar(metric(logits), where="ablate_metric: metric on the ablated run").item()


# --- sweeps --------------------------------------------------------------------------


def _head_label(heads: Sequence[Sequence[int]]) -> str:
    return "+".join(f"{l}.{h}" for l, h in heads)


def _sweep(
    model: Model,
    batch: TaskBatch,
    evaluate: Callable[[Tensor], Tensor],
    *,
    method: str,
    heads: Sequence[Sequence[int]] | None,
    reference: Tensor | None,
    together: bool,
    positions: Sequence[int] | None,
    seed: int,
    batch_size: int | None,
) -> tuple[Tensor, list[tuple[int, int, str, Tensor]]]:
    """Baseline and, per head (or for the set), the ablated ``evaluate`` output."""
    if heads is None:
        heads = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    checked, index, resolved_reference = _check_ablation(
        model, batch.tokens, heads, method=method, positions=positions, reference=reference, seed=seed
    )
    if not checked:
        raise HeadkitError("heads is empty: give at least one (layer, head), or None for all heads")
    check_optional_int("batch_size", batch_size)
    tokens = batch.tokens.to(model.cfg.device)
    with torch.no_grad():
        baseline = evaluate(check_finite(model(tokens), where="the logits without ablation")).detach()
    if together:
        label = _head_label(checked)
        with torch.no_grad():
            logits = ablate(model, tokens, checked, method=method, positions=positions, reference=reference, seed=seed)
            check_finite(logits, where=f"the logits with {label} ablated")
            return baseline, [(SET, SET, label, evaluate(logits).detach())]
    layers = sorted({l for l, _ in checked})
    replacement = METHODS[method](model, tokens, layers, resolved_reference, seed)
    patches = [Patch(l, h, index) for l, h in checked]
    ablated = sweep_patches(model, tokens, replacement, "z", patches, evaluate, batch_size=batch_size)
    return baseline, [(l, h, _head_label([(l, h)]), a) for (l, h), a in zip(checked, ablated)]


def ablation_sweep(
    model: Model,
    batch: TaskBatch,
    *,
    method: str = DEFAULT_ABLATION_METHOD,
    metric: Metric | None = None,
    heads: Sequence[Sequence[int]] | None = None,
    reference: Int[Tensor, "ref_batch pos"] | None = None,
    together: bool = False,
    positions: Sequence[int] | None = None,
    seed: int = 0,
    batch_size: int | None = None,
) -> pd.DataFrame:
    """Ablate each of ``heads`` alone (default: every head), or all of them ``together``.

    ``metric``: logits -> scalar; default `logit_diff` of the batch when it has
    ``wrong_answers``, else `answer_logprob`. ``batch_size`` caps the rows of one
    forward pass (heads of a layer run stacked, see `sweep_patches`). Columns: see
    the module docstring; one row per head, or one row for the set.
    """
    check_model(model)
    metric = metric if metric is not None else default_metric(batch, per_example=False)
    evaluate = scalar_metric(metric, where="ablation_sweep metric")
    baseline, rows = _sweep(
        model, batch, evaluate, method=method, heads=heads, reference=reference,
        together=together, positions=positions, seed=seed, batch_size=batch_size,
    )  # fmt: skip
    base = baseline.item()
    return pd.DataFrame(
        [(l, h, label, base, a.item(), a.item() - base) for l, h, label, a in rows],
        columns=list(SWEEP_COLUMNS),
    )


def ablation_sweep_by_hop(
    model: Model, batch: TaskBatch, *, metric: Metric | None = None, **options: Any
) -> pd.DataFrame:
    """`ablation_sweep` with the metric averaged separately over the prompts of each hop count.

    ``metric`` must be per-prompt (logits -> [batch]); default `logit_diff` (or
    `answer_logprob`) with ``per_example=True``. ``options``: the keyword options of
    `ablation_sweep` (``method, heads, reference, together, positions, seed,
    batch_size``), with its defaults. One row per head (or set) and hop.
    """
    options = _sweep_options(options)  # an unknown option is a TypeError, as in any call
    if batch.hops is None:
        raise HeadkitError(f"this {batch.task!r} batch has no hops: use ablation_sweep")
    metric = metric if metric is not None else default_metric(batch, per_example=True)

    def evaluate(logits: Tensor) -> Tensor:
        values = metric(logits)
        if not isinstance(values, Tensor) or values.shape != (batch.n,):
            shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise HeadkitError(
                f"ablation_sweep_by_hop: the metric must return one value per prompt, shape "
                f"({batch.n},), got {shape}: build it with per_example=True"
            )
        return check_finite(values, where="ablation_sweep_by_hop: the per-prompt metric values")

    baseline, rows = _sweep(model, batch, evaluate, **options)
    hops = batch.hops.to(baseline.device)
    records = []
    for l, h, label, ablated in rows:
        for hop in sorted(set(hops.tolist())):
            mask = hops == hop
            base, abl = baseline[mask].mean().item(), ablated[mask].mean().item()
            records.append((l, h, label, hop, base, abl, abl - base))
    return pd.DataFrame(records, columns=list(HOP_COLUMNS))


def _sweep_options(options: dict[str, Any]) -> dict[str, Any]:
    """`ablation_sweep`'s keyword options but ``metric``, its defaults filled in.

    The by-hop sweep takes the same options; reading them off `ablation_sweep`'s
    signature keeps one list of options and defaults for both.
    """
    bound = inspect.signature(ablation_sweep).bind(None, None, **options)
    bound.apply_defaults()
    return {name: value for name, value in bound.arguments.items() if name not in ("model", "batch", "metric")}


# --- attention knockout --------------------------------------------------------------


def attention_knockout(
    model: Model,
    tokens: Int[Tensor, "batch pos"],
    *,
    layer: int,
    head: int,
    query_pos: int,
    key_pos: int,
    renormalise: bool = False,
) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits with head ``layer.head``'s attention from ``query_pos`` to ``key_pos`` cut.

    Positions may be negative (from the end); the key must not come after the
    query (causal attention never looks ahead). ``renormalise``: see the module
    docstring.
    """
    check_tokens(model, tokens)
    check_layer(model, layer)
    check_heads(model, [(layer, head)])
    length = tokens.shape[1]
    query = check_position(length, query_pos, name="query_pos")
    key = check_position(length, key_pos, name="key_pos")
    if key > query:
        raise HeadkitError(
            f"key_pos {key_pos} (position {key}) comes after query_pos {query_pos} (position "
            f"{query}): causal attention only has edges to keys 0..{query}"
        )
    if renormalise and query == 0:
        raise HeadkitError(
            "renormalise=True needs another key to renormalise over, but query position 0 "
            "attends only to key 0: use renormalise=False or a later query"
        )

    def cut(pattern: Float[Tensor, "batch head_index query_pos key_pos"], hook) -> Tensor:
        pattern = pattern.clone()
        pattern[:, head, query, key] = 0.0
        if renormalise:
            row = pattern[:, head, query]  # [batch, key_pos]
            pattern[:, head, query] = row / row.sum(-1, keepdim=True)
        return pattern

    with model.hooks(fwd_hooks=[(hook_name("pattern", layer), cut)]):
        return model(tokens.to(model.cfg.device))
