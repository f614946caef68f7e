"""HookedTransformers for the tests that need one (TransformerLens 3.x; 4.0 removed it).

headkit's models are TransformerBridges (`headkit.models.model_from_config`); on
TransformerLens 3.x a user's own HookedTransformer still works in every analysis.
Tests of that path, and tests whose hand-built weights a GPT-J cannot hold (Q/K
biases, ``d_head`` other than ``d_model / n_heads``), build one here and carry
`needs_hooked`, which skips them — visibly, with its reason — on TransformerLens 4.x.
"""

from __future__ import annotations

from typing import Any

import pytest

from headkit.model_types import HookedTransformer, has_hooked_transformer

REASON = "builds a HookedTransformer, which TransformerLens 4 removed (the TransformerLens 3.9 run covers it)"
needs_hooked = pytest.mark.skipif(not has_hooked_transformer(), reason=REASON)


def hooked_gptj(
    n_layers: int = 2, d_model: int = 32, n_heads: int = 2, d_vocab: int = 40, n_ctx: int = 64, *, seed: int = 0,
    **sizes: Any,
) -> Any:
    """headkit's GPT-J architecture as a HookedTransformer (`headkit.models.gptj_config`), eval mode."""
    from headkit.model_config import ModelConfig
    from headkit.models import gptj_config

    if not has_hooked_transformer():
        pytest.skip(REASON)
    cfg = ModelConfig(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_vocab=d_vocab, n_ctx=n_ctx, **sizes)
    model = HookedTransformer(gptj_config(cfg, seed=seed))
    model.eval()
    return model


def hooked_model(**config: Any) -> Any:
    """``HookedTransformer(HookedTransformerConfig(**config))`` in eval mode (skipped on TransformerLens 4.x)."""
    if not has_hooked_transformer():
        pytest.skip(REASON)
    from transformer_lens import HookedTransformerConfig

    model = HookedTransformer(HookedTransformerConfig(**config))
    model.eval()
    return model


def hooked_from_hf_gptj(hf: Any) -> Any:
    """TransformerLens 3.9's own HookedTransformer of a Hugging Face GPT-J: its GPT-J config
    mapping and its ``convert_gptj_weights``, raw weights (no processing); an independent
    reference for headkit's bridge. Build it before the Hugging Face model is wrapped."""
    if not has_hooked_transformer():
        pytest.skip(REASON)
    from transformer_lens.pretrained.weight_conversions.gptj import convert_gptj_weights

    cfg = hooked_gptj_config(hf.config)
    model = HookedTransformer(cfg)
    model.load_and_process_state_dict(
        convert_gptj_weights(hf, cfg), fold_ln=False, center_writing_weights=False, center_unembed=False,
        fold_value_biases=False,
    )  # fmt: skip
    model.eval()
    return model


def hooked_gptj_config(c: Any) -> Any:
    """TransformerLens 3.9's GPT-J ``HookedTransformerConfig`` for a Hugging Face ``GPTJConfig``."""
    from transformer_lens import HookedTransformerConfig

    return HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, n_heads=c.n_head, d_head=c.n_embd // c.n_head,
        d_mlp=c.n_inner or 4 * c.n_embd, d_vocab=c.vocab_size, n_ctx=c.n_positions, act_fn=c.activation_function,
        eps=c.layer_norm_epsilon, normalization_type="LN", positional_embedding_type="rotary",
        rotary_dim=c.rotary_dim, rotary_adjacent_pairs=True, parallel_attn_mlp=True, device="cpu",
        default_prepend_bos=False,
    )  # fmt: skip
