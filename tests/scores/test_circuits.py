"""Copying and composition scores against dense references and TransformerLens."""

from __future__ import annotations

import pytest
import torch

from headkit.errors import HeadkitError
from headkit.scores.circuits import composition_scores, copying_scores

from hooked import hooked_gptj


@pytest.fixture
def model(tiny_gptj):
    # d_head 8 < d_model 24 < d_vocab 30: the dense full-OV matrix is rank-deficient
    return tiny_gptj(n_layers=3, d_model=24, n_heads=3, d_vocab=30, n_ctx=16, seed=4)


def test_copying_score_equals_dense_eigendecomposition(model):
    df = copying_scores(model)
    assert list(df.columns) == ["layer", "head", "copying_score"]
    assert len(df) == 9
    W_E, W_U = model.W_E.detach().double(), model.W_U.detach().double()
    for row in df.itertuples():
        W_V = model.W_V[row.layer, row.head].detach().double()
        W_O = model.W_O[row.layer, row.head].detach().double()
        # the SPEC's W_U W_O W_V W_E in column-vector convention = transpose of TL's row form
        full = (W_E @ W_V @ W_O @ W_U).T  # [d_vocab, d_vocab]
        eig = torch.linalg.eigvals(full)
        expected = float(eig.sum().real / eig.abs().sum())
        assert row.copying_score == pytest.approx(expected, abs=1e-5)
        assert -1.0 <= row.copying_score <= 1.0


def test_copying_score_of_hand_built_copy_and_anti_copy_heads(tiny_gptj):
    model = tiny_gptj(n_layers=1, d_model=16, n_heads=2, d_vocab=16)
    with torch.no_grad():
        model.embed.W_E.copy_(torch.eye(16))
        model.unembed.W_U.copy_(torch.eye(16))
        proj = torch.eye(16)[:, :8]  # [d_model, d_head]
        model.blocks[0].attn.W_V.copy_(torch.stack([proj, proj]))
        model.blocks[0].attn.W_O.copy_(torch.stack([proj.T, -proj.T]))
    df = copying_scores(model)
    assert df.copying_score.tolist() == pytest.approx([1.0, -1.0])


@pytest.mark.parametrize("kind", ["q", "k", "v"])
def test_composition_equals_transformer_lens(model, kind):
    df = composition_scores(model, kind=kind)
    assert list(df.columns) == [
        "source_layer", "source_head", "target_layer", "target_head", "kind", "score"
    ]
    expected = model.all_composition_scores(kind.upper())  # [L1, H1, L2, H2]
    L, H = model.cfg.n_layers, model.cfg.n_heads
    # only pairs with an earlier-layer source are rows; TL reports exactly 0 for the rest
    assert len(df) == H * H * L * (L - 1) // 2
    assert (df.source_layer < df.target_layer).all()
    assert set(df.kind) == {kind}
    got = torch.zeros_like(expected)
    idx = tuple([df.source_layer.tolist(), df.source_head.tolist(), df.target_layer.tolist(), df.target_head.tolist()])
    got[idx] = torch.tensor(df.score.tolist(), dtype=got.dtype)
    assert (got - expected).abs().max() <= 1e-5
    valid = torch.zeros(L, H, L, H, dtype=torch.bool)
    valid[idx] = True
    assert (expected[~valid] == 0).all()
    assert (expected[valid] > 0).all()


def test_composition_of_orthogonal_subspaces_is_zero():
    """A source that writes only into dims 0..7 cannot K-compose with a key reading dims 8..15."""
    model = hooked_gptj(n_layers=2, d_model=16, n_heads=1, d_vocab=16, d_head=8)  # d_head != d_model / n_heads
    low, high = torch.eye(16)[:, :8], torch.eye(16)[:, 8:]  # [d_model, d_head]
    with torch.no_grad():
        model.blocks[0].attn.W_O.copy_(low.T[None])
        model.blocks[1].attn.W_K.copy_(high[None])
    k = composition_scores(model, kind="k")
    assert k.score.iloc[0] == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        model.blocks[1].attn.W_K.copy_(low[None])
    k = composition_scores(model, kind="k")
    assert k.score.iloc[0] > 0.05


def test_bad_kind(model):
    with pytest.raises(HeadkitError, match="allowed q, k, v"):
        composition_scores(model, kind="Q")
