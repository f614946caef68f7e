"""Wrap a Hugging Face causal LM in TransformerLens's `TransformerBridge`, in place.

`wrap` is the one way headkit turns a Hugging Face model into the model its analyses
read: the same module (no copy, no weight conversion, no tokenizer or hub lookup)
seen through TransformerLens's hook names, in compatibility mode
(HookedTransformer's names: ``hook_resid_pre``, ``hook_z``, ``hook_pattern`` …)
and without weight processing unless asked. Works on TransformerLens 3.9 and 4.x,
which both ship the bridge.

Where TransformerLens's own adapter leaves attention to Hugging Face's code and so
cannot show what headkit reads (GPT-J: post-softmax ``hook_attn_scores``, silent
rotary hooks, dropped pattern edits), `wrap` swaps in headkit's attention
(`headkit.bridge.attention`); `HEADKIT_ATTENTION` lists those architectures. Every
other architecture keeps TransformerLens's adapter, and `headkit.bridge.probe` says,
per model, which hooks are faithful.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.model_bridge.sources import build_bridge_from_module

from headkit.bridge.attention import GPTJAttention
from headkit.bridge.probe import faithfulness
from headkit.errors import HeadkitError


@dataclass(frozen=True)
class Processing:
    """Which of TransformerLens's weight-processing steps to apply (``from_pretrained``'s meaning;
    ``TransformerBridge.enable_compatibility_mode`` takes the same four flags)."""

    fold_ln: bool = False
    center_writing_weights: bool = False
    center_unembed: bool = False
    fold_value_biases: bool = False

    @property
    def needed(self) -> bool:
        return self.fold_ln or self.center_writing_weights or self.center_unembed or self.fold_value_biases


PROCESSING_FLAGS = tuple(f.name for f in dataclasses.fields(Processing))


def _gptj_attention(adapter: Any) -> None:
    """Replace the adapter's GPT-J attention with headkit's (same weights, every hook in place)."""
    blocks = adapter.component_mapping["blocks"]
    stock = blocks.submodules["attn"]
    blocks.submodules["attn"] = GPTJAttention(name=stock.name, config=adapter.cfg, submodules=stock.submodules)
    adapter.cfg.rotary_adjacent_pairs = True  # GPT-J's rotate_every_two (TransformerLens reads False)


# architecture (Hugging Face's class name) -> what `wrap` changes in TransformerLens's adapter
HEADKIT_ATTENTION: dict[str, Callable[[Any], None]] = {
    "GPTJForCausalLM": _gptj_attention,
}


def architecture_name(hf_model: torch.nn.Module) -> str:
    """The Hugging Face architecture of ``hf_model`` (its config's, else its class name)."""
    names = getattr(getattr(hf_model, "config", None), "architectures", None) or []
    return names[0] if names else type(hf_model).__name__


def wrap(
    hf_model: torch.nn.Module,
    *,
    tokenizer: Any = None,
    processing: bool | Processing = False,
    model_name: str = "headkit",
) -> TransformerBridge:
    """``hf_model`` as a `TransformerBridge` in compatibility mode, wrapped in place.

    ``processing=True`` folds LayerNorms, centres writing weights and the unembedding
    and folds value biases, as ``enable_compatibility_mode()`` does by default
    (log-probabilities unchanged); a `Processing` picks steps one by one. The default
    keeps the raw weights, so the bridge computes what ``hf_model`` computes. The
    model is put in eval mode. A ``tokenizer`` is attached as ``bridge.tokenizer``.
    """
    if not isinstance(hf_model, torch.nn.Module) or not hasattr(hf_model, "config"):
        raise HeadkitError(f"wrap needs a Hugging Face model (a torch module with a config), got {type(hf_model).__name__}")
    architecture = architecture_name(hf_model)
    config: Any = hf_model.config  # torch types a module's attributes Tensor | Module
    config.architectures = [architecture]
    try:
        bridge = build_bridge_from_module(
            hf_model,
            architecture,
            hf_config=hf_model.config,
            tokenizer=None,
            model_name=model_name,
            post_adapter_hook=HEADKIT_ATTENTION.get(architecture),
        )
    except (ValueError, KeyError, NotImplementedError) as exc:
        raise HeadkitError(f"TransformerLens has no bridge for architecture {architecture}: {exc}") from exc
    steps = processing if isinstance(processing, Processing) else Processing(**dict.fromkeys(PROCESSING_FLAGS, bool(processing)))
    flags = {flag: getattr(steps, flag) for flag in PROCESSING_FLAGS}
    bridge.enable_compatibility_mode(disable_warnings=True, no_processing=not steps.needed, **flags)
    if tokenizer is not None:
        attach_tokenizer(bridge, tokenizer)
    bridge.eval()
    weight = next(hf_model.parameters(), None)
    if weight is not None and weight.device.type != "meta" and not (weight.dtype == torch.bfloat16 and weight.device.type == "cpu"):
        # probed now, on the model as built: an analysis's checks later cost no forward pass
        # (bf16 on a CPU is probed at first use: some CPUs cannot multiply bf16 matrices;
        # a model on the meta device holds no values to probe)
        faithfulness(bridge)
    return bridge


def attach_tokenizer(bridge: TransformerBridge, tokenizer: Any) -> None:
    """Give ``bridge`` an in-memory tokenizer (TransformerLens's own setup looks its name up on the hub).

    As HookedTransformer's ``set_tokenizer``: a tokenizer without a BOS (or padding) token
    uses its EOS token, and ``cfg.tokenizer_prepends_bos`` records whether encoding adds a token by
    itself (otherwise the bridge's ``to_tokens`` would drop each prompt's first word).
    """
    eos = getattr(tokenizer, "eos_token", None)
    if getattr(tokenizer, "bos_token", None) is None and eos is not None:
        tokenizer.bos_token = eos
    if getattr(tokenizer, "pad_token", None) is None and eos is not None:
        tokenizer.pad_token = eos  # to_tokens pads a batch of prompts
    bridge.tokenizer = tokenizer
    bridge.cfg.tokenizer_prepends_bos = len(tokenizer.encode("")) > 0


