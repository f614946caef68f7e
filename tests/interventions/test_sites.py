"""sites.py knows every hook a model has: each site it offers fires in a forward pass with the
shape and head count it claims, and each site it refuses is missing for the reason it gives.

Four tiny models built from config: GPT-J-style (parallel attention and MLP), sequential
(GPT-2 style), attention-only and grouped-query. What each model has is read off the
model's own hook dictionary and a real forward pass, not off sites.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import headkit
from headkit.errors import HeadkitError
from headkit.interventions import ablation, activation_patching, attribution, path_patching, sites
from headkit.interventions.sites import ALL, SITES, Patch, available_sites, check_site, hook_name, site_heads

VOCAB, BATCH, POS = 30, 2, 5


MODELS = {  # overrides of the tiny model of conftest.py
    "gptj": dict(gptj=True, n_heads=4),
    "sequential": dict(n_heads=4, d_head=4),
    "attn_only": dict(n_heads=4, d_head=4, attn_only=True, d_mlp=None),
    "gqa": dict(n_heads=4, d_head=4, n_key_value_heads=2),
}
# what the model does not have, and the words the refusal must give
MISSING = {
    "gptj": {"resid_mid": "parallel from resid_pre"},
    "sequential": {},
    "attn_only": {"resid_mid": "no MLPs", "mlp_out": "no MLPs"},
    "gqa": {},
}


@pytest.fixture(scope="module", params=list(MODELS))
def named_model(request, build_model):
    return request.param, build_model(**MODELS[request.param])


@pytest.fixture(scope="module")
def fired(named_model):
    """Every hook that fires in a forward pass, with its activation."""
    _, model = named_model
    tokens = torch.randint(0, VOCAB, (BATCH, POS), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, return_cache_object=False)
    return cache


def test_available_sites_are_the_sites_minus_the_missing(named_model):
    name, model = named_model
    assert available_sites(model) == [s for s in SITES if s not in MISSING[name]]


@pytest.mark.parametrize("site", list(SITES))
def test_each_site_fires_with_its_shape_or_is_refused_with_the_reason(named_model, fired, site):
    name, model = named_model
    cfg = model.cfg
    if site in MISSING[name]:
        assert not any(key.endswith(SITES[site].hook) for key in fired)  # nothing by that name fires
        with pytest.raises(HeadkitError, match=rf"site '{site}' does not exist in this model: .*{MISSING[name][site]}"):
            check_site(model, site)
        return
    spec = check_site(model, site)
    for layer in range(cfg.n_layers):
        act = fired[hook_name(site, layer)]  # KeyError: sites.py names a hook the model lacks
        assert act.shape[0] == BATCH and act.shape[spec.position_axis] == POS
        if spec.per_head:
            expected = cfg.n_key_value_heads if (name == "gqa" and site in "kv") else cfg.n_heads
            assert site_heads(model, site) == expected
            assert act.shape[spec.head_axis] == expected
        else:
            assert act.shape == (BATCH, POS, cfg.d_model)


def test_unknown_site_lists_the_model_s_sites(build_model):
    model = build_model(**MODELS["attn_only"])
    with pytest.raises(HeadkitError, match=r"unknown site 'mlp_in': allowed z, q, k, v, pattern, resid_pre, attn_out$"):
        check_site(model, "mlp_in")


@pytest.mark.parametrize("position", [slice(None), 2, [0, 3]])
@pytest.mark.parametrize("site", list(SITES))
def test_write_touches_only_the_patched_head_and_positions(site, position):
    spec = SITES[site]
    shape = (BATCH, 3, POS, POS) if site == "pattern" else (BATCH, POS, 3, 4) if spec.per_head else (BATCH, POS, 8)
    act, source = torch.zeros(shape), torch.randn(shape)
    head = 1 if spec.per_head else ALL
    spec.write(act, source, Patch(0, head, position))
    # the same write spelled out by hand for each layout
    expected = torch.zeros(shape)
    if site == "pattern":
        expected[:, head, position] = source[:, head, position]
    elif spec.per_head:
        expected[:, position, head] = source[:, position, head]
    else:
        expected[:, position] = source[:, position]
    assert torch.equal(act, expected)


def test_hook_names_and_the_old_names_agree():
    assert hook_name("z", 3) == "blocks.3.attn.hook_z"
    assert hook_name("resid_pre", 0) == "blocks.0.hook_resid_pre"
    assert sites.HEAD_SITES == ("z", "q", "k", "v", "pattern")
    assert path_patching.QKV_HOOKS == {"q": "hook_q", "k": "hook_k", "v": "hook_v"}
    assert attribution.SITES == {
        "z": ("hook_z", 2), "q": ("hook_q", 2), "k": ("hook_k", 2), "v": ("hook_v", 2), "pattern": ("hook_pattern", 1),
    }  # fmt: skip
    assert activation_patching.SITES is SITES and activation_patching.Patch is Patch
    assert tuple(ablation.METHODS) == sites.ABLATION_METHODS
    assert sites.DEFAULT_ABLATION_METHOD in sites.ABLATION_METHODS
    assert tuple(activation_patching.DIRECTIONS) == sites.DIRECTIONS
    assert sites.describe("z", Patch(1, 0, slice(None))) == "z of head 1.0"
    assert sites.describe("resid_pre", Patch(2, ALL, 3)) == "resid_pre of layer 2 at position 3"


def test_sites_and_metrics_import_without_torch():
    """The command line takes choices= from these modules before importing torch."""
    code = (
        "import sys; import headkit.interventions.sites as s, headkit.interventions.metrics as m; "
        "assert list(m.METRICS) and s.ABLATION_METHODS; "
        "heavy = [n for n in ('torch', 'transformer_lens', 'pandas') if n in sys.modules]; "
        "assert not heavy, heavy"
    )
    root = str(Path(headkit.__file__).resolve().parents[1])  # this checkout's headkit
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": root})
