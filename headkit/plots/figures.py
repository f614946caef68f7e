"""Plotly charts of headkit's tables: head scores, accuracy, patching and ablation, learning dynamics.

Every function takes the tidy DataFrame an analysis returns (its columns are
checked first) and returns a ``plotly.graph_objects.Figure``; none shows or
writes it (`headkit.plots.output.write_figure` does). Readability rules of every
figure: ``inactive`` heads grey; each line its own colour (plus a line style per
task or head group); effects on diverging scales centred at 0; values written in
heat-map cells when the grid is small; titles name the model and the prompt
length (callers pass them, see `model_description`).
"""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go

from headkit.errors import HeadkitError
from headkit.model_types import Model

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
# accuracy lines: black, then dark greys told apart by dash, so that every hue on a dynamics
# figure is a head (hop 2 and L1H0 were both orange before issue 19); lighter than #8a8a8a
# would read as the inactive grey
ACCURACY_COLOURS = ("#000000", "#3c3c3c", "#5e5e5e", "#7a7a7a", "#8a8a8a")
# one convention for effects on every ablation and patching heat map
EFFECT_CONVENTION = "red: the head carries the effect (ablated: the metric drops; patched: the clean answer returns); blue: the opposite"
MAX_CELLS_WITH_VALUES = 150  # heat maps with at most this many cells write each value in its cell


def _check_columns(table: pd.DataFrame, needed: set[str], *, what: str) -> None:
    missing = needed - set(table.columns)
    if missing:
        raise HeadkitError(f"{what} lacks columns {sorted(missing)}")


def model_description(model: Model) -> str:
    """``6-layer × 1-head model, d_model 64`` -- for figure titles."""
    cfg = model.cfg
    return f"{cfg.n_layers}-layer × {cfg.n_heads}-head model, d_model {cfg.d_model}"


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
    _check_columns(heads, {"layer", "head", "positional_score", "symbolic_score", "label"}, what="head table")
    df = heads.assign(diff=heads["symbolic_score"] - heads["positional_score"])
    grid = df.pivot(index="layer", columns="head", values="diff").sort_index()
    labels = df.pivot(index="layer", columns="head", values="label").reindex(grid.index)
    inactive = labels == "inactive"
    text = _head_cell_text(df, grid, labels)
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


def _head_cell_text(df: pd.DataFrame, grid: pd.DataFrame, labels: pd.DataFrame) -> list[list[str]]:
    """Each head's cell text: its label, its purity (when the table has one) and its score difference."""
    purity = (
        df.pivot(index="layer", columns="head", values="purity").reindex(grid.index)
        if "purity" in df
        else None
    )
    return [
        [
            f"{labels.iloc[i, j]}"
            + ("" if purity is None else f" {purity.iloc[i, j]:.0%}")
            + f"<br>{_signed(grid.iloc[i, j], '{:+.2f}')}"  # pyright: ignore[reportArgumentType]  (pandas: any scalar)
            for j in range(grid.shape[1])
        ]
        for i in range(grid.shape[0])
    ]


def accuracy_by_length_figure(
    results: pd.DataFrame, *, title: str = "Accuracy by length", trained_length: int | None = None
) -> go.Figure:
    """Lines of accuracy against sequence length, one per task and hop.

    ``results`` is `evaluate`'s table (task, length, hop, n, accuracy). Every
    line has its own colour; ``hop == "all"`` lines are thick and black-edged,
    per-hop lines thinner, and each task has its own line style. A dotted
    vertical line marks ``trained_length`` when given.
    """
    _check_columns(results, {"task", "length", "hop", "accuracy"}, what="evaluation table")
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
    red: str = "positive",
) -> go.Figure:
    """Heat map of a per-(layer, head) intervention table (patching or ablation).

    Diverging colours centred at 0 (no effect), symmetric around it; each cell
    shows its value when the grid is small. ``columns="position"`` draws a
    by-position table (one column per position). The colour scale spans
    ``±bound`` (default: the largest absolute value, at least 1 for
    ``normalised``, where 1 is the full effect). ``red``: which sign the head's
    effect has in ``value`` (`EFFECT_CONVENTION`): ``"positive"`` for patching (1 =
    the clean answer restored), ``"negative"`` for an ablation's change of the metric.
    """
    _check_columns(results, {"layer", columns, value}, what="table")
    grid = results.pivot_table(index="layer", columns=columns, values=value, aggfunc="mean")
    return _diverging_heatmap(
        grid.values, x=[f"{columns[0].upper()}{c}" if columns == "head" else str(c) for c in grid.columns],
        y=[f"L{layer}" for layer in grid.index], colour_title=value, title=title, xaxis_title=columns,
        yaxis_title="layer", bound=bound if bound is not None else (1.0 if value == "normalised" else None), red=red,
    )  # fmt: skip


def ablation_by_hop_figure(
    table: pd.DataFrame, *, title: str = "Ablation by hop", value: str = "delta", bound: float | None = None
) -> go.Figure:
    """Heat map of `ablation_sweep_by_hop`'s table: one row per head, one column per hop count.

    Colours span ``±bound`` (default the largest absolute value; 1 suits accuracy changes).
    """
    _check_columns(table, {"layer", "head", "hop", value}, what="ablation table")
    grid = table.pivot_table(index=["layer", "head"], columns="hop", values=value, aggfunc="mean").sort_index()
    return _diverging_heatmap(
        grid.values, x=[f"hop {h}" for h in grid.columns], y=[f"L{layer}H{head}" for layer, head in grid.index],
        colour_title=value, title=title, xaxis_title="hops of the prompt", yaxis_title="head ablated", bound=bound,
        red="negative",
    )  # fmt: skip


def _diverging_heatmap(
    values, *, x, y, colour_title: str, title: str, xaxis_title: str, yaxis_title: str, bound: float | None = None,
    red: str = "negative",
) -> go.Figure:
    """Red-blue heat map centred at 0 (white), symmetric ``±bound``, red at the ``red`` end (the head's
    effect, `EFFECT_CONVENTION`, written under the map); values in the cells of small grids."""
    if red not in ("positive", "negative"):
        raise HeadkitError(f"red={red!r} is unknown: allowed positive, negative")
    largest = pd.DataFrame(values).abs().max().max()
    largest = float(largest) if pd.notna(largest) and largest > 0 else 0.0
    bound = max(bound or 0.0, largest) or 1.0
    text = _cell_text(values)
    fig = go.Figure(
        go.Heatmap(
            z=values, x=x, y=y, colorscale="RdBu" if red == "negative" else "RdBu_r", zmid=0, zmin=-bound, zmax=bound,
            colorbar={"title": colour_title}, text=text, texttemplate="%{text}" if text is not None else None,
        )  # fmt: skip
    )
    fig.update_layout(
        title=title, yaxis={"autorange": "reversed", "title": yaxis_title}, xaxis={"title": xaxis_title},
        height=max(320, 32 * len(y) + 180), margin={"b": 90},
        annotations=[{"text": EFFECT_CONVENTION, "showarrow": False, "xref": "paper", "yref": "paper", "x": 0,
                      "y": -0.02, "yshift": -60, "xanchor": "left", "font": {"size": 11, "color": "#555"}}],
    )  # fmt: skip
    return fig


def dynamics_figure(table: pd.DataFrame, *, title: str = "Learning dynamics") -> go.Figure:
    """`track_heads`'s table over training: accuracy per hop (top) and each head's score (bottom).

    Top panel: black for all hops, a dark grey and a dash per hop (no hue: hues are heads). Bottom panel:
    ``symbolic_score - positional_score`` of every head against the checkpoint
    step, one D3 colour (and past nine heads a line style) per head; points
    where the head is ``inactive`` are drawn as grey open circles.
    """
    from plotly.subplots import make_subplots

    needed = {"step", "layer", "head", "positional_score", "symbolic_score", "label", "accuracy"}
    _check_columns(table, needed, what="dynamics table")
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
                      "dash": "solid" if column == "accuracy" else DASHES[1 + (i - 1) % (len(DASHES) - 1)]},
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
    fig.add_hline(y=0, line={"color": "#999", "width": 1}, row=2, col=1)  # pyright: ignore[reportArgumentType]  (plotly: row/col ints)
    fig.update_yaxes(title_text="accuracy", range=[0, 1.05], row=1, col=1)
    fig.update_yaxes(title_text="symbolic − positional", range=[-1.05, 1.05], row=2, col=1)
    fig.update_xaxes(title_text="training step (checkpoint)", row=2, col=1)
    fig.update_layout(title=title, height=700)
    return fig
