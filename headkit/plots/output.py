"""Writing figures to files and displaying them in Jupyter, offline.

`write_figure` is the one helper that writes figures, atomically:

- a plotly figure -> ``NAME.html`` (self-contained, plotly.js inlined or written
  once beside the pages, works offline) and, when kaleido and a Chromium are
  installed, ``NAME.png``;
- an `AttentionView` (or a circuitsvis `RenderedHTML`) -> ``NAME.html`` from its
  ``local_src`` (the JavaScript bundle inlined).

`use_offline_renderer` makes Jupyter display plotly figures with nothing fetched
from a host.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import plotly.graph_objects as go
from circuitsvis.utils.render import RenderedHTML

from headkit.errors import HeadkitError
from headkit.io import atomic_path
from headkit.plots.attention import AttentionView

log = logging.getLogger(__name__)


OFFLINE_RENDERER = "headkit_offline"


def use_offline_renderer() -> str:
    """Display plotly figures in Jupyter with nothing fetched from a host; returns the renderer's name.

    Registers and selects the plotly renderer ``headkit_offline``: the plotly
    mimetype (drawn by the JupyterLab / VS Code extension that ships with
    plotly) plus an HTML fallback for classic notebooks and exported pages with
    plotly.js inlined from the installed package. plotly's own ``notebook``
    renderers load MathJax from a CDN (and ``notebook_connected`` plotly.js too).
    """
    import plotly.io as pio
    from plotly.io.base_renderers import PlotlyRenderer

    class OfflineRenderer(PlotlyRenderer):
        def to_mimebundle(self, fig_dict):
            from plotly.offline import get_plotlyjs

            bundle = super().to_mimebundle(fig_dict)
            div = pio.to_html(fig_dict, full_html=False, include_plotlyjs=False, include_mathjax=False, validate=False)
            # hide require.js (classic notebooks) while plotly.js loads, so that it defines window.Plotly
            library = (
                "<script>window._headkitDefine = window.define; window.define = undefined;</script>"
                f"<script>{get_plotlyjs()}</script><script>window.define = window._headkitDefine;</script>"
            )
            bundle["text/html"] = library + div
            return bundle

    pio.renderers[OFFLINE_RENDERER] = OfflineRenderer(config={"displaylogo": False})
    pio.renderers.default = OFFLINE_RENDERER
    return OFFLINE_RENDERER


PLOTLYJS_MODES = {"inline": True, "directory": "directory"}


def write_figure(
    figure: go.Figure | AttentionView | RenderedHTML,
    path: str | os.PathLike,
    *,
    png: bool = True,
    plotlyjs: str = "inline",
) -> list[Path]:
    """Write ``figure`` to ``path`` (suffix ignored): HTML always, PNG when possible.

    ``plotlyjs="inline"`` puts plotly.js (~4.5 MB) in every page;
    ``"directory"`` writes it once as ``plotly.min.js`` beside the pages, which
    load it by relative path (smaller folders of many figures; still offline).
    Returns the paths written. PNG export needs kaleido and a Chromium; where
    they are missing the HTML is still written and the reason is logged.
    """
    if plotlyjs not in PLOTLYJS_MODES:
        raise HeadkitError(f"plotlyjs={plotlyjs!r}: allowed {', '.join(PLOTLYJS_MODES)}")
    base = Path(path).with_suffix("")
    html_path = base.with_suffix(".html")
    written: list[Path] = []
    if isinstance(figure, (AttentionView, RenderedHTML)):
        body = figure.html(bundle=True) if isinstance(figure, AttentionView) else figure.local_src
        with atomic_path(html_path) as tmp:
            tmp.write_text(_standalone_page(body, title=base.name))
        return [html_path]
    if not isinstance(figure, go.Figure):
        raise HeadkitError(
            f"cannot write a {type(figure).__name__}: expected a plotly Figure, an AttentionView or RenderedHTML"
        )
    with atomic_path(html_path) as tmp:
        figure.write_html(tmp, include_plotlyjs=PLOTLYJS_MODES[plotlyjs], full_html=True)
    written.append(html_path)
    if png:
        png_path = base.with_suffix(".png")
        try:
            with atomic_path(png_path) as tmp:
                size = {"width": figure.layout.width or 900, "height": figure.layout.height or 600}
                figure.write_image(tmp, format="png", scale=1, **size)  # the figure's own size if set
            written.append(png_path)
        except Exception as exc:  # kaleido/Chromium missing or failing: HTML is enough
            log.warning("PNG export of %s skipped (%s); the HTML is written", png_path, exc)
    return written


def _standalone_page(body: str, *, title: str) -> str:
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{title}</title></head><body>\n{body}\n</body></html>\n"
    )
