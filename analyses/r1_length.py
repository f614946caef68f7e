"""R1 (PosSym-2026): letter-task models keep their accuracy on much longer inputs;
number-task accuracy collapses soon after the trained length.

The number task points by *offset* ("jump back j positions"), the letter task by
*content* ("go to the token whose first symbol is y"). Both models are trained
on 17-token prompts (SPEC 2.3) and then evaluated on longer ones. The paper's
protocol (PosSym-2026 Fig. 5, ``extend="prefix"``, the first column): symbols are
added *before* the prompt, whose last 17 tokens stay a training-distribution
prompt; the x-axis is the number of tokens added (+0, +46, +96, +296, +996).
headkit's harder variant (``extend="window"``, the second column) redraws the
chain over an enlarged target window of the same total length. A content lookup
does not care how many distractors sit in between; an offset lookup has to pick
one rotary angle among ever more nearby ones (R4 measures exactly that).

Steps:

1. Train each task once into ``RUNS/number`` and ``RUNS/letter`` (the runs R1-R4
   share; see `shared_run_config`), or reuse / resume them when present.
2. Load the final checkpoint of each run, let its rotary tables reach the longest
   prompt (`headkit.models.extend_context`: no parameters change), and score
   exact-match accuracy at the answer position on ``n`` fresh prompts per length
   (`headkit.evaluation.evaluate`; default +0, +46, +96, +296, +996 tokens added,
   with each protocol of ``extends``), overall and per hop.

Table columns: those of `evaluate` -- ``task, extend, length, added, hop, n,
accuracy`` (``hop`` is an int, or ``"all"`` for the row pooling every hop).
``paper_comparison.csv`` (`headkit.report.paper.r1_comparison`): ``task, added, paper``
(Fig. 5B, read to +-0.02), ``headkit`` (prefix protocol), ``verdict`` (within the
reading error plus two binomial standard errors, or higher/lower by how much) and
``headkit_window`` (the window protocol, which the paper does not measure).
Figures: ``accuracy_prefix`` and ``accuracy_window``, one per protocol
(`headkit.plots.accuracy_by_length_figure`; x = total length = 17 + added).

This module also holds what R1-R4 share: the training config of the shared
runs, training them on demand, loading their final models, the command line
(``[--runs DIR] [--out DIR] [--quick] [--threads N]``) and the output writer.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

if __package__ in (None, ""):  # run as a file: make `analyses` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd
import plotly.graph_objects as go

from analyses.common import REPO_ROOT, Timer, config_dict, output_dir, quiet_figure_export, run_script
from headkit.errors import HeadkitError
from headkit.evaluation import ALL_HOPS, evaluate
from headkit.io import write_csv, write_json
from headkit.model_config import DEFAULT_N_CTX, ModelConfig
from headkit.model_types import Model
from headkit.models import extend_context
from headkit.plots import accuracy_by_length_figure, write_figure
from headkit.report.demo import DEMO_CHECKPOINTS
from headkit.report.paper import R1_ADDED, r1_comparison
from headkit.tasks.registry import TaskSpec
from headkit.training.config import TrainConfig, default_config
from headkit.training.loop import train_or_reuse
from headkit.training.runs import open_checkpoint

log = logging.getLogger(__name__)

NAME = "r1_length"
TASKS = ("number", "letter")
DEFAULT_RUNS = REPO_ROOT / "runs"
# 2000 updates for both tasks: the number task's default (it first passed 95% at step
# 1600); the letter task gets 500 more than its default 1500, which helps its length
# generalisation (docs/analyses.md). The letter curriculum is default_config's.
DEFAULT_STEPS = 2000
LETTER_CURRICULUM_EVERY = 250  # hop k is first trained at update 250 (k - 1) + 1
# checkpoints of the shared runs (the final step is always saved too): dense early,
# where accuracy and head roles change fastest; 12 in all. R3 tracks the heads over them.
CHECKPOINT_STEPS = DEMO_CHECKPOINTS  # the demo's: its runs are these runs (`headkit demo --out RUNS`)
# --quick / tests: a tiny model trained for a few steps, so every script runs in seconds
TINY_MODEL = dict(n_layers=2, d_model=16, n_heads=1, n_ctx=65)



# --- the shared training runs --------------------------------------------------------


def _checkpoint_steps(steps: int) -> tuple[int, ...]:
    """`CHECKPOINT_STEPS` rescaled to ``steps`` updates (unchanged at `DEFAULT_STEPS`)."""
    scaled = {max(1, round(s * steps / DEFAULT_STEPS)) for s in CHECKPOINT_STEPS}
    return tuple(sorted(s for s in scaled if s < steps))


def shared_run_config(task: str, *, steps: int = DEFAULT_STEPS, tiny: bool = False) -> TrainConfig:
    """The training config of the run of ``task`` that R1-R4 share.

    SPEC 2.3's CPU recipe (`headkit.training.config.default_config`: 6 layers, d_model 64,
    one head per layer, n_ctx 2048; the letter task with 24 symbols, lr 3e-3 and a
    hop curriculum, one hop more every 250 updates), 2000 updates, a metrics
    row every 50 updates and 12 checkpoints: exactly ``headkit demo``'s runs
    (`headkit.report.demo.demo_config`), so ``--runs DEMO_OUT`` reuses them. ``tiny``
    swaps in a 2-layer, d_model-16 model with n_ctx 65 and small batches (smoke runs).
    """
    if task not in TASKS:
        raise HeadkitError(f"unknown task {task!r}: allowed {', '.join(TASKS)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise HeadkitError(f"train_steps={steps!r} must be an integer >= 2")
    options: dict[str, Any] = dict(steps=steps, eval_every=50, checkpoint_steps=_checkpoint_steps(steps))
    if task == "letter":
        options["curriculum_every"] = LETTER_CURRICULUM_EVERY
    if tiny:
        base = default_config(task)
        model = ModelConfig(d_vocab=base.model.d_vocab, **TINY_MODEL)
        options.update(
            model=model, batch_size=16, eval_n=32, eval_every=max(1, steps // 4), warmup_steps=1,
            curriculum_every=None,
        )  # fmt: skip
    return default_config(task, **options)


def ensure_run(cfg: TrainConfig, run_dir: Path) -> Path:
    """Train ``cfg`` into ``run_dir`` unless a complete run is there; resume a partial one.

    A run made with another config is an error (choose another ``--runs`` folder).
    """
    log.info("training, resuming or reusing %s in %s", cfg.task.name, run_dir)
    train_or_reuse(cfg, run_dir, ignore=())
    return run_dir


def shared_runs(runs: str | Path, *, steps: int = DEFAULT_STEPS, tiny: bool = False) -> dict[str, Path]:
    """``{task: run directory}`` for both tasks under ``runs``, trained first where missing."""
    configs = {task: shared_run_config(task, steps=steps, tiny=tiny) for task in TASKS}
    return {task: ensure_run(cfg, Path(runs) / task) for task, cfg in configs.items()}


def run_context(*, steps: int, tiny: bool) -> int:
    """The context length (n_ctx) of the shared runs' models: the longest usable prompt."""
    return shared_run_config(TASKS[0], steps=steps, tiny=tiny).model.n_ctx


def check_lengths(lengths: Sequence[int], *, steps: int, tiny: bool) -> None:
    """Refuse prompt lengths the shared runs' models cannot take, before any training."""
    n_ctx = run_context(steps=steps, tiny=tiny)
    if not lengths:
        raise HeadkitError("lengths is empty: give at least one prompt length")
    for length in lengths:
        if isinstance(length, bool) or not isinstance(length, int) or not 17 <= length <= n_ctx:
            raise HeadkitError(f"length {length!r} is out of range: allowed 17..{n_ctx} (the models' n_ctx)")


def final_model(run_dir: Path) -> tuple[Model, TaskSpec]:
    """The model of a run's last checkpoint and the task it was trained on."""
    ckpt = open_checkpoint(run_dir)
    if ckpt.task is None:
        raise HeadkitError(f"checkpoint {ckpt.path} records no task")
    return ckpt.model, ckpt.task


# --- command line and outputs -----------------------------------------------------------


def write_analysis(
    out_dir: Path,
    *,
    cfg: Any,
    table: pd.DataFrame,
    summary: Mapping[str, Any],
    figures: Mapping[str, go.Figure],
    tables: Mapping[str, pd.DataFrame] | None = None,
    png: bool = True,
) -> list[Path]:
    """config.json, results.csv (+ ``tables`` as NAME.csv), summary.json, figures as HTML (+ PNG).

    plotly.js is written once per folder (``plotlyjs="directory"``).
    """
    quiet_figure_export()
    written = [write_json(out_dir / "config.json", config_dict(cfg)), write_csv(out_dir / "results.csv", table)]
    written += [write_csv(out_dir / f"{name}.csv", extra) for name, extra in (tables or {}).items()]
    written.append(write_json(out_dir / "summary.json", dict(summary)))
    for name, figure in figures.items():
        written += write_figure(figure, out_dir / name, png=png, plotlyjs="directory")
    log.info("wrote %s", ", ".join(str(p) for p in written))
    return written


# --- R1 -----------------------------------------------------------------------------------


PAPER_ADDED = R1_ADDED  # PosSym-2026 Fig. 5B (+4,996 too, beyond these models' n_ctx 2,048)
EXTENDS = ("prefix", "window")


@dataclass(frozen=True)
class LengthConfig:
    runs: str = str(DEFAULT_RUNS)  # folder of the shared runs (RUNS/number, RUNS/letter)
    added: tuple[int, ...] = PAPER_ADDED  # tokens added to the trained 17 (0 = trained length)
    extends: tuple[str, ...] = EXTENDS  # protocols: "prefix" (the paper's), "window" (headkit's)
    n: int = 512  # prompts per length and task
    seed: int = 12345  # seed of the evaluation prompts
    train_steps: int = DEFAULT_STEPS  # updates of the shared runs
    tiny: bool = False  # tiny models (smoke runs only)


def quick_config() -> LengthConfig:
    return LengthConfig(added=(0, 16), n=32, train_steps=4, tiny=True)


TRAINED_LENGTH = 17


def check_added(cfg: LengthConfig) -> None:
    """Refuse added-token counts and protocols R1 cannot evaluate, before any training."""
    reach = DEFAULT_N_CTX - TRAINED_LENGTH
    if not cfg.added:
        raise HeadkitError("added is empty: give at least one number of added tokens")
    for value in cfg.added:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= reach:
            raise HeadkitError(f"added {value!r} is out of range: allowed 0..{reach} (prompts up to {DEFAULT_N_CTX})")
    if len(set(cfg.added)) != len(cfg.added):
        raise HeadkitError(f"added {cfg.added} repeats a value: give each once")
    if not cfg.extends or any(e not in EXTENDS for e in cfg.extends) or len(set(cfg.extends)) != len(cfg.extends):
        raise HeadkitError(f"extends={cfg.extends!r} is not supported: give distinct values among {EXTENDS}")
    if not isinstance(cfg.n, int) or isinstance(cfg.n, bool) or cfg.n < 1:
        raise HeadkitError(f"n={cfg.n!r} must be a positive integer (prompts per length)")


def summarize(table: pd.DataFrame) -> dict[str, Any]:
    """Overall accuracy per protocol, task and tokens added, and the most added at >= 90%."""
    overall = table[table["hop"].astype(str) == ALL_HOPS]
    accuracy: dict[str, dict] = {}
    above: dict[str, dict] = {}
    for (extend, task), group in overall.groupby(["extend", "task"], sort=False):
        accuracy.setdefault(extend, {})[task] = {
            f"+{int(r.added)}": round(float(r.accuracy), 4) for r in group.itertuples()
        }
        kept = group.loc[group["accuracy"] >= 0.9, "added"]
        above.setdefault(extend, {})[task] = int(kept.max()) if len(kept) else None
    return {"accuracy": accuracy, "most_added_at_90pct": above}


def main(cfg: LengthConfig, *, out: str | Path | None = None, png: bool = True) -> pd.DataFrame:
    """Accuracy by tokens added of both shared models, each protocol; writes ``figures/r1_length/``."""
    check_added(cfg)
    timer = Timer()
    frames = []
    longest = TRAINED_LENGTH + max(cfg.added)
    for task, run_dir in shared_runs(cfg.runs, steps=cfg.train_steps, tiny=cfg.tiny).items():
        model, spec = final_model(run_dir)
        extend_context(model, longest)  # rotary tables only: the weights are the trained ones
        for extend in cfg.extends:
            frames.append(
                evaluate(model, spec, added=list(cfg.added), extend=extend, n_prompts=cfg.n, seed=cfg.seed, progress=True)
            )
    table = pd.concat(frames, ignore_index=True)
    comparison = r1_comparison(table)
    summary = {
        **summarize(table),
        "paper_vs_headkit": [
            {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
            for row in comparison.to_dict("records")
        ],
        "elapsed_s": timer(),
    }
    figures = {
        f"accuracy_{extend}": accuracy_by_length_figure(
            table[table["extend"] == extend],
            title=f"R1 ({extend} protocol): accuracy vs prompt length = 17 + tokens added",
        )
        for extend in cfg.extends
    }
    write_analysis(
        output_dir(NAME, out), cfg=cfg, table=table, summary=summary, figures=figures,
        tables={"paper_comparison": comparison}, png=png,
    )  # fmt: skip
    return table


if __name__ == "__main__":
    run_script(main, description=__doc__.splitlines()[0], default=LengthConfig, quick=quick_config, runs=True)
