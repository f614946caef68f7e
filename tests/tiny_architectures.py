"""Tiny random Hugging Face causal LMs, one per architecture headkit's bridge tests cover.

Each entry builds a 2-layer model of a few thousand parameters from config alone
(no download), sized so every architecture's quirks are present: grouped-query
attention where the family has it, partial rotary, ALiBi, parallel blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import transformers

VOCAB = 64
COMMON = dict(vocab_size=VOCAB, num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)

# name -> (config class, model class, config fields)
CONFIGS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "gptj": ("GPTJConfig", "GPTJForCausalLM", dict(vocab_size=VOCAB, n_layer=2, n_embd=32, n_head=4, n_positions=64, rotary_dim=4)),
    "gpt_neo": ("GPTNeoConfig", "GPTNeoForCausalLM", dict(vocab_size=VOCAB, num_layers=2, hidden_size=32, num_heads=4, max_position_embeddings=64, attention_types=[[["global", "local"], 1]], window_size=4)),
    "opt": ("OPTConfig", "OPTForCausalLM", dict(vocab_size=VOCAB, num_hidden_layers=2, hidden_size=32, num_attention_heads=4, ffn_dim=64, max_position_embeddings=64, word_embed_proj_dim=32)),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(COMMON, rotary_pct=0.5)),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(vocab_size=VOCAB, n_layer=2, n_embd=32, n_head=4, n_positions=64)),
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(COMMON, num_key_value_heads=2)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(COMMON, num_key_value_heads=2)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(COMMON, num_key_value_heads=2)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(COMMON, num_key_value_heads=2, head_dim=8)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(COMMON, num_key_value_heads=2, pad_token_id=0)),
    "phi": ("PhiConfig", "PhiForCausalLM", dict(COMMON, partial_rotary_factor=0.5)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(COMMON, num_key_value_heads=2, head_dim=8)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(COMMON, num_key_value_heads=2, head_dim=8)),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(COMMON, num_key_value_heads=2, head_dim=8, sliding_window=4)),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", dict(COMMON, num_key_value_heads=2)),
    "falcon": ("FalconConfig", "FalconForCausalLM", dict(vocab_size=VOCAB, num_hidden_layers=2, hidden_size=32, num_attention_heads=4, new_decoder_architecture=False, multi_query=True, parallel_attn=True, alibi=False, bias=False)),
    "bloom": ("BloomConfig", "BloomForCausalLM", dict(vocab_size=VOCAB, n_layer=2, hidden_size=32, n_head=4)),
    "stablelm": ("StableLmConfig", "StableLmForCausalLM", dict(COMMON, num_key_value_heads=2, partial_rotary_factor=0.5)),
    "gpt_bigcode": ("GPTBigCodeConfig", "GPTBigCodeForCausalLM", dict(vocab_size=VOCAB, n_layer=2, n_embd=32, n_head=4, n_positions=64, multi_query=True)),
    "starcoder2": ("Starcoder2Config", "Starcoder2ForCausalLM", dict(COMMON, num_key_value_heads=2)),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(COMMON, num_key_value_heads=2, num_local_experts=2, num_experts_per_tok=1)),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", dict(COMMON, num_key_value_heads=2, num_experts=2, num_experts_per_tok=1, moe_intermediate_size=16, shared_expert_intermediate_size=16)),
}


def build(name: str, *, seed: int = 0) -> torch.nn.Module:
    """The tiny model ``name`` in eval mode, seeded, with eager attention (no fused kernel)."""
    config_class, model_class, fields = CONFIGS[name]
    config = getattr(transformers, config_class)(**fields)
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model: Callable[..., torch.nn.Module] = getattr(transformers, model_class)
        return model(config).eval()
