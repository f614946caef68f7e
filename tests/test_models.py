"""GPT-J-style model builder: architecture choices, seeding, validation."""

from __future__ import annotations

import pytest
import torch

from headkit.errors import HeadkitError
from headkit.model_config import ModelConfig, resolve_dtype
from headkit.models import check_fits_context, gptj_model, model_from_config


def test_architecture_is_gptj():
    model = gptj_model(n_layers=2, d_model=32, n_heads=4, d_vocab=50, n_ctx=64, rotary_dim=4)
    cfg = model.cfg
    assert cfg.positional_embedding_type == "rotary"
    assert cfg.rotary_adjacent_pairs is True
    assert cfg.parallel_attn_mlp is True
    assert cfg.normalization_type == "LN"
    assert cfg.act_fn == "gelu_new"
    assert cfg.rotary_dim == 4 and cfg.d_head == 8 and cfg.d_mlp == 128
    # parallel attention + MLP: no residual stream between them
    assert "blocks.0.hook_resid_mid" not in model.hook_dict
    assert model.cfg.default_prepend_bos is False


def test_same_seed_same_weights_and_different_seed_differs():
    a = gptj_model(n_layers=1, d_model=16, d_vocab=20, n_ctx=16, seed=3)
    b = gptj_model(n_layers=1, d_model=16, d_vocab=20, n_ctx=16, seed=3)
    c = gptj_model(n_layers=1, d_model=16, d_vocab=20, n_ctx=16, seed=4)
    for (name, pa), (_, pb), (_, pc) in zip(
        a.named_parameters(), b.named_parameters(), c.named_parameters()
    ):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.W_E, c.W_E)


def test_attn_only_mlps_add_nothing():
    """Hugging Face's GPT-J always has an MLP: an attention-only model's is one unit wide, zero and
    frozen, its output exactly zero, and the config says attn_only (so no analysis offers an MLP site)."""
    model = gptj_model(n_layers=2, d_model=16, d_vocab=20, n_ctx=16, attn_only=True)
    mlp = [p for name, p in model.original_model.named_parameters() if ".mlp." in name]
    assert mlp and all(not p.any() and not p.requires_grad and p.shape[0] in (1, 16) for p in mlp)
    assert model.cfg.attn_only
    logits, cache = model.run_with_cache(torch.randint(0, 20, (2, 7)))
    assert logits.shape == (2, 7, 20)
    assert all(not cache[f"blocks.{l}.hook_mlp_out"].any() for l in range(2))


def test_rotary_is_relative_position_only():
    """Rotary attention logits depend on the offset between query and key, not on where they are."""
    model = gptj_model(n_layers=1, d_model=16, n_heads=1, d_vocab=20, n_ctx=32, attn_only=True, seed=1)
    tokens = torch.randint(0, 20, (1, 6))
    padded = torch.cat([torch.randint(0, 20, (1, 5)), tokens], dim=1)
    # A causal model sees only its prefix: shifting by a prefix changes no logit
    # between the same two tokens at the same offset.
    _, c1 = model.run_with_cache(tokens, names_filter="blocks.0.attn.hook_attn_scores")
    _, c2 = model.run_with_cache(padded, names_filter="blocks.0.attn.hook_attn_scores")
    s1 = c1["blocks.0.attn.hook_attn_scores"][0, 0]  # [q, k]
    s2 = c2["blocks.0.attn.hook_attn_scores"][0, 0, 5:, 5:]
    mask = torch.tril(torch.ones(6, 6, dtype=torch.bool))
    torch.testing.assert_close(s1[mask], s2[mask], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(n_layers=0), "n_layers=0"),
        (dict(d_model=30, n_heads=4), "not divisible by n_heads=4"),
        (dict(rotary_dim=3), "rotary_dim=3"),
        (dict(rotary_dim=128), "rotary_dim=128"),
        (dict(d_vocab=-1), "d_vocab=-1"),
    ],
)
def test_bad_sizes_name_the_parameter(kwargs, fragment):
    with pytest.raises(HeadkitError, match=fragment):
        ModelConfig(**kwargs)


def test_config_round_trip_and_unknown_fields():
    cfg = ModelConfig(n_layers=3, d_model=32, n_heads=2, d_vocab=10, n_ctx=40, rotary_dim=8)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(HeadkitError, match="unknown model config fields: colour"):
        ModelConfig.from_dict({**cfg.to_dict(), "colour": "red"})
    model = model_from_config(cfg)
    assert model.cfg.rotary_dim == 8 and model.cfg.n_ctx == 40


def test_dtype_and_context_checks():
    assert resolve_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(HeadkitError, match="'float64' is not supported"):
        resolve_dtype("float64")
    model = gptj_model(n_layers=1, d_model=16, d_vocab=20, n_ctx=16)
    check_fits_context(model, 16)
    with pytest.raises(HeadkitError, match="length 17 exceeds the model's context n_ctx=16"):
        check_fits_context(model, 17)
