"""Edits the tests make to a model, written once for a HookedTransformer and a bridge."""

from __future__ import annotations

from typing import Any


def negative_eps(model: Any) -> Any:
    """A negative LayerNorm epsilon (as a config.json can set): every weight finite, every
    normalised activation NaN. A HookedTransformer's LayerNorms read their module's ``eps``;
    a bridge's read its TransformerLens config's ``eps``."""
    for module in model.modules():
        if hasattr(module, "eps"):
            module.eps = -10.0
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "eps"):
            config.eps = -10.0
    model.cfg.eps = -10.0
    return model


def logits_from(model: Any, tokens: Any, resid: Any, start: int) -> Any:
    """The logits of ``resid`` [batch, pos, d_model] fed to block ``start`` and on, for a slow
    reference: ``start_at_layer`` on a HookedTransformer; on a bridge (which has none) its
    blocks rerun with the inputs of a forward of ``tokens`` (`headkit.bridge.blocks`, whose
    runs the probe checks against the full forward)."""
    from headkit.bridge.blocks import recorded_inputs, run_blocks, unembed
    from headkit.model_types import is_bridge

    if not is_bridge(model):
        return model(resid, start_at_layer=start)
    return unembed(model, run_blocks(model, resid, start, inputs=recorded_inputs(model, tokens)))


def bias(value: Any) -> Any:
    """A bias, or 0 where a bridge has none (TransformerLens gives ``None`` for an absent bias)."""
    return 0.0 if value is None else value


def livelier(model: Any, scale: float = 8.0) -> Any:
    """Every weight matrix of ``model`` times ``scale``, in place; returns it.

    Hugging Face initialises GPT-J's matrices with std 0.02, so in a tiny random model
    one head's effect on a metric is ~1e-6, near float32 noise; scaled up, heads
    attend sharply and patching effects are far above rounding (what the tests of
    interventions need to tell right from wrong)."""
    import torch

    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.mul_(scale)
    return model


def block_pattern(model: Any, tokens: Any, resid: Any, layer: int) -> Any:
    """Layer ``layer``'s attention pattern when its block alone runs on ``resid`` [batch, pos,
    d_model]: ``start_at_layer``/``stop_at_layer`` on a HookedTransformer; on a bridge the
    block reruns with the inputs of a forward of ``tokens`` (same length)."""
    from headkit.bridge.blocks import recorded_inputs, run_blocks
    from headkit.model_types import is_bridge

    if not is_bridge(model):
        _, cache = model.run_with_cache(resid, start_at_layer=layer, stop_at_layer=layer + 1)
        return cache["pattern", layer]
    kept: dict[str, Any] = {}
    inputs = recorded_inputs(model, tokens)
    with model.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_pattern", lambda p, hook: kept.setdefault("p", p.detach()))]):
        run_blocks(model, resid, layer, layer + 1, inputs=inputs)
    return kept["p"]


def forbid_forward(monkeypatch: Any, error: BaseException) -> None:
    """Every forward of a model raises ``error``, except the faithfulness probe a bridge gets when
    it is wrapped (stubbed as faithful without running), so that loading succeeds and only the
    analysis's own forward passes meet ``error``."""
    from transformer_lens.model_bridge import TransformerBridge

    from headkit.bridge import probe as probe_mod
    from headkit.model_types import HookedTransformer

    def forward(*args: Any, **kwargs: Any) -> Any:
        raise error

    faithful = probe_mod.Faithfulness("stub", True, True, True, True, True)
    monkeypatch.setattr(probe_mod, "probe", lambda model, **kwargs: faithful)
    monkeypatch.setattr(TransformerBridge, "forward", forward)
    if HookedTransformer is not None:
        monkeypatch.setattr(HookedTransformer, "forward", forward)
