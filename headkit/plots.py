"""Figures: interactive attention views (circuitsvis) and plotly charts of head scores.

Every plot function returns a figure object and never shows or writes it;
`write_figure` is the one helper that writes files, atomically:

- a plotly figure -> ``NAME.html`` (self-contained, plotly.js inlined, works
  offline) and, when kaleido and a Chromium are installed, ``NAME.png``;
- a circuitsvis `RenderedHTML` -> ``NAME.html`` from its ``local_src`` (the
  JavaScript bundle inlined; its ``str()`` would load the bundle from a CDN,
  which an offline machine cannot reach).
"""

from __future__ import annotations

import logging
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

log = logging.getLogger(__name__)

LABEL_COLOURS = {
    "positional": "#1f77b4",
    "symbolic": "#d62728",
    "mixed": "#9467bd",
    "inactive": "#c7c7c7",
}


def attention_patterns(
    model: HookedTransformer,
    tokens: Int[Tensor, " pos"] | Int[Tensor, "1 pos"],
    token_strings: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
) -> RenderedHTML:
    """circuitsvis view of every head's attention pattern on one prompt.

    Heads are named ``L{layer}H{head}``; ``token_strings`` label the positions
    (``batch.decode(i)`` for a task prompt).
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
    head_names = [f"L{layer}H{h}" for layer in layers for h in range(model.cfg.n_heads)]
    import circuitsvis as cv

    return cv.attention.attention_heads(
        attention=pattern.float().cpu(), tokens=list(token_strings), attention_head_names=head_names
    )


def head_scores_figure(heads: pd.DataFrame, *, title: str = "Positional vs symbolic heads") -> go.Figure:
    """Heat map of ``symbolic_score - positional_score`` per (layer, head), labels as text.

    ``heads`` is `classify_heads`'s table (columns layer, head, positional_score,
    symbolic_score, label, purity).
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
    text = [
        [
            f"{labels.iloc[i, j]}" + ("" if purity is None else f"<br>{purity.iloc[i, j]:.0%}")
            for j in range(grid.shape[1])
        ]
        for i in range(grid.shape[0])
    ]
    fig = go.Figure(
        go.Heatmap(
            z=grid.values,
            x=[f"H{h}" for h in grid.columns],
            y=[f"L{layer}" for layer in grid.index],
            text=text,
            texttemplate="%{text}",
            colorscale="RdBu_r",
            zmid=0,
            zmin=-1,
            zmax=1,
            colorbar={"title": "symbolic − positional"},
        )
    )
    fig.update_layout(title=title, yaxis={"autorange": "reversed"}, xaxis_title="head", yaxis_title="layer")
    return fig


def accuracy_by_length_figure(results: pd.DataFrame, *, title: str = "Accuracy by length") -> go.Figure:
    """Lines of accuracy against sequence length, one per task (and hop when given).

    ``results`` is `evaluate`'s table (task, length, hop, n, accuracy); rows with
    ``hop == "all"`` are drawn solid, per-hop rows dotted.
    """
    needed = {"task", "length", "hop", "accuracy"}
    missing = needed - set(results.columns)
    if missing:
        raise HeadkitError(f"evaluation table lacks columns {sorted(missing)}")
    fig = go.Figure()
    for (task, hop), group in results.groupby(["task", results["hop"].astype(str)], sort=True):
        group = group.sort_values("length")
        overall = hop == "all"
        fig.add_trace(
            go.Scatter(
                x=group["length"],
                y=group["accuracy"],
                mode="lines+markers",
                name=f"{task} ({'all hops' if overall else f'hop {hop}'})",
                line={"dash": "solid" if overall else "dot", "width": 3 if overall else 1.5},
            )
        )
    fig.update_layout(
        title=title,
        xaxis={"title": "sequence length", "type": "log", "tickvals": sorted(results["length"].unique().tolist())},
        yaxis={"title": "accuracy", "range": [0, 1.02]},
    )
    return fig


def patching_figure(results: pd.DataFrame, *, value: str = "normalised", title: str = "Patching") -> go.Figure:
    """Heat map of a per-(layer, head) intervention table (patching or ablation)."""
    needed = {"layer", "head", value}
    missing = needed - set(results.columns)
    if missing:
        raise HeadkitError(f"table lacks columns {sorted(missing)}")
    grid = results.pivot_table(index="layer", columns="head", values=value, aggfunc="mean")
    fig = go.Figure(
        go.Heatmap(
            z=grid.values,
            x=[f"H{h}" for h in grid.columns],
            y=[f"L{layer}" for layer in grid.index],
            colorscale="RdBu",
            zmid=0,
            colorbar={"title": value},
        )
    )
    fig.update_layout(title=title, yaxis={"autorange": "reversed"}, xaxis_title="head", yaxis_title="layer")
    return fig


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
    if isinstance(figure, RenderedHTML):
        with atomic_path(html_path) as tmp:
            tmp.write_text(_standalone_page(figure.local_src, title=base.name))
        return [html_path]
    if not isinstance(figure, go.Figure):
        raise HeadkitError(f"cannot write a {type(figure).__name__}: expected a plotly Figure or RenderedHTML")
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
