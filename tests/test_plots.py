"""Figures: offline attention pages and plotly charts, written atomically."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from headkit.errors import HeadkitError
from headkit.plots import (
    accuracy_by_length_figure,
    attention_patterns,
    head_scores_figure,
    patching_figure,
    write_figure,
)


def test_attention_page_is_self_contained(tiny_gptj, tmp_path):
    model = tiny_gptj()
    tokens = torch.tensor([1, 5, 7, 2])
    html = attention_patterns(model, tokens, ["a", "b", "c", "d"])
    paths = write_figure(html, tmp_path / "attn")
    page = paths[0].read_text()
    assert paths == [tmp_path / "attn.html"]
    # the bundle is inlined: no script is loaded from elsewhere
    assert "<script" in page and "unpkg.com" not in page and "cdn" not in page.lower().split("<script")[0]
    assert "L1H1" in page
    with pytest.raises(HeadkitError, match="3 token strings for a prompt of 4 tokens"):
        attention_patterns(model, tokens, ["a", "b", "c"])
    with pytest.raises(HeadkitError, match="layer 5 is out of range"):
        attention_patterns(model, tokens, ["a"] * 4, layers=[5])


def test_head_scores_figure_grid():
    heads = pd.DataFrame(
        {
            "layer": [0, 0, 1, 1],
            "head": [0, 1, 0, 1],
            "positional_score": [0.9, 0.1, 0.5, 0.2],
            "symbolic_score": [0.1, 0.9, 0.5, 0.2],
            "label": ["positional", "symbolic", "mixed", "inactive"],
            "purity": [1.0, 0.75, 0.5, 1.0],
        }
    )
    fig = head_scores_figure(heads)
    z = fig.data[0].z
    assert z[0][0] == pytest.approx(-0.8) and z[0][1] == pytest.approx(0.8)
    assert "symbolic" in fig.data[0].text[0][1]
    with pytest.raises(HeadkitError, match="lacks columns"):
        head_scores_figure(heads.drop(columns="label"))


def test_accuracy_and_patching_figures(tmp_path):
    results = pd.DataFrame(
        {
            "task": ["number"] * 4,
            "length": [17, 33, 17, 33],
            "hop": ["all", "all", "1", "1"],
            "n": [10] * 4,
            "accuracy": [1.0, 0.5, 1.0, 0.7],
        }
    )
    fig = accuracy_by_length_figure(results)
    assert len(fig.data) == 2
    patch = pd.DataFrame({"layer": [0, 1], "head": [0, 0], "normalised": [0.1, 0.9]})
    fig2 = patching_figure(patch)
    paths = write_figure(fig2, tmp_path / "patch.png", png=False)
    assert paths == [tmp_path / "patch.html"]
    assert "plotly" in paths[0].read_text()[:200000].lower()
    with pytest.raises(HeadkitError, match="cannot write a dict"):
        write_figure({}, tmp_path / "x")
    assert isinstance(fig, go.Figure)


def test_plotlyjs_directory_mode_writes_library_once(tmp_path):
    fig = go.Figure(go.Scatter(x=[1, 2], y=[3, 4]))
    write_figure(fig, tmp_path / "a", png=False, plotlyjs="directory")
    write_figure(fig, tmp_path / "b", png=False, plotlyjs="directory")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["a.html", "b.html", "plotly.min.js"]
    assert 'src="plotly.min.js"' in (tmp_path / "a.html").read_text()
    assert (tmp_path / "a.html").stat().st_size < 100_000
    with pytest.raises(HeadkitError, match="plotlyjs='cdn'"):
        write_figure(fig, tmp_path / "c", plotlyjs="cdn")
