"""R3 (PosSym-2026): accuracy emerges hop by hop on the number task and all hops
together on the letter task; pure heads emerge with it.

Two views of the shared training runs (`analyses.r1_length`):

1. **Accuracy per hop vs step**, from each run's ``metrics.csv`` (held-out batch
   of the run, a row every 50 updates). A hop has *emerged* at the first
   step whose accuracy on it reaches ``emerge_at`` (ours: 0.9). Hop by hop
   means the emergence steps rise with the hop and are spread out; all
   together means they are close.
2. **Head roles vs step**, from every checkpoint
   (`headkit.scores.dynamics.track_heads`: `classify_heads` on the same
   ``n_prompts`` prompts at each checkpoint, plus accuracy on ``eval_n`` fresh
   prompts). A head's final label has *settled* at the first checkpoint from
   which the head keeps that label, pure, up to the end.

Caveat, stated in the outputs: the letter run uses a hop curriculum (SPEC 2.3;
here the largest training hop rises by one every 250 updates), so hop ``k``
is first trained at update ``250 (k - 1) + 1``; a hop cannot emerge before it
is trained, which pushes the letter hops apart by construction. The summary
records each hop's introduction step next to its emergence step.

Against the paper (``paper_comparison.csv``): the step at which each hop first
reaches 0.9 (`headkit.report.paper.R3_STEP_AT_90`: number ~1,950 / 2,700 / 3,200 /
3,350 for hops 1-4, letter ~2,650-2,700 for all hops together, of 6,750 updates)
beside headkit's, both also as a fraction of the run, since the cpu preset runs
2,000 updates of a smaller model: orders and shapes are compared, not steps. The
summary's ``shape`` says whether the number hops emerge in hop order and how far
apart the first and last hop emerge, per task. ``pure_over_training.csv``: the
paper's pure heads (gamma 0.1) per kind at every checkpoint.

Table columns (one row per task, checkpoint step and head): ``task`` then
`track_heads`'s ``step, layer, head, positional_score, symbolic_score, signal,
label, purity, pure, n_prompts, accuracy, accuracy_hop1 .. accuracy_hopK``.
``accuracy.csv``: ``task, step, hop, accuracy`` from the runs' metrics.
Figures: ``accuracy_by_hop`` (accuracy per hop vs step, one panel per task) and
``head_roles`` (symbolic minus positional score per head and checkpoint, with
the label's initial and purity as text).
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
from analyses.r1_length import DEFAULT_RUNS, DEFAULT_STEPS, run_script, shared_runs, write_analysis
from headkit.errors import HeadkitError
from headkit.report.paper import R3_PAPER_STEPS, R3_STEP_AT_90
from headkit.scores.dynamics import track_heads
from headkit.scores.positional_symbolic import paper_column
from headkit.training.config import read_metrics, read_run_config
from headkit.training.loop import curriculum_overrides

log = logging.getLogger(__name__)

NAME = "r3_dynamics"
ACCURACY_COLUMNS = ["task", "step", "hop", "accuracy"]
INITIALS = {"positional": "P", "symbolic": "S", "mixed": "M", "inactive": "I"}


@dataclass(frozen=True)
class DynamicsConfig:
    runs: str = str(DEFAULT_RUNS)  # folder of the shared runs (RUNS/number, RUNS/letter)
    n_prompts: int = 32  # prompts classified at every checkpoint (the same at each)
    eval_n: int = 256  # prompts of the per-checkpoint accuracy
    seed: int = 0  # seed of the classified prompts
    emerge_at: float = 0.9  # a hop has emerged once its accuracy reaches this (ours)
    train_steps: int = DEFAULT_STEPS  # updates of the shared runs
    tiny: bool = False  # tiny models (smoke runs only)


def quick_config() -> DynamicsConfig:
    return DynamicsConfig(n_prompts=4, eval_n=16, train_steps=4, tiny=True)


def check_config(cfg: DynamicsConfig) -> None:
    for name in ("n_prompts", "eval_n"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise HeadkitError(f"{name}={value!r} must be a positive integer")
    if not 0 < cfg.emerge_at <= 1:
        raise HeadkitError(f"emerge_at={cfg.emerge_at!r} is out of range: allowed 0 < value <= 1")


def accuracy_long(task: str, metrics: pd.DataFrame) -> pd.DataFrame:
    """A run's metrics as tidy rows ``task, step, hop, accuracy`` (hop ``"all"`` for the pooled column)."""
    columns = {"accuracy": "all", **{c: c[len("accuracy_hop"):] for c in metrics if c.startswith("accuracy_hop")}}
    long = metrics.melt(id_vars="step", value_vars=list(columns), var_name="column", value_name="value")
    return long.assign(task=task, hop=long["column"].map(columns), accuracy=long["value"])[ACCURACY_COLUMNS]


def emergence(accuracy: pd.DataFrame, *, threshold: float) -> dict[str, int | None]:
    """Hop -> first step whose accuracy reaches ``threshold`` (None if never), one task's rows."""
    out: dict[str, int | None] = {}
    for hop, rows in accuracy.groupby("hop", sort=True):
        reached = rows.loc[rows["accuracy"] >= threshold, "step"]
        out[str(hop)] = int(reached.min()) if len(reached) else None
    return out


def hop_introduced(run_dir: Path, hops: list[int]) -> dict[str, int]:
    """Hop -> first training update whose batches contain that hop (1 without curriculum)."""
    cfg = read_run_config(run_dir)
    out = {}
    for hop in hops:
        step = 1
        while curriculum_overrides(cfg, step).get("max_hops", hop) < hop and step <= cfg.steps:
            step += 1
        out[str(hop)] = step
    return out


def settled(heads: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per head: final label and the first checkpoint from which it stays that label and pure."""
    out = {}
    for (layer, head), rows in heads.groupby(["layer", "head"], sort=True):
        rows = rows.sort_values("step")
        final = rows["label"].iloc[-1]
        keeps = (rows["label"] == final) & rows["pure"]
        since = None
        if keeps.iloc[-1]:
            broken = rows.loc[~keeps, "step"]
            later = rows.loc[rows["step"] > (broken.max() if len(broken) else -1), "step"]
            since = int(later.min())
        out[f"L{layer}H{head}"] = {"final_label": final, "final_purity": round(float(rows["purity"].iloc[-1]), 3),
                                   "pure_from_step": since}  # fmt: skip
    return out


def paper_comparison(summary: dict[str, Any], steps: dict[str, int]) -> pd.DataFrame:
    """Per task and hop: the paper's step at 0.9 and headkit's, each also as a fraction of its run."""
    rows = []
    for task, paper_steps in R3_STEP_AT_90.items():
        if task not in summary:
            continue
        emerged = summary[task]["emerged_at_step"]
        for hop, paper in paper_steps.items():
            ours = emerged.get(str(hop))
            rows.append(dict(
                task=task, hop=hop, paper_step=paper, paper_fraction=round(paper / R3_PAPER_STEPS, 3),
                headkit_step=ours, headkit_fraction=None if ours is None else round(ours / steps[task], 3),
                first_trained_at=summary[task]["hop_first_trained_at_step"].get(str(hop)),
            ))  # fmt: skip
    return pd.DataFrame(rows)


def shape(comparison: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per task: do hops emerge in hop order, and the spread (last - first emergence) as a
    fraction of the run, for the paper and for headkit."""
    out = {}
    for task, part in comparison.groupby("task", sort=False):
        part = part.sort_values("hop")
        ours = part["headkit_fraction"].tolist()
        done = all(v is not None and v == v for v in ours)
        out[task] = {
            "paper_in_hop_order": bool(part["paper_fraction"].is_monotonic_increasing),
            "paper_spread_fraction": round(float(part["paper_fraction"].max() - part["paper_fraction"].min()), 3),
            "headkit_in_hop_order": bool(pd.Series(ours).is_monotonic_increasing) if done else None,
            "headkit_spread_fraction": round(float(max(ours) - min(ours)), 3) if done else None,
        }
    return out


def pure_over_training(heads: pd.DataFrame, *, gamma: float = 0.1) -> pd.DataFrame:
    """The paper's pure heads (``pure_paper_<gamma>``) per task, checkpoint and kind."""
    column = paper_column(gamma)
    counts = heads.groupby(["task", "step"], sort=False)[column].value_counts().unstack(fill_value=0)
    counts = counts.reindex(columns=["positional", "symbolic"], fill_value=0).reset_index()
    counts.columns.name = None
    return counts.assign(gamma=gamma)[["task", "step", "gamma", "positional", "symbolic"]]


def accuracy_figure(accuracy: pd.DataFrame) -> go.Figure:
    """Held-out accuracy per hop against training step, one panel per task."""
    tasks = list(dict.fromkeys(accuracy["task"]))
    fig = make_subplots(rows=1, cols=len(tasks), subplot_titles=[f"{t} task" for t in tasks], shared_yaxes=True)
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    for col, task in enumerate(tasks, start=1):
        part = accuracy[accuracy["task"] == task]
        for k, (hop, rows) in enumerate(part.groupby("hop", sort=True)):
            pooled = hop == "all"
            fig.add_trace(
                go.Scatter(
                    x=rows["step"], y=rows["accuracy"], mode="lines", legendgroup=hop, showlegend=col == 1,
                    name="all hops" if pooled else f"hop {hop}",
                    line={"color": "black" if pooled else colours[k % len(colours)], "width": 3 if pooled else 2,
                          "dash": "dot" if pooled else "solid"},
                ),  # fmt: skip
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="training step", row=1, col=col)
    fig.update_yaxes(title_text="held-out accuracy", range=[0, 1.02], row=1, col=1)
    fig.update_layout(title="R3: accuracy per hop during training", width=1100)
    return fig


def roles_figure(heads: pd.DataFrame) -> go.Figure:
    """Symbolic minus positional score per head (rows) and checkpoint (columns), one panel per task."""
    tasks = list(dict.fromkeys(heads["task"]))
    fig = make_subplots(rows=len(tasks), cols=1, subplot_titles=[f"{t} task" for t in tasks], vertical_spacing=0.15)
    for row, task in enumerate(tasks, start=1):
        part = heads[heads["task"] == task].assign(unit=lambda d: [f"L{l}H{h}" for l, h in zip(d["layer"], d["head"])])
        diff = part.assign(diff=part["symbolic_score"] - part["positional_score"])
        grid = diff.pivot(index="unit", columns="step", values="diff")
        text = part.assign(
            text=[f"{INITIALS[l]}{p:.0%}" if pure else INITIALS[l] for l, p, pure in zip(part.label, part.purity, part.pure)]
        ).pivot(index="unit", columns="step", values="text").reindex(index=grid.index, columns=grid.columns)
        fig.add_trace(
            go.Heatmap(
                z=grid.values, x=[str(s) for s in grid.columns], y=list(grid.index), text=text.values,
                texttemplate="%{text}", textfont={"size": 9}, colorscale="RdBu_r", zmid=0, zmin=-1, zmax=1,
                showscale=row == 1, colorbar={"title": "sym − pos"},
            ),  # fmt: skip
            row=row,
            col=1,
        )
        fig.update_yaxes(autorange="reversed", row=row, col=1)
        fig.update_xaxes(type="category", row=row, col=1)
    fig.update_xaxes(title_text="checkpoint step", row=len(tasks), col=1)
    fig.update_layout(
        title="R3: head roles during training <br>(P/S/M/I = positional/symbolic/mixed/inactive; % = purity when pure)",
        height=330 * len(tasks), width=1100,
    )  # fmt: skip
    return fig


def main(cfg: DynamicsConfig, *, out: str | Path | None = None, png: bool = True) -> pd.DataFrame:
    """Accuracy per hop and head roles along both shared runs; writes ``figures/r3_dynamics/``."""
    check_config(cfg)
    timer = Timer()
    head_frames, accuracy_frames, summary = [], [], {}
    runs = shared_runs(cfg.runs, steps=cfg.train_steps, tiny=cfg.tiny)
    for task, run_dir in runs.items():
        heads = track_heads(run_dir, n_prompts=cfg.n_prompts, seed=cfg.seed, eval_n=cfg.eval_n)
        head_frames.append(heads.assign(task=task))
        accuracy = accuracy_long(task, read_metrics(run_dir))
        accuracy_frames.append(accuracy)
        hops = sorted(int(h) for h in accuracy["hop"].unique() if h != "all")
        summary[task] = {
            "emerged_at_step": emergence(accuracy, threshold=cfg.emerge_at),
            "hop_first_trained_at_step": hop_introduced(run_dir, hops),
            "final_accuracy": round(float(heads["accuracy"].iloc[-1]), 4),
            "heads": settled(heads),
        }
    table = pd.concat(head_frames, ignore_index=True)
    table = table[["task", *[c for c in table.columns if c != "task"]]]
    accuracy = pd.concat(accuracy_frames, ignore_index=True)
    figures = {"accuracy_by_hop": accuracy_figure(accuracy), "head_roles": roles_figure(table)}
    comparison = paper_comparison(summary, {task: read_run_config(run).steps for task, run in runs.items()})
    pure = pure_over_training(table)
    summary["paper_vs_headkit"] = comparison.to_dict("records")
    summary["shape"] = shape(comparison)
    summary["paper_pure_heads_over_training"] = {
        task: {int(r.step): {"positional": int(r.positional), "symbolic": int(r.symbolic)} for r in part.itertuples()}
        for task, part in pure.groupby("task", sort=False)
    }
    summary["elapsed_s"] = timer()
    write_analysis(
        output_dir(NAME, out), cfg=cfg, table=table, summary=summary, figures=figures,
        tables={"accuracy": accuracy, "paper_comparison": comparison, "pure_over_training": pure}, png=png,
    )  # fmt: skip
    return table


if __name__ == "__main__":
    run_script(main, description=__doc__.splitlines()[0], default=DynamicsConfig, quick=quick_config, runs=True)
