"""R2 (PosSym-2026): the number task needs positional heads (middle layers) and
symbolic heads (late layers); the letter task uses symbolic heads only.

Two measurements per trained model (the shared runs of `analyses.r1_length`):

1. **Roles.** `headkit.scores.positional_symbolic.classify_heads` on ``n_prompts``
   prompts of the task at the trained length: the swap metric (PosSym-2025) gives
   each head a positional and a symbolic score per prompt; the head's label is
   its most common per-prompt label and ``purity`` that label's share.
2. **Need.** Mean ablation of each head alone
   (`headkit.interventions.ablation.ablation_sweep_by_hop`, ``method="mean"``:
   the head's output ``z`` is replaced, at every position, by its mean over a
   separate reference batch of ``n_reference`` prompts), scored by exact-match
   accuracy per hop. A head the task needs costs accuracy when ablated; a
   positional head that the number task needs for its jumps should cost
   accuracy on every hop, a head used only from the second hop on should cost
   accuracy on hops >= 2 only.

Against the paper (``paper_comparison.csv``): PosSym-2026's pure heads at
gamma = 0.1 and 0.05 (``pure_paper_0.1`` / ``pure_paper_0.05`` of
`classify_heads`: residual swap, tau 1e-4, mean scores near a corner) counted per
kind, with their layers, beside the paper's counts (`headkit.report.paper.R2_PURE`:
number 4 positional L0-L3 + 8 symbolic L4-L11, letter 11 symbolic L1-L11 at 0.1;
2 + 7 and 11 at 0.05) and a verdict. The paper's models have 12 one-head layers,
the cpu preset's 6, so counts are compared by layout (positional early, symbolic
late), not by number. Which heads each hop needs (``needed_by_hop`` in the
summary: mean ablation costs more than 10 points on that hop) is headkit's own
evidence: the paper has no ablations.

Table columns (one row per task and head): ``task, layer, head,
positional_score, symbolic_score, signal, label, purity, pure`` (from
`classify_heads`), ``baseline, ablated, delta`` (accuracy over all prompts
without / with the head mean-ablated, and their difference) and
``delta_hop1 .. delta_hopK`` (the same difference per hop). Figures:
``heads_number`` and ``heads_letter`` (`headkit.plots.head_scores_figure`:
symbolic minus positional score, label and purity per head) and
``ablation`` (accuracy change per head and hop).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `analyses` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analyses.common import Timer, output_dir
from analyses.r1_length import DEFAULT_RUNS, DEFAULT_STEPS, final_model, run_script, shared_runs, write_analysis
from headkit.errors import HeadkitError
from headkit.interventions.ablation import ablation_sweep_by_hop
from headkit.interventions.metrics import accuracy
from headkit.model_types import Model
from headkit.plots import head_scores_figure
from headkit.report.paper import R2_LAYERS, R2_PURE, count_verdict, layer_span
from headkit.scores.positional_symbolic import CLASSIFY_COLUMNS, PAPER_GAMMAS, classify_heads, paper_column
from headkit.tasks.registry import TaskSpec

log = logging.getLogger(__name__)

NAME = "r2_heads"
# then delta_hop1 .. delta_hopK
HOP_COLOURS = ["black", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]  # all hops, hop 1, ...
COLUMNS = ["task", *[c for c in CLASSIFY_COLUMNS if c != "n_prompts"], "baseline", "ablated", "delta"]


@dataclass(frozen=True)
class HeadsConfig:
    runs: str = str(DEFAULT_RUNS)  # folder of the shared runs (RUNS/number, RUNS/letter)
    n_prompts: int = 128  # prompts classified per task (swap metric)
    n_ablation: int = 512  # prompts scored with and without each head
    n_reference: int = 512  # prompts whose mean z replaces an ablated head's
    seed: int = 0  # prompts: classification seed; ablation seed + 1, reference seed + 2
    train_steps: int = DEFAULT_STEPS  # updates of the shared runs
    tiny: bool = False  # tiny models (smoke runs only)


def quick_config() -> HeadsConfig:
    return HeadsConfig(n_prompts=8, n_ablation=32, n_reference=32, train_steps=4, tiny=True)


def check_config(cfg: HeadsConfig) -> None:
    for name in ("n_prompts", "n_ablation", "n_reference"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise HeadkitError(f"{name}={value!r} must be a positive integer")


def classify(model: Model, spec: TaskSpec, *, n_prompts: int, seed: int) -> pd.DataFrame:
    """`classify_heads` on ``n_prompts`` fresh prompts of the task (defaults of headkit)."""
    return classify_heads(model, spec.build(n_prompts, seed=seed).tokens)


def ablation_table(
    model: Model, spec: TaskSpec, *, n: int, n_reference: int, seed: int
) -> pd.DataFrame:
    """Per head: accuracy without/with mean ablation, overall and per hop (wide, one row per head)."""
    batch = spec.build(n, seed=seed)
    reference = spec.build(n_reference, seed=seed + 1).tokens
    by_hop = ablation_sweep_by_hop(
        model, batch, method="mean", metric=accuracy(batch, per_example=True), reference=reference
    )
    counts = pd.Series(batch.hops.tolist()).value_counts()
    weights = by_hop["hop"].map(counts) / batch.n  # share of the batch in each hop
    pooled = (
        by_hop.assign(baseline=by_hop["baseline"] * weights, ablated=by_hop["ablated"] * weights)
        .groupby(["layer", "head"], as_index=False)[["baseline", "ablated"]]
        .sum()
    )
    pooled["delta"] = pooled["ablated"] - pooled["baseline"]
    wide = by_hop.pivot(index=["layer", "head"], columns="hop", values="delta")
    wide.columns = [f"delta_hop{int(h)}" for h in wide.columns]
    return pooled.merge(wide.reset_index(), on=["layer", "head"])


def ablation_figure(table: pd.DataFrame) -> go.Figure:
    """Accuracy change when each head is mean-ablated: one panel per task, bars per hop."""
    tasks = list(dict.fromkeys(table["task"]))
    hops = [c for c in table.columns if c.startswith("delta_hop")]
    fig = make_subplots(rows=len(tasks), cols=1, subplot_titles=[f"{t} task" for t in tasks], shared_yaxes=True)
    for row, task in enumerate(tasks, start=1):
        part = table[table["task"] == task]
        x = [f"L{r.layer}H{r.head}<br>{r.label}" for r in part.itertuples()]
        for k, column in enumerate(["delta", *hops]):
            name = "all hops" if column == "delta" else f"hop {column[len('delta_hop'):]}"
            fig.add_trace(
                go.Bar(
                    x=x, y=part[column], name=name, legendgroup=name, showlegend=row == 1,
                    marker_color=HOP_COLOURS[k % len(HOP_COLOURS)], opacity=1.0 if column == "delta" else 0.8,
                ),  # fmt: skip
                row=row,
                col=1,
            )
        fig.update_yaxes(title_text="Δ accuracy", range=[-1.02, 0.1], row=row, col=1)
    fig.update_layout(
        title="R2: accuracy change when one head is mean-ablated", barmode="group", height=350 * len(tasks)
    )
    return fig


NEEDED = -0.1  # a head is needed by a hop when ablating it costs more than 10 points there


def paper_comparison(table: pd.DataFrame) -> pd.DataFrame:
    """The paper's pure heads (both gammas) per task and kind: paper's count and layers,
    headkit's count and layers, verdict (`headkit.report.paper.count_verdict`)."""
    rows = []
    for task, part in table.groupby("task", sort=False):
        for gamma in PAPER_GAMMAS:
            for kind in ("positional", "symbolic"):
                layers = part.loc[part[paper_column(gamma)] == kind, "layer"].tolist()
                paper = R2_PURE[gamma][task][kind]
                rows.append(dict(
                    task=task, gamma=gamma, kind=kind, paper=paper,
                    paper_layers=R2_LAYERS[task][kind] if gamma == 0.1 else "",
                    headkit=len(layers), headkit_layers=layer_span(layers), n_layers=int(part["layer"].max()) + 1,
                    verdict=count_verdict(len(layers), paper),
                ))  # fmt: skip
    return pd.DataFrame(rows)


def needed_by_hop(table: pd.DataFrame) -> dict[str, dict[str, list[str]]]:
    """Task -> hop -> heads whose mean ablation costs more than 10 points on that hop."""
    out: dict[str, dict[str, list[str]]] = {}
    for task, part in table.groupby("task", sort=False):
        hops = [c for c in part.columns if c.startswith("delta_hop") and part[c].notna().any()]
        out[task] = {
            c[len("delta_"):]: [f"L{r.layer}H{r.head}" for r in part.itertuples() if getattr(r, c) < NEEDED]
            for c in hops
        }
    return out


def summarize(table: pd.DataFrame) -> dict[str, Any]:
    """Per task: layers by label, the baseline accuracy and the heads whose ablation costs > 10 points."""
    out: dict[str, Any] = {}
    for task, part in table.groupby("task", sort=False):
        out[task] = {
            "baseline_accuracy": round(float(part["baseline"].iloc[0]), 4),
            "labels": {f"L{r.layer}H{r.head}": f"{r.label} ({r.purity:.0%})" for r in part.itertuples()},
            "delta": {f"L{r.layer}H{r.head}": round(float(r.delta), 4) for r in part.itertuples()},
            "needed_heads": [f"L{r.layer}H{r.head}" for r in part.itertuples() if r.delta < -0.1],
        }
    return out


def main(cfg: HeadsConfig, *, out: str | Path | None = None, png: bool = True) -> pd.DataFrame:
    """Head roles and mean-ablation deltas of both shared models; writes ``figures/r2_heads/``."""
    check_config(cfg)
    timer = Timer()
    frames, figures = [], {}
    for task, run_dir in shared_runs(cfg.runs, steps=cfg.train_steps, tiny=cfg.tiny).items():
        model, spec = final_model(run_dir)
        roles = classify(model, spec, n_prompts=cfg.n_prompts, seed=cfg.seed)
        need = ablation_table(model, spec, n=cfg.n_ablation, n_reference=cfg.n_reference, seed=cfg.seed + 1)
        frames.append(roles.drop(columns="n_prompts").merge(need, on=["layer", "head"]).assign(task=task))
        figures[f"heads_{task}"] = head_scores_figure(roles, title=f"R2: head roles, {task} task")
    table = pd.concat(frames, ignore_index=True)
    hops = sorted((c for c in table.columns if c.startswith("delta_hop")), key=lambda c: int(c[9:]))
    table = table[COLUMNS + hops]
    figures["ablation"] = ablation_figure(table)
    comparison = paper_comparison(table)
    summary = {
        **summarize(table),
        "paper_vs_headkit": comparison.to_dict("records"),
        "needed_by_hop (headkit's own evidence: the paper has no ablations)": needed_by_hop(table),
        "elapsed_s": timer(),
    }
    write_analysis(
        output_dir(NAME, out), cfg=cfg, table=table, summary=summary, figures=figures,
        tables={"paper_comparison": comparison}, png=png,
    )  # fmt: skip
    return table


if __name__ == "__main__":
    run_script(main, description=__doc__.splitlines()[0], default=HeadsConfig, quick=quick_config, runs=True)
