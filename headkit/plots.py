"""Figures: interactive attention views (circuitsvis) and plotly charts of head scores.

Every plot function returns a figure object and never shows or writes it;
`write_figure` is the one helper that writes files, atomically:

- a plotly figure -> ``NAME.html`` (self-contained, plotly.js inlined, works
  offline) and, when kaleido and a Chromium are installed, ``NAME.png``;
- an `AttentionView` (or a circuitsvis `RenderedHTML`) -> ``NAME.html`` from
  its ``local_src`` (the JavaScript bundle inlined; circuitsvis's own ``str()``
  and ``_repr_html_`` load the bundle from a CDN, which an offline machine
  cannot reach).

Readability rules of every figure: ``inactive`` heads grey; each line its own
colour (plus a line style per task or head group); effects on diverging scales
centred at 0; values written in heat-map cells when the grid is small; titles
name the model and the prompt length (callers pass them, see
`model_description`).
"""

from __future__ import annotations

import html
import logging
import math
import os
from pathlib import Path
from typing import Sequence

import pandas as pd
import plotly.graph_objects as go
import torch
from circuitsvis.utils.render import RenderedHTML
from jaxtyping import Int
from torch import Tensor
from transformer_lens import HookedTransformer

from headkit.checks import check_tokens
from headkit.errors import HeadkitError
from headkit.io import atomic_path
from headkit.tasks.base import TaskBatch

log = logging.getLogger(__name__)

LABEL_COLOURS = {
    "positional": "#1f77b4",
    "symbolic": "#d62728",
    "mixed": "#9467bd",
    "inactive": "#c7c7c7",
}
INACTIVE_GREY = LABEL_COLOURS["inactive"]
# distinct line colours (plotly's D3 palette without its grey, which means "inactive")
SERIES_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
ACCURACY_COLOURS = ("#222222", "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02")  # Dark2, after black
MAX_CELLS_WITH_VALUES = 150  # heat maps with at most this many cells write each value in its cell


def model_description(model: HookedTransformer) -> str:
    """``6-layer × 1-head model, d_model 64`` -- for figure titles."""
    cfg = model.cfg
    return f"{cfg.n_layers}-layer × {cfg.n_heads}-head model, d_model {cfg.d_model}"


# --------------------------------------------------------------------------- attention views


class AttentionView:
    """An interactive circuitsvis attention view with a caption; displays offline.

    ``html()`` is the view as an HTML fragment: a caption (which prompt, answer,
    hop count, heads; chain positions marked) and the circuitsvis widget. The
    widget's JavaScript bundle (~1.3 MB) is inlined from the installed
    circuitsvis (``RenderedHTML.local_src``), never loaded from a CDN: once per
    fragment with ``bundle=True``; a page of many views (`headkit.report`)
    includes it once and passes ``bundle=False``. In Jupyter the view displays
    through ``_repr_html_`` (bundle inlined, so it works offline).
    """

    def __init__(self, rendered: RenderedHTML, *, caption: str = "", head_names: Sequence[str] = ()) -> None:
        self.rendered = rendered
        self.caption = caption
        self.head_names = tuple(head_names)
        self.bundle, self.render_call = _split_circuitsvis(rendered.local_src)
        self.dom_id = self.render_call.split('"', 2)[1]

    def html(self, *, bundle: bool = True) -> str:
        caption = f'<div class="headkit-caption">{self.caption}</div>' if self.caption else ""
        script = (f"<script>{self.bundle}</script>" if bundle else "") + f"<script>{self.render_call}</script>"
        return (
            f'<div class="headkit-attention">{caption}'
            f'<div id="{self.dom_id}" class="headkit-attention-widget" style="margin: 10px 0;"></div>{script}</div>'
        )

    def _repr_html_(self) -> str:
        return self.html(bundle=True)

    def __str__(self) -> str:
        return self.html(bundle=True)


def _split_circuitsvis(local_src: str) -> tuple[str, str]:
    """circuitsvis ``local_src`` -> (the bundle's JavaScript, the ``CircuitsVis.render(...)`` call)."""
    opening = "<script crossorigin type=\"module\">"
    start, call = local_src.find(opening), local_src.rfind("CircuitsVis.render(")
    end = local_src.rfind("</script>")
    if start < 0 or call < start or end < call:
        raise HeadkitError("unexpected circuitsvis output: cannot find its bundle and render call")
    return local_src[start + len(opening) : call], local_src[call:end]


def attention_patterns(
    model: HookedTransformer,
    tokens: Int[Tensor, " pos"] | Int[Tensor, "1 pos"],
    token_strings: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    head_labels: dict[tuple[int, int], str] | None = None,
    caption: str = "",
) -> AttentionView:
    """circuitsvis view of every head's attention pattern on one prompt.

    Heads are named ``L{layer}H{head}`` (plus their label from ``head_labels``,
    e.g. ``L3H0 symbolic``); ``token_strings`` label the positions
    (``batch.decode(i)`` for a task prompt); ``caption`` is HTML shown above.
    """
    tokens = tokens.reshape(1, -1)  # [1, pos]
    check_tokens(model, tokens)
    if len(token_strings) != tokens.shape[1]:
        raise HeadkitError(
            f"{len(token_strings)} token strings for a prompt of {tokens.shape[1]} tokens"
        )
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    for layer in layers:
        if not 0 <= layer < model.cfg.n_layers:
            raise HeadkitError(
                f"layer {layer} is out of range: this model has layers 0..{model.cfg.n_layers - 1}"
            )
    names = {f"blocks.{layer}.attn.hook_pattern" for layer in layers}
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    # [n_layers_shown * n_heads, pos, pos]
    pattern = torch.cat([cache[f"blocks.{layer}.attn.hook_pattern"][0] for layer in layers])
    labels = head_labels or {}
    head_names = [
        f"L{layer}H{h}" + (f" {labels[layer, h]}" if (layer, h) in labels else "")
        for layer in layers
        for h in range(model.cfg.n_heads)
    ]
    import circuitsvis as cv

    rendered = cv.attention.attention_heads(
        attention=pattern.float().cpu(), tokens=list(token_strings), attention_head_names=head_names
    )
    return AttentionView(rendered, caption=caption, head_names=head_names)


def task_attention_view(
    model: HookedTransformer,
    batch: TaskBatch,
    index: int,
    *,
    head_labels: dict[tuple[int, int], str] | None = None,
) -> AttentionView:
    """Attention of every head on prompt ``index`` of a task batch, with a caption.

    The caption names the task, the prompt, its answer, its hop count and the
    heads shown; chain positions (``batch.positions["chain"]``: query, landings,
    answer source) are marked in the tokens as ``[q]``, ``[1]``, ``[2]`` ...
    """
    if not 0 <= index < batch.n:
        raise HeadkitError(f"prompt index {index} is out of range: the batch has prompts 0..{batch.n - 1}")
    strings = list(batch.decode(index))
    chain = [int(p) for p in batch.positions.get("chain", torch.empty(batch.n, 0))[index].tolist() if p >= 0]
    for step, pos in enumerate(chain):
        strings[pos] = f"{strings[pos]} [{'q' if step == 0 else step}]"
    answer = batch.vocab.decode(batch.answers[index : index + 1])[0]
    hops = "" if batch.hops is None else f", {int(batch.hops[index])} hop(s)"
    path = " → ".join(f"{p} ({batch.decode(index)[p]})" for p in chain)
    names = [f"L{layer}H{h}" for layer in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    caption = (
        f"<b>{html.escape(batch.task)} prompt {index}</b> (length {batch.length}{hops}), "
        f"answer <b>{html.escape(str(answer))}</b>"
        + (f"; chain positions {html.escape(path)} (marked [q], [1], ...)" if chain else "")
        + f"; heads {names[0]}–{names[-1]} (choose one in the widget)"
    )
    return attention_patterns(model, batch.tokens[index], strings, head_labels=head_labels, caption=caption)


# --------------------------------------------------------------------------- plotly figures


def _cell_text(values, *, fmt: str = "{:+.2f}") -> list[list[str]] | None:
    """Values as cell text when the grid is small enough to read them, else None."""
    rows = [list(r) for r in values]
    if sum(len(r) for r in rows) > MAX_CELLS_WITH_VALUES:
        return None
    return [["" if pd.isna(v) else _signed(v, fmt) for v in r] for r in rows]


def _signed(value: float, fmt: str) -> str:
    text = fmt.format(value)
    return text[1:] if text.lstrip("+-") == fmt.format(0.0).lstrip("+-") else text  # no "-0.00"


def head_scores_figure(heads: pd.DataFrame, *, title: str = "Positional vs symbolic heads") -> go.Figure:
    """Heat map of ``symbolic_score - positional_score`` per (layer, head), labels as text.

    ``heads`` is `classify_heads`'s table (columns layer, head, positional_score,
    symbolic_score, label, purity). ``inactive`` heads (too little attention
    signal for a label) are drawn grey, not coloured by their scores; every
    cell says its label, purity and score difference.
    """
    needed = {"layer", "head", "positional_score", "symbolic_score", "label"}
    missing = needed - set(heads.columns)
    if missing:
        raise HeadkitError(f"head table lacks columns {sorted(missing)}")
    df = heads.assign(diff=heads["symbolic_score"] - heads["positional_score"])
    grid = df.pivot(index="layer", columns="head", values="diff").sort_index()
    labels = df.pivot(index="layer", columns="head", values="label").reindex(grid.index)
    purity = (
        df.pivot(index="layer", columns="head", values="purity").reindex(grid.index)
        if "purity" in df
        else None
    )
    inactive = labels == "inactive"
    text = [
        [
            f"{labels.iloc[i, j]}"
            + ("" if purity is None else f" {purity.iloc[i, j]:.0%}")
            + f"<br>{_signed(grid.iloc[i, j], '{:+.2f}')}"
            for j in range(grid.shape[1])
        ]
        for i in range(grid.shape[0])
    ]
    x = [f"H{h}" for h in grid.columns]
    y = [f"L{layer}" for layer in grid.index]
    fig = go.Figure()
    fig.add_trace(  # grey cells under the inactive heads
        go.Heatmap(
            z=inactive.astype(float).where(inactive).values, x=x, y=y, showscale=False,
            colorscale=[[0, INACTIVE_GREY], [1, INACTIVE_GREY]], zmin=0, zmax=1,
            text=[[t if inactive.iloc[i, j] else "" for j, t in enumerate(row)] for i, row in enumerate(text)],
            texttemplate="%{text}", hovertemplate="%{y}%{x}: %{text}<extra></extra>",
        )  # fmt: skip
    )
    fig.add_trace(
        go.Heatmap(
            z=grid.where(~inactive).values,
            x=x,
            y=y,
            text=[[t if not inactive.iloc[i, j] else "" for j, t in enumerate(row)] for i, row in enumerate(text)],
            texttemplate="%{text}",
            colorscale="RdBu_r",
            zmid=0,
            zmin=-1,
            zmax=1,
            colorbar={"title": "symbolic − positional"},
            hovertemplate="%{y}%{x}: %{text}<extra></extra>",
        )
    )
    fig.data = fig.data[::-1]  # the score trace first (fig.data[0]), drawn over the grey one
    fig.update_layout(
        title=title, yaxis={"autorange": "reversed"}, xaxis_title="head", yaxis_title="layer",
        annotations=[{"text": "grey: inactive (no label)", "showarrow": False, "xref": "paper", "yref": "paper",
                      "x": 1, "y": -0.12, "xanchor": "right", "font": {"color": "#777"}}],
        height=max(330, 70 * grid.shape[0] + 170), width=max(700, 110 * grid.shape[1] + 300),
    )  # fmt: skip
    return fig


def accuracy_by_length_figure(
    results: pd.DataFrame, *, title: str = "Accuracy by length", trained_length: int | None = None
) -> go.Figure:
    """Lines of accuracy against sequence length, one per task and hop.

    ``results`` is `evaluate`'s table (task, length, hop, n, accuracy). Every
    line has its own colour; ``hop == "all"`` lines are thick and black-edged,
    per-hop lines thinner, and each task has its own line style. A dotted
    vertical line marks ``trained_length`` when given.
    """
    needed = {"task", "length", "hop", "accuracy"}
    missing = needed - set(results.columns)
    if missing:
        raise HeadkitError(f"evaluation table lacks columns {sorted(missing)}")
    fig = go.Figure()
    tasks = list(dict.fromkeys(results["task"]))
    hop_key = results["hop"].astype(str)
    series = sorted(
        {(t, h) for t, h in zip(results["task"], hop_key)},
        key=lambda th: (tasks.index(th[0]), th[1] != "all", int(th[1]) if th[1].isdigit() else 0),
    )
    for i, (task, hop) in enumerate(series):
        group = results[(results["task"] == task) & (hop_key == hop)].sort_values("length")
        overall = hop == "all"
        fig.add_trace(
            go.Scatter(
                x=group["length"],
                y=group["accuracy"],
                mode="lines+markers",
                name=f"{task}: {'all hops' if overall else f'hop {hop}'}",
                line={"color": SERIES_COLOURS[i % len(SERIES_COLOURS)], "width": 4 if overall else 2,
                      "dash": DASHES[tasks.index(task) % len(DASHES)]},
                marker={"size": 9 if overall else 6, "symbol": "circle" if overall else "diamond"},
            )  # fmt: skip
        )
    lengths = sorted(results["length"].unique().tolist())
    if trained_length is not None:  # on a log axis, shapes take data values and annotations log10 values
        fig.add_shape(
            type="line", xref="x", yref="paper", x0=trained_length, x1=trained_length,
            y0=0, y1=1, line={"color": "#444", "dash": "dot", "width": 2},
        )  # fmt: skip
        fig.add_annotation(
            x=math.log10(trained_length), y=1, yref="paper", text=f"trained length {trained_length}",
            showarrow=False, xanchor="left", yanchor="bottom",
        )  # fmt: skip
    fig.update_layout(
        title=title,
        xaxis={"title": "sequence length (log scale)", "type": "log", "tickvals": lengths, "ticktext": [str(v) for v in lengths]},
        yaxis={"title": "accuracy (exact match)", "range": [0, 1.05]},
        legend={"title": "task: hops"},
    )
    return fig


def patching_figure(
    results: pd.DataFrame,
    *,
    value: str = "normalised",
    title: str = "Patching",
    columns: str = "head",
    bound: float | None = None,
) -> go.Figure:
    """Heat map of a per-(layer, head) intervention table (patching or ablation).

    Diverging colours centred at 0 (no effect), symmetric around it; each cell
    shows its value when the grid is small. ``columns="position"`` draws a
    by-position table (one column per position). The colour scale spans
    ``±bound`` (default: the largest absolute value, at least 1 for
    ``normalised``, where 1 is the full effect).
    """
    needed = {"layer", columns, value}
    missing = needed - set(results.columns)
    if missing:
        raise HeadkitError(f"table lacks columns {sorted(missing)}")
    grid = results.pivot_table(index="layer", columns=columns, values=value, aggfunc="mean")
    return _diverging_heatmap(
        grid.values, x=[f"{columns[0].upper()}{c}" if columns == "head" else str(c) for c in grid.columns],
        y=[f"L{layer}" for layer in grid.index], colour_title=value, title=title, xaxis_title=columns,
        yaxis_title="layer", bound=bound if bound is not None else (1.0 if value == "normalised" else None),
    )  # fmt: skip


def ablation_by_hop_figure(
    table: pd.DataFrame, *, title: str = "Ablation by hop", value: str = "delta", bound: float | None = None
) -> go.Figure:
    """Heat map of `ablation_sweep_by_hop`'s table: one row per head, one column per hop count.

    Colours span ``±bound`` (default the largest absolute value; 1 suits accuracy changes).
    """
    needed = {"layer", "head", "hop", value}
    missing = needed - set(table.columns)
    if missing:
        raise HeadkitError(f"ablation table lacks columns {sorted(missing)}")
    grid = table.pivot_table(index=["layer", "head"], columns="hop", values=value, aggfunc="mean").sort_index()
    return _diverging_heatmap(
        grid.values, x=[f"hop {h}" for h in grid.columns], y=[f"L{layer}H{head}" for layer, head in grid.index],
        colour_title=value, title=title, xaxis_title="hops of the prompt", yaxis_title="head ablated", bound=bound,
    )  # fmt: skip


def _diverging_heatmap(
    values, *, x, y, colour_title: str, title: str, xaxis_title: str, yaxis_title: str, bound: float | None = None
) -> go.Figure:
    """RdBu heat map centred at 0 (white), symmetric ``±bound``; values in the cells of small grids."""
    largest = pd.DataFrame(values).abs().max().max()
    largest = float(largest) if pd.notna(largest) and largest > 0 else 0.0
    bound = max(bound or 0.0, largest) or 1.0
    text = _cell_text(values)
    fig = go.Figure(
        go.Heatmap(
            z=values, x=x, y=y, colorscale="RdBu", zmid=0, zmin=-bound, zmax=bound,
            colorbar={"title": colour_title}, text=text, texttemplate="%{text}" if text is not None else None,
        )  # fmt: skip
    )
    fig.update_layout(
        title=title, yaxis={"autorange": "reversed", "title": yaxis_title}, xaxis={"title": xaxis_title},
        height=max(320, 32 * len(y) + 180),
    )  # fmt: skip
    return fig


def dynamics_figure(table: pd.DataFrame, *, title: str = "Learning dynamics") -> go.Figure:
    """`track_heads`'s table over training: accuracy per hop (top) and each head's score (bottom).

    Top panel: black for all hops, a Dark2 colour per hop. Bottom panel:
    ``symbolic_score - positional_score`` of every head against the checkpoint
    step, one D3 colour (and past nine heads a line style) per head; points
    where the head is ``inactive`` are drawn as grey open circles.
    """
    from plotly.subplots import make_subplots

    needed = {"step", "layer", "head", "positional_score", "symbolic_score", "label", "accuracy"}
    missing = needed - set(table.columns)
    if missing:
        raise HeadkitError(f"dynamics table lacks columns {sorted(missing)}")
    fig = make_subplots(
        rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
        subplot_titles=("held-out accuracy", "symbolic − positional score per head (grey ○: inactive)"),
    )  # fmt: skip
    per_step = table.groupby("step").first().reset_index()
    accuracy_columns = ["accuracy", *sorted(c for c in table.columns if c.startswith("accuracy_hop"))]
    for i, column in enumerate(accuracy_columns):
        fig.add_trace(
            go.Scatter(
                x=per_step["step"], y=per_step[column], mode="lines+markers", legendgroup="accuracy",
                name="accuracy: all hops" if column == "accuracy" else f"accuracy: hop {column.removeprefix('accuracy_hop')}",
                line={"color": ACCURACY_COLOURS[i % len(ACCURACY_COLOURS)], "width": 4 if column == "accuracy" else 2,
                      "dash": "solid" if column == "accuracy" else DASHES[1 + i % (len(DASHES) - 1)]},
            ),  # fmt: skip
            row=1,
            col=1,
        )
    for i, ((layer, head), part) in enumerate(table.groupby(["layer", "head"], sort=True)):
        part = part.sort_values("step")
        diff = part["symbolic_score"] - part["positional_score"]
        colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
        fig.add_trace(
            go.Scatter(
                x=part["step"], y=diff, mode="lines+markers", name=f"L{layer}H{head}", legendgroup="heads",
                text=part["label"], hovertemplate="step %{x}: %{y:+.2f} (%{text})",
                line={"color": colour, "dash": DASHES[(i // len(SERIES_COLOURS)) % len(DASHES)]},
                marker={"color": [INACTIVE_GREY if lab == "inactive" else colour for lab in part["label"]],
                        "symbol": ["circle-open" if lab == "inactive" else "circle" for lab in part["label"]], "size": 8},
            ),  # fmt: skip
            row=2,
            col=1,
        )
    fig.add_hline(y=0, line={"color": "#999", "width": 1}, row=2, col=1)
    fig.update_yaxes(title_text="accuracy", range=[0, 1.05], row=1, col=1)
    fig.update_yaxes(title_text="symbolic − positional", range=[-1.05, 1.05], row=2, col=1)
    fig.update_xaxes(title_text="training step (checkpoint)", row=2, col=1)
    fig.update_layout(title=title, height=700)
    return fig


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
    figure: go.Figure | RenderedHTML,
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
