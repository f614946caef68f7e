"""The HTML report: sections, tables, figures embedded (plotly.js and circuitsvis once)."""

from __future__ import annotations

import re

import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from headkit.errors import HeadkitError
from headkit.plots import attention_patterns
from headkit.report.page import Section, report_html


def test_report_links_figure_files_relatively_and_escapes_text(tmp_path):
    figs = (tmp_path / "figures" / "acc.png", tmp_path / "figures" / "attn.html")
    page = report_html(
        "demo <1>",
        [
            Section(
                "Length",
                "first paragraph\n\nsecond & last",
                tables=(("accuracy", pd.DataFrame({"length": [17, 33], "accuracy": [0.99, 0.5]})),),
                figures=figs,
                how_to_read="read <this>",
            )
        ],
        root=tmp_path,
    )
    assert "<title>demo &lt;1&gt;</title>" in page
    assert "<p>first paragraph</p>" in page and "<p>second &amp; last</p>" in page
    assert '<img src="figures/acc.png"' in page and 'href="figures/attn.html"' in page
    assert "0.990" in page and '<div class="caption">accuracy</div>' in page
    assert "How to read this:</b> read &lt;this&gt;" in page
    assert str(tmp_path) not in page  # nothing absolute: the folder can move
    assert "Plotly" not in page and "CircuitsVis" not in page  # no library when no figure needs it


def test_report_embeds_figures_with_each_library_once(tmp_path, tiny_gptj):
    model = tiny_gptj()
    views = [attention_patterns(model, torch.tensor([1, 2, 3]), ["a", "b", "c"]) for _ in range(2)]
    plots = [go.Figure(go.Scatter(x=[1, 2], y=[3, 4])), go.Figure(go.Bar(x=[1], y=[2]))]
    page = report_html("r", [Section("one", figures=(plots[0], views[0])), Section("two", figures=(plots[1], views[1]))], root=tmp_path)
    from plotly.offline import get_plotlyjs

    assert page.count(get_plotlyjs()[:2000]) == 1  # plotly.js inlined once
    assert page.count("var CircuitsVis") == 1  # the circuitsvis bundle inlined once
    assert page.count("Plotly.newPlot(") == 2 and page.count("CircuitsVis.render(") == 2
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=.https?:", page)  # nothing loaded from a host
    with pytest.raises(HeadkitError, match="cannot put a dict in a report"):
        report_html("r", [Section("x", figures=({},))], root=tmp_path)
