"""The stacked engine equals one plain forward per patch, at every chunk size.

References are written here: a slow loop that runs the whole model from the tokens
once per patch with a TransformerLens hook writing that patch (`model.hooks`), and
`TransformerBlock.forward` itself for the rebuilt layer output (`layer_output`),
on tiny models built from config for every architecture flag headkit accepts.
"""

from __future__ import annotations

import pytest
import torch

from headkit.errors import HeadkitError, NonFiniteError
from headkit.interventions import engine
from headkit.interventions.engine import Restart, layer_output, resumes_after_attention, sweep_patches
from headkit.interventions.sites import ALL, SITES, Patch, available_sites, check_site, hook_name, site_heads
from headkit.memory import grouped_batches
from headkit.model_types import is_bridge

VOCAB, BATCH, POS = 30, 3, 6


# every block layout and position scheme headkit meets (its own GPT-J-style models, the
# paper and pretrained models' sequential blocks, attention-only, grouped-query): overrides
# of the tiny model of conftest.py
ARCHITECTURES = {
    "gptj_parallel_rotary": dict(gptj=True),  # headkit's model: a TransformerBridge
    "gptj_attn_only": dict(gptj=True, attn_only=True),
    "gptj_hooked": dict(gptj="hooked"),  # the same architecture as a HookedTransformer (TransformerLens 3.x)
    "sequential_absolute": {},
    "sequential_rotary": dict(positional_embedding_type="rotary", rotary_dim=8),
    "sequential_shortformer": dict(positional_embedding_type="shortformer"),
    "attn_only_shortformer": dict(attn_only=True, d_mlp=None, positional_embedding_type="shortformer"),
    "gqa": dict(n_heads=4, d_head=4, n_key_value_heads=2),
    "gqa_parallel": dict(n_heads=4, d_head=4, n_key_value_heads=2, parallel_attn_mlp=True),
    "rms_gated": dict(normalization_type="RMS", gated_mlp=True, act_fn="silu"),
    "ln_pre_folded": dict(normalization_type="LNPre"),
    "no_norm": dict(normalization_type=None),
}


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def arch(request, build_model):
    return request.param, build_model(n_layers=3, **ARCHITECTURES[request.param])


@pytest.fixture(scope="module")
def pair():
    gen = torch.Generator().manual_seed(3)
    clean = torch.randint(0, VOCAB, (BATCH, POS), generator=gen)
    corrupted = clean.clone()
    corrupted[:, [1, 4]] = torch.randint(0, VOCAB, (BATCH, 2), generator=gen)
    return clean, corrupted


def per_prompt(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1].log_softmax(-1)[:, 3]  # [batch]: a non-scalar result is passed through


def slow_patch(model, tokens, sources, site, patch):
    """One forward from the tokens with a hook writing ``patch``: the plain reference."""
    name = hook_name(site, patch.layer)

    def hook(act, hook):
        act = act.clone()
        SITES[site].write(act, sources[name], patch)
        return act

    with torch.no_grad(), model.hooks(fwd_hooks=[(name, hook)]):
        return per_prompt(model(tokens))


def patches_of(model, site):
    heads = range(site_heads(model, site)) if SITES[site].per_head else [ALL]
    positions = [slice(None), 1, [0, 4]]
    return [Patch(l, h, p) for l in range(model.cfg.n_layers) for h in heads for p in positions]


@pytest.mark.parametrize("site", list(SITES))
def test_stacked_copies_equal_one_forward_per_patch(arch, pair, site):
    _, model = arch
    if site not in available_sites(model):  # refused before the engine (tests/interventions/test_sites.py)
        with pytest.raises(HeadkitError, match="does not exist in this model"):
            check_site(model, site)
        return
    clean, corrupted = pair
    with torch.no_grad():
        _, sources = model.run_with_cache(clean, return_cache_object=False)
    patches = patches_of(model, site)
    got = sweep_patches(model, corrupted, sources, site, patches, per_prompt)
    for patch, value in zip(patches, got):
        torch.testing.assert_close(value, slow_patch(model, corrupted, sources, site, patch), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("site", ["z", "q", "pattern", "resid_pre"])  # rebuilt layer and rerun layer
def test_chunk_sizes_give_the_same_results(build_model, pair, site):
    model = build_model(n_layers=3, **ARCHITECTURES["sequential_shortformer"])
    clean, corrupted = pair
    with torch.no_grad():
        _, sources = model.run_with_cache(clean, return_cache_object=False)
    patches = patches_of(model, site)
    results = {
        size: torch.stack(sweep_patches(model, corrupted, sources, site, patches, per_prompt, batch_size=size))
        for size in (None, 1, BATCH, 2 * BATCH + 1, 5 * BATCH, 10_000)
    }
    for size, values in results.items():  # 1 and BATCH: one copy per pass; None: the auto default
        assert torch.equal(values, results[1]), f"batch_size={size}"


def test_layer_output_equals_the_block_s_own_forward(arch, pair):
    """`layer_output` re-does TransformerBlock.forward's sums: pinned for every layout it serves."""
    name, model = arch
    if is_bridge(model):  # a bridge's block is Hugging Face's: a patched layer reruns whole, never the shortcut
        assert not any(resumes_after_attention(model, site) for site in ("z", "attn_out", "q"))
        return
    assert resumes_after_attention(model, "z") and resumes_after_attention(model, "attn_out")
    assert not resumes_after_attention(model, "q")
    clean, corrupted = pair
    restart = Restart.of(model, corrupted)
    with torch.no_grad():
        _, cache = model.run_with_cache(corrupted, return_cache_object=False)
        _, sources = model.run_with_cache(clean, return_cache_object=False)
    for layer in range(model.cfg.n_layers):
        for site, head in (("z", 1), ("attn_out", ALL)):
            patch, hook = Patch(layer, head, [2, 5]), hook_name(site, layer)

            def write(act, patch=patch, hook=hook):  # copy 0 patched, copy 1 unpatched
                SITES[site].write(act.unflatten(0, (2, BATCH))[0], sources[hook], patch)

            def block_hook(act, hook, patch=patch, name=hook):
                act = act.clone()
                SITES[site].write(act, sources[name], patch)
                return act

            with torch.no_grad():
                got = layer_output(model, layer, site, cache, 2, write).unflatten(0, (2, BATCH))
                block, resid = model.blocks[layer], cache[hook_name("resid_pre", layer)]
                kwargs = dict(shortformer_pos_embed=restart.shortformer_pos_embed)
                with model.hooks(fwd_hooks=[(hook, block_hook)]):
                    patched = block(resid, **kwargs)
                unpatched = block(resid, **kwargs)
            torch.testing.assert_close(got[0], patched, atol=1e-5, rtol=1e-5, msg=f"{name} {site} layer {layer}")
            torch.testing.assert_close(got[1], unpatched, atol=1e-5, rtol=1e-5, msg=f"{name} {site} layer {layer}")


def test_rebuilding_is_off_where_the_block_differs(build_model):
    for flags in (dict(use_attn_result=True), dict(use_hook_mlp_in=True), dict(use_normalization_before_and_after=True, normalization_type="RMS")):
        assert not resumes_after_attention(build_model(**flags), "z"), flags


def test_run_from_a_cached_layer_equals_the_full_forward(arch, pair):
    """k stacked copies restarted at any layer (shortformer embedding stacked too) = the plain run."""
    _, model = arch
    tokens, _ = pair
    restart = Restart.of(model, tokens)
    with torch.no_grad():
        full, cache = model.run_with_cache(tokens, return_cache_object=False)
        for layer in range(model.cfg.n_layers):
            resid = engine.stack(cache[hook_name("resid_pre", layer)], 3)
            logits = engine.run_from(model, resid, layer=layer, copies=3, restart=restart)
            for copy in logits.unflatten(0, (3, BATCH)):
                torch.testing.assert_close(copy, full, atol=1e-5, rtol=1e-5)


def test_grouped_batches_and_run_chunks_keep_the_order():
    groups = {2: [4, 5, 6], 0: [0, 1, 2, 3]}
    chunks = grouped_batches(groups, 3)  # the engine's passes come from the one batcher
    assert chunks == [(0, [0, 1, 2]), (0, [3]), (2, [4, 5, 6])]
    assert engine.run_chunks(lambda c: [f"{c[0]}:{i}" for i in c[1]], chunks, 7, desc="t") == [
        "0:0", "0:1", "0:2", "0:3", "2:4", "2:5", "2:6",
    ]  # fmt: skip


def test_copies_per_pass_and_the_auto_default(build_model):
    model = build_model()
    tokens = torch.zeros(4, 8, dtype=torch.long)
    assert engine.copies_per_pass(model, tokens, 9) == 2  # 9 rows hold two copies of 4 prompts
    assert engine.copies_per_pass(model, tokens, 1) == 1  # at least one copy
    widest = max(16, 32, VOCAB, 2 * 8)
    assert engine.auto_batch_size(model, tokens) == engine.AUTO_ELEMENTS // (8 * widest)
    assert engine.copies_per_pass(model, tokens, None) == engine.auto_batch_size(model, tokens) // 4


def test_non_finite_copy_is_named():
    logits = torch.zeros(2 * BATCH, POS, VOCAB)
    logits[BATCH + 1, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="the logits of run b is not finite"):
        engine.evaluate_copies(logits, ["run a", "run b"], per_prompt)
