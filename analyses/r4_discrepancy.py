"""R4 (PosSym-2026): the discrepancy of positional heads shrinks with length; that
of symbolic heads does not.

Discrepancy ``Δ(n)`` of a head (`headkit.scores.discrepancy.discrepancy`): at the
query (last) position, the largest attention logit minus the second largest.
The paper's Δ(n) is the maximum over inputs of length ``n`` (Thm 3.2; column
``discrepancy_max``); headkit also reports the mean over prompts
(``discrepancy``). The paper gives bounds, not measurements (Thm 3.2, Fig. 5A):
a positional head's Δ(n) is O(1/n²), a symbolic head's stays bounded away from 0;
``paper_comparison.csv`` puts each bound beside headkit's measured log-log slopes
(max and mean) per label, with a verdict. PosSym-2026's argument: a positional
(index) head must single out one rotary offset among ``n`` ever closer ones, so
its Δ shrinks like O(1/n²); a symbolic (retrieval) head matches content and
keeps Δ bounded away from 0.

Steps, for each shared trained model (`analyses.r1_length`):

1. Label every head as R2 does (`analyses.r2_heads.classify`, same prompts and
   settings by default) -- the colour of its curve.
2. Δ(n) of every head on ``n`` prompts per length (default 17 plus the paper's
   0, 46, 96, 296, 996 tokens added: 17, 63, 113, 313, 1013; longer prompts are
   made with the task's default protocol, the paper's prefix).
3. Per head, the trend: ``ratio`` = Δ(longest) / Δ(17) and ``slope`` = the
   least-squares slope of log Δ against log n (the theory's positional heads:
   about -2; symbolic heads: about 0).

Table columns (one row per task, head and length): ``task, layer, head, label,
purity, length, discrepancy, discrepancy_std, n_prompts, discrepancy_max``. ``trends.csv``:
``task, layer, head, label, purity, delta_first, delta_last, ratio, slope, slope_max``.
Figure: ``discrepancy`` (Δ against length per head, log-log, coloured by label).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `analyses` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analyses.common import Timer, output_dir
from analyses.r1_length import (
    DEFAULT_RUNS,
    DEFAULT_STEPS,
    check_lengths,
    final_model,
    run_script,
    shared_runs,
    write_analysis,
)  # fmt: skip
from analyses.r2_heads import HeadsConfig, classify
from headkit.errors import HeadkitError
from headkit.plots import model_description
from headkit.report.paper import R1_ADDED
from headkit.scores.discrepancy import DISCREPANCY_COLUMNS, discrepancy

log = logging.getLogger(__name__)

NAME = "r4_discrepancy"
COLUMNS = ["task", "layer", "head", "label", "purity", *DISCREPANCY_COLUMNS[2:]]
TREND_COLUMNS = ["task", "layer", "head", "label", "purity", "delta_first", "delta_last", "ratio", "slope", "slope_max"]
LABEL_COLOURS = {"positional": "#d62728", "symbolic": "#1f77b4", "mixed": "#9467bd", "inactive": "#7f7f7f"}
LABEL_DASH = {"positional": "solid", "symbolic": "solid", "mixed": "dash", "inactive": "dot"}


@dataclass(frozen=True)
class DiscrepancyConfig:
    runs: str = str(DEFAULT_RUNS)  # folder of the shared runs (RUNS/number, RUNS/letter)
    lengths: tuple[int, ...] = tuple(17 + a for a in R1_ADDED)  # prompt lengths: the paper's x-axis
    n: int = 128  # prompts per length
    seed: int = 0  # seed of the Δ prompts
    n_classify: int = HeadsConfig.n_prompts  # prompts of the head labels (as R2)
    classify_seed: int = HeadsConfig.seed  # their seed (as R2)
    train_steps: int = DEFAULT_STEPS  # updates of the shared runs
    tiny: bool = False  # tiny models (smoke runs only)


def quick_config() -> DiscrepancyConfig:
    return DiscrepancyConfig(lengths=(17, 33, 65), n=8, n_classify=4, train_steps=4, tiny=True)


def check_config(cfg: DiscrepancyConfig) -> None:
    check_lengths(cfg.lengths, steps=cfg.train_steps, tiny=cfg.tiny)
    if len(set(cfg.lengths)) < 2:
        raise HeadkitError(f"lengths={cfg.lengths!r}: give at least two distinct lengths for a trend")
    for name in ("n", "n_classify"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise HeadkitError(f"{name}={value!r} must be an integer >= 2")


def loglog_slope(lengths: np.ndarray, delta: np.ndarray) -> float:
    """Least-squares slope of log Δ against log n over the positive Δ (NaN with fewer than 2)."""
    positive = delta > 0
    if positive.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(lengths[positive]), np.log(delta[positive]), 1)[0])


def trends(table: pd.DataFrame) -> pd.DataFrame:
    """Per head: mean Δ at the shortest and longest length, their ratio, and the log-log
    slope of the mean Δ (``slope``) and of the paper's maximum Δ (``slope_max``)."""
    rows = []
    for (task, layer, head), part in table.groupby(["task", "layer", "head"], sort=False):
        part = part.sort_values("length")
        lengths = part["length"].to_numpy()
        delta = part["discrepancy"].to_numpy()
        first, last = float(delta[0]), float(delta[-1])
        rows.append((task, layer, head, part["label"].iloc[0], part["purity"].iloc[0], first, last,
                     last / first if first > 0 else float("nan"), loglog_slope(lengths, delta),
                     loglog_slope(lengths, part["discrepancy_max"].to_numpy())))  # fmt: skip
    return pd.DataFrame(rows, columns=TREND_COLUMNS)


PAPER_BOUND = {"positional": "Δ(n) = O(1/n²): slope <= -2", "symbolic": "Δ(n) >= c > 0: slope ~ 0"}


def paper_comparison(trend: pd.DataFrame) -> pd.DataFrame:
    """Per task and label (positional, symbolic): the paper's bound beside headkit's median
    log-log slopes of the maximum and mean Δ, and a verdict: a positional head's maximum Δ
    must fall at least like 1/n² (slope <= -2 + 0.5 allowed for a 5-point fit), a
    symbolic head's must not fall towards 0 (slope >= -0.5)."""
    rows = []
    for task, part in trend.groupby("task", sort=False):
        for label, bound in PAPER_BOUND.items():
            chosen = part[part["label"] == label]
            if chosen.empty:
                rows.append(dict(task=task, label=label, paper=bound, heads=0, slope_max=None, slope_mean=None,
                                 verdict="no such head"))  # fmt: skip
                continue
            slope_max, slope_mean = float(chosen["slope_max"].median()), float(chosen["slope"].median())
            ok = slope_max <= -1.5 if label == "positional" else slope_max >= -0.5
            rows.append(dict(task=task, label=label, paper=bound, heads=len(chosen), slope_max=round(slope_max, 3),
                             slope_mean=round(slope_mean, 3), verdict="consistent" if ok else "not consistent"))  # fmt: skip
    return pd.DataFrame(rows)


def log_ticks(low: float, high: float) -> list[float]:
    """Readable ticks of a log axis: 1, 2, 3, 5 times powers of ten within [low, high]."""
    ticks = []
    for exponent in range(int(np.floor(np.log10(low))), int(np.ceil(np.log10(high))) + 1):
        ticks += [m * 10.0**exponent for m in (1, 2, 3, 5) if low <= m * 10.0**exponent <= high]
    return ticks or [low, high]


HEAD_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x", "star", "cross", "triangle-down")


def discrepancy_figure(table: pd.DataFrame, *, about: str = "") -> go.Figure:
    """Δ against length per head, one panel per task, coloured by the head's label.

    Log-log axes, ticked at the measured lengths (x) and at 1-2-5 values (y).
    Heads of one label share its colour and differ in marker and line style;
    each head is a legend entry (``L3H0 symbolic``), so no labels overlap at
    the line ends. ``about`` (the models, e.g. their size) goes in the title.
    """
    tasks = list(dict.fromkeys(table["task"]))
    fig = make_subplots(rows=1, cols=len(tasks), subplot_titles=[f"{t} model" for t in tasks], horizontal_spacing=0.08)
    lengths = sorted(table["length"].unique().tolist())
    positive = table.loc[table["discrepancy"] > 0, "discrepancy"]
    y_ticks = log_ticks(float(positive.min()) * 0.8, float(positive.max()) * 1.25) if len(positive) else None
    for col, task in enumerate(tasks, start=1):
        heads = table[table["task"] == task].groupby(["layer", "head"], sort=True)
        for i, ((layer, head), part) in enumerate(heads):
            label = part["label"].iloc[0]
            part = part.sort_values("length")
            fig.add_trace(
                go.Scatter(
                    x=part["length"], y=part["discrepancy"], mode="lines+markers",
                    name=f"{task} L{layer}H{head} {label}", legendgroup=task, legendgrouptitle_text=f"{task} model",
                    line={"color": LABEL_COLOURS[label], "dash": ("solid", "dash", "dot", "dashdot")[i % 4], "width": 2},
                    marker={"symbol": HEAD_SYMBOLS[i % len(HEAD_SYMBOLS)], "size": 9, "color": LABEL_COLOURS[label]},
                    hovertemplate=f"L{layer}H{head} ({label}) n=%{{x}}: Δ=%{{y:.3g}}<extra></extra>",
                ),  # fmt: skip
                row=1,
                col=col,
            )
        fig.update_xaxes(
            title_text="prompt length n (log)", type="log", tickvals=lengths, ticktext=[str(v) for v in lengths],
            minor={"showgrid": False}, row=1, col=col,
        )  # fmt: skip
        fig.update_yaxes(
            type="log", tickvals=y_ticks, ticktext=None if y_ticks is None else [f"{v:g}" for v in y_ticks],
            row=1, col=col,
        )  # fmt: skip
    fig.update_yaxes(title_text="Δ(n): top − runner-up attention logit (log)", row=1, col=1)
    models = f"<br><sup>{about}</sup>" if about else ""
    fig.update_layout(
        title=f"R4: discrepancy Δ(n) against prompt length, per head{models}<br><sup>colour: R2 label (red "
        f"positional, blue symbolic, purple mixed, grey inactive); lengths {', '.join(map(str, lengths))}</sup>",
        width=1250, height=650, margin={"t": 130}, legend={"groupclick": "toggleitem", "font": {"size": 11}},
    )  # fmt: skip
    return fig


def summarize(trend: pd.DataFrame) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for task, part in trend.groupby("task", sort=False):
        out[task] = {
            f"L{r.layer}H{r.head}": {"label": r.label, "ratio_last_to_first": round(float(r.ratio), 4),
                                     "loglog_slope": round(float(r.slope), 3),
                                     "loglog_slope_max": round(float(r.slope_max), 3)}  # fmt: skip
            for r in part.itertuples()
        }
        for label in ("positional", "symbolic"):
            chosen = part[part["label"] == label]
            out[task][f"median_slope_{label}"] = round(float(chosen["slope"].median()), 3) if len(chosen) else None
    return out


def main(cfg: DiscrepancyConfig, *, out: str | Path | None = None, png: bool = True) -> pd.DataFrame:
    """Δ(n) per head of both shared models, with R2's labels; writes ``figures/r4_discrepancy/``."""
    check_config(cfg)
    timer = Timer()
    frames, models = [], {}
    for task, run_dir in shared_runs(cfg.runs, steps=cfg.train_steps, tiny=cfg.tiny).items():
        model, spec = final_model(run_dir)
        models[task] = f"{model_description(model)}, trained at length {spec.build(1, seed=0).length}"
        roles = classify(model, spec, n_prompts=cfg.n_classify, seed=cfg.classify_seed)
        delta = discrepancy(model, spec, lengths=list(cfg.lengths), n_prompts=cfg.n, seed=cfg.seed)
        frames.append(delta.merge(roles[["layer", "head", "label", "purity"]], on=["layer", "head"]).assign(task=task))
    table = pd.concat(frames, ignore_index=True)[COLUMNS]
    about = "; ".join(f"{task}: {desc}" for task, desc in models.items())
    trend = trends(table)
    comparison = paper_comparison(trend)
    summary = {**summarize(trend), "paper_vs_headkit": comparison.to_dict("records"), "elapsed_s": timer()}
    write_analysis(
        output_dir(NAME, out), cfg=cfg, table=table, summary=summary,
        figures={"discrepancy": discrepancy_figure(table, about=about)},
        tables={"trends": trend, "paper_comparison": comparison}, png=png,
    )  # fmt: skip
    return table


if __name__ == "__main__":
    run_script(main, description=__doc__.splitlines()[0], default=DiscrepancyConfig, quick=quick_config, runs=True)
