"""Path patching against a slow explicit reference and its invariants.

The reference below re-implements IOI App. B one sender set at a time with plain
PyTorch forward hooks (``nn.Module.register_forward_hook`` on the hook modules,
not TransformerLens's hook machinery), full forwards from tokens, no stacking of
copies and no starting mid-model: everything headkit does to go fast is absent.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch

from headkit.checks import parse_receiver, parse_receivers
from headkit.errors import HeadkitError
from headkit.interventions.path_patching import path_patching, path_patching_sweep
from headkit.model_types import is_bridge

from hooked import hooked_model
from model_edits import livelier

ATOL = 1e-5
D_VOCAB = 40
QKV = {"q": "hook_q", "k": "hook_k", "v": "hook_v"}


def metric(logits):
    """A non-linear scalar metric: mean log-probability of token 3 at the last position."""
    return logits[:, -1].log_softmax(-1)[:, 3].mean()


def _tokens(seed, batch=4, length=10):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, D_VOCAB, (batch, length), generator=gen)


@pytest.fixture
def clean():
    return _tokens(1)


@pytest.fixture
def corrupted():
    return _tokens(2)


@pytest.fixture
def gptj(tiny_gptj):
    return livelier(tiny_gptj(n_layers=3, d_model=32, n_heads=2, d_vocab=D_VOCAB))


@pytest.fixture
def sequential():
    """A standard GPT-2-style block: attention, then MLP (it has hook_resid_mid)."""
    cfg = dict(
        n_layers=3, d_model=32, n_heads=2, d_head=16, d_mlp=64, d_vocab=D_VOCAB, n_ctx=32,
        act_fn="gelu", normalization_type="LN", positional_embedding_type="standard", seed=0,
    )
    model = hooked_model(**cfg)
    model.eval()
    return model


def _with_forward_hooks(model, hooks, tokens):
    """Run ``model(tokens)`` with plain module forward hooks {module path: fn(output)}."""
    if is_bridge(model):  # a bridge reshapes around its hook points: go through TransformerLens's hook API
        with torch.no_grad():
            return model.run_with_hooks(tokens, fwd_hooks=[(n, lambda act, hook, fn=fn: fn(act)) for n, fn in hooks.items()])
    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_hook(lambda m, i, o, fn=fn: fn(o)) for name, fn in hooks.items()]
    try:
        with torch.no_grad():
            return model(tokens)
    finally:
        for handle in handles:
            handle.remove()


def reference_path_patching(model, clean, corrupted, senders, receivers, metric):
    n_layers = model.cfg.n_layers
    z_names = [f"blocks.{layer}.attn.hook_z" for layer in range(n_layers)]

    # (1) head outputs on the clean and the corrupted input
    clean_z, corrupted_z = {}, {}
    _with_forward_hooks(model, {n: (lambda o, n=n: clean_z.__setitem__(n, o.clone())) for n in z_names}, clean)
    _with_forward_hooks(model, {n: (lambda o, n=n: corrupted_z.__setitem__(n, o.clone())) for n in z_names}, corrupted)

    # (2) clean run, senders from corrupted, every other head frozen to clean
    def frozen(layer):
        z = clean_z[z_names[layer]].clone()
        for s_layer, s_head in senders:
            if s_layer == layer:
                z[:, :, s_head] = corrupted_z[z_names[layer]][:, :, s_head]
        return z

    hooks = {z_names[layer]: (lambda o, layer=layer: frozen(layer)) for layer in range(n_layers)}
    recorded = {}
    for layer, head, kind in [r for r in receivers if r != "final"]:
        name = f"blocks.{layer}.attn.{QKV[kind]}"
        hooks[name] = lambda o, name=name: recorded.__setitem__(name, o.clone())
    logits = _with_forward_hooks(model, hooks, clean)
    if receivers == ["final"]:
        return float(metric(logits))

    # (3) clean run with only the receivers' inputs patched
    def patched(o, name, heads):
        o = o.clone()
        for head in heads:
            o[:, :, head] = recorded[name][:, :, head]
        return o

    by_hook = {}
    for layer, head, kind in receivers:
        by_hook.setdefault(f"blocks.{layer}.attn.{QKV[kind]}", []).append(head)
    hooks = {name: (lambda o, name=name, heads=heads: patched(o, name, heads)) for name, heads in by_hook.items()}
    return float(metric(_with_forward_hooks(model, hooks, clean)))


def _clean_metric(model, tokens):
    with torch.no_grad():
        return float(metric(model(tokens)))


def _no_hooks_left(model):
    return all(not hp.fwd_hooks and not hp.bwd_hooks for hp in model.hook_dict.values())


CASES = [
    ([(0, 0)], ["final"]),
    ([(0, 1), (1, 0)], ["final"]),
    ([(0, 0)], [(2, 0, "q")]),
    ([(1, 1)], [(2, 1, "k")]),
    ([(0, 1), (1, 0)], [(2, 0, "v"), (2, 1, "q")]),
    ([(0, 0)], [(1, 1, "q"), (2, 0, "k"), (2, 0, "v")]),
]


@pytest.mark.parametrize("model_name", ["gptj", "sequential"])
@pytest.mark.parametrize("senders,receivers", CASES)
def test_matches_slow_reference(request, model_name, senders, receivers, clean, corrupted):
    model = request.getfixturevalue(model_name)
    expected = reference_path_patching(model, clean, corrupted, senders, receivers, metric)
    got = path_patching(model, clean, corrupted, senders, receivers, metric)
    assert got == pytest.approx(expected, abs=ATOL)
    # the path must actually carry an effect here, or the comparison says nothing
    assert abs(expected - _clean_metric(model, clean)) > 1e-4


@pytest.mark.parametrize(
    "model_name,receivers", [("gptj", [(2, 0, "q"), (2, 1, "v")]), ("sequential", ["final"])]
)
def test_sweep_equals_reference_per_sender(request, model_name, receivers, clean, corrupted):
    model = request.getfixturevalue(model_name)
    # batch_size 8 with 4 prompts stacks 2 senders per forward: chunks of several copies
    df = path_patching_sweep(model, clean, corrupted, receivers, metric, batch_size=8)
    assert list(df.columns) == ["layer", "head", "value", "normalised"]
    n_sender_layers = 3 if receivers == ["final"] else 2
    assert list(zip(df["layer"], df["head"])) == [(l, h) for l in range(n_sender_layers) for h in range(2)]
    clean_metric = _clean_metric(model, clean)
    corrupted_metric = _clean_metric(model, corrupted)
    for row in df.itertuples():
        expected = reference_path_patching(model, clean, corrupted, [(row.layer, row.head)], receivers, metric)
        assert row.value == pytest.approx(expected, abs=ATOL)
        normalised = (expected - clean_metric) / (corrupted_metric - clean_metric)
        assert row.normalised == pytest.approx(normalised, abs=1e-4)
    assert df.attrs["clean"] == pytest.approx(clean_metric, abs=ATOL)
    assert df.attrs["corrupted"] == pytest.approx(corrupted_metric, abs=ATOL)
    unchunked = path_patching_sweep(model, clean, corrupted, receivers, metric, normalise=False, batch_size=None)
    assert torch.allclose(torch.tensor(unchunked.value.values), torch.tensor(df.value.values), atol=ATOL)
    assert unchunked.normalised.isna().all()


def test_single_receiver_forms(gptj, clean, corrupted):
    as_list = path_patching(gptj, clean, corrupted, [(0, 0)], [(2, 1, "k")], metric)
    assert path_patching(gptj, clean, corrupted, [(0, 0)], (2, 1, "k"), metric) == as_list
    assert path_patching(gptj, clean, corrupted, [(0, 0)], "2.1.k", metric) == as_list
    assert path_patching(gptj, clean, corrupted, [(0, 0)], ["2.1.k", (2, 1, "k")], metric) == as_list


def test_given_senders_only(gptj, clean, corrupted):
    df = path_patching_sweep(gptj, clean, corrupted, ["final"], metric, senders=[(2, 1), (0, 0)])
    assert list(zip(df["layer"], df["head"])) == [(0, 0), (2, 1)]
    for row in df.itertuples():
        single = path_patching(gptj, clean, corrupted, [(row.layer, row.head)], ["final"], metric)
        assert row.value == pytest.approx(single, abs=ATOL)


@pytest.mark.parametrize("receivers", [["final"], [(2, 0, "q")], [(1, 1, "k"), (2, 0, "v")]])
def test_no_senders_gives_clean_metric(gptj, clean, corrupted, receivers):
    got = path_patching(gptj, clean, corrupted, [], receivers, metric)
    assert got == pytest.approx(_clean_metric(gptj, clean), abs=ATOL)


@pytest.mark.parametrize("receivers", [["final"], [(2, 0, "q"), (2, 1, "k")]])
def test_clean_equals_corrupted_changes_nothing(gptj, clean, receivers, caplog):
    got = path_patching(gptj, clean, clean.clone(), [(0, 0), (1, 1)], receivers, metric)
    assert got == pytest.approx(_clean_metric(gptj, clean), abs=ATOL)
    with caplog.at_level(logging.WARNING):
        df = path_patching_sweep(gptj, clean, clean.clone(), receivers, metric)
    assert torch.allclose(torch.tensor(df.value.values), torch.full((len(df),), _clean_metric(gptj, clean), dtype=torch.float64), atol=ATOL)
    assert df.normalised.isna().all()
    assert "equal" in caplog.text


@pytest.mark.parametrize("model_name", ["gptj", "sequential"])
def test_all_heads_to_final_is_patching_every_head_output(request, model_name, clean, corrupted):
    """With every head a sender no head is frozen: this is patching all of hook_z at once."""
    model = request.getfixturevalue(model_name)
    _, cache = model.run_with_cache(corrupted, names_filter=lambda n: n.endswith("hook_z"))
    hooks = [(name, lambda z, hook: cache[hook.name]) for name in cache]
    with torch.no_grad():
        expected = float(metric(model.run_with_hooks(clean, fwd_hooks=hooks)))
    every = [(l, h) for l in range(3) for h in range(2)]
    assert path_patching(model, clean, corrupted, every, "final", metric) == pytest.approx(expected, abs=ATOL)
    assert abs(expected - _clean_metric(model, clean)) > 1e-3


def test_attn_only_all_heads_to_final_is_corrupted_run(tiny_gptj, clean):
    """Attention-only: the final residual is the embedding plus head outputs, so with every
    head patched the last position equals the corrupted run wherever its token is shared."""
    model = tiny_gptj(n_layers=3, n_heads=2, d_vocab=D_VOCAB, attn_only=True)
    corrupted = (clean + 1 + _tokens(3) % (D_VOCAB - 1)) % D_VOCAB  # differs everywhere...
    corrupted[:, -1] = clean[:, -1]  # ...except the last token, which the metric reads
    assert bool((corrupted[:, :-1] != clean[:, :-1]).all())
    every = [(l, h) for l in range(3) for h in range(2)]
    got = path_patching(model, clean, corrupted, every, "final", metric)
    assert got == pytest.approx(_clean_metric(model, corrupted), abs=ATOL)
    assert abs(_clean_metric(model, corrupted) - _clean_metric(model, clean)) > 1e-3


@pytest.mark.parametrize("senders", [[(0, 1)], [(1, 0), (2, 1)], [(0, 0), (0, 1), (1, 1)]])
def test_attn_only_final_path_is_the_senders_direct_term(tiny_gptj, clean, corrupted, senders):
    """Known by construction: with no MLPs and every other head frozen, the final residual
    changes by exactly each sender's output difference times its W_O."""
    model = tiny_gptj(n_layers=3, n_heads=2, d_vocab=D_VOCAB, attn_only=True)
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
        _, corrupted_cache = model.run_with_cache(corrupted)
        resid = clean_cache["blocks.2.hook_resid_post"].clone()  # [batch, pos, d_model]
        for layer, head in senders:
            name = f"blocks.{layer}.attn.hook_z"
            delta = corrupted_cache[name][:, :, head] - clean_cache[name][:, :, head]  # [batch, pos, d_head]
            resid += delta @ model.W_O[layer, head]
        expected = float(metric(model.unembed(model.ln_final(resid))))
    assert path_patching(model, clean, corrupted, senders, "final", metric) == pytest.approx(expected, abs=ATOL)


def test_parse_receivers():
    assert parse_receiver("final") == "final"
    assert parse_receiver(" 5.0.q ") == (5, 0, "q")
    assert parse_receivers("1.2.k,3.0.v") == [(1, 2, "k"), (3, 0, "v")]
    for bad in ["5.0", "5.0.z", "a.0.q", "5.0.q.1", "fina"]:
        with pytest.raises(HeadkitError, match="LAYER.HEAD.q"):
            parse_receiver(bad)
    with pytest.raises(HeadkitError, match="no receivers"):
        parse_receivers(" , ")


@pytest.mark.parametrize(
    "senders,receivers,message",
    [
        ([(2, 0)], [(2, 1, "q")], r"sender head 2\.0 \(layer 2\) is not before receiver 2\.1\.q .*layers 0\.\.1"),
        ([(0, 0)], [(1, 0, "k"), (0, 1, "v")], r"sender head 0\.0 .*receiver 0\.1\.v \(layer 0\): a receiver in layer 0 has no earlier"),
        ([(3, 0)], ["final"], r"head 3\.0: layer 3 is out of range.*0\.\.2"),
        ([(0, 2)], ["final"], r"head 0\.2: head 2 is out of range.*0\.\.1"),
        ([(0, 0)], [(5, 0, "q")], r"head 5\.0: layer 5 is out of range"),
        ([(0, 0)], [(2, 0, "x")], r"'q'\|'k'\|'v'"),
        ([(0, 0)], [(2, 0, "q"), "final"], r"mix 'final' with head inputs \(2\.0\.q\)"),
        ([(0, 0)], [], r"no receivers"),
        ([(0, 0)], ["2.0"], r"LAYER\.HEAD\.q\|k\|v"),
    ],
)
def test_bad_input_is_refused_before_work(gptj, clean, corrupted, senders, receivers, message):
    calls = []

    def counting(logits):
        calls.append(1)
        return metric(logits)

    with pytest.raises(HeadkitError, match=message):
        path_patching(gptj, clean, corrupted, senders, receivers, counting)
    assert calls == []


def test_bad_tokens_and_sweep_options(gptj, clean, corrupted):
    with pytest.raises(HeadkitError, match=r"shape \(4, 10\) and corrupted_tokens shape \(4, 9\)"):
        path_patching(gptj, clean, corrupted[:, :9], [(0, 0)], "final", metric)
    with pytest.raises(HeadkitError, match="corrupted_tokens: prompt 0, position 0 has token id 99"):
        bad = corrupted.clone()
        bad[0, 0] = 99
        path_patching(gptj, clean, bad, [(0, 0)], "final", metric)
    with pytest.raises(HeadkitError, match="in layer 0: no earlier heads"):
        path_patching_sweep(gptj, clean, corrupted, [(0, 1, "q")], metric)
    with pytest.raises(HeadkitError, match="no sender heads"):
        path_patching_sweep(gptj, clean, corrupted, "final", metric, senders=[])
    with pytest.raises(HeadkitError, match="batch_size=0"):
        path_patching_sweep(gptj, clean, corrupted, "final", metric, batch_size=0)


def test_metric_must_be_scalar(gptj, clean, corrupted):
    with pytest.raises(HeadkitError, match="metric on the clean run.*shape \\(4,\\)"):
        path_patching(gptj, clean, corrupted, [(0, 0)], "final", lambda logits: logits[:, -1, 0])


@pytest.mark.parametrize("receivers", [["final"], [(2, 0, "q")]])
def test_hooks_removed_after_an_error(gptj, clean, corrupted, receivers):
    calls = []

    def fails_after_clean_run(logits):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("metric failed")
        return metric(logits)

    with pytest.raises(RuntimeError, match="metric failed"):
        path_patching_sweep(gptj, clean, corrupted, receivers, fails_after_clean_run, batch_size=4)
    assert _no_hooks_left(gptj)
    # and the model still computes the clean run unchanged afterwards
    assert math.isfinite(path_patching(gptj, clean, corrupted, [], receivers, metric))
    assert _no_hooks_left(gptj)


def test_error_inside_a_hooked_forward_removes_hooks(gptj, clean, corrupted, monkeypatch):
    """An exception raised during the patched forward itself (not in the metric)."""
    import headkit.interventions.path_patching as pp

    def broken(*args, **kwargs):
        raise RuntimeError("hook failed")

    monkeypatch.setattr(pp, "_record", broken)
    with pytest.raises(RuntimeError, match="hook failed"):
        path_patching(gptj, clean, corrupted, [(0, 0)], [(2, 0, "q")], metric)
    assert _no_hooks_left(gptj)


# --- shortformer and grouped-query models (issue 9) --------------------------------------


def _model(**overrides):
    base = dict(
        n_layers=3, d_model=32, n_heads=2, d_head=16, d_mlp=64, d_vocab=D_VOCAB, n_ctx=32,
        act_fn="gelu", normalization_type="LN", positional_embedding_type="standard", seed=0,
    )  # fmt: skip
    model = hooked_model(**{**base, **overrides})
    model.eval()
    return model


VARIANTS = {
    # shortformer: position embeddings enter only the queries' and keys' input, never the residual
    "shortformer_attn_only": dict(positional_embedding_type="shortformer", attn_only=True, d_mlp=None),
    "shortformer_gpt2": dict(positional_embedding_type="shortformer"),
    # grouped-query attention: hook_k / hook_v hold n_key_value_heads heads
    "gqa": dict(n_heads=4, d_head=8, n_key_value_heads=2),
    "gqa_shortformer": dict(n_heads=4, d_head=8, n_key_value_heads=2, positional_embedding_type="shortformer"),
}


@pytest.fixture(params=list(VARIANTS))
def variant(request):
    return _model(**VARIANTS[request.param])


@pytest.mark.parametrize("receivers", [["final"], [(2, 0, "q")], [(2, 1, "k"), (1, 0, "v")], [(2, 3, "q"), (2, 1, "v")]])
def test_clean_equals_corrupted_gives_the_clean_metric_on_every_model(variant, clean, receivers):
    # the bug: a restarted forward without shortformer_pos_embed changed the clean run itself
    receivers = [r for r in receivers if r == "final" or r[1] < variant.cfg.n_heads]
    got = path_patching(variant, clean, clean.clone(), [(0, 0), (0, 1)], receivers, metric)
    assert got == pytest.approx(_clean_metric(variant, clean), abs=ATOL)
    df = path_patching_sweep(variant, clean, clean.clone(), receivers, metric, batch_size=8)
    assert torch.allclose(
        torch.tensor(df.value.values), torch.full((len(df),), _clean_metric(variant, clean), dtype=torch.float64), atol=ATOL
    )


@pytest.mark.parametrize(
    "senders,receivers",
    [([(0, 0)], ["final"]), ([(0, 1), (1, 0)], [(2, 0, "q")]), ([(1, 1)], [(2, 1, "k")]), ([(0, 0)], [(2, 0, "v"), (1, 1, "q")])],
)
def test_variants_match_slow_reference(variant, senders, receivers, clean, corrupted):
    expected = reference_path_patching(variant, clean, corrupted, senders, receivers, metric)
    got = path_patching(variant, clean, corrupted, senders, receivers, metric)
    assert got == pytest.approx(expected, abs=ATOL)
    assert abs(expected - _clean_metric(variant, clean)) > 1e-5  # the path carries an effect
    df = path_patching_sweep(variant, clean, corrupted, receivers, metric, senders=senders)
    for row in df.itertuples():
        single = reference_path_patching(variant, clean, corrupted, [(row.layer, row.head)], receivers, metric)
        assert row.value == pytest.approx(single, abs=ATOL)


@pytest.mark.parametrize("kind", ["k", "v"])
def test_gqa_key_value_receivers_are_checked_against_their_own_heads(clean, corrupted, kind, no_forward):
    model = _model(**VARIANTS["gqa"])  # 4 query heads, 2 key/value heads
    for head in (2, 3):
        with pytest.raises(HeadkitError, match=rf"receiver 2\.{head}\.{kind}: head {head} is out of range for hook_{kind}, which holds heads 0\.\.1"):
            path_patching(model, clean, corrupted, [(0, 0)], [(2, head, kind)], metric)
        with pytest.raises(HeadkitError, match=rf"receiver 2\.{head}\.{kind}"):
            path_patching_sweep(model, clean, corrupted, [(2, head, kind)], metric)


def test_gqa_query_receivers_use_every_query_head(clean, corrupted):
    model = _model(**VARIANTS["gqa"])
    expected = reference_path_patching(model, clean, corrupted, [(0, 0)], [(2, 3, "q")], metric)
    assert path_patching(model, clean, corrupted, [(0, 0)], [(2, 3, "q")], metric) == pytest.approx(expected, abs=ATOL)
