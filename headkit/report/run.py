"""A trained run's report, built once for every caller: ``headkit report RUN_DIR``, the demo, notebooks.

- `build_report(path, ReportOptions)`: a run directory (its latest checkpoint, and the
  learning dynamics over all of them) or one checkpoint directory, resolved and loaded
  once -> a `Report`: every table (accuracy by length and hop, head census, dynamics,
  mean ablation per hop) and the page's sections in order.
- `run_sections`: the sections of one model after its accuracy (census, dynamics,
  ablation, activation patching, attention views), shared with the demo, which computes
  its own tables for two tasks and puts them on one page.
- `write_report(report, out)`: the folder: one CSV per table, ``config.json`` when the
  report carries a config, every plotly figure as PNG with ``png=True``, and
  ``report.html`` (`headkit.report.page.report_html`), built in a temporary folder that
  then replaces ``out`` whole (`headkit.io.atomic_folder`).

What a step reports goes to ``say`` (the command line passes ``print``; the default
logs it): the library never prints.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from headkit.checks import SEED_MAX, check_bool, check_int, check_seed
from headkit.errors import HeadkitError
from headkit.evaluation import evaluate
from headkit.interventions import metrics
from headkit.interventions.ablation import ablation_sweep_by_hop
from headkit.io import atomic_folder, write_csv, write_text
from headkit.model_types import Model
from headkit.plots import model_description, write_figure
from headkit.report import sections as build
from headkit.report.page import Section, report_html
from headkit.scores.dynamics import track_heads
from headkit.scores.positional_symbolic import classify_heads
from headkit.tasks.base import TaskBatch
from headkit.training.checkpoints import load_checkpoint
from headkit.training.layout import is_one_checkpoint, resolve_checkpoint

logger = logging.getLogger(__name__)
Say = Callable[[str], Any]

MAX_LENGTHS = 5  # default evaluation lengths: the trained one and up to 4 doublings


def default_lengths(trained: int, n_ctx: int) -> list[int]:
    """The trained length and its doublings of the content, ``(L-1)·2^k + 1``, within ``n_ctx``."""
    lengths = [trained]
    while len(lengths) < MAX_LENGTHS and (lengths[-1] - 1) * 2 + 1 <= n_ctx:
        lengths.append((lengths[-1] - 1) * 2 + 1)
    return lengths


@dataclass(frozen=True)
class ReportOptions:
    """What `build_report` computes (``headkit report``'s flags of the same names)."""

    n_prompts: int = 64  # prompts of the head census (and of each checkpoint's census in the dynamics)
    eval_n: int = 256  # prompts per length of the accuracy, and of the ablation and the patching
    seed: int = 0  # seed of the prompts; the ablation's prompts use seed + 1
    device: str | None = None  # torch device (None: as saved)
    progress: bool = True  # progress bars

    def __post_init__(self) -> None:
        check_int("n_prompts", self.n_prompts)
        check_int("eval_n", self.eval_n)
        check_seed(self.seed)
        check_bool("progress", self.progress)


@dataclass
class Report:
    """A report's content: the tables (written as ``<name>.csv``) and the page's sections, in order."""

    title: str
    about: str  # one line describing the model
    tables: dict[str, pd.DataFrame]
    sections: list[Section]
    config: dict[str, Any] | None = None  # written as config.json when given


def run_sections(
    model: Model,
    batch: TaskBatch,
    *,
    heads: pd.DataFrame,
    dynamics: pd.DataFrame | None,
    ablation: pd.DataFrame,
    about: str,
    dynamics_about: str,
    n_prompts: int,
    ablation_prompts: int,
    trained_length: int,
) -> list[Section]:
    """One model's sections after its accuracy: head census, learning dynamics (when given), mean
    ablation per hop, activation patching and attention views of ``batch``."""
    sections = [build.heads_section(heads, about=about, n_prompts=n_prompts, length=trained_length)]
    if dynamics is not None:
        sections.append(build.dynamics_section(dynamics, about=dynamics_about))
    sections.append(build.ablation_section(ablation, about=about, n_prompts=ablation_prompts))
    sections.append(build.patching_section(model, batch, about=about))
    sections.append(build.attention_section(model, batch, about=about, heads=heads))
    return sections


def build_report(path: str | Path, options: ReportOptions | None = None, *, say: Say = logger.info) -> Report:
    """The report of a run directory (its latest checkpoint; dynamics over all its checkpoints)
    or of one checkpoint directory (no dynamics). The checkpoint is resolved and loaded once."""
    options = options or ReportOptions()
    ckpt = load_checkpoint(resolve_checkpoint(path), device=options.device)
    if ckpt.task is None:
        raise HeadkitError(f"checkpoint {ckpt.path} records no task: cannot build prompts for its report")
    model, task = ckpt.model, ckpt.task
    trained = task.length
    described = f"{task.name} {model_description(model)}"
    about = f"{described}, step {ckpt.step}"
    tables: dict[str, pd.DataFrame] = {}
    say(f"report of {about} ({ckpt.path})")
    say("accuracy by length ...")
    lengths = default_lengths(trained, model.cfg.n_ctx)
    tables["accuracy"] = evaluate(
        model, task, lengths=lengths, n_prompts=options.eval_n, seed=options.seed, progress=options.progress
    )
    accuracy = build.accuracy_section(tables["accuracy"], about=about, trained_length=trained)
    say("head census ...")
    tables["heads"] = classify_heads(model, task.build(options.n_prompts, seed=options.seed).tokens)
    if not is_one_checkpoint(path):  # a run directory: its checkpoints
        say("learning dynamics over checkpoints ...")
        tables["dynamics"] = track_heads(
            path, n_prompts=options.n_prompts, seed=options.seed, eval_n=options.eval_n, device=options.device,
            progress=options.progress,
        )  # fmt: skip
    say("mean ablation per hop ...")
    batch = task.build(options.eval_n, seed=(options.seed + 1) % (SEED_MAX + 1))  # the largest seed wraps to 0
    tables["ablation"] = ablation_sweep_by_hop(model, batch, method="mean", metric=metrics.accuracy(batch, per_example=True))
    say("activation patching ...")
    sections = [accuracy] + run_sections(
        model, batch, heads=tables["heads"], dynamics=tables.get("dynamics"), ablation=tables["ablation"],
        about=about, dynamics_about=described, n_prompts=options.n_prompts, ablation_prompts=options.eval_n,
        trained_length=trained,
    )  # fmt: skip
    return Report(title=f"headkit report: {about}", about=about, tables=tables, sections=sections)


def write_report(report: Report, out: str | Path, *, png: bool = False, say: Say = logger.info) -> list[Path]:
    """The report's folder, replaced whole: CSVs, ``config.json``, PNGs (``png=True``) and
    ``report.html``; returns the files written (their final paths)."""
    out = Path(out)
    with atomic_folder(out) as folder:
        written = [write_csv(folder / f"{name}.csv", table) for name, table in report.tables.items()]
        if report.config is not None:
            written.append(write_text(folder / "config.json", json.dumps(report.config, indent=2) + "\n"))
        if png:
            plots: list[Any] = [f for s in report.sections for f in s.figures if hasattr(f, "write_image")]  # plotly
            for i, figure in enumerate(plots):
                written += write_figure(figure, folder / "figures" / f"figure_{i + 1}", png=True, plotlyjs="directory")
            if not any(p.suffix == ".png" for p in written):
                say("no PNG written: PNG export needs kaleido >= 1 and a Chromium (pip install -e '.[figures]')")
        written.append(write_text(folder / "report.html", report_html(report.title, report.sections, root=folder)))
        return [out / path.relative_to(folder) for path in written]
