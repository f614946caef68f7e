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

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.model_bridge.sources import build_bridge_from_module

from headkit.bridge.attention import GPTJAttention
from headkit.errors import HeadkitError


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
    processing: bool = False,
    model_name: str = "headkit",
) -> TransformerBridge:
    """``hf_model`` as a `TransformerBridge` in compatibility mode, wrapped in place.

    ``processing=True`` folds LayerNorms and centres weights as
    ``enable_compatibility_mode()`` does by default (log-probabilities unchanged);
    the default keeps the raw weights, so the bridge computes what ``hf_model``
    computes. The model is put in eval mode.
    """
    if not isinstance(hf_model, torch.nn.Module) or not hasattr(hf_model, "config"):
        raise HeadkitError(f"wrap needs a Hugging Face model (a torch module with a config), got {type(hf_model).__name__}")
    architecture = architecture_name(hf_model)
    hf_model.config.architectures = [architecture]
    try:
        bridge = build_bridge_from_module(
            hf_model,
            architecture,
            hf_config=hf_model.config,
            tokenizer=tokenizer,
            model_name=model_name,
            post_adapter_hook=HEADKIT_ATTENTION.get(architecture),
        )
    except (ValueError, KeyError, NotImplementedError) as exc:
        raise HeadkitError(f"TransformerLens has no bridge for architecture {architecture}: {exc}") from exc
    bridge.enable_compatibility_mode(disable_warnings=True, no_processing=not processing)
    bridge.eval()
    return bridge


def boot(directory: str | Path, *, dtype: torch.dtype = torch.float32, device: str | None = None, tokenizer: Any = None, processing: bool = False) -> TransformerBridge:
    """A local Hugging Face directory as a bridge: ``from_pretrained`` offline, then `wrap`.

    Nothing is fetched (``local_files_only``) and no code from the directory runs
    (``trust_remote_code=False``; a config with an ``auto_map`` is refused). Before
    transformers builds anything, the config's sizes are checked against the weight
    files' headers (`headkit.loading.files`), as `load_pretrained` does.
    """
    from transformers import AutoModelForCausalLM

    from headkit.loading.files import check_config_sizes, open_weight_files, read_hf_config

    path = Path(directory)
    raw = read_hf_config(path)  # refuses a missing config, an auto_map, non-positive sizes
    check_config_sizes(raw, path / "config.json", open_weight_files(path))
    hf_model = AutoModelForCausalLM.from_pretrained(
        path, local_files_only=True, trust_remote_code=False, torch_dtype=dtype
    )
    if device is not None:
        hf_model.to(device)
    return wrap(hf_model, tokenizer=tokenizer, processing=processing, model_name=path.name)
