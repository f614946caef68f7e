"""The HTML report: sections, tables, figures by relative path."""

from __future__ import annotations


import pandas as pd

from headkit.report import Section, report_html


def test_report_links_figures_relatively_and_escapes_text(tmp_path):
    figs = (tmp_path / "figures" / "acc.html", tmp_path / "figures" / "acc.png", tmp_path / "figures" / "attn.html")
    page = report_html(
        "demo <1>",
        [
            Section(
                "Length",
                "first paragraph\n\nsecond & last",
                tables=(("accuracy", pd.DataFrame({"length": [17, 33], "accuracy": [0.99, 0.5]})),),
                figures=figs,
            )
        ],
        root=tmp_path,
    )
    assert "<title>demo &lt;1&gt;</title>" in page
    assert "<p>first paragraph</p>" in page and "<p>second &amp; last</p>" in page
    assert '<img src="figures/acc.png"' in page and 'href="figures/acc.html"' in page
    assert 'href="figures/attn.html"' in page and "figures/attn.png" not in page
    assert "0.990" in page and '<div class="caption">accuracy</div>' in page
    assert str(tmp_path) not in page  # nothing absolute: the folder can move
