"""`headkit.scores.swap_plan`: the swap metric's options, checked once for both of its tables."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch

from headkit.scores.positional_symbolic import positional_symbolic_scores
from headkit.scores.rope import rope_frequency_scores
from headkit.scores.swap_plan import SwapOptions, plan_groups, prepare_swaps


def test_defaults_are_the_papers():
    opts = SwapOptions()
    assert (opts.swap, opts.tau, opts.skip_identical, opts.block_size, opts.max_pairs) == (
        "residual", 1e-4, False, 1, None,
    )  # fmt: skip


@pytest.mark.parametrize("score", [positional_symbolic_scores, rope_frequency_scores])
def test_unknown_option_is_refused_naming_the_known_ones(tiny_gptj, refused_before_forward, score):
    model = tiny_gptj(d_vocab=12, rotary_dim=8)
    tokens = torch.randint(0, 12, (2, 6), generator=torch.Generator().manual_seed(0))
    message = refused_before_forward(model, score, model, tokens, taus=0.1)
    assert "unknown swap-metric option(s) taus" in message
    assert all(f.name in message for f in dataclasses.fields(SwapOptions))


@pytest.mark.parametrize(
    "options, words",
    [
        ({"seed": -1}, ["seed=-1", "0.."]),
        ({"seed": True}, ["seed must be an integer"]),
        ({"batch_size": True}, ["batch_size must be an integer"]),
        ({"max_pairs": 0}, ["max_pairs=0", "1 or more"]),
        ({"tau": -1.0}, ["tau=-1.0"]),
        ({"swap": "both"}, ["swap='both'"]),
    ],
)
def test_bad_options_are_refused_on_creation(options, words):
    from headkit.errors import HeadkitError

    with pytest.raises(HeadkitError) as err:
        SwapOptions(**options)
    for w in words:
        assert w in str(err.value), str(err.value)


def test_prepare_swaps_checks_and_plans_every_query_group(tiny_gptj):
    model = tiny_gptj(d_vocab=12)
    tokens = torch.randint(0, 12, (4, 8), generator=torch.Generator().manual_seed(1))
    queries = torch.tensor([7, 5, 7, -3])
    run = prepare_swaps(model, tokens, SwapOptions(query_pos=queries, heads=[(1, 0), (0, 1)], max_pairs=3, seed=2))
    assert run.heads == [(0, 1), (1, 0)]
    assert run.queries.tolist() == [7, 5, 7, 5]
    expected_queries, expected = plan_groups(tokens, query_pos=queries, max_pairs=3, seed=2)
    assert torch.equal(run.queries, expected_queries)
    for (idx, plan), (idx_e, plan_e) in zip(run.groups, expected, strict=True):
        assert torch.equal(idx, idx_e) and plan.query_pos == plan_e.query_pos
        assert torch.equal(plan.blocks, plan_e.blocks) and torch.equal(plan.pairs, plan_e.pairs)


@pytest.mark.parametrize("score", [positional_symbolic_scores, rope_frequency_scores])
def test_the_dataclass_and_its_fields_as_keywords_are_one_path(tiny_gptj, score):
    model = tiny_gptj(d_vocab=12, rotary_dim=8)
    tokens = torch.randint(0, 12, (3, 7), generator=torch.Generator().manual_seed(4))
    fields = dict(tau=0.05, max_pairs=4, seed=3, swap="tokens", heads=[(1, 0)])
    by_keywords = score(model, tokens, **fields)
    by_dataclass = score(model, tokens, SwapOptions(**fields))
    assert (by_dataclass["swap"] == "tokens").all() and set(by_dataclass["layer"]) == {1}  # the options took effect
    pd.testing.assert_frame_equal(by_dataclass, by_keywords)
    pd.testing.assert_frame_equal(score(model, tokens, options=SwapOptions(**fields)), by_keywords)


@pytest.mark.parametrize("score", [positional_symbolic_scores, rope_frequency_scores])
def test_a_dataclass_and_keywords_together_are_refused_naming_both(tiny_gptj, refused_before_forward, score):
    model = tiny_gptj(d_vocab=12, rotary_dim=8)
    tokens = torch.randint(0, 12, (2, 6), generator=torch.Generator().manual_seed(0))
    message = refused_before_forward(model, score, model, tokens, SwapOptions(tau=0.1), max_pairs=3)
    assert message.startswith(f"{score.__name__}: got options=SwapOptions(...) and keyword option(s) max_pairs")
    message = refused_before_forward(model, score, model, tokens, {"tau": 0.1})  # the old mapping
    assert f"{score.__name__}: options must be a SwapOptions, got dict" in message


def test_resolve_swap_is_the_one_auto_rule():
    """``--swap auto`` (classify, dynamics, the model report): residual where positions are relative."""
    from headkit.errors import HeadkitError
    from headkit.scores.swap_plan import resolve_swap

    assert [resolve_swap(kind, "auto") for kind in ("rotary", "alibi", "standard", "shortformer")] == [
        "residual", "residual", "tokens", "tokens"
    ]
    assert resolve_swap("standard", "residual") == "residual" and resolve_swap("rotary", "tokens") == "tokens"
    with pytest.raises(HeadkitError, match="swap='both' is not known"):
        resolve_swap("rotary", "both")
