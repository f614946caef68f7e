"""headkit's GPT-J attention on the bridge: Hugging Face's numbers, HookedTransformer's hooks.

References: Hugging Face's own ``GPTJForCausalLM`` forward (logits, padding), and on
TransformerLens 3.9, a HookedTransformer of the same weights built by TransformerLens's
own ``convert_gptj_weights`` (every hook the analyses read, within 1e-5), plus TransformerLens's own
stock GPT-J adapter, which shows why headkit replaces its attention.
"""

from __future__ import annotations

import torch
from transformers import GPTJConfig, GPTJForCausalLM

from headkit.bridge.build import wrap
from headkit.bridge.probe import probe

from hooked import hooked_from_hf_gptj

HOOKS = ("hook_q", "hook_k", "hook_v", "hook_rot_q", "hook_rot_k", "hook_attn_scores", "hook_pattern", "hook_z")


def tiny_gptj(*, rotary_dim=8, n_layer=2, seed=0) -> GPTJForCausalLM:
    config = GPTJConfig(vocab_size=50, n_positions=64, n_embd=32, n_layer=n_layer, n_head=2, rotary_dim=rotary_dim, use_cache=False)
    torch.manual_seed(seed)
    return GPTJForCausalLM(config).eval()


def test_logits_equal_hugging_face_with_full_and_partial_rotary():
    for rotary_dim in (16, 4):
        hf = tiny_gptj(rotary_dim=rotary_dim)
        tokens = torch.randint(0, 50, (3, 11))
        with torch.no_grad():
            reference = hf(tokens).logits
            torch.testing.assert_close(wrap(hf)(tokens), reference, atol=1e-5, rtol=1e-5)


def test_padding_mask_is_applied_on_top_of_causality():
    hf = tiny_gptj()
    tokens = torch.randint(0, 50, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :3] = 0  # left padding
    with torch.no_grad():
        reference = hf(tokens, attention_mask=mask).logits
        logits = wrap(hf)(tokens, attention_mask=mask)
    torch.testing.assert_close(logits[:, 3:], reference[:, 3:], atol=1e-5, rtol=1e-5)


def test_hooks_have_hooked_transformer_shapes_and_meaning():
    hf = tiny_gptj()
    bridge = wrap(hf)
    tokens = torch.randint(0, 50, (2, 7))
    _, cache = bridge.run_with_cache(tokens)
    a = "blocks.1.attn."
    for name in ("hook_q", "hook_k", "hook_v", "hook_rot_q", "hook_rot_k", "hook_z"):
        assert cache[a + name].shape == (2, 7, 2, 16), name
    scores, pattern = cache[a + "hook_attn_scores"], cache[a + "hook_pattern"]
    assert scores.shape == pattern.shape == (2, 2, 7, 7)
    assert torch.isneginf(scores[..., 0, 1:]).all()  # masked with -inf before the softmax
    torch.testing.assert_close(torch.softmax(scores, -1), pattern)
    # position 0 is not rotated; later positions are
    torch.testing.assert_close(cache[a + "hook_rot_q"][:, 0], cache[a + "hook_q"][:, 0])
    assert not torch.allclose(cache[a + "hook_rot_q"][:, 1:], cache[a + "hook_q"][:, 1:])
    assert bridge.cfg.rotary_adjacent_pairs is True


def test_a_pattern_edit_changes_the_output_and_matches_a_manual_mix():
    hf = tiny_gptj(n_layer=1)
    bridge = wrap(hf)
    tokens = torch.randint(0, 50, (1, 6))
    uniform = torch.ones(6, 6).tril()
    uniform = uniform / uniform.sum(-1, keepdim=True)
    _, cache = bridge.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_v") or n.endswith("hook_z"))
    seen = {}

    def edit(pattern, hook):
        return uniform.expand_as(pattern).clone()

    def keep_z(z, hook):
        seen["z"] = z
        return z

    bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_pattern", edit), ("blocks.0.attn.hook_z", keep_z)])
    v = cache["blocks.0.attn.hook_v"]  # [batch, pos, head, d_head]
    torch.testing.assert_close(seen["z"], torch.einsum("qk,bknh->bqnh", uniform, v))
    assert not torch.allclose(seen["z"], cache["blocks.0.attn.hook_z"])


def test_transformer_lens_stock_gptj_adapter_is_what_headkit_replaces():
    from transformer_lens.model_bridge.sources import build_bridge_from_module

    hf = tiny_gptj()
    stock = build_bridge_from_module(hf, "GPTJForCausalLM", hf_config=hf.config)
    stock.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    verdict = probe(stock)
    assert not verdict.scores_pre_softmax and not verdict.pattern_edits and not verdict.rotary_hooks
    assert probe(wrap(tiny_gptj())).faithful


def test_every_hook_equals_hooked_transformer_on_transformer_lens_3(tmp_path):
    hf = tiny_gptj(rotary_dim=8)
    hooked = hooked_from_hf_gptj(hf)  # TransformerLens 3.9's own conversion (skipped on 4.x, with the reason)
    bridge = wrap(hf)
    tokens = torch.randint(0, 50, (2, 9))
    ht_logits, ht_cache = hooked.run_with_cache(tokens)
    br_logits, br_cache = bridge.run_with_cache(tokens)
    torch.testing.assert_close(br_logits, ht_logits, atol=1e-5, rtol=1e-5)
    for layer in range(2):
        for name in ("hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out"):
            key = f"blocks.{layer}.{name}"
            torch.testing.assert_close(br_cache[key], ht_cache[key], atol=1e-5, rtol=1e-5, msg=key)
        for name in HOOKS:
            key = f"blocks.{layer}.attn.{name}"
            a, b = br_cache[key], ht_cache[key]
            finite = torch.isfinite(b)
            assert torch.equal(torch.isfinite(a), finite), key
            torch.testing.assert_close(a[finite], b[finite], atol=1e-5, rtol=1e-5, msg=key)
    for weight in ("W_Q", "W_K", "W_V", "W_O"):
        torch.testing.assert_close(getattr(bridge.blocks[1].attn, weight), getattr(hooked.blocks[1].attn, weight), msg=weight)
