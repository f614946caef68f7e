"""Ablation and attention knockout against hooks and recomputations written here."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from headkit.errors import HeadkitError
from headkit.interventions.ablation import (
    HOP_COLUMNS,
    SWEEP_COLUMNS,
    ablate,
    ablate_metric,
    ablation_sweep,
    ablation_sweep_by_hop,
    attention_knockout,
    resample_donors,
)
from headkit.interventions.metrics import answer_logprob, logit_diff
from headkit.models import gptj_model
from headkit.tasks.base import IGNORE, TaskBatch, Vocab

from model_edits import bias, logits_from

BATCH, POS, VOCAB = 6, 7, 40
HEADS = [(0, 1), (1, 0)]


@pytest.fixture(scope="module")
def model():
    return gptj_model(n_layers=2, d_model=32, n_heads=2, d_vocab=VOCAB, n_ctx=32, seed=0)


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, VOCAB, (BATCH, POS), generator=gen)
    answers = torch.randint(0, VOCAB, (BATCH,), generator=gen)
    targets = torch.full((BATCH, POS), IGNORE)
    targets[:, -1] = answers
    return TaskBatch(
        task="toy",
        tokens=tokens,
        targets=targets,
        answers=answers,
        answer_pos=torch.full((BATCH,), POS - 1),
        vocab=Vocab(tuple(f"t{i}" for i in range(VOCAB))),
        hops=torch.tensor([1, 2, 1, 3, 2, 1]),
        wrong_answers=(answers + 1) % VOCAB,
    )


@pytest.fixture(scope="module")
def reference():
    return torch.randint(0, VOCAB, (4, POS), generator=torch.Generator().manual_seed(4))


def no_hooks_left(model) -> bool:
    return all(not hp.fwd_hooks and not hp.bwd_hooks for hp in model.hook_dict.values())


def with_z(model, tokens, heads, value_of, positions=slice(None)):
    """Reference: logits with a hand-written hook setting z[:, positions, head] = value_of(layer)."""

    def hook(z, hook, *, layer):
        z = z.clone()
        for l, h in heads:
            if l == layer:
                z[:, positions, h] = value_of(l)[:, positions, h]
        return z

    layers = sorted({l for l, _ in heads})
    hooks = [(f"blocks.{l}.attn.hook_z", partial(hook, layer=l)) for l in layers]
    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=hooks)


def z_cache(model, tokens):
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    return lambda layer: cache["z", layer]


# --- ablate ------------------------------------------------------------------------


@pytest.mark.parametrize("positions", [None, [1, -1]])
def test_zero_ablation_equals_a_manual_hook(model, batch, positions):
    got = ablate(model, batch.tokens, HEADS, method="zero", positions=positions)
    index = slice(None) if positions is None else [1, POS - 1]
    expected = with_z(model, batch.tokens, HEADS, lambda l: torch.zeros(BATCH, POS, 2, 16), index)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert (got - model(batch.tokens)).abs().max() > 1e-3  # it did change something


@pytest.mark.parametrize("use_reference", [False, True])
def test_mean_ablation_equals_the_mean_over_the_reference(model, batch, reference, use_reference):
    ref = reference if use_reference else batch.tokens
    z_ref = z_cache(model, ref)
    got = ablate(model, batch.tokens, HEADS, method="mean", reference=reference if use_reference else None)
    expected = with_z(model, batch.tokens, HEADS, lambda l: z_ref(l).mean(0, keepdim=True).expand(BATCH, -1, -1, -1))
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_resample_ablation_takes_z_from_the_donors(model, batch, reference):
    for ref in (None, reference):
        donors = resample_donors(batch.tokens, batch.tokens if ref is None else ref, seed=7)
        z_ref = z_cache(model, batch.tokens if ref is None else ref)
        got = ablate(model, batch.tokens, HEADS, method="resample", reference=ref, seed=7)
        expected = with_z(model, batch.tokens, HEADS, lambda l: z_ref(l)[donors])
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_resample_is_seeded():
    tokens = torch.arange(6 * 3).reshape(6, 3)
    first = resample_donors(tokens, tokens, seed=0)
    assert torch.equal(first, resample_donors(tokens, tokens, seed=0))
    assert any(not torch.equal(first, resample_donors(tokens, tokens, seed=s)) for s in range(1, 5))
    for seed in range(5):  # the batch as its own reference: a permutation without fixed points
        donors = resample_donors(tokens, tokens, seed=seed)
        assert sorted(donors.tolist()) == list(range(6))
        assert (donors != torch.arange(6)).all()
    bigger = torch.arange(10 * 3).reshape(10, 3)  # another reference: distinct donors
    assert len(set(resample_donors(tokens, bigger, seed=0).tolist())) == 6
    smaller = bigger[:4]  # fewer donors than prompts: each donor used at most twice
    assert np.bincount(resample_donors(tokens, smaller, seed=0).numpy()).max() == 2


def test_same_seed_same_logits(model, batch):
    a = ablate(model, batch.tokens, HEADS, method="resample", seed=3)
    b = ablate(model, batch.tokens, HEADS, method="resample", seed=3)
    assert torch.equal(a, b)


@pytest.mark.parametrize("method", ["zero", "mean", "resample"])
def test_ablating_no_heads_changes_nothing(model, batch, method):
    assert torch.equal(ablate(model, batch.tokens, [], method=method), model(batch.tokens))


# --- sweeps ------------------------------------------------------------------------

ALL_HEADS = [(l, h) for l in range(2) for h in range(2)]


@pytest.mark.parametrize("method", ["zero", "mean", "resample"])
@pytest.mark.parametrize("batch_size", [None, BATCH])
def test_sweep_equals_one_ablation_per_head(model, batch, method, batch_size):
    metric = logit_diff(batch)
    df = ablation_sweep(model, batch, method=method, metric=metric, seed=2, batch_size=batch_size)
    assert list(df.columns) == list(SWEEP_COLUMNS)
    assert list(zip(df["layer"], df["head"])) == ALL_HEADS
    assert list(df["heads"]) == ["0.0", "0.1", "1.0", "1.1"]
    baseline = metric(model(batch.tokens)).item()
    expected = [ablate_metric(model, batch.tokens, [head], metric, method=method, seed=2) for head in ALL_HEADS]
    np.testing.assert_allclose(df["baseline"], baseline, atol=1e-5)
    np.testing.assert_allclose(df["ablated"], expected, atol=1e-5)
    np.testing.assert_allclose(df["delta"], np.array(expected) - baseline, atol=1e-5)


def test_sweep_defaults_to_logit_diff_or_answer_logprob(model, batch):
    df = ablation_sweep(model, batch, heads=[(1, 1)])
    assert df["ablated"].item() == pytest.approx(ablate_metric(model, batch.tokens, [(1, 1)], logit_diff(batch)), abs=1e-5)
    without = TaskBatch(**{**batch.__dict__, "wrong_answers": None})
    df = ablation_sweep(model, without, heads=[(1, 1)])
    expected = ablate_metric(model, batch.tokens, [(1, 1)], answer_logprob(batch))
    assert df["ablated"].item() == pytest.approx(expected, abs=1e-5)


def test_sweep_together_is_one_row_for_the_set(model, batch):
    metric = logit_diff(batch)
    df = ablation_sweep(model, batch, method="mean", metric=metric, heads=[(1, 0), (0, 1)], together=True)
    assert df[["layer", "head", "heads"]].values.tolist() == [[-1, -1, "1.0+0.1"]]
    expected = ablate_metric(model, batch.tokens, [(1, 0), (0, 1)], metric, method="mean")
    assert df["ablated"].item() == pytest.approx(expected, abs=1e-5)


def test_sweep_by_hop_groups_the_per_prompt_metric(model, batch):
    per_prompt = logit_diff(batch, per_example=True)
    df = ablation_sweep_by_hop(model, batch, method="zero", metric=per_prompt)
    assert list(df.columns) == list(HOP_COLUMNS)
    assert len(df) == 4 * 3
    with torch.no_grad():
        baseline = per_prompt(model(batch.tokens))
    for row in df.itertuples():
        ablated = per_prompt(ablate(model, batch.tokens, [(row.layer, row.head)]))
        mask = batch.hops == row.hop
        assert row.baseline == pytest.approx(baseline[mask].mean().item(), abs=1e-5)
        assert row.ablated == pytest.approx(ablated[mask].mean().item(), abs=1e-5)
    together = ablation_sweep_by_hop(model, batch, heads=HEADS, together=True)
    assert together["hop"].tolist() == [1, 2, 3] and set(together["heads"]) == {"0.1+1.0"}


def test_sweep_by_hop_needs_hops_and_a_per_prompt_metric(model, batch):
    without = TaskBatch(**{**batch.__dict__, "hops": None})
    with pytest.raises(HeadkitError, match="has no hops"):
        ablation_sweep_by_hop(model, without)
    with pytest.raises(HeadkitError, match=r"one value per prompt, shape \(6,\), got \(\)"):
        ablation_sweep_by_hop(model, batch, metric=logit_diff(batch))


# --- attention knockout ------------------------------------------------------------


def test_sweep_by_hop_takes_ablation_sweep_s_options_and_defaults(model, batch, no_forward):
    with pytest.raises(TypeError, match="unexpected keyword argument 'methd'"):
        ablation_sweep_by_hop(model, batch, methd="mean")
    with pytest.raises(HeadkitError, match="unknown ablation method 'median'"):
        ablation_sweep_by_hop(model, batch, method="median")
    with pytest.raises(HeadkitError, match="batch_size=0 is out of range"):
        ablation_sweep_by_hop(model, batch, batch_size=0)


def knockout_by_hand(model, tokens, layer, head, query, key, renormalise):
    """Recompute one GPT-J layer (parallel attention + MLP) with the edge cut, then run on."""
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        pattern = cache["pattern", layer].clone()  # [batch, head_index, query_pos, key_pos]
        pattern[:, head, query, key] = 0.0
        if renormalise:
            pattern[:, head, query] /= pattern[:, head, query].sum(-1, keepdim=True)
        v = cache["v", layer]  # [batch, pos, head_index, d_head]
        z = torch.zeros_like(v)
        for q in range(tokens.shape[1]):
            for k in range(q + 1):
                z[:, q] += pattern[:, :, q, k, None] * v[:, k]
        attn = model.blocks[layer].attn
        attn_out = torch.einsum("bqhd,hdm->bqm", z, attn.W_O) + bias(attn.b_O)
        resid = cache["resid_pre", layer] + attn_out + cache["mlp_out", layer]  # GPT-J: parallel
        return logits_from(model, tokens, resid, layer + 1)


@pytest.mark.parametrize("renormalise", [False, True])
@pytest.mark.parametrize("layer,head,query,key", [(0, 1, 6, 2), (1, 0, 4, 4), (0, 0, -1, -3)])
def test_knockout_equals_a_slow_recomputation(model, batch, layer, head, query, key, renormalise):
    got = attention_knockout(
        model, batch.tokens, layer=layer, head=head, query_pos=query, key_pos=key, renormalise=renormalise
    )
    expected = knockout_by_hand(model, batch.tokens, layer, head, query % POS, key % POS, renormalise)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert (got - model(batch.tokens)).abs().max() > 1e-4


def test_renormalised_knockout_equals_masking_the_score(model, batch):
    def mask(scores, hook):
        scores = scores.clone()
        scores[:, 1, 5, 2] = float("-inf")
        return scores

    with torch.no_grad():
        expected = model.run_with_hooks(batch.tokens, fwd_hooks=[("blocks.1.attn.hook_attn_scores", mask)])
    got = attention_knockout(model, batch.tokens, layer=1, head=1, query_pos=5, key_pos=2, renormalise=True)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


# --- bad input and hook hygiene ----------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(heads=[(2, 0)]), r"head 2\.0: layer 2 is out of range: this model has layers 0\.\.1"),
        (dict(heads=[(0, 2)]), r"head 0\.2: head 2 is out of range: this model has heads 0\.\.1"),
        (dict(method="noise"), r"unknown ablation method 'noise': allowed zero, mean, resample"),
        (dict(positions=[7]), r"ablated position 7 is out of range for prompts of length 7: allowed -7\.\.6"),
        (dict(positions=[]), r"positions is empty"),
        (dict(reference=torch.zeros(2, 7, dtype=torch.long)), r"zero ablation takes no reference"),
        (dict(method="mean", reference=torch.zeros(2, 5, dtype=torch.long)), r"reference length 5 != tokens length 7"),
        (dict(method="mean", reference=torch.full((2, 7), 99)), r"reference: prompt 0, position 0 has token id 99"),
    ],
)
def test_bad_ablation_input_is_refused_before_any_forward(model, batch, no_forward, kwargs, message):
    kwargs = {"heads": HEADS, **kwargs}
    with pytest.raises(HeadkitError, match=message):
        ablate(model, batch.tokens, **kwargs)
    with pytest.raises(HeadkitError, match=message):
        ablation_sweep(model, batch, metric=logit_diff(batch), **kwargs)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(query_pos=2, key_pos=3), r"key_pos 3 \(position 3\) comes after query_pos 2 \(position 2\)"),
        (dict(query_pos=7, key_pos=0), r"query_pos 7 is out of range for prompts of length 7"),
        (dict(query_pos=0, key_pos=0, renormalise=True), r"renormalise=True needs another key"),
        (dict(head=3), r"head 0\.3: head 3 is out of range"),
        (dict(layer=-1), r"layer -1 is out of range"),
    ],
)
def test_bad_knockout_input_is_refused_before_any_forward(model, batch, no_forward, kwargs, message):
    kwargs = {"layer": 0, "head": 0, "query_pos": 3, "key_pos": 1, **kwargs}
    with pytest.raises(HeadkitError, match=message):
        attention_knockout(model, batch.tokens, **kwargs)


def test_hooks_removed_after_an_error_in_a_metric(model, batch):
    def broken(logits):
        raise RuntimeError("metric broke")

    with pytest.raises(RuntimeError, match="metric broke"):
        ablate_metric(model, batch.tokens, HEADS, broken, method="mean")
    assert no_hooks_left(model)
    with pytest.raises(RuntimeError, match="metric broke"):
        ablation_sweep(model, batch, metric=broken)
    assert no_hooks_left(model)

    calls = []

    def breaks_later(logits):  # fine on the baseline, fails inside the sweep
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("metric broke")
        return logits[:, -1, 0].mean()

    for together in (False, True):
        calls.clear()
        with pytest.raises(RuntimeError, match="metric broke"):
            ablation_sweep(model, batch, method="resample", metric=breaks_later, together=together)
        assert no_hooks_left(model)


def test_hooks_removed_after_an_error_inside_a_hook(model, batch, monkeypatch):
    import headkit.interventions.ablation as ablation

    def broken_mean(model, tokens, layers, reference, seed):
        return {f"blocks.{l}.attn.hook_z": torch.zeros(1, POS + 2, 2, 16) for l in layers}  # wrong length

    monkeypatch.setitem(ablation.METHODS, "mean", broken_mean)
    with pytest.raises(RuntimeError):
        ablate(model, batch.tokens, HEADS, method="mean")
    assert no_hooks_left(model)


@pytest.mark.parametrize("seed", [2**70, -1, 1.5])
def test_seeds_torch_cannot_take_are_refused_before_work(model, batch, seed, no_forward):
    with pytest.raises(HeadkitError, match="seed"):
        ablation_sweep(model, batch, method="resample", seed=seed)
    with pytest.raises(HeadkitError, match="seed"):
        ablate(model, batch.tokens, HEADS, method="resample", seed=seed)
    with pytest.raises(HeadkitError, match="seed"):
        resample_donors(batch.tokens, batch.tokens, seed=seed)


def test_largest_seed_is_accepted(model, batch):
    donors = resample_donors(batch.tokens, batch.tokens, seed=2**64 - 1)
    assert sorted(donors.tolist()) == list(range(BATCH))
    ablation_sweep(model, batch, method="resample", seed=2**64 - 1, heads=HEADS)


def test_duplicate_heads_are_refused(model, batch, no_forward):
    with pytest.raises(HeadkitError, match=r"head 1\.0 is given twice"):
        ablation_sweep(model, batch, heads=[(1, 0), (1, 0)], together=True)


def test_mean_over_a_single_prompt_warns_like_resample(model, batch, reference, caplog):
    """Issue 18: the mean of one prompt is that prompt, so mean-ablating it from itself is no ablation."""
    one = batch.tokens[:1]
    with caplog.at_level("WARNING", logger="headkit.interventions.ablation"):
        same = ablate(model, one, HEADS, method="mean")
    assert torch.equal(same, model(one))  # nothing was ablated: what the warning is for
    assert [r.getMessage() for r in caplog.records] == [
        "mean ablation of a single prompt from itself: the mean over one prompt is the prompt, "
        "so nothing is ablated (every delta is 0); give more prompts"
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="headkit.interventions.ablation"):
        ablate(model, batch.tokens, HEADS, method="mean", reference=reference[:1])
    assert [r.getMessage() for r in caplog.records] == [
        "mean ablation over a single reference prompt: the mean over one prompt is that prompt's z"
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="headkit.interventions.ablation"):
        ablate(model, batch.tokens, HEADS, method="mean")
        ablate(model, one, HEADS, method="mean", reference=reference)
    assert not caplog.records  # two prompts or more: a mean
