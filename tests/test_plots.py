"""Figures: offline attention pages and plotly charts, written atomically."""

from __future__ import annotations

import re

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
    # the two curves are the pooled accuracy and hop 1's, each over the two lengths
    assert sorted(list(trace.y) for trace in fig.data) == [[1.0, 0.5], [1.0, 0.7]]
    assert all(list(trace.x) == [17, 33] for trace in fig.data)


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


# --------------------------------------------------------------------------- readability (issue 10)


def test_inactive_heads_are_grey_not_coloured_by_score():
    heads = pd.DataFrame(
        {
            "layer": [0, 1],
            "head": [0, 0],
            "positional_score": [0.1, 0.9],
            "symbolic_score": [0.9, 0.1],
            "label": ["symbolic", "inactive"],
            "purity": [0.9, 1.0],
        }
    )
    fig = head_scores_figure(heads)
    scores, grey = fig.data[0], fig.data[1]
    assert scores.z[0][0] == pytest.approx(0.8)
    assert pd.isna(scores.z[1][0])  # the inactive head gets no score colour ...
    assert grey.z[1][0] == 1 and pd.isna(grey.z[0][0])  # ... but the grey layer
    assert {c for _, c in grey.colorscale} == {"#c7c7c7"}
    assert "inactive 100%" in grey.text[1][0] and "symbolic 90%" in scores.text[0][0]
    assert grey.text[0][0] == "" and scores.text[1][0] == ""  # each cell's text drawn once


def test_accuracy_lines_differ_in_colour_and_tasks_in_style():
    rows = [
        (task, length, hop, acc)
        for task in ("number", "letter")
        for hop in ("all", "1", "2")
        for length, acc in ((17, 1.0), (33, 0.5))
    ]
    results = pd.DataFrame(rows, columns=["task", "length", "hop", "accuracy"]).assign(n=8)
    fig = accuracy_by_length_figure(results, trained_length=17)
    colours = [trace.line.color for trace in fig.data]
    assert len(fig.data) == 6 and len(set(colours)) == 6
    dashes = {trace.name.split(":")[0]: trace.line.dash for trace in fig.data}
    assert dashes["number"] != dashes["letter"]
    assert [s.x0 for s in fig.layout.shapes] == [17]  # the trained length is marked
    assert "trained length 17" in fig.layout.annotations[0].text
    assert list(fig.layout.xaxis.tickvals) == [17, 33]


def test_effect_heatmaps_are_centred_at_zero_with_values_in_small_grids():
    patch = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "normalised": [0.2, -0.5, 0.0001, 3.0]})
    trace = patching_figure(patch).data[0]
    assert trace.zmid == 0 and trace.zmin == -trace.zmax == -3.0
    assert trace.text[0] == ["+0.20", "-0.50"] and trace.text[1][0] == "0.00"  # never "-0.00"
    big = pd.DataFrame([(layer, head, 0.1) for layer in range(20) for head in range(20)], columns=["layer", "head", "normalised"])
    big_trace = patching_figure(big).data[0]
    assert big_trace.text is None and big_trace.zmax == 1.0  # "normalised": the scale spans at least ±1
    from headkit.plots import ablation_by_hop_figure

    ablation = pd.DataFrame({"layer": [0, 0], "head": [0, 0], "hop": [1, 2], "delta": [-0.25, 0.0]})
    trace = ablation_by_hop_figure(ablation, bound=1.0).data[0]
    assert (trace.zmin, trace.zmax, trace.zmid) == (-1.0, 1.0, 0) and list(trace.x) == ["hop 1", "hop 2"]


def test_dynamics_figure_draws_inactive_points_grey():
    from headkit.plots import dynamics_figure

    table = pd.DataFrame(
        {
            "step": [1, 1, 2, 2],
            "layer": [0, 1, 0, 1],
            "head": [0, 0, 0, 0],
            "positional_score": [0.5, 0.1, 0.2, 0.1],
            "symbolic_score": [0.5, 0.9, 0.8, 0.9],
            "label": ["inactive", "symbolic", "symbolic", "symbolic"],
            "accuracy": [0.1, 0.1, 0.9, 0.9],
            "accuracy_hop1": [0.2, 0.2, 1.0, 1.0],
        }
    )
    fig = dynamics_figure(table)
    heads = [t for t in fig.data if t.name.startswith("L")]
    assert [t.name for t in heads] == ["L0H0", "L1H0"]
    assert heads[0].marker.color[0] == "#c7c7c7" and heads[0].marker.color[1] == heads[0].line.color
    colours = [t.line.color for t in fig.data]
    assert len(set(colours)) == 4  # accuracy lines and head lines: no colour shared, not even across panels


def test_attention_view_displays_offline_with_caption(tiny_gptj):
    from headkit.plots import AttentionView, task_attention_view
    from headkit.tasks import number_task

    batch = number_task(4, seed=0)
    model = tiny_gptj(d_vocab=len(batch.vocab), n_ctx=batch.length)
    view = task_attention_view(model, batch, 1, head_labels={(0, 0): "symbolic"})
    assert isinstance(view, AttentionView)
    page = view._repr_html_()
    assert "CircuitsVis.render(" in page and "var CircuitsVis" in page  # the bundle inlined
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=.https?:", page)  # nothing loaded from a host
    chain = [p for p in batch.positions["chain"][1].tolist() if p >= 0]
    answer = batch.vocab.decode(batch.answers[1:2])[0]
    assert f"answer <b>{answer}</b>" in view.caption and f"{int(batch.hops[1])} hop(s)" in view.caption
    assert f"{batch.decode(1)[chain[0]]} [q]" in page and "L0H0 symbolic" in page
    assert view.html(bundle=False).count("var CircuitsVis") == 0
    with pytest.raises(HeadkitError, match=r"prompt index=9 is out of range: allowed 0\.\.3"):
        task_attention_view(model, batch, 9)


def _hls(colour: str) -> tuple[float, float, float]:
    import colorsys

    return colorsys.rgb_to_hls(*(int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)))


def test_dynamics_colours_mean_one_thing_each():
    """Hop 2's accuracy and head L1H0 were both orange (#d95f02, #ff7f0e; issue 19): accuracy lines are
    now black and greys told apart by dash, head lines the only coloured ones."""
    from headkit.plots import dynamics_figure

    rows = [
        dict(step=s, layer=layer, head=0, positional_score=0.2, symbolic_score=0.8, label="symbolic", accuracy=0.5,
             **{f"accuracy_hop{h}": 0.5 for h in range(1, 5)})
        for s in (1, 2) for layer in range(6)
    ]  # fmt: skip
    fig = dynamics_figure(pd.DataFrame(rows))
    accuracy = [t for t in fig.data if t.name.startswith("accuracy")]
    heads = [t for t in fig.data if t.name.startswith("L")]
    assert len(accuracy) == 5 and len(heads) == 6
    for trace in accuracy:
        _, lightness, saturation = _hls(trace.line.color)
        assert saturation < 0.05 and lightness < 0.6, trace.name  # black or a dark grey, never the inactive grey
    assert len({(t.line.color, t.line.dash) for t in accuracy}) == 5
    assert all(_hls(t.line.color)[2] > 0.3 for t in heads)  # every head line has a hue


def test_effects_are_red_where_the_head_matters_in_ablation_and_patching():
    """One convention, stated on both figures: red = the head carries the effect (ablation: the metric
    drops; patching: the clean answer comes back). Patching used blue for that (issue 19)."""
    from headkit.plots import EFFECT_CONVENTION, ablation_by_hop_figure

    patch = pd.DataFrame({"layer": [0, 0], "head": [0, 1], "normalised": [1.0, -1.0]})
    ablation = pd.DataFrame({"layer": [0, 0], "head": [0, 1], "hop": [1, 1], "delta": [-1.0, 1.0]})
    for fig, effect in ((patching_figure(patch), 1.0), (ablation_by_hop_figure(ablation), -1.0)):
        trace = fig.data[0]
        scale = [c for _, c in trace.colorscale]
        red_end = scale[-1] if effect > 0 else scale[0]
        r, g, b = (int(x) for x in re.findall(r"\d+", red_end)[:3])
        assert r > b + 50 and r > g + 50, (trace.colorscale, effect)  # a red (RdBu ends in 103,0,31)
        assert EFFECT_CONVENTION in " ".join(a.text for a in fig.layout.annotations)
