"""Every site and intervention on two loaded pretrained models: grouped-query (Llama) and absolute positions (GPT-2).

The models are tiny random Hugging Face checkpoints saved by the test with a
word-level tokenizer (`headkit.tasks.natural.word_tokenizer`) and loaded with
`headkit.loading.pretrained.load_pretrained`; prompts come from the natural-language
suites. The checks are invariants that hold for any weights: patching with a
source equal to the base changes nothing, patching a whole residual stream
recovers the source run, ablating no heads or attributing a zero difference
gives nothing.
"""

from __future__ import annotations

import pytest
import torch
import transformers as T

from headkit.errors import HeadkitError
from headkit.interventions.ablation import ablate, ablation_sweep
from headkit.interventions.activation_patching import activation_patching
from headkit.interventions.attribution import SITES as ATTRIBUTION_SITES
from headkit.interventions.attribution import attribution_patching
from headkit.interventions.metrics import logit_diff
from headkit.interventions.path_patching import path_patching, path_patching_sweep
from headkit.interventions.sites import available_sites, site_heads
from headkit.loading.pretrained import load_pretrained
from headkit.tasks.natural import build_suite, word_tokenizer

TOL = 1e-4


def _config(kind: str, vocab: int):
    if kind == "gqa":
        return T.LlamaConfig(
            vocab_size=vocab, max_position_embeddings=64, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        )  # fmt: skip
    return T.GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=4)


@pytest.fixture(scope="module", params=["gqa", "absolute"])
def loaded(request, tmp_path_factory):
    tokenizer = word_tokenizer()
    torch.manual_seed(0)
    hf = T.AutoModelForCausalLM.from_config(_config(request.param, len(tokenizer)))
    directory = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    model = load_pretrained(directory, device="cpu")
    batch = build_suite("duplicate", 4, seed=0, tokenizer=model.tokenizer, length=8)
    return request.param, model, batch


def test_models_are_what_they_claim(loaded):
    kind, model, _ = loaded
    if kind == "gqa":
        assert model.cfg.n_key_value_heads == 2 < model.cfg.n_heads
    else:
        assert model.cfg.positional_embedding_type == "standard"


def test_every_site_patched_from_an_identical_run_changes_nothing(loaded):
    _, model, batch = loaded
    metric = logit_diff(batch)
    clean = metric(model(batch.tokens)).item()
    for site in available_sites(model):
        frame = activation_patching(model, batch.tokens, batch.tokens, metric, site=site)
        assert len(frame) > 0, site
        assert (frame["value"] - clean).abs().max() <= TOL, site
        if site in ("k", "v", "q", "z", "pattern"):
            assert frame["head"].max() + 1 == site_heads(model, site), site  # kv sites have kv heads


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_patching_a_whole_residual_stream_recovers_the_source_run(loaded, direction):
    _, model, batch = loaded
    metric = logit_diff(batch)
    clean = metric(model(batch.tokens)).item()
    corrupted = metric(model(batch.corrupted.tokens)).item()
    assert abs(clean - corrupted) > 1e-6  # the check can fail
    frame = activation_patching(
        model, batch.tokens, batch.corrupted.tokens, metric, site="resid_pre", direction=direction
    )
    source = clean if direction == "denoise" else corrupted
    assert (frame["value"] - source).abs().max() <= TOL


def test_ablation(loaded):
    _, model, batch = loaded
    with torch.no_grad():
        assert torch.allclose(ablate(model, batch.tokens, []), model(batch.tokens), atol=TOL)
    for method in ("zero", "mean", "resample"):
        frame = ablation_sweep(model, batch, method=method)
        assert len(frame) == model.cfg.n_layers * model.cfg.n_heads
        assert frame["ablated"].map(lambda x: x == x).all()  # finite numbers, not NaN
        assert (frame["baseline"] - logit_diff(batch)(model(batch.tokens)).item()).abs().max() <= TOL
    # mean ablation with the prompts as their own, single-prompt reference changes nothing
    one = batch.select([0])
    frame = ablation_sweep(model, one, method="mean", reference=one.tokens)
    assert (frame["delta"]).abs().max() <= TOL


def test_path_patching_q_and_final_receivers(loaded):
    _, model, batch = loaded
    metric = logit_diff(batch)
    clean = metric(model(batch.tokens)).item()
    assert abs(path_patching(model, batch.tokens, batch.corrupted.tokens, [], "final", metric) - clean) <= TOL
    for receivers in ("final", ["1.0.q", "1.3.q"]):
        frame = path_patching_sweep(model, batch.tokens, batch.tokens, receivers, metric, normalise=False)
        assert len(frame) > 0
        assert (frame["value"] - clean).abs().max() <= TOL
    # every layer-0 head as sender to the final output: the corrupted run's layer-0 output only
    every = [(0, h) for h in range(model.cfg.n_heads)]
    value = path_patching(model, batch.tokens, batch.corrupted.tokens, every, "final", metric)
    # by hand: the clean run with layer 0's head outputs taken from the corrupted run and every
    # later head's output frozen to its clean value (only MLPs and the logits recomputed)
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(batch.tokens)
        _, corrupted_cache = model.run_with_cache(batch.corrupted.tokens)
        hooks = [
            (f"blocks.{l}.attn.hook_z", lambda z, hook, l=l: (corrupted_cache if l == 0 else clean_cache)[f"blocks.{l}.attn.hook_z"])
            for l in range(model.cfg.n_layers)
        ]
        expected = metric(model.run_with_hooks(batch.tokens, fwd_hooks=hooks)).item()
    assert value == pytest.approx(expected, abs=TOL)
    assert abs(value - clean) > TOL  # the corrupted layer 0 does move the metric


def test_path_patching_k_and_v_receivers(loaded):
    name, model, batch = loaded
    metric = logit_diff(batch)
    clean = metric(model(batch.tokens)).item()
    # k/v receivers index the heads hook_k/hook_v hold: n_key_value_heads on a GQA model (issue 9)
    n_kv = model.cfg.n_key_value_heads or model.cfg.n_heads
    last = n_kv - 1
    frame = path_patching_sweep(
        model, batch.tokens, batch.tokens, [f"1.{last}.k", f"1.{last}.v"], metric, normalise=False
    )
    assert (frame["value"] - clean).abs().max() <= TOL
    if name == "gqa":  # a query-head index past the k/v heads is refused by name, not an IndexError
        assert n_kv < model.cfg.n_heads
        with pytest.raises(HeadkitError, match=f"receiver 1.{model.cfg.n_heads - 1}.k: head .*n_key_value_heads={n_kv}"):
            path_patching_sweep(model, batch.tokens, batch.tokens, [f"1.{model.cfg.n_heads - 1}.k"], metric)


def test_attribution_of_an_identical_run_is_zero(loaded):
    _, model, batch = loaded
    metric = logit_diff(batch)
    for site in ATTRIBUTION_SITES:
        frame = attribution_patching(model, batch.tokens, batch.tokens, metric, site=site)
        assert len(frame) > 0 and frame["value"].abs().max() == 0, site
        frame = attribution_patching(model, batch.tokens, batch.corrupted.tokens, metric, site=site)
        assert frame["value"].abs().max() > 0, site  # the check can fail
