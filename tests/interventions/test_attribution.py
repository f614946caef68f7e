"""Attribution patching against per-head explicit derivatives and exact patching.

References: (a) the linear term computed head by head, each with its own forward
and backward (a scalar ``t`` scaling that head's clean-minus-corrupted difference),
(b) central finite differences of the same one-parameter family, and (c) exact
activation patching from TransformerLens's own ``get_act_patch_*`` functions.
Tight comparisons run in float64 so rounding does not blur them.
"""

from __future__ import annotations

import pytest
import torch
from transformer_lens import patching

from headkit.errors import HeadkitError
from headkit.interventions.attribution import SITES, attribution_patching

from model_edits import livelier

D_VOCAB = 40
D_MODEL = 32


def metric(logits):
    return logits[:, -1].log_softmax(-1)[:, 3].mean()


def _tokens(seed, batch=4, length=10):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, D_VOCAB, (batch, length), generator=gen)


@pytest.fixture
def model64(tiny_gptj):
    return livelier(tiny_gptj(n_layers=3, d_model=D_MODEL, n_heads=2, d_vocab=D_VOCAB).to(torch.float64), scale=4.0)


def _hook_name(layer, site):
    return f"blocks.{layer}.attn.{SITES[site][0]}"


def _head_slice(site, head):
    """Index of one head's slice of an activation of ``site``."""
    return (slice(None), head) if SITES[site][1] == 1 else (slice(None), slice(None), head)


def _caches(model, clean, corrupted, site):
    names = [_hook_name(layer, site) for layer in range(model.cfg.n_layers)]
    _, clean_cache = model.run_with_cache(clean, names_filter=names)
    _, corrupted_cache = model.run_with_cache(corrupted, names_filter=names)
    return clean_cache, corrupted_cache


def _family(model, corrupted, caches, site, layer, head):
    """t -> metric of the corrupted run with head's activation = corrupted + t (clean - corrupted)."""
    name = _hook_name(layer, site)
    clean_cache, corrupted_cache = caches
    index = _head_slice(site, head)
    diff = torch.zeros_like(clean_cache[name])
    diff[index] = (clean_cache[name] - corrupted_cache[name])[index]

    def f(t):
        return metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, lambda act, hook: act + t * diff)]))

    return f


@pytest.mark.parametrize("site", list(SITES))
def test_equals_per_head_linear_term(model64, site):
    clean, corrupted = _tokens(1), _tokens(2)
    df = attribution_patching(model64, clean, corrupted, metric, site=site)
    assert list(df.columns) == ["layer", "head", "value"]
    assert list(zip(df["layer"], df["head"])) == [(l, h) for l in range(3) for h in range(2)]
    caches = _caches(model64, clean, corrupted, site)
    for row in df.itertuples():
        t = torch.zeros((), dtype=torch.float64, requires_grad=True)
        f = _family(model64, corrupted, caches, site, row.layer, row.head)
        (expected,) = torch.autograd.grad(f(t), [t])
        assert row.value == pytest.approx(float(expected), abs=1e-10, rel=1e-8)
    assert df.value.abs().max() > 1e-3  # not trivially zero


def test_matches_central_finite_difference(model64):
    clean, corrupted = _tokens(3), _tokens(4)
    df = attribution_patching(model64, clean, corrupted, metric, site="z")
    h = 1e-4
    caches = _caches(model64, clean, corrupted, "z")
    with torch.no_grad():
        for row in df.itertuples():
            f = _family(model64, corrupted, caches, "z", row.layer, row.head)
            finite = (float(f(h)) - float(f(-h))) / (2 * h)
            assert row.value == pytest.approx(finite, abs=1e-7)


def _close_pair(model, eps):
    """Token 7's embedding is token 5's plus eps * noise; clean has 5 where corrupted has 7."""
    gen = torch.Generator().manual_seed(5)
    noise = torch.randn(D_MODEL, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        model.W_E[7] = model.W_E[5] + eps * noise
    clean = _tokens(6, batch=8)
    clean[:, ::3] = 5
    corrupted = clean.clone()
    corrupted[corrupted == 5] = 7
    return clean, corrupted


def test_close_to_exact_patching_for_a_small_perturbation(model64):
    errors = []
    for eps in (0.02, 0.005):
        clean, corrupted = _close_pair(model64, eps)
        df = attribution_patching(model64, clean, corrupted, metric, site="z")
        _, clean_cache = model64.run_with_cache(clean)
        with torch.no_grad():
            patched = patching.get_act_patch_attn_head_out_all_pos(model64, corrupted, clean_cache, metric)
            exact = (patched - metric(model64(corrupted))).flatten()  # [layer * head]
        estimate = torch.tensor(df.value.values)
        error = float((estimate - exact).abs().max())
        assert error <= 0.1 * float(exact.abs().max())
        assert float(torch.corrcoef(torch.stack([estimate, exact]))[0, 1]) > 0.99
        errors.append(error)
    # the error is second order: a 4x smaller perturbation shrinks it far more than 4x
    assert errors[1] < errors[0] / 8


def test_identical_inputs_give_zero(model64):
    clean = _tokens(1)
    df = attribution_patching(model64, clean, clean.clone(), metric)
    assert (df.value == 0).all()


def test_leaves_parameters_and_hooks_untouched(tiny_gptj):
    model = tiny_gptj(n_layers=2, n_heads=2, d_vocab=D_VOCAB)
    with torch.no_grad():  # also works when the caller has gradients turned off
        df = attribution_patching(model, _tokens(1), _tokens(2), metric)
    assert df.value.abs().max() > 0
    assert all(p.grad is None for p in model.parameters())
    assert all(not hp.fwd_hooks and not hp.bwd_hooks for hp in model.hook_dict.values())


def test_bad_input(tiny_gptj):
    model = tiny_gptj(n_layers=2, n_heads=2, d_vocab=D_VOCAB)
    clean, corrupted = _tokens(1), _tokens(2)
    with pytest.raises(HeadkitError, match="unknown site 'result': allowed z, q, k, v, pattern"):
        attribution_patching(model, clean, corrupted, metric, site="result")
    with pytest.raises(HeadkitError, match=r"shape \(4, 10\) and corrupted_tokens shape \(3, 10\)"):
        attribution_patching(model, clean, corrupted[:3], metric)
    with pytest.raises(HeadkitError, match="clean_tokens length 80 exceeds the model's context"):
        attribution_patching(model, _tokens(1, length=80), _tokens(2, length=80), metric)
    with pytest.raises(HeadkitError, match="not differentiable"):
        attribution_patching(model, clean, corrupted, lambda lg: (lg[:, -1].argmax(-1) == 3).float().mean())
    with pytest.raises(HeadkitError, match=r"metric on the corrupted run.*shape \(4,\)"):
        attribution_patching(model, clean, corrupted, lambda lg: lg[:, -1, 0])
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())


def test_hooks_removed_after_an_error_in_the_metric(tiny_gptj):
    model = tiny_gptj(n_layers=2, n_heads=2, d_vocab=D_VOCAB)

    def broken(logits):
        raise RuntimeError("metric failed")

    with pytest.raises(RuntimeError, match="metric failed"):
        attribution_patching(model, _tokens(1), _tokens(2), broken)
    assert all(not hp.fwd_hooks and not hp.bwd_hooks for hp in model.hook_dict.values())
