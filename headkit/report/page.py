"""A self-contained HTML report: sections of text, tables and the figures themselves.

`report_html` returns the page as a string; the command line writes it with
`headkit.io.write_text`. Figures are embedded, not linked: plotly figures as
interactive graphs (plotly.js inlined once in the page's head, ~4.8 MB) and
`headkit.plots.AttentionView` widgets (circuitsvis's bundle inlined once,
~1.3 MB), so the single file opens offline, in any browser, with no other file
and no network. A figure given as a path (an image or page written earlier)
is shown by relative path: an inline ``<img>`` for a PNG, a link otherwise.
Tables are pandas DataFrames rendered as HTML.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import pandas as pd
import plotly.graph_objects as go

from headkit.errors import HeadkitError
from headkit.plots import AttentionView

Figure = Union[go.Figure, AttentionView, Path]


@dataclass(frozen=True)
class Section:
    """One section of the report."""

    title: str
    text: str = ""  # plain text paragraph(s); blank lines separate paragraphs
    tables: tuple[tuple[str, pd.DataFrame], ...] = ()  # (caption, table)
    figures: tuple[Figure, ...] = field(default=())  # plotly figures, attention views, or paths of written files
    how_to_read: str = ""  # one line under the title: how to read this section's figures


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } .caption { font-weight: 600; padding: 4px 0; }
figure { margin: 1em 0; } img { max-width: 100%; border: 1px solid #eee; }
.muted { color: #777; font-size: 0.9em; }
.how { background: #f4f8fb; border-left: 4px solid #4a90c2; padding: 6px 10px; margin: 0.5em 0 1em; }
.headkit-attention { border: 1px solid #e3e3e3; padding: 8px; margin: 1em 0; }
.headkit-caption { font-size: 0.95em; margin-bottom: 4px; }
"""


def _path_html(path: Path, root: Path) -> str:
    rel = html.escape(str(path.relative_to(root)))
    if path.suffix == ".png":
        return f'<figure><img src="{rel}" alt="{html.escape(path.stem)}"></figure>'
    return f'<figure><div class="muted">file: <a href="{rel}">{rel}</a></div></figure>'


def _figure_html(figure: Figure, root: Path, index: int) -> str:
    if isinstance(figure, go.Figure):
        div = figure.to_html(
            full_html=False, include_plotlyjs=False, div_id=f"headkit-figure-{index}",
            config={"responsive": True, "displaylogo": False},
        )  # fmt: skip
        return f'<figure class="headkit-plot">{div}</figure>'
    if isinstance(figure, AttentionView):
        return figure.html(bundle=False)
    if isinstance(figure, Path):
        return _path_html(figure, root)
    raise HeadkitError(f"cannot put a {type(figure).__name__} in a report: expected a plotly Figure, AttentionView or Path")


def report_html(title: str, sections: list[Section], *, root: Path) -> str:
    """The report page; figure paths are made relative to ``root`` (where the page lives).

    plotly.js and the circuitsvis bundle are inlined once each, and only when a
    figure needs them.
    """
    body = [f"<h1>{html.escape(title)}</h1>"]
    figures = [f for s in sections for f in s.figures]
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.how_to_read:
            body.append(f'<div class="how"><b>How to read this:</b> {html.escape(section.how_to_read)}</div>')
        for paragraph in filter(None, (p.strip() for p in section.text.split("\n\n"))):
            body.append(f"<p>{html.escape(paragraph)}</p>")
        for figure in section.figures:
            body.append(_figure_html(figure, root, len(body)))
        for caption, table in section.tables:
            if caption:
                body.append(f'<div class="caption">{html.escape(caption)}</div>')
            body.append(table.to_html(index=False, float_format=lambda x: f"{x:.3f}", na_rep="", border=0))
    head = [f"<meta charset='utf-8'><title>{html.escape(title)}</title><style>{_STYLE}</style>"]
    if any(isinstance(f, go.Figure) for f in figures):
        from plotly.offline import get_plotlyjs

        head.append(f'<script type="text/javascript">{get_plotlyjs()}</script>')
    views = [f for f in figures if isinstance(f, AttentionView)]
    if views:
        head.append(f"<script>{views[0].bundle}</script>")
    return (
        "<!DOCTYPE html>\n<html><head>"
        + "\n".join(head)
        + "</head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
