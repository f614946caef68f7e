"""Attribution patching: a first-order estimate of activation patching for every head.

Activation patching (denoising) runs the corrupted input once per head with that
head's activation ``a`` replaced by its clean value, and reads the metric ``M``.
Attribution patching (Nanda 2023; Syed et al. 2023) replaces each of those runs
by the first term of a Taylor expansion around the corrupted run:

    M(patched) - M(corrupted)  ~=  (a_clean - a_corrupted) . dM/da |corrupted

where ``dM/da`` is the total derivative of the metric with respect to the
activation, every later computation depending on it included, evaluated on the
corrupted run; the dot product sums over batch, positions and the activation's
own features (``d_head``, or key positions for ``pattern``). Cost: one clean
forward (cache), one corrupted forward keeping the graph, one backward, for all
heads at once, instead of one forward per head.

The direction is *denoising* (the gradient is taken on the corrupted run, the
difference points from corrupted to clean), so ``value`` estimates activation
patching's ``patched - corrupted`` in its ``direction="denoise"``. The estimate
is exact for activations the metric depends on linearly and good when clean and
corrupted activations are close; it can be poor where attention patterns
saturate or the metric is far from linear (the known failure mode of the
method), so confirm the heads it ranks highest with exact patching. The metric
must be differentiable: ``accuracy`` is not.

Sites: ``z`` (head output before W_O, the default), ``q``, ``k``, ``v`` (after
the linear map, before rotary), ``pattern`` (post-softmax attention): the head
sites of `headkit.interventions.sites`. Not run through the stacked engine
(`headkit.interventions.engine`): one forward with gradients covers every head at
once, so there is nothing to stack.
"""

from __future__ import annotations

from functools import partial
from typing import cast

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.hook_points import HookPoint

from headkit.checks import check_finite, check_token_pair
from headkit.errors import HeadkitError
from headkit.interventions import sites
from headkit.interventions.metrics import Metric, run_value
from headkit.model_types import Model

# site -> (hook name inside blocks.{layer}.attn, axis of head_index in that activation): the
# head sites of headkit.interventions.sites
SITES: dict[str, tuple[str, int]] = {
    name: (sites.SITES[name].hook.removeprefix("attn."), sites.SITES[name].head_axis)  # type: ignore[misc]
    for name in sites.HEAD_SITES
}
COLUMNS = ("layer", "head", "value")


def _attach_leaf(
    act: Tensor, hook: HookPoint, *, leaves: dict[str, Tensor], values: dict[str, Tensor]
) -> Tensor:
    """Add a zero leaf to ``act``: its gradient is dM/d(act), and the graph stays intact."""
    leaf = torch.zeros_like(act, requires_grad=True)
    # every hook point of a model has its name (TransformerLens types HookPoint.name Optional)
    leaves[hook.name] = leaf  # pyright: ignore[reportArgumentType]
    values[hook.name] = act.detach()  # pyright: ignore[reportArgumentType]
    return act + leaf


def _per_head(product: Tensor, head_axis: int) -> Float[Tensor, " head_index"]:
    """Sum an activation-shaped tensor over every axis but ``head_axis``."""
    return product.movedim(head_axis, 0).flatten(1).sum(-1)  # [head_index]


def attribution_patching(
    model: Model,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    *,
    site: str = "z",
) -> pd.DataFrame:
    """First-order estimate of denoising activation patching, every head at once.

    Returns one row per head with columns ``layer, head, value``, where ``value``
    is ``sum((a_clean - a_corrupted) * dM/da)`` over that head's slice of the
    ``site`` activation, with the gradient taken on the corrupted run: an
    estimate of ``M(corrupted run with the head's clean activation) - M(corrupted)``.
    """
    if site not in SITES:
        raise HeadkitError(f"unknown site {site!r}: allowed {', '.join(SITES)}")
    check_token_pair(model, clean_tokens, corrupted_tokens)
    device = model.cfg.device
    clean_tokens, corrupted_tokens = clean_tokens.to(device), corrupted_tokens.to(device)
    head_axis = SITES[site][1]
    names = [sites.hook_name(site, layer) for layer in range(model.cfg.n_layers)]

    # forward 1: the clean activations
    with torch.no_grad():
        clean_logits, clean = model.run_with_cache(clean_tokens, names_filter=names, return_cache_object=False)
    check_finite(cast(Tensor, clean_logits), where="the logits of the clean run")

    # forward 2: the corrupted run, each activation plus a zero leaf to differentiate against
    leaves: dict[str, Tensor] = {}
    corrupted: dict[str, Tensor] = {}
    attach = partial(_attach_leaf, leaves=leaves, values=corrupted)
    with torch.enable_grad(), model.hooks(fwd_hooks=[(name, attach) for name in names]):
        value = run_value(metric, model(corrupted_tokens), run="the corrupted run")
    if not value.requires_grad:
        raise HeadkitError(
            "the metric is not differentiable (e.g. accuracy): attribution patching needs "
            "gradients; use logit_diff, answer_logprob or loss"
        )

    # backward: dM/da for every head's activation at once
    grads = torch.autograd.grad(value, [leaves[name] for name in names], allow_unused=True)

    rows = []
    for layer, (name, grad) in enumerate(zip(names, grads)):
        if grad is None:  # the metric does not depend on this activation
            grad = torch.zeros_like(corrupted[name])
        difference = check_finite(clean[name] - corrupted[name], where=f"the clean minus corrupted {name}")
        gradient = check_finite(grad, where=f"the metric's gradient at {name}")
        effect = _per_head(difference * gradient, head_axis)  # [head_index]
        rows += [(layer, head, float(v)) for head, v in enumerate(effect.tolist())]
    return pd.DataFrame(rows, columns=list(COLUMNS))
