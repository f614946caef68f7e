"""`headkit.scores.capture`: what it captures equals TransformerLens's full cache, and it stops early."""

from __future__ import annotations

import pytest
import torch

from headkit.model_types import HookedTransformer
from headkit.scores.capture import capture, query_chunks

from hooked import hooked_model
from model_edits import negative_eps

# heads out of (layer, head) order, over three layers: the result keeps this order
HEADS = [(2, 1), (0, 0), (1, 2), (0, 2), (2, 0)]
CACHE_NAMES = {"pattern": "pattern", "logits": "attn_scores"}


def standard_model() -> HookedTransformer:
    """A tiny GPT-2-style model (absolute positions, MLPs, LayerNorm) from config."""
    cfg = dict(
        n_layers=3, d_model=24, n_heads=3, d_head=8, d_mlp=48, n_ctx=16, d_vocab=20,
        act_fn="gelu", normalization_type="LN", positional_embedding_type="standard", seed=1,
    )  # fmt: skip
    return hooked_model(**cfg).eval()


@pytest.fixture(params=["gptj", "standard"])
def model(request, tiny_gptj) -> HookedTransformer:
    if request.param == "gptj":
        return tiny_gptj(n_layers=3, n_heads=3, d_model=24, d_vocab=20, n_ctx=16)
    return standard_model()


def prompts(batch: int = 5, pos: int = 9) -> torch.Tensor:
    return torch.randint(0, 20, (batch, pos), generator=torch.Generator().manual_seed(3))


def cached(model: HookedTransformer, tokens: torch.Tensor, site: str) -> torch.Tensor:
    """[batch, unit, query_pos, key_pos] of HEADS from run_with_cache's full cache."""
    _, cache = model.run_with_cache(tokens)
    return torch.stack([cache[CACHE_NAMES[site], l][:, h] for l, h in HEADS], dim=1)


@pytest.mark.parametrize("site", ["pattern", "logits"])
@pytest.mark.parametrize("query_pos", [-1, 4, 2])
def test_rows_at_an_int_query_equal_the_full_cache(model, no_hooks_left, site, query_pos):
    tokens = prompts()
    rows = capture(model, tokens, HEADS, site=site, query_pos=query_pos, batch_size=2)
    assert rows.shape == (5, len(HEADS), 9)
    torch.testing.assert_close(rows, cached(model, tokens, site)[:, :, query_pos], rtol=0, atol=1e-6)
    assert no_hooks_left(model)


@pytest.mark.parametrize("site", ["pattern", "logits"])
def test_rows_at_per_prompt_queries_equal_the_full_cache(model, site):
    tokens = prompts()
    queries = torch.tensor([8, 3, -1, 3, 0])
    rows = capture(model, tokens, HEADS, site=site, query_pos=queries, batch_size=2)
    full = cached(model, tokens, site)
    expected = torch.stack([full[b, :, int(q)] for b, q in enumerate(queries)])  # a slow per-prompt loop
    torch.testing.assert_close(rows, expected, rtol=0, atol=1e-6)


def test_whole_patterns_equal_the_full_cache(model):
    tokens = prompts()
    patterns = capture(model, tokens, HEADS, query_pos=None, batch_size=3)
    assert patterns.shape == (5, len(HEADS), 9, 9)
    torch.testing.assert_close(patterns, cached(model, tokens, "pattern"), rtol=0, atol=1e-6)


def test_every_head_in_model_order_without_reordering(model):
    tokens = prompts(batch=2)
    heads = [(l, h) for l in range(3) for h in range(3)]
    _, cache = model.run_with_cache(tokens)
    expected = torch.stack([cache["pattern", l][:, h, -1] for l, h in heads], dim=1)
    torch.testing.assert_close(capture(model, tokens, heads), expected, rtol=0, atol=1e-6)


def test_reduce_runs_per_layer_on_each_chunk_with_its_tokens(model):
    tokens = prompts(batch=5)
    seen: list[tuple[tuple[int, ...], torch.Tensor]] = []

    def row_sums(values: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        seen.append((tuple(values.shape), tokens))
        return values.sum(-1)  # [n, unit_of_layer, query_pos]

    sums = capture(model, tokens, HEADS, query_pos=None, reduce=row_sums, batch_size=2)
    torch.testing.assert_close(sums, cached(model, tokens, "pattern").sum(-1), rtol=0, atol=1e-6)
    # three chunks (2, 2, 1 prompts) x three layers; each sees its own prompts and its layer's heads
    assert [shape for shape, _ in seen] == [(n, u, 9, 9) for n in (2, 2, 1) for u in (2, 1, 2)]
    assert torch.equal(torch.cat([t for _, t in seen[::3]]), tokens)


def test_stops_after_the_last_layer_asked_for(model):
    tokens = prompts(batch=2)
    # attention outputs, not hook_resid_pre: a bridge's stop_at_layer fires the next block's input hook, then stops
    calls = {name: 0 for name in ("blocks.1.attn.hook_z", "blocks.2.attn.hook_z", "ln_final.hook_normalized")}

    def counter(name):
        def count(x, hook):  # a bridge names the hook natively (blocks.1.hook_in): count by the name asked for
            calls[name] += 1

        return count

    for name in calls:
        model.add_hook(name, counter(name))
    try:
        capture(model, tokens, [(0, 1)], site="logits")
        assert calls == {name: 0 for name in calls}  # nothing after layer 0 runs
        capture(model, tokens, [(1, 0)], query_pos=torch.tensor([3, 5]))
        assert calls == {"blocks.1.attn.hook_z": 2, "blocks.2.attn.hook_z": 0, "ln_final.hook_normalized": 0}
        capture(model, tokens, [(2, 2)], query_pos=None)
        assert calls["blocks.2.attn.hook_z"] == 1 and calls["ln_final.hook_normalized"] == 0  # no unembedding
    finally:
        model.reset_hooks()


def test_query_chunks_group_prompts_by_query_then_by_batch_size():
    tokens = prompts(batch=5)
    chunks = query_chunks(tokens, torch.tensor([4, 2, 4, 4, -5]), batch_size=2)
    assert [(idx.tolist(), q) for idx, q in chunks] == [([1], 2), ([0, 2], 4), ([3, 4], 4)]
    assert [(idx.tolist(), q) for idx, q in query_chunks(tokens, None, batch_size=3)] == [
        ([0, 1, 2], None),
        ([3, 4], None),
    ]


@pytest.mark.parametrize(
    "heads, options, words",
    [
        ([(3, 0)], {}, ["layer 3", "0..2"]),
        ([(0, 3)], {}, ["head 3", "0..2"]),
        ([(0, 1), (0, 1)], {}, ["head 0.1 is given twice"]),
        ([], {}, ["heads is empty"]),
        ([(0, 1)], {"query_pos": 9}, ["query_pos 9", "-9..8"]),
        ([(0, 1)], {"query_pos": torch.tensor([1, 2])}, ["one integer position per prompt", "(5,)"]),
        ([(0, 1)], {"query_pos": torch.zeros(5)}, ["dtype"]),
        ([(0, 1)], {"query_pos": torch.tensor([0, 1, 2, 3, 10])}, ["query_pos 10"]),
        ([(0, 1)], {"site": "values"}, ["site='values'", "'pattern', 'logits'"]),
        ([(0, 1)], {"batch_size": 0}, ["batch_size=0"]),
        ([(0, 1)], {"batch_size": True}, ["batch_size must be an integer"]),
    ],
)
def test_bad_heads_and_queries_raise_before_any_forward(model, refused_before_forward, heads, options, words):
    message = refused_before_forward(model, capture, model, prompts(), heads, **options)
    for w in words:
        assert w in message, message


# ---------------------------------------------------------------------------
# activations that are not finite (issue 18): finite weights, NaN activations


def break_norms(model: HookedTransformer) -> HookedTransformer:
    """A negative LayerNorm epsilon: every weight finite, every normalised activation NaN."""
    return negative_eps(model)


def _analyses():
    from headkit.scores.census import head_census
    from headkit.scores.detectors import detector_scores, induction_scores
    from headkit.scores.discrepancy import last_row_logits
    from headkit.scores.positional_symbolic import classify_heads, positional_symbolic_scores
    from headkit.scores.rope import rope_frequency_scores, rope_frequency_use

    return {
        "capture": lambda m, t: capture(m, t, [(0, 0)]),
        "census": lambda m, t: head_census(m, composition_kinds=(), n_prompts=4),
        "census with tokens": lambda m, t: head_census(m, t, composition_kinds=(), n_prompts=4),
        "classify": lambda m, t: classify_heads(m, t),
        "scores, token swaps": lambda m, t: positional_symbolic_scores(m, t, swap="tokens"),
        "detectors": lambda m, t: detector_scores(m, t),
        "induction": lambda m, t: induction_scores(m, n_prompts=4),
        "discrepancy": lambda m, t: last_row_logits(m, t, [(0, 0), (1, 1)], batch_size=2),
        "rope frequency": lambda m, t: rope_frequency_scores(m, t),
        "rope use": lambda m, t: rope_frequency_use(m, t),
    }


@pytest.mark.parametrize("name", list(_analyses()))
def test_every_analysis_refuses_activations_that_are_not_finite(tiny_gptj, name, recwarn):
    from headkit.errors import NonFiniteError

    model = break_norms(tiny_gptj(n_layers=2, n_heads=2, d_model=24, d_vocab=20, n_ctx=16))
    tokens = prompts(3, 9)
    assert all(p.isfinite().all() for p in model.parameters())  # the weights are fine
    with pytest.raises(NonFiniteError, match=r"the attention output \(z\) of layer 0 is not finite \(\d+ NaN of \d+"):
        _analyses()[name](model, tokens)
    assert not [w for w in recwarn if "non-finite attention" in str(w.message)]  # refused, not flagged per head
