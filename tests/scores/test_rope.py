"""Per-RoPE-frequency swap scores (SPEC 3.1, last point).

References: TransformerLens's own rotary tables and attention scores (the
components must add up to the head's logits), per-component patterns recomputed
from `run_with_cache`, and a hand-built head whose fast rotary pairs attend to
the previous token while its unrotated part looks up content.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers.models.gptj import modeling_gptj

from headkit.errors import HeadkitError
from headkit.model_types import has_hooked_transformer
from headkit.scores.rope import (
    ROPE_COLUMNS,
    average_over_prompts,
    component_rows,
    rope_frequency_scores,
    rotary_components,
)

from hooked import hooked_gptj, hooked_model

N_SYMBOLS = 8


def test_components_match_transformer_lens_rotary_tables(tiny_gptj):
    model = tiny_gptj(d_model=32, n_heads=2, rotary_dim=8)  # d_head 16: 4 pairs + nope
    names, membership, thetas = rotary_components(model)
    assert names == ["f0", "f1", "f2", "f3", "nope"]
    assert membership.sum(0).tolist() == [1.0] * 16  # every dim in exactly one component
    # the angle Hugging Face's GPT-J turns dims (2f, 2f+1) by between positions 0 and 1 (its
    # sinusoid table: sin of every frequency, then cos); a HookedTransformer's own tables
    table = modeling_gptj.create_sinusoidal_positions(2, 8)[1]  # [rotary_dim]: sin then cos at position 1
    sin, cos = table[:4], table[4:]
    hooked = hooked_gptj(d_model=32, n_heads=2, rotary_dim=8) if has_hooked_transformer() else None
    for f in range(4):
        assert membership[f, 2 * f] == 1 and membership[f, 2 * f + 1] == 1
        assert thetas[f] == pytest.approx(math.atan2(float(sin[f]), float(cos[f])), rel=1e-5)
        if hooked is not None:
            attn = hooked.blocks[0].attn
            angle = math.atan2(float(attn.rotary_sin[1, 2 * f]), float(attn.rotary_cos[1, 2 * f]))
            assert thetas[f] == pytest.approx(angle, rel=1e-5)
    assert math.isnan(thetas[4])


def test_component_patterns_sum_to_head_logits_and_match_cache(tiny_gptj):
    model = tiny_gptj(n_layers=2, d_model=32, n_heads=2, rotary_dim=8, d_vocab=20)
    tokens = torch.randint(0, 20, (3, 10), generator=torch.Generator().manual_seed(0))
    q_pos = 7
    names, membership, _ = rotary_components(model)
    heads = [(0, 1), (1, 0)]
    got = component_rows(model, heads, q_pos, membership)(tokens)  # [batch, head*comp, key]
    assert got.shape == (3, len(heads) * len(names), 10)
    _, cache = model.run_with_cache(tokens)
    for k, (layer, head) in enumerate(heads):
        q = cache["rot_q", layer][:, q_pos, head]  # [batch, d_head]
        keys = cache["rot_k", layer][:, : q_pos + 1, head]  # [batch, key, d_head]
        scale = math.sqrt(model.cfg.d_head)
        parts = [(q[:, None, :] * keys * membership[c]).sum(-1) / scale for c in range(len(names))]
        # the split is exact: components add up to the head's own attention scores
        total = torch.stack(parts).sum(0)
        assert torch.allclose(total, cache["attn_scores", layer][:, head, q_pos, : q_pos + 1], atol=1e-5)
        for c, logits in enumerate(parts):
            row = got[:, k * len(names) + c]
            assert torch.allclose(row[:, : q_pos + 1], torch.softmax(logits, -1), atol=1e-6)
            assert (row[:, q_pos + 1 :] == 0).all()


def test_handbuilt_fast_pair_is_positional_and_unrotated_part_symbolic(lookup_model, lookup_prompts):
    # one head that is two heads in one: rotary pair f0 (θ = 1 rad/position) alone scores
    # offset k by amp²/4 · cos(1 - k), previous token (and offset 7, cos(-6) = 0.96)
    # whatever the content; the unrotated dims look up content; pairs f1..f3 are zero
    model = lookup_model(n_symbols=N_SYMBOLS, n_heads=1, n_ctx=64, positional={0: (0,)}, content_heads=(0,))
    tokens = lookup_prompts(5, n_symbols=N_SYMBOLS)
    df = rope_frequency_scores(model, tokens)
    assert list(df.columns) == ROPE_COLUMNS
    assert len(df) == 5 * 5
    mean = average_over_prompts(df).set_index("component")
    f0, nope = mean.loc["f0"], mean.loc["nope"]
    assert f0["positional_score"] - f0["symbolic_score"] > 0.8
    assert nope["symbolic_score"] - nope["positional_score"] > 0.8
    assert f0["frequency"] == pytest.approx(1.0) and math.isnan(nope["frequency"])
    assert f0["signal"] > 0.3 and nope["signal"] > 0.9
    for unused in ("f1", "f2", "f3"):  # zero q and k: uniform pattern, no signal
        assert mean.loc[unused, "signal"] < 1e-6
    assert (mean["n_prompts"] == 5).all()


def test_non_rotary_model_is_refused():
    cfg = dict(
        n_layers=1, d_model=16, n_heads=2, d_head=8, n_ctx=16, d_vocab=10,
        attn_only=True, positional_embedding_type="standard", act_fn="gelu",
    )
    model = hooked_model(**cfg)
    with pytest.raises(HeadkitError, match="rotary"):
        rope_frequency_scores(model, torch.zeros(1, 5, dtype=torch.long))


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"heads": [(0, 3)]}, ["head 3", "0..1"]),
        ({"query_pos": -20}, ["query_pos -20", "-9..8"]),
        ({"block_size": 5}, ["block_size=5"]),
    ],
)
def test_bad_options_raise(tiny_gptj, kwargs, words):
    model = tiny_gptj(d_vocab=12, rotary_dim=8)
    tokens = torch.randint(0, 12, (2, 9), generator=torch.Generator().manual_seed(0))
    with pytest.raises(HeadkitError) as err:
        rope_frequency_scores(model, tokens, **kwargs)
    for w in words:
        assert w in str(err.value)


# ---------------------------------------------------------------------------
# frequency use (PosSym-2026 Table 1)


def test_frequency_use_splits_the_largest_logit_as_transformer_lens_computes_it(tiny_gptj):
    from headkit.scores.rope import USE_COLUMNS, rope_frequency_use

    model = tiny_gptj(n_layers=2, d_model=32, n_heads=2, rotary_dim=8, d_vocab=20)
    tokens = torch.randint(0, 20, (5, 10), generator=torch.Generator().manual_seed(4))
    use = rope_frequency_use(model, tokens, query_pos=7, batch_size=2)
    assert list(use.columns) == USE_COLUMNS
    names, membership, thetas = rotary_components(model)
    assert len(use) == 4 * len(names)
    _, cache = model.run_with_cache(tokens)
    scale = math.sqrt(model.cfg.d_head)
    for layer in range(2):
        for head in range(2):
            scores = cache["attn_scores", layer][:, head, 7, :8]  # [batch, key<=query]
            best = scores.argmax(-1)
            q = cache["rot_q", layer][:, 7, head]  # [batch, d_head]
            k = cache["rot_k", layer][torch.arange(5), best, head]  # [batch, d_head]
            want = torch.stack([(q * k * membership[c]).sum(-1) / scale for c in range(len(names))], -1)
            assert torch.allclose(want.sum(-1), scores.max(-1).values, atol=1e-5)  # parts add up
            got = use[(use.layer == layer) & (use["head"] == head)]
            assert got["component"].tolist() == names
            np.testing.assert_allclose(got["value"].to_numpy(), want.mean(0).numpy(), atol=1e-5)
            np.testing.assert_allclose(got["theta"].to_numpy(), thetas, equal_nan=True)


def test_frequency_use_finds_the_frequency_a_handbuilt_head_uses(lookup_model, lookup_prompts):
    from headkit.scores.rope import dominant_frequency, rope_frequency_use

    # head 0: previous token through pair f1 (θ = 0.1 rad/position); head 1: content lookup (nope)
    model = lookup_model(n_symbols=N_SYMBOLS, n_heads=2, n_ctx=64, positional={0: (1,)}, content_heads=(1,))
    tokens = lookup_prompts(6, n_symbols=N_SYMBOLS)
    best = dominant_frequency(rope_frequency_use(model, tokens))
    assert best["component"].tolist() == ["f1", "nope"]
    assert best["theta"].iloc[0] == pytest.approx(0.1)


def test_frequency_use_warns_on_nan_weights(tiny_gptj):
    from headkit.scores.rope import rope_frequency_use

    model = tiny_gptj(n_layers=2, d_vocab=12, rotary_dim=8)
    with torch.no_grad():
        model.blocks[0].attn.W_K[1, 0, 0] = math.nan
    tokens = torch.randint(0, 12, (3, 6), generator=torch.Generator().manual_seed(0))
    with pytest.warns(RuntimeWarning, match="heads 0.1"):
        use = rope_frequency_use(model, tokens)
    assert use[(use.layer == 0) & (use["head"] == 1)]["value"].isna().all()
    assert use[use.layer == 1]["value"].notna().all()


def test_frequency_scores_mark_nan_weights(tiny_gptj):
    model = tiny_gptj(n_layers=1, d_vocab=12, rotary_dim=8)
    with torch.no_grad():
        model.blocks[0].attn.W_Q[0, 0, 0] = math.nan
    tokens = torch.randint(0, 12, (2, 6), generator=torch.Generator().manual_seed(0))
    with pytest.warns(RuntimeWarning, match="non-finite"):
        df = rope_frequency_scores(model, tokens)
    assert not df[df["head"] == 0]["finite"].any() and df[df["head"] == 1]["finite"].all()
