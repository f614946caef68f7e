"""Is this model's attention hooked faithfully? A probe run on the loaded model.

headkit's analyses read attention through hooks: the swap metric (PosSym-2025) reads
``hook_pattern`` and reruns a block alone; rotary-frequency views read
``hook_rot_q``/``hook_rot_k``; discrepancy (PosSym-2026) reads the pre-softmax
``hook_attn_scores``; pattern patching writes ``hook_pattern``. TransformerLens's
bridge leaves some architectures' attention to Hugging Face's code, where these
hooks hold something else or nothing (GPT-J, GPT-Neo, OPT: post-softmax scores,
silent rotary hooks, dropped pattern edits). `probe` checks each property on the
model itself, with two short random prompts, before an analysis trusts it:

- ``pattern_fires``: ``hook_pattern`` holds layer 0's attention pattern;
- ``scores_pre_softmax``: softmax of ``hook_attn_scores`` equals ``hook_pattern`` and
  the scores are not themselves a pattern;
- ``rotary_hooks``: on a rotary model, ``hook_rot_q``/``hook_rot_k`` fire and differ
  from ``hook_q``/``hook_k`` past position 0 (None on a model without rotary);
- ``pattern_edits``: replacing layer 0's pattern with uniform attention changes the logits;
- ``block_alone``: every block rerun alone (`headkit.bridge.blocks.run_blocks`) on the
  cached residual gives the full forward's next residual.

`require` refuses an analysis whose needs fail, naming the architecture and the hook.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from headkit.bridge.blocks import record_block_inputs, run_blocks
from headkit.errors import HeadkitError
from headkit.model_types import is_bridge

TOLERANCE = 1e-4  # relative: float32 reruns of the same arithmetic agree far closer

# what each analysis reads -> the properties it needs
NEEDS: dict[str, tuple[str, ...]] = {
    "pattern": ("pattern_fires",),
    "swap": ("pattern_fires", "block_alone"),
    "rotary": ("rotary_hooks", "scores_pre_softmax"),
    "discrepancy": ("scores_pre_softmax",),
    "patch_pattern": ("pattern_edits",),
    "restart": ("block_alone",),
}

HOOKS = {
    "pattern_fires": "hook_pattern (the attention pattern)",
    "scores_pre_softmax": "hook_attn_scores (pre-softmax scores)",
    "rotary_hooks": "hook_rot_q/hook_rot_k (rotated queries and keys)",
    "pattern_edits": "hook_pattern (edits must reach the output)",
    "block_alone": "blocks[l] run alone (rotary embeddings and causal mask)",
}


@dataclass(frozen=True)
class Faithfulness:
    """What `probe` found; ``None`` where a property does not apply, or is unknown because the
    probe's activations were not finite."""

    architecture: str
    pattern_fires: bool
    scores_pre_softmax: bool | None
    rotary_hooks: bool | None
    pattern_edits: bool | None
    block_alone: bool | None

    def failing(self, needs: tuple[str, ...]) -> list[str]:
        return [need for need in needs if getattr(self, need) is False]

    @property
    def faithful(self) -> bool:
        return not self.failing(tuple(HOOKS))


def architecture_of(model: Any) -> str:
    cfg = model.cfg
    return str(getattr(cfg, "architecture", None) or getattr(cfg, "original_architecture", None) or type(model).__name__)


def _close(a: Tensor, b: Tensor) -> bool:
    scale = max(b.abs().max().item(), 1e-6)
    return bool(torch.isfinite(a).all()) and (a - b).abs().max().item() <= TOLERANCE * scale


def _probe_tokens(model: Any, n_pos: int) -> Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, model.cfg.d_vocab, (2, n_pos), generator=generator).to(model.cfg.device)


@torch.no_grad()
def probe(model: Any, *, n_pos: int = 8) -> Faithfulness:
    """Check the four properties on ``model`` (a bridge or a HookedTransformer)."""
    tokens = _probe_tokens(model, min(n_pos, model.cfg.n_ctx))
    with record_block_inputs(model, batch=tokens.shape[0], n_pos=tokens.shape[1]) as inputs:
        logits, cache = model.run_with_cache(tokens)
    layer0 = "blocks.0.attn."
    if not bool(torch.isfinite(logits).all()):
        # activations that are not finite (e.g. a negative LayerNorm epsilon) compare with nothing:
        # each value check is unknown (None), and the analysis itself names the non-finite activation
        pattern = cache.cache_dict.get(layer0 + "hook_pattern")
        return Faithfulness(architecture_of(model), pattern is not None, None, None, None, None)  # type: ignore[arg-type]
    scores, pattern = cache.cache_dict.get(layer0 + "hook_attn_scores"), cache.cache_dict.get(layer0 + "hook_pattern")
    pattern_fires = pattern is not None
    pre_softmax = (
        scores is not None
        and pattern is not None
        and _close(torch.softmax(scores.float(), dim=-1), pattern.float())
        and not _close(scores.float(), pattern.float())
    )

    rotary: bool | None = None
    if getattr(model.cfg, "positional_embedding_type", None) == "rotary":
        fired = layer0 + "hook_rot_q" in cache and layer0 + "hook_rot_k" in cache
        rotary = fired and not _close(cache[layer0 + "hook_rot_q"][:, 1:], cache[layer0 + "hook_q"][:, 1:])

    def uniform(p: Tensor, hook: Any) -> Tensor:
        visible = torch.ones_like(p).tril().bool()  # uniform over the causal keys
        return visible.to(p.dtype) / visible.sum(-1, keepdim=True).clamp(min=1)

    edited = model.run_with_hooks(tokens, fwd_hooks=[(layer0 + "hook_pattern", uniform)])
    pattern_edits = not torch.equal(edited, logits)

    block_alone = True
    for layer in range(model.cfg.n_layers):
        alone = run_blocks(model, cache[f"blocks.{layer}.hook_resid_pre"], layer, layer + 1, inputs=inputs)
        block_alone = block_alone and _close(alone, cache[f"blocks.{layer}.hook_resid_post"])
    return Faithfulness(architecture_of(model), pattern_fires, pre_softmax, rotary, pattern_edits, block_alone)


_PROBED: weakref.WeakKeyDictionary[Any, Faithfulness] = weakref.WeakKeyDictionary()


def faithfulness(model: Any) -> Faithfulness:
    """`probe`'s verdict for ``model``, probed once per model object (forgotten with the model)."""
    if model in _PROBED:
        return _PROBED[model]
    verdict = probe(model)
    if verdict.scores_pre_softmax is not None:  # a verdict of finite activations: kept
        _PROBED[model] = verdict
    return verdict


def require(model: Any, analysis: str) -> None:
    """Refuse ``analysis`` (a key of `NEEDS`) on a model whose hooks it needs are not faithful."""
    if not is_bridge(model):
        return  # a HookedTransformer computes attention itself: every hook is in place
    failing = faithfulness(model).failing(NEEDS[analysis])
    if failing:
        raise HeadkitError(
            f"{analysis} needs {', '.join(HOOKS[f] for f in failing)}, which TransformerLens's bridge for "
            f"{architecture_of(model)} does not provide faithfully; headkit refuses rather than return a wrong table"
        )
