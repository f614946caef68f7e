"""Swap-metric scores and head classification (SPEC 3.1).

References: a one-layer model built by hand whose heads are positional, symbolic
or uniform by construction, and a slow loop (one full forward per swapped prompt,
pattern read from `run_with_cache`, the metric in plain Python).
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from headkit.errors import HeadkitError
from headkit.models import gptj_model
from headkit.scores.positional_symbolic import (
    SCORE_COLUMNS,
    ClassifyOptions,
    classify_heads,
    classify_scores,
    positional_symbolic_scores,
    prompt_labels,
)

N_SYMBOLS = 8


# ---------------------------------------------------------------------------
# hand-built heads


def test_handbuilt_heads_score_as_constructed(no_hooks_left, lookup_model, lookup_prompts):
    # head 0 positional (rotary pairs f0, f1), head 1 content lookup, heads 2 and 3 uniform
    model = lookup_model(n_symbols=N_SYMBOLS, n_heads=4, n_ctx=64, positional={0: (0, 1)}, content_heads=(1,))
    tokens = lookup_prompts(6, n_symbols=N_SYMBOLS)
    _, cache = model.run_with_cache(tokens)
    pattern = cache["pattern", 0][:, :, -1]  # [batch, head, key]
    assert (pattern[:, 0, -2] > 0.9).all()  # the construction works: previous token
    target_pos = (tokens[:, :-1] == (tokens[:, -1:] - N_SYMBOLS)).float().argmax(-1)
    assert (pattern[torch.arange(6), 1, target_pos] > 0.99).all()  # and content lookup

    df = positional_symbolic_scores(model, tokens)
    assert list(df.columns) == SCORE_COLUMNS
    assert len(df) == 6 * 4
    assert (df["n_pairs"] == 28).all()  # 8 distinct symbols: all C(8,2) pairs informative
    pos, sym = df[df["head"] == 0], df[df["head"] == 1]
    assert (pos["positional_score"] - pos["symbolic_score"] > 0.8).all()
    assert (sym["symbolic_score"] - sym["positional_score"] > 0.8).all()
    assert (pos["signal"] > 0.5).all() and (sym["signal"] > 0.9).all()
    uniform = df[df["head"] >= 2]
    # exclusion: a uniform head scores "both" (cosines 1) but shows zero signal
    assert uniform["signal"].abs().max() < 1e-6
    assert (uniform["n_signal_pairs"] == 0).all()

    heads = classify_heads(model, tokens)
    labels = dict(zip(heads["head"], heads["label"]))
    assert labels == {0: "positional", 1: "symbolic", 2: "inactive", 3: "inactive"}
    assert heads["pure"].tolist() == [True, True, False, False]
    assert (heads["purity"] == 1.0).all() and (heads["n_prompts"] == 6).all()
    assert no_hooks_left(model)


def test_untrained_model_heads_are_never_confidently_labelled():
    from headkit.tasks.number import number_task

    batch = number_task(24, seed=1)
    model = gptj_model(2, 32, 4, len(batch.vocab), 64, seed=3)
    # the paper's defaults (tau 1e-4): signal is about the largest gap, so some
    # untrained heads pass the signal gate, but no head is pure by either definition
    heads = classify_heads(model, batch.tokens, max_pairs=40)
    assert len(heads) == 8
    assert not heads["pure"].any(), heads
    assert (heads["pure_paper_0.1"] == "neither").all(), heads
    # headkit's former settings, where min_signal was calibrated: every head inactive
    old = classify_heads(model, batch.tokens, max_pairs=40, swap="tokens", tau=0.05, skip_identical=True)
    assert (old["label"] == "inactive").all(), old


# ---------------------------------------------------------------------------
# batched implementation against a slow explicit loop


def test_max_pairs_samples_a_seeded_subset(tiny_gptj):
    model = tiny_gptj(d_vocab=12)
    tokens = torch.randint(0, 12, (2, 10), generator=torch.Generator().manual_seed(1))
    full = positional_symbolic_scores(model, tokens)
    capped = positional_symbolic_scores(model, tokens, max_pairs=5, seed=3)
    again = positional_symbolic_scores(model, tokens, max_pairs=5, seed=3)
    assert (capped["n_pairs"] <= 5).all() and (full["n_pairs"] > 5).all()
    assert capped.equals(again)
    large = positional_symbolic_scores(model, tokens, max_pairs=10_000)
    assert large.equals(full)


def test_heads_subset_matches_all_heads_and_stops_early(tiny_gptj):
    model = tiny_gptj(n_layers=3, d_vocab=12)
    tokens = torch.randint(0, 12, (2, 7), generator=torch.Generator().manual_seed(2))
    later_layer_calls = []
    # layer 2's attention never runs (a bridge's stop_at_layer enters block 2 and stops at its input)
    model.add_hook("blocks.2.attn.hook_pattern", lambda pattern, hook: later_layer_calls.append(1))
    try:
        some = positional_symbolic_scores(model, tokens, heads=[(1, 1), (0, 0)])
    finally:
        model.reset_hooks()
    assert not later_layer_calls  # the forward stopped after layer 1
    everything = positional_symbolic_scores(model, tokens)
    keyed = everything.set_index(["prompt", "layer", "head"])
    assert some[["layer", "head"]].drop_duplicates().values.tolist() == [[0, 0], [1, 1]]
    for row in some.to_dict("records"):
        want = keyed.loc[(row["prompt"], row["layer"], row["head"])]
        assert row["symbolic_score"] == pytest.approx(want["symbolic_score"], abs=1e-6)
        assert row["positional_score"] == pytest.approx(want["positional_score"], abs=1e-6)


# ---------------------------------------------------------------------------
# labels


def test_prompt_labels_follow_margin_and_signal():
    import pandas as pd

    scores = pd.DataFrame(
        {
            "positional_score": [0.9, 0.2, 0.6, 0.9, math.nan],
            "symbolic_score": [0.1, 0.8, 0.5, 0.1, math.nan],
            "signal": [0.5, 0.5, 0.5, 0.05, math.nan],
            "n_pairs": [3, 3, 3, 3, 0],
        }
    )
    labels = prompt_labels(scores, margin=0.2, min_signal=0.1).tolist()
    assert labels == ["positional", "symbolic", "mixed", "inactive", "inactive"]


def test_classify_scores_majority_purity_and_ties():
    import pandas as pd

    def prompts(head, pairs):  # (s_pos, s_sym) per prompt, signal 0.5
        return [
            {"prompt": p, "layer": 0, "head": head, "positional_score": a, "symbolic_score": b,
             "signal": 0.5, "n_pairs": 3, "n_signal_pairs": 1}
            for p, (a, b) in enumerate(pairs)
        ]

    pos, sym, mix = (0.9, 0.1), (0.1, 0.9), (0.5, 0.5)
    table = pd.DataFrame(
        prompts(0, [pos, pos, pos, pos, mix])  # 4/5 positional
        + prompts(1, [pos, pos, sym, sym])  # positional/symbolic tie -> mixed
        + prompts(2, [sym, sym, sym, mix])  # 3/4 symbolic: below purity 0.8
    )
    out = classify_scores(table, margin=0.2, min_signal=0.1, purity_threshold=0.8)
    assert out["label"].tolist() == ["positional", "mixed", "symbolic"]
    assert out["purity"].tolist() == pytest.approx([0.8, 0.5, 0.75])
    assert out["pure"].tolist() == [True, False, False]
    assert out["positional_score"].tolist() == pytest.approx([0.82, 0.5, 0.2])
    assert out["n_prompts"].tolist() == [5, 4, 4]


# ---------------------------------------------------------------------------
# bad input: HeadkitError naming the value, before any forward pass


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"heads": [(2, 0)]}, ["layer 2", "0..1"]),
        ({"heads": [(0, 5)]}, ["head 5", "0..1"]),
        ({"query_pos": 9}, ["query_pos 9", "-9..8"]),
        ({"query_pos": 1}, ["query_pos 1", "at least 2"]),
        ({"block_size": 3}, ["block_size=3", "1, 2, 4"]),
        ({"block_size": 8}, ["block_size=8", "at least 2 blocks"]),
        ({"blocks": [[0, 1], [2]]}, ["block 1", "equal size"]),
        ({"blocks": [[0], [8]]}, ["position 8", "0..7"]),
        ({"blocks": [[0], [0]]}, ["position 0", "block 0 and block 1"]),
        ({"blocks": [[0], [1]], "block_size": 2}, ["either blocks or block_size"]),
        ({"tau": 0}, ["tau=0"]),
        ({"max_pairs": 0}, ["max_pairs=0"]),
        ({"batch_size": 0}, ["batch_size=0"]),
        ({"swap": "both"}, ["swap='both'", "'residual', 'tokens'"]),
        ({"skip_identical": 1}, ["skip_identical=1"]),
        ({"query_pos": torch.tensor([8, 1])}, ["query_pos 1", "at least 2"]),
        ({"query_pos": torch.tensor([8, 9])}, ["query_pos 9", "-9..8"]),
        ({"query_pos": torch.tensor([8])}, ["one integer position per prompt", "(2,)"]),
        ({"query_pos": torch.tensor([8.0, 7.0])}, ["dtype"]),
    ],
)
def test_bad_options_raise_before_work(no_hooks_left, tiny_gptj, kwargs, words):
    model = tiny_gptj(d_vocab=12)
    tokens = torch.randint(0, 12, (2, 9), generator=torch.Generator().manual_seed(0))
    calls = []
    handle = model.embed.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(HeadkitError) as err:
            positional_symbolic_scores(model, tokens, **kwargs)
    finally:
        handle.remove()
    for w in words:
        assert w in str(err.value), str(err.value)
    assert not calls
    assert no_hooks_left(model)


@pytest.mark.parametrize(
    "tokens, words",
    [
        (torch.zeros(0, 8, dtype=torch.long), ["empty"]),
        (torch.zeros(2, 65, dtype=torch.long), ["length 65", "n_ctx=64"]),
        (torch.full((2, 8), 12), ["token id 12", "0..11"]),
    ],
)
def test_bad_prompts_raise(tiny_gptj, tokens, words):
    model = tiny_gptj(d_vocab=12)
    with pytest.raises(HeadkitError) as err:
        positional_symbolic_scores(model, tokens)
    for w in words:
        assert w in str(err.value)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"margin": -0.1}, ["margin=-0.1", "0 <= margin < 2"]),
        ({"min_signal": -1}, ["min_signal=-1"]),
        ({"purity_threshold": 0.5}, ["purity_threshold=0.5", "0.5 < value <= 1"]),
    ],
)
def test_bad_classify_options_raise(tiny_gptj, kwargs, words):
    model = tiny_gptj(d_vocab=12)
    tokens = torch.randint(0, 12, (2, 8), generator=torch.Generator().manual_seed(0))
    with pytest.raises(HeadkitError) as err:
        classify_heads(model, tokens, **kwargs)
    for w in words:
        assert w in str(err.value)
    with pytest.raises(HeadkitError) as err:  # the same check, when the dataclass is made
        ClassifyOptions(**kwargs)
    for w in words:
        assert w in str(err.value)


def test_classify_options_are_the_swap_options_and_the_thresholds(tiny_gptj):
    model = tiny_gptj(d_vocab=12)
    tokens = torch.randint(0, 12, (3, 8), generator=torch.Generator().manual_seed(2))
    fields = dict(margin=0.05, min_signal=0.0, purity_threshold=0.6, tau=0.05, max_pairs=5, swap="tokens")
    by_keywords = classify_heads(model, tokens, **fields)
    pd.testing.assert_frame_equal(classify_heads(model, tokens, ClassifyOptions(**fields)), by_keywords)
    # the thresholds reach the labels: classify_scores of the same swap scores with the same thresholds
    scores = positional_symbolic_scores(model, tokens, tau=0.05, max_pairs=5, swap="tokens")
    expected = classify_scores(scores, margin=0.05, min_signal=0.0, purity_threshold=0.6)
    pd.testing.assert_frame_equal(by_keywords, expected)
    defaults = classify_scores(scores)
    assert not defaults[["label", "pure"]].equals(by_keywords[["label", "pure"]])  # the thresholds changed something
    with pytest.raises(HeadkitError, match="classify_heads: unknown classification option.s. margins: allowed swap, "):
        classify_heads(model, tokens, margins=0.1)
    with pytest.raises(HeadkitError, match=r"classify_heads: got options=ClassifyOptions\(...\) and keyword option.s. tau"):
        classify_heads(model, tokens, ClassifyOptions(), tau=0.1)


def test_hooks_removed_after_an_error_inside_the_forward(no_hooks_left, tiny_gptj, monkeypatch):
    model = tiny_gptj(d_vocab=12)
    tokens = torch.randint(0, 12, (2, 6), generator=torch.Generator().manual_seed(0))

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    handle = model.blocks[1].register_forward_pre_hook(boom)  # a torch hook, not one of TransformerLens's
    try:
        with pytest.raises(RuntimeError, match="boom"):
            positional_symbolic_scores(model, tokens)
    finally:
        handle.remove()
    assert no_hooks_left(model)
