"""A self-contained HTML report: sections of text, tables and figures.

`report_html` returns the page as a string; the command line writes it with
`headkit.io.write_text`. Figures are referenced by relative path (PNG shown
inline when it exists, the interactive HTML linked), so the report folder can be
moved or zipped as a whole. Tables are pandas DataFrames rendered as HTML.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class Section:
    """One section of the report."""

    title: str
    text: str = ""  # plain text paragraph(s); blank lines separate paragraphs
    tables: tuple[tuple[str, pd.DataFrame], ...] = ()  # (caption, table)
    figures: tuple[Path, ...] = field(default=())  # paths of written figures (.html and/or .png)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } .caption { font-weight: 600; padding: 4px 0; }
figure { margin: 1em 0; } img { max-width: 100%; border: 1px solid #eee; }
.muted { color: #777; font-size: 0.9em; }
"""


def _figure_html(paths: tuple[Path, ...], root: Path) -> str:
    by_suffix = {p.suffix: p for p in paths}
    parts = []
    png, page = by_suffix.get(".png"), by_suffix.get(".html")
    if png is not None:
        parts.append(f'<img src="{html.escape(str(png.relative_to(root)))}" alt="{html.escape(png.stem)}">')
    if page is not None:
        rel = html.escape(str(page.relative_to(root)))
        parts.append(f'<div class="muted">interactive: <a href="{rel}">{rel}</a></div>')
    return "<figure>" + "".join(parts) + "</figure>"


def report_html(title: str, sections: list[Section], *, root: Path) -> str:
    """The report page; figure paths are made relative to ``root`` (where the page lives)."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        for paragraph in filter(None, (p.strip() for p in section.text.split("\n\n"))):
            body.append(f"<p>{html.escape(paragraph)}</p>")
        for caption, table in section.tables:
            if caption:
                body.append(f'<div class="caption">{html.escape(caption)}</div>')
            body.append(table.to_html(index=False, float_format=lambda x: f"{x:.3f}", na_rep="", border=0))
        grouped: dict[str, list[Path]] = {}
        for path in section.figures:
            grouped.setdefault(str(path.with_suffix("")), []).append(path)
        for paths in grouped.values():
            body.append(_figure_html(tuple(paths), root))
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
