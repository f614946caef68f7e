"""The census joins the individual scores without changing them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from headkit.errors import HeadkitError
from headkit.scores.census import CENSUS_COLUMNS, head_census
from headkit.scores.circuits import composition_scores, copying_scores
from headkit.scores.detectors import detector_scores, induction_scores, repeated_random_tokens
from headkit.scores.positional_symbolic import ClassifyOptions, classify_heads

RANDOM = dict(half_length=5, n_prompts=4, seed=1)


@pytest.fixture
def model(tiny_gptj):
    return tiny_gptj(n_layers=3, d_model=16, n_heads=2, d_vocab=20, n_ctx=16)


def column(df: pd.DataFrame, name: str) -> np.ndarray:
    return df.sort_values(["layer", "head"])[name].to_numpy(dtype=float)


def test_census_without_tokens(model):
    census = head_census(model, **RANDOM)
    assert list(census.columns) == CENSUS_COLUMNS
    assert len(census) == 6
    assert census[["layer", "head"]].values.tolist() == [[l, h] for l in range(3) for h in range(2)]
    ind = induction_scores(model, half_length=5, n_prompts=4, seed=1)
    np.testing.assert_allclose(column(census, "induction_score"), column(ind, "induction_score"))
    assert census.is_induction.tolist() == ind.is_induction.tolist()
    # without task prompts, detectors are measured on the same random prompts
    random_tokens = repeated_random_tokens(4, half_length=5, vocab_range=(0, 20), seed=1)
    det = detector_scores(model, random_tokens)
    for name in ("previous_token", "duplicate_token", "induction_pattern"):
        np.testing.assert_allclose(column(census, name), column(det[det.detector == name], "score"))
    np.testing.assert_allclose(column(census, "copying_score"), column(copying_scores(model), "copying_score"))
    for kind in "qkv":
        pairs = composition_scores(model, kind=kind)
        for row in census.itertuples():
            incoming = pairs[(pairs.target_layer == row.layer) & (pairs.target_head == row.head)].score
            outgoing = pairs[(pairs.source_layer == row.layer) & (pairs.source_head == row.head)].score
            got_in, got_out = getattr(row, f"max_{kind}_in"), getattr(row, f"max_{kind}_out")
            assert (np.isnan(got_in) if row.layer == 0 else got_in == pytest.approx(incoming.max()))
            assert (np.isnan(got_out) if row.layer == 2 else got_out == pytest.approx(outgoing.max()))
    for name in ("positional_score", "symbolic_score", "signal", "purity", "pure", "n_prompts"):
        assert census[name].isna().all()
    assert census.label.isna().all()


def test_census_with_tokens_and_no_composition(model):
    tokens = torch.randint(0, 20, (3, 7), generator=torch.Generator().manual_seed(5))
    census = head_census(model, tokens, composition_kinds=(), classify_options=ClassifyOptions(tau=0.1), **RANDOM)
    assert list(census.columns) == CENSUS_COLUMNS
    det = detector_scores(model, tokens)
    for name in ("previous_token", "duplicate_token", "induction_pattern"):
        np.testing.assert_allclose(column(census, name), column(det[det.detector == name], "score"))
    classes = classify_heads(model, tokens, tau=0.1)
    for name in ("positional_score", "symbolic_score", "signal", "purity"):
        np.testing.assert_allclose(column(census, name), column(classes, name), equal_nan=True)
    assert census.label.tolist() == classes.sort_values(["layer", "head"]).label.tolist()
    for kind in "qkv":
        assert census[f"max_{kind}_in"].isna().all() and census[f"max_{kind}_out"].isna().all()


def test_census_bad_input(model):
    with pytest.raises(HeadkitError, match="allowed q, k, v"):
        head_census(model, composition_kinds=("x",), **RANDOM)
    with pytest.raises(HeadkitError, match="outside the model's vocabulary"):
        head_census(model, torch.tensor([[1, 2, 50]]), **RANDOM)
    # classify_options is typed: the old mapping of classify_heads's keywords is refused, naming the type
    with pytest.raises(HeadkitError, match="head_census: classify_options must be a ClassifyOptions, got dict"):
        head_census(model, torch.tensor([[1, 2, 3]]), classify_options={"tau": 0.1}, **RANDOM)


def test_census_flags_heads_with_nan_weights(model):
    import math

    with torch.no_grad():
        model.blocks[2].attn.W_Q[1, 0, 0] = math.nan
    tokens = torch.randint(0, 20, (3, 7), generator=torch.Generator().manual_seed(5))
    with pytest.warns(RuntimeWarning, match="non-finite attention"):
        census = head_census(model, tokens, composition_kinds=(), **RANDOM)
    assert census["finite"].tolist() == [True, True, True, True, True, False]
    assert census["pure_paper_0.1"].notna().all() and (census["swap"] == "residual").all()
