"""The swap metric as PosSym-2026's code computes it, in both swap modes (SPEC 3.1).

References: a slow explicit loop written here (one forward per swapped input:
TransformerLens's own ``run_with_cache``, on the swapped tokens, or from the
swapped residual stream with ``start_at_layer``; cosines and weights in plain
Python), and hand-built heads that are positional / content lookups by construction.
"""

from __future__ import annotations

import itertools
import math

import pandas as pd
import pytest
import torch

from headkit.errors import HeadkitError
from headkit.model_types import HookedTransformer
from headkit.models import gptj_model
from headkit.scores.positional_symbolic import (
    ClassifyOptions,
    classify_heads,
    classify_heads_by_hop,
    classify_scores,
    hop_queries,
    paper_pure_labels,
    positional_symbolic_scores,
)
from headkit.scores.swap_engine import pair_scores

from hooked import hooked_gptj, hooked_model
from model_edits import block_pattern

N_SYMBOLS = 8


def slow_scores(model, tokens, *, swap, query_pos, tau, blocks, skip_identical):
    """One forward per swapped input; the metric written out in Python."""
    q = query_pos % tokens.shape[1]
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads

    def cos(a, b):  # torch's cosine_similarity: each norm clamped at 1e-8
        return (a[0] * b[0] + a[1] * b[1]) / (max(math.hypot(*a), 1e-8) * max(math.hypot(*b), 1e-8))

    def means(row):
        return [sum(row[k] for k in b) / len(b) for b in blocks]

    out = []
    for p in range(tokens.shape[0]):
        _, cache = model.run_with_cache(tokens[p : p + 1])
        for layer in range(n_layers):
            resid = cache[f"blocks.{layer}.hook_resid_pre"][0]
            base = cache["pattern", layer][0, :, q].tolist()  # [head][key]
            swaps = {}
            for i, j in itertools.combinations(range(len(blocks)), 2):
                order = list(range(tokens.shape[1]))
                for a, b in zip(blocks[i], blocks[j]):
                    order[a], order[b] = b, a
                if swap == "tokens":
                    new = tokens[p, order]
                    changed = not torch.equal(new, tokens[p])
                    _, c2 = model.run_with_cache(new[None])
                    pattern = c2["pattern", layer]
                else:
                    new = resid[order]
                    changed = not torch.equal(new, resid)
                    pattern = block_pattern(model, tokens[p : p + 1], new[None], layer)
                if changed or not skip_identical:
                    swaps[i, j] = pattern[0, :, q].tolist()
            for head in range(n_heads):
                d = means(base[head])
                gaps, pos_s, sym_s = [], [], []
                for (i, j), new_rows in swaps.items():
                    dn = means(new_rows[head])
                    v, mirror, v_new = (d[i], d[j]), (d[j], d[i]), (dn[i], dn[j])
                    gaps.append(abs(d[i] - d[j]))
                    pos_s.append(cos(v_new, v))
                    sym_s.append(cos(v_new, mirror))
                top = max(gaps)
                expw = [math.exp((g - top) / tau) for g in gaps]
                w = [e / sum(expw) for e in expw]
                out.append(
                    {
                        "prompt": p,
                        "layer": layer,
                        "head": head,
                        "query_pos": q,
                        "positional_score": sum(a * b for a, b in zip(w, pos_s)),
                        "symbolic_score": sum(a * b for a, b in zip(w, sym_s)),
                        "signal": sum(a * b for a, b in zip(w, gaps)),
                        "n_pairs": len(gaps),
                        "n_signal_pairs": sum(g >= tau for g in gaps),
                    }
                )
    return out


@pytest.mark.parametrize("swap", ["residual", "tokens"])
@pytest.mark.parametrize(
    "options, blocks",
    [
        ({}, [[k] for k in range(8)]),  # the paper's: every key before the last position
        ({"tau": 0.03, "skip_identical": True}, [[k] for k in range(8)]),
        ({"tau": 0.03, "block_size": 2}, [[0, 1], [2, 3], [4, 5], [6, 7]]),
        ({"tau": 0.03, "blocks": [[0], [3], [5], [6]]}, [[0], [3], [5], [6]]),
        ({"query_pos": 5}, [[k] for k in range(5)]),
    ],
)
def test_both_modes_equal_slow_reference(no_hooks_left, tiny_gptj, swap, options, blocks):
    model = tiny_gptj(n_layers=2, n_heads=2, d_vocab=12)
    tokens = torch.randint(0, 12, (2, 9), generator=torch.Generator().manual_seed(5))
    tokens[0, 3] = tokens[0, 0]  # identical tokens in a pair: counted by the paper, skipped by the option
    df = positional_symbolic_scores(model, tokens, swap=swap, batch_size=7, **options)
    ref = slow_scores(
        model, tokens, swap=swap, query_pos=options.get("query_pos", -1), tau=options.get("tau", 1e-4),
        blocks=blocks, skip_identical=options.get("skip_identical", False),
    )  # fmt: skip
    assert len(df) == len(ref)
    assert (df["swap"] == swap).all() and df["finite"].all()
    for got, want in zip(df.to_dict("records"), ref):
        for key in ("prompt", "layer", "head", "query_pos", "n_pairs", "n_signal_pairs"):
            assert got[key] == want[key], (key, got, want)
        for key in ("positional_score", "symbolic_score", "signal"):
            assert got[key] == pytest.approx(want[key], abs=1e-4), (key, got, want)
    assert no_hooks_left(model)


def test_skip_identical_changes_the_pair_count_only_where_tokens_repeat(tiny_gptj):
    model = tiny_gptj(n_layers=1, d_vocab=12)
    tokens = torch.tensor([[1, 2, 3, 1, 4, 5], [1, 2, 3, 4, 5, 6]])
    paper = positional_symbolic_scores(model, tokens)
    ours = positional_symbolic_scores(model, tokens, skip_identical=True)
    assert (paper["n_pairs"] == 10).all()  # C(5, 2): every pair counts
    assert ours.groupby("prompt")["n_pairs"].first().tolist() == [9, 10]  # (0, 3) hold the same token


def test_layer_zero_agrees_between_modes_on_a_rotary_model(tiny_gptj):
    model = tiny_gptj(n_layers=3, n_heads=2, d_vocab=20)
    tokens = torch.randint(0, 20, (4, 11), generator=torch.Generator().manual_seed(3))
    residual = positional_symbolic_scores(model, tokens, swap="residual")
    tokens_mode = positional_symbolic_scores(model, tokens, swap="tokens")
    cols = ["positional_score", "symbolic_score", "signal"]
    first = residual["layer"] == 0
    assert torch.allclose(
        torch.tensor(residual.loc[first, cols].to_numpy()), torch.tensor(tokens_mode.loc[first, cols].to_numpy()),
        atol=1e-6,
    )  # fmt: skip
    # later layers differ: the residual swap exchanges rows that already hold context
    later = ~first
    assert (residual.loc[later, cols].to_numpy() != tokens_mode.loc[later, cols].to_numpy()).any()


def two_layer_lookup(lookup_model, **layout) -> HookedTransformer:
    """The hand-built heads of ``lookup_model`` moved to layer 1, behind an attention
    layer 0 that writes nothing (so block 1's input is the embedding)."""
    one = lookup_model(**layout)
    cfg = one.cfg
    model = hooked_gptj(
        2, cfg.d_model, cfg.n_heads, cfg.d_vocab, cfg.n_ctx, rotary_dim=cfg.rotary_dim, d_head=cfg.d_head,
        attn_only=True,
    )  # fmt: skip
    state = {k: v for k, v in one.state_dict().items() if not k.startswith("blocks.0.")}
    state.update({k.replace("blocks.0.", "blocks.1.", 1): v for k, v in one.state_dict().items() if k.startswith("blocks.0.")})
    with torch.no_grad():
        model.load_state_dict({**model.state_dict(), **state})
        model.blocks[0].attn.W_O.zero_()
        model.blocks[0].attn.b_O.zero_()
    return model


def test_handbuilt_rotary_positional_and_content_heads_in_residual_mode(lookup_model, lookup_prompts):
    model = two_layer_lookup(
        lookup_model, n_symbols=N_SYMBOLS, n_heads=2, n_ctx=64, positional={0: (0, 1)}, content_heads=(1,)
    )
    tokens = lookup_prompts(6, n_symbols=N_SYMBOLS)
    df = positional_symbolic_scores(model, tokens, swap="residual", heads=[(1, 0), (1, 1)])
    pos, sym = df[df["head"] == 0], df[df["head"] == 1]
    assert (pos["positional_score"] > 0.95).all() and (pos["symbolic_score"] < 0.3).all()
    assert (sym["symbolic_score"] > 0.95).all() and (sym["positional_score"] < 0.05).all()
    heads = classify_heads(model, tokens, heads=[(1, 0), (1, 1)])
    assert heads["label"].tolist() == ["positional", "symbolic"]
    assert heads["pure_paper_0.1"].tolist()[1] == "symbolic"


def test_residual_swap_is_refused_for_absolute_positions_and_tokens_mode_works():
    cfg = dict(
        n_layers=1, d_model=16, n_heads=2, d_head=8, n_ctx=16, d_vocab=10,
        attn_only=True, positional_embedding_type="standard", act_fn="gelu",
    )  # fmt: skip
    model = hooked_model(**cfg)
    tokens = torch.randint(0, 10, (2, 6), generator=torch.Generator().manual_seed(0))
    with pytest.raises(HeadkitError, match="swap='tokens'") as err:
        positional_symbolic_scores(model, tokens)
    assert "'standard'" in str(err.value)
    assert len(positional_symbolic_scores(model, tokens, swap="tokens")) == 4
    with pytest.raises(HeadkitError, match="swap='both'"):
        positional_symbolic_scores(model, tokens, swap="both")


def test_vanishing_attention_after_a_swap_adds_nothing_to_either_score():
    d = torch.tensor([[[0.5, 0.5 - 1e-12, 0.0]]])  # [batch, unit, n_blocks]
    pairs = torch.tensor([[[0, 1], [0, 2]]])
    d_swapped = torch.tensor([[[[1e-12, 0.0, 0.0]], [[0.0, 0.0, 0.5]]]])  # [batch, pair, unit, block]
    out = pair_scores(d, d_swapped, pairs, torch.ones(1, 2, 1, dtype=torch.bool), tau=1e-4)
    # pair (0, 2) has the largest gap and all the weight: attention followed the content
    assert out["symbolic_score"].item() == pytest.approx(1.0)
    assert out["positional_score"].item() == pytest.approx(0.0, abs=1e-6)
    # pair (0, 1) alone: its swapped attention (1e-12, 0) is below the 1e-8 norm clamp
    only = pair_scores(d, d_swapped[:, :1], pairs[:, :1], torch.ones(1, 1, 1, dtype=torch.bool), tau=1e-4)
    assert abs(only["positional_score"].item()) < 1e-3 and abs(only["symbolic_score"].item()) < 1e-3


# ---------------------------------------------------------------------------
# per-prompt query positions, hops


def test_per_prompt_query_positions_equal_separate_runs(tiny_gptj):
    model = tiny_gptj(n_layers=2, d_vocab=12)
    tokens = torch.randint(0, 12, (4, 9), generator=torch.Generator().manual_seed(8))
    queries = torch.tensor([8, 5, 8, 3])
    mixed = positional_symbolic_scores(model, tokens, query_pos=queries)
    assert mixed.groupby("prompt")["query_pos"].first().tolist() == [8, 5, 8, 3]
    for q in (8, 5, 3):
        rows = (queries == q).nonzero().squeeze(1)
        alone = positional_symbolic_scores(model, tokens[rows], query_pos=q)
        got = mixed[mixed["prompt"].isin(rows.tolist())].reset_index(drop=True)
        cols = ["positional_score", "symbolic_score", "signal", "n_pairs"]
        assert torch.allclose(torch.tensor(got[cols].to_numpy()), torch.tensor(alone[cols].to_numpy()), atol=1e-9)


def test_classify_by_hop_scores_each_hops_pointer():
    from headkit.tasks.number import number_task

    batch = number_task(12, seed=4, max_hops=3)
    model = gptj_model(2, 32, 2, len(batch.vocab), 64, seed=1)
    chain = batch.positions["chain"]
    assert hop_queries(chain, batch.hops, 1).tolist() == chain[:, 0].tolist()
    table = classify_heads_by_hop(model, batch, tau=0.01)
    assert table["hop"].unique().tolist() == [1, 2, 3]
    for hop in (1, 2, 3):
        keep = batch.hops >= hop
        want = classify_heads(model, batch.tokens[keep], query_pos=chain[keep, hop - 1], tau=0.01)
        got = table[table["hop"] == hop].drop(columns="hop").reset_index(drop=True)
        assert got["n_prompts"].tolist() == [int(keep.sum())] * 4
        assert torch.allclose(
            torch.tensor(got[["positional_score", "symbolic_score"]].to_numpy()),
            torch.tensor(want[["positional_score", "symbolic_score"]].to_numpy()),
        )
    with pytest.raises(HeadkitError, match="query_pos"):
        classify_heads_by_hop(model, batch, query_pos=-1)
    with pytest.raises(HeadkitError, match="classify_heads_by_hop sets query_pos itself"):
        classify_heads_by_hop(model, batch, ClassifyOptions(query_pos=3))
    by_dataclass = classify_heads_by_hop(model, batch, ClassifyOptions(tau=0.01))
    pd.testing.assert_frame_equal(by_dataclass, table)


# ---------------------------------------------------------------------------
# pure heads as the paper defines them


def test_paper_pure_labels_at_both_gammas():
    pos = [0.95, 0.92, 0.03, 0.5, 0.9, math.nan]
    sym = [0.05, 0.02, 0.99, 0.5, 0.1, 0.0]
    assert paper_pure_labels(pos, sym, gamma=0.1).tolist() == [
        "positional", "positional", "symbolic", "neither", "positional", "neither",
    ]  # fmt: skip
    assert paper_pure_labels(pos, sym, gamma=0.05).tolist() == [
        "positional", "neither", "symbolic", "neither", "neither", "neither",
    ]  # fmt: skip
    with pytest.raises(HeadkitError, match="gamma=0.5"):
        paper_pure_labels(pos, sym, gamma=0.5)


def test_classify_reports_paper_purity_from_mean_scores():
    import pandas as pd

    rows = []
    for p, (a, b) in enumerate([(1.0, 0.0), (0.9, 0.1)]):  # head 0: means 0.95 / 0.05
        rows.append({"prompt": p, "layer": 0, "head": 0, "positional_score": a, "symbolic_score": b,
                     "signal": 0.5, "n_pairs": 3, "n_signal_pairs": 1})  # fmt: skip
    for p, (a, b) in enumerate([(0.0, 1.0), (0.2, 0.8)]):  # head 1: means 0.1 / 0.9
        rows.append({"prompt": p, "layer": 0, "head": 1, "positional_score": a, "symbolic_score": b,
                     "signal": 0.5, "n_pairs": 3, "n_signal_pairs": 1})  # fmt: skip
    out = classify_scores(pd.DataFrame(rows))
    assert out["pure_paper_0.1"].tolist() == ["positional", "symbolic"]
    assert out["pure_paper_0.05"].tolist() == ["positional", "neither"]
    assert out["finite"].tolist() == [True, True]


# ---------------------------------------------------------------------------
# non-finite weights are never quiet


@pytest.mark.parametrize("swap", ["residual", "tokens"])
def test_nan_query_weights_are_reported_not_hidden(tiny_gptj, swap):
    model = tiny_gptj(n_layers=2, n_heads=2, d_vocab=12)
    with torch.no_grad():
        model.blocks[1].attn.W_Q[0, 0, 0] = math.nan  # TransformerLens turns the NaN pattern into zeros
    tokens = torch.randint(0, 12, (2, 7), generator=torch.Generator().manual_seed(0))
    with pytest.warns(RuntimeWarning, match=r"non-finite attention.*1\.0"):
        df = positional_symbolic_scores(model, tokens, swap=swap)
    bad = df[(df["layer"] == 1) & (df["head"] == 0)]
    assert not bad["finite"].any() and bad["positional_score"].isna().all()
    assert df.loc[~df.index.isin(bad.index), "finite"].all()
    with pytest.warns(RuntimeWarning):
        heads = classify_heads(model, tokens, swap=swap)
    assert heads["finite"].tolist() == [True, True, False, True]
