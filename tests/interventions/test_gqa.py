"""Grouped-query models: k and v sites hold ``n_key_value_heads`` heads, every intervention knows it.

Each analysis is compared against a slow loop of plain TransformerLens hooks
written here, one patch per forward pass, on a tiny GQA model built from config
(4 query heads sharing 2 key/value heads).
"""

from __future__ import annotations

import pytest
import torch

from headkit.errors import HeadkitError
from headkit.interventions.ablation import ablate, ablation_sweep
from headkit.interventions.activation_patching import activation_patching
from headkit.interventions.attribution import attribution_patching
from headkit.interventions.sites import site_heads
from headkit.tasks.base import IGNORE, TaskBatch, Vocab

from hooked import hooked_model

D_VOCAB, N_HEADS, N_KV = 40, 4, 2
ATOL = 1e-5


@pytest.fixture(scope="module")
def model():
    cfg = dict(
        n_layers=2, d_model=32, n_heads=N_HEADS, d_head=8, n_key_value_heads=N_KV, d_mlp=64,
        d_vocab=D_VOCAB, n_ctx=32, act_fn="gelu", normalization_type="LN", seed=0,
    )  # fmt: skip
    model = hooked_model(**cfg)
    model.eval()
    return model


@pytest.fixture(scope="module")
def tokens():
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, D_VOCAB, (2, 4, 8), generator=gen)  # [clean/corrupted, batch, pos]


def metric(logits):
    return logits[:, -1].log_softmax(-1)[:, 3].mean()


def _patched(model, base, source_cache, name, head):
    def hook(act, hook):
        act = act.clone()
        act[:, :, head] = source_cache[name][:, :, head]
        return act

    with torch.no_grad(), model.hooks(fwd_hooks=[(name, hook)]):
        return float(metric(model(base)))


@pytest.mark.parametrize("site", ["k", "v", "q", "z"])
def test_activation_patching_sweeps_the_site_heads(model, tokens, site):
    clean, corrupted = tokens
    n = site_heads(model, site)
    assert n == (N_KV if site in "kv" else N_HEADS)
    frame = activation_patching(model, clean, corrupted, metric, site=site)
    assert list(zip(frame["layer"], frame["head"])) == [(l, h) for l in range(2) for h in range(n)]
    _, cache = model.run_with_cache(clean)
    for row in frame.itertuples():
        name = f"blocks.{row.layer}.attn.hook_{site}"
        assert row.value == pytest.approx(_patched(model, corrupted, cache, name, row.head), abs=ATOL)


@pytest.mark.parametrize("site", ["k", "v"])
def test_activation_patching_refuses_a_query_head_at_a_key_value_site(model, tokens, site, no_forward):
    clean, corrupted = tokens
    with pytest.raises(HeadkitError, match=rf"head 1\.3: site '{site}' has heads 0\.\.1 per layer"):
        activation_patching(model, clean, corrupted, metric, site=site, heads=[(1, 3)])


@pytest.mark.parametrize("site", ["k", "v", "z"])
def test_attribution_has_one_row_per_site_head(model, tokens, site):
    clean, corrupted = tokens
    frame = attribution_patching(model, clean, corrupted, metric, site=site)
    n = N_KV if site in "kv" else N_HEADS
    assert list(zip(frame["layer"], frame["head"])) == [(l, h) for l in range(2) for h in range(n)]
    assert frame.value.abs().sum() > 0
    same = attribution_patching(model, clean, clean.clone(), metric, site=site)
    assert (same.value == 0).all()


def test_ablation_sweeps_every_query_head(model, tokens):
    clean, _ = tokens
    answers = torch.full((clean.shape[0],), 3)
    targets = torch.full(clean.shape, IGNORE)
    targets[:, -1] = answers
    batch = TaskBatch(
        task="toy", tokens=clean, targets=targets, answers=answers,
        answer_pos=torch.full((clean.shape[0],), clean.shape[1] - 1),
        vocab=Vocab(tuple(f"t{i}" for i in range(D_VOCAB))),
    )  # fmt: skip
    frame = ablation_sweep(model, batch, method="zero", metric=metric)
    assert list(zip(frame["layer"], frame["head"])) == [(l, h) for l in range(2) for h in range(N_HEADS)]
    for row in frame.itertuples():
        with torch.no_grad():
            expected = float(metric(ablate(model, clean, [(row.layer, row.head)], method="zero")))
        assert row.ablated == pytest.approx(expected, abs=ATOL)
