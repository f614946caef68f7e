"""Activation patching equals TransformerLens's `get_act_patch_*` on every site they cover.

Two tiny random models: GPT-J-shaped (parallel attention and MLP, no resid_mid)
and a standard sequential one (resid_mid exists). Noising is TransformerLens's
function called with clean and corrupted swapped. Plus invariants, bad input and
hook hygiene.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from transformer_lens import patching as tl

from headkit.errors import HeadkitError
from headkit.interventions.activation_patching import COLUMNS, activation_patching
from headkit.interventions.engine import sweep_patches
from headkit.interventions.sites import Patch, available_sites
from headkit.model_types import HookedTransformer
from headkit.models import gptj_model

from hooked import hooked_model

BATCH, POS, VOCAB = 3, 6, 40


def sequential_model(**overrides) -> HookedTransformer:
    kwargs = dict(
        n_layers=2, d_model=32, n_heads=2, d_head=16, d_mlp=64, d_vocab=VOCAB, n_ctx=32,
        act_fn="gelu", normalization_type="LN", parallel_attn_mlp=False, seed=0,
    )  # fmt: skip
    kwargs.update(overrides)
    model = hooked_model(**kwargs)
    model.eval()
    return model


MODELS = {
    "gptj": lambda: gptj_model(n_layers=2, d_model=32, n_heads=2, d_vocab=VOCAB, n_ctx=32, seed=0),
    "sequential": sequential_model,
}


@pytest.fixture(scope="module")
def models():
    return {name: build() for name, build in MODELS.items()}


@pytest.fixture(scope="module", params=list(MODELS))
def model(request, models):
    return models[request.param]


@pytest.fixture(scope="module")
def tokens():
    gen = torch.Generator().manual_seed(5)
    clean = torch.randint(0, VOCAB, (BATCH, POS), generator=gen)
    corrupted = clean.clone()
    corrupted[:, [1, -1]] = torch.randint(0, VOCAB, (BATCH, 2), generator=gen)
    return clean, corrupted


def metric(logits: torch.Tensor) -> torch.Tensor:
    """A logit difference at the last position."""
    return (logits[:, -1, 3] - logits[:, -1, 7]).mean()


# (site, by_position) -> (TransformerLens function, index of a row in its result)
CASES = {
    ("z", False): (tl.get_act_patch_attn_head_out_all_pos, lambda r: (r.layer, r.head)),
    ("z", True): (tl.get_act_patch_attn_head_out_by_pos, lambda r: (r.layer, r.position, r.head)),
    ("q", False): (tl.get_act_patch_attn_head_q_all_pos, lambda r: (r.layer, r.head)),
    ("q", True): (tl.get_act_patch_attn_head_q_by_pos, lambda r: (r.layer, r.position, r.head)),
    ("k", False): (tl.get_act_patch_attn_head_k_all_pos, lambda r: (r.layer, r.head)),
    ("k", True): (tl.get_act_patch_attn_head_k_by_pos, lambda r: (r.layer, r.position, r.head)),
    ("v", False): (tl.get_act_patch_attn_head_v_all_pos, lambda r: (r.layer, r.head)),
    ("v", True): (tl.get_act_patch_attn_head_v_by_pos, lambda r: (r.layer, r.position, r.head)),
    ("pattern", False): (tl.get_act_patch_attn_head_pattern_all_pos, lambda r: (r.layer, r.head)),
    ("pattern", True): (tl.get_act_patch_attn_head_pattern_by_pos, lambda r: (r.layer, r.head, r.position)),
    ("resid_pre", True): (tl.get_act_patch_resid_pre, lambda r: (r.layer, r.position)),
    ("attn_out", True): (tl.get_act_patch_attn_out, lambda r: (r.layer, r.position)),
    ("mlp_out", True): (tl.get_act_patch_mlp_out, lambda r: (r.layer, r.position)),
    ("resid_mid", True): (tl.get_act_patch_resid_mid, lambda r: (r.layer, r.position)),
}


def transformer_lens_values(model, base, source, site, by_position, rows):
    """TransformerLens's patching of ``source`` activations into the run on ``base``."""
    function, index = CASES[(site, by_position)]
    _, source_cache = model.run_with_cache(source)
    result = function(model, base, source_cache, metric)
    return np.array([result[index(row)].item() for row in rows.itertuples()])


EQUIVALENCE = [
    (name, site, by_position)
    for name in MODELS
    for site, by_position in CASES
    if not (name == "gptj" and site == "resid_mid")  # no such hook: test_sites_adapt_to_the_model
]


@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("model_name,site,by_position", EQUIVALENCE)
def test_equals_transformer_lens(models, tokens, model_name, site, by_position, direction):
    model = models[model_name]
    clean, corrupted = tokens
    df = activation_patching(model, clean, corrupted, metric, site=site, by_position=by_position, direction=direction)
    assert list(df.columns) == list(COLUMNS)
    n_heads = model.cfg.n_heads if site in ("z", "q", "k", "v", "pattern") else 1
    assert len(df) == model.cfg.n_layers * n_heads * (POS if by_position else 1)
    base, source = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    expected = transformer_lens_values(model, base, source, site, by_position, df)
    assert np.abs(df["value"].to_numpy() - expected).max() <= 1e-5
    # normalised: 0 = the unpatched run, 1 = the run whose activations were patched in
    with torch.no_grad():
        base_value, source_value = metric(model(base)).item(), metric(model(source)).item()
    np.testing.assert_allclose(
        df["normalised"], (expected - base_value) / (source_value - base_value), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("site", ["z", "q", "pattern", "resid_pre"])
def test_small_batch_size_and_head_subsets_give_the_same_numbers(model, tokens, site):
    clean, corrupted = tokens
    full = activation_patching(model, clean, corrupted, metric, site=site, by_position=True)
    one_copy = activation_patching(model, clean, corrupted, metric, site=site, by_position=True, batch_size=1)
    np.testing.assert_allclose(one_copy["value"], full["value"], atol=1e-5)
    if site == "resid_pre":
        subset = activation_patching(model, clean, corrupted, metric, site=site, by_position=True, layers=[1])
        pd_full = full[full["layer"] == 1].reset_index(drop=True)
    else:
        subset = activation_patching(model, clean, corrupted, metric, site=site, by_position=True, heads=[(1, 0)])
        pd_full = full[(full["layer"] == 1) & (full["head"] == 0)].reset_index(drop=True)
    np.testing.assert_allclose(subset["value"], pd_full["value"], atol=1e-5)
    assert subset[["layer", "head", "position"]].equals(pd_full[["layer", "head", "position"]])


def test_rebuilding_the_layer_equals_rerunning_it(tokens):
    """With use_attn_result the z patch reruns its whole layer; both paths match TransformerLens."""
    clean, corrupted = tokens
    model = sequential_model(use_attn_result=True)
    df = activation_patching(model, clean, corrupted, metric, site="z")
    expected = transformer_lens_values(model, corrupted, clean, "z", False, df)
    assert np.abs(df["value"].to_numpy() - expected).max() <= 1e-5


def test_patching_everything_recovers_the_source_run(model, tokens):
    clean, corrupted = tokens
    with torch.no_grad():
        clean_value, corrupted_value = metric(model(clean)).item(), metric(model(corrupted)).item()
    denoise = activation_patching(model, clean, corrupted, metric, site="resid_pre", layers=[0])
    assert denoise[["layer", "head", "position"]].values.tolist() == [[0, -1, -1]]
    assert denoise["value"].item() == pytest.approx(clean_value, abs=1e-5)
    assert denoise["normalised"].item() == pytest.approx(1.0, abs=1e-4)
    noise = activation_patching(model, clean, corrupted, metric, site="resid_pre", direction="noise", layers=[0])
    assert noise["value"].item() == pytest.approx(corrupted_value, abs=1e-5)
    assert noise["normalised"].item() == pytest.approx(1.0, abs=1e-4)


def test_equal_runs_give_nan_normalised_with_a_warning(model, tokens, caplog):
    clean, _ = tokens
    with caplog.at_level(logging.WARNING):
        df = activation_patching(model, clean, clean.clone(), metric, site="z")
    with torch.no_grad():
        clean_value = metric(model(clean)).item()
    np.testing.assert_allclose(df["value"], clean_value, atol=1e-5)  # patching a thing with itself
    assert df["normalised"].isna().all()
    assert "same metric" in caplog.text


def test_sites_adapt_to_the_model(tokens):
    clean, corrupted = tokens
    gptj, sequential = MODELS["gptj"](), MODELS["sequential"]()
    assert "resid_mid" not in available_sites(gptj)
    assert "resid_mid" in available_sites(sequential)
    with pytest.raises(HeadkitError, match="site 'resid_mid' does not exist in this model: .*parallel"):
        activation_patching(gptj, clean, corrupted, metric, site="resid_mid")
    attn_only = gptj_model(n_layers=2, d_model=32, n_heads=2, d_vocab=VOCAB, n_ctx=32, attn_only=True)
    assert available_sites(attn_only) == ["z", "q", "k", "v", "pattern", "resid_pre", "attn_out"]
    with pytest.raises(HeadkitError, match="'mlp_out' does not exist in this model: it has no MLPs"):
        activation_patching(attn_only, clean, corrupted, metric, site="mlp_out")


def no_hooks_left(model) -> bool:
    return all(not hp.fwd_hooks and not hp.bwd_hooks for hp in model.hook_dict.values())


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(heads=[(2, 0)]), r"head 2\.0: layer 2 is out of range: this model has layers 0\.\.1"),
        (dict(heads=[(0, 5)]), r"head 0\.5: head 5 is out of range: this model has heads 0\.\.1"),
        (dict(layers=[3]), r"layer 3 is out of range: this model has layers 0\.\.1"),
        (dict(site="mlp_in"), r"unknown site 'mlp_in': allowed z, q, k, v, pattern, resid_pre, attn_out, mlp_out"),
        (dict(direction="sideways"), r"unknown direction 'sideways': allowed denoise, noise"),
        (dict(site="resid_pre", heads=[(0, 0)]), r"heads= applies to head sites only"),
        (dict(heads=[(0, 0)], layers=[0]), r"give heads or layers, not both"),
        (dict(batch_size=0), r"batch_size=0 is out of range: allowed 1 or more"),
        (dict(batch_size=True), r"batch_size must be an integer, got True"),
    ],
)
def test_bad_input_is_refused_before_any_forward(tokens, models, no_forward, kwargs, message):
    clean, corrupted = tokens
    model = models["gptj"]  # built (and probed) before forward passes are forbidden
    with pytest.raises(HeadkitError, match=message):
        activation_patching(model, clean, corrupted, metric, **kwargs)


def test_shapes_must_match(tokens, models, no_forward):
    clean, corrupted = tokens
    with pytest.raises(HeadkitError, match=r"clean_tokens shape \(3, 6\) and corrupted_tokens shape \(3, 5\) differ"):
        activation_patching(models["gptj"], clean, corrupted[:, :5], metric)


def test_metric_without_a_scalar_is_refused_on_the_clean_run(tokens, monkeypatch):
    clean, corrupted = tokens
    model = MODELS["gptj"]()
    calls = []

    def per_prompt(logits):
        calls.append(logits.shape[0])
        return logits[:, -1, 3]

    with pytest.raises(HeadkitError, match=r"metric on the clean run: the metric must return a scalar.*shape \(3,\)"):
        activation_patching(model, clean, corrupted, per_prompt)
    assert calls == [BATCH]  # refused at its first call, before any patch
    assert no_hooks_left(model)


@pytest.mark.parametrize("site", ["z", "q"])  # rebuilt layer and hooked rerun
def test_hooks_removed_after_an_error_in_the_metric(tokens, site):
    clean, corrupted = tokens
    model = MODELS["sequential"]()
    calls = []

    def failing(logits):
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("metric broke")
        return metric(logits)

    with pytest.raises(RuntimeError, match="metric broke"):
        activation_patching(model, clean, corrupted, failing, site=site)
    assert no_hooks_left(model)
    assert not model.is_caching


def test_hooks_removed_after_an_error_inside_a_hook(tokens):
    clean, _ = tokens
    model = MODELS["gptj"]()
    bad_source = {"blocks.1.attn.hook_q": torch.zeros(BATCH, POS + 1, 2, 16)}  # wrong length
    with pytest.raises(RuntimeError):
        sweep_patches(model, clean, bad_source, "q", [Patch(1, 0, slice(None))], metric)
    assert no_hooks_left(model)
