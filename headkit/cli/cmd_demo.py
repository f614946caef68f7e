"""``headkit demo``: positional vs symbolic heads (PosSym-2026), end to end on a CPU.

Trains the default number-task and letter-task models (`headkit.training.default_config`)
into ``OUT/number`` and ``OUT/letter``, evaluates both at lengths up to about 16x
the trained length (17, 33, 65, 129, 257 by default), writes ``OUT/accuracy.csv``
(columns ``task, length, hop, n, accuracy``) and prints the accuracy table. Then it
classifies every head (``OUT/heads_<task>.csv``, `classify_heads`), mean-ablates
every head and measures the accuracy drop per hop (``OUT/ablation_<task>.csv``,
`ablation_sweep_by_hop`) and writes ``OUT/report.html``, one self-contained page
with every figure embedded (the sections of ``headkit report``, for both tasks).

A run already complete in OUT (same config, final checkpoint present) is reused,
an interrupted one is resumed; a run with a different config is an error, never
overwritten. ``--steps-scale`` shrinks or stretches every schedule length (steps,
warm-up, curriculum, evaluation and checkpoint intervals), e.g. 0.1 for a smoke test.

The demo is a list of named steps, ``DEMO_STEPS``; each is a function of the shared
`DemoContext`. Later analyses (head classification, interventions) append steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from headkit.checks import check_output_path, parse_int_list
from headkit.cli.cmd_train import positive_float, positive_int
from headkit.errors import HeadkitError
from headkit.threads import add_threads_argument, use_threads

if TYPE_CHECKING:  # the heavy modules load when the demo runs, not for `headkit --help`
    import pandas as pd
    from transformer_lens import HookedTransformer

    from headkit.training import TrainConfig

logger = logging.getLogger(__name__)

DEMO_TASKS = ("number", "letter")
DEMO_LENGTHS = (17, 33, 65, 129, 257)
ACCURACY_FILE = "accuracy.csv"
_CHECKPOINT_FRACTIONS = (1 / 3, 2 / 3)  # intermediate checkpoints, so an interrupted demo resumes


@dataclass
class DemoContext:
    """What the demo steps share: options in, models and tables out."""

    out: Path  # demo directory
    steps_scale: float  # multiplier of every schedule length
    lengths: tuple[int, ...]  # evaluation lengths
    n: int  # evaluation prompts per length
    progress: bool  # show progress bars
    configs: dict[str, TrainConfig] = field(default_factory=dict)  # task -> its training config
    models: dict[str, HookedTransformer] = field(default_factory=dict)  # task -> trained model
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # name -> result table
    files: list[Path] = field(default_factory=list)  # files written, to list at the end
    preset: str = "cpu"  # training preset (headkit.training.PRESETS)


def demo_config(task: str, *, steps_scale: float = 1.0, preset: str = "cpu") -> TrainConfig:
    """The demo's training config of a task: the preset's, every schedule length scaled."""
    from headkit.training import default_config

    if not (math.isfinite(steps_scale) and steps_scale > 0):
        raise HeadkitError(f"--steps-scale={steps_scale} must be a positive number")
    base = default_config(task, preset=preset)

    def scale(value: int) -> int:
        return max(1, round(value * steps_scale))

    steps = scale(base.steps)
    checkpoints = tuple(sorted({max(1, round(steps * f)) for f in _CHECKPOINT_FRACTIONS} - {steps}))
    return dataclasses.replace(
        base,
        steps=steps,
        warmup_steps=min(scale(base.warmup_steps), steps) if base.warmup_steps else 0,
        eval_every=scale(base.eval_every),
        curriculum_every=None if base.curriculum_every is None else scale(base.curriculum_every),
        checkpoint_steps=checkpoints,
    )


def step_train(ctx: DemoContext) -> None:
    """Train (or reuse, or resume) the number and letter models."""
    from headkit.runs import existing_run, train_or_reuse

    ctx.configs = {task: demo_config(task, steps_scale=ctx.steps_scale, preset=ctx.preset) for task in DEMO_TASKS}
    for task, cfg in ctx.configs.items():  # refuse foreign runs before any training
        existing_run(ctx.out / task, cfg)
    for task, cfg in ctx.configs.items():
        run_dir = ctx.out / task
        started = time.perf_counter()
        result = train_or_reuse(cfg, run_dir, progress=ctx.progress)
        ctx.models[task] = result.model
        last = result.metrics.iloc[-1]
        print(
            f"{task}: step {result.step}, held-out accuracy {last['accuracy']:.3f} "
            f"({time.perf_counter() - started:.0f} s here, {last['elapsed_s']:.0f} s of training in all) -> {run_dir}"
        )


def step_evaluate(ctx: DemoContext) -> None:
    """Accuracy of both models at every length, by hop."""
    import pandas as pd

    from headkit.evaluation import accuracy_table, evaluate
    from headkit.io import write_csv

    frames = [
        evaluate(ctx.models[task], cfg.task, lengths=ctx.lengths, n=ctx.n, progress=ctx.progress)
        for task, cfg in ctx.configs.items()
    ]
    ctx.tables["accuracy"] = pd.concat(frames, ignore_index=True)
    ctx.files.append(write_csv(ctx.out / ACCURACY_FILE, ctx.tables["accuracy"]))
    print(f"\naccuracy by task, length and hop ({ctx.n} prompts per length; trained at length 17):")
    print(accuracy_table(ctx.tables["accuracy"]).to_string(index=False, float_format=lambda x: f"{x:.3f}"))


DEMO_PROMPT_SEED = 2024  # prompts of the classification and ablation steps (disjoint from training seeds)
CLASSIFY_PROMPTS = 64  # prompts per task for the swap metric
ABLATION_PROMPTS = 512  # prompts per task for the ablation sweep


def step_classify(ctx: DemoContext) -> None:
    """Positional / symbolic / mixed / inactive label and purity of every head."""
    from tqdm.auto import tqdm

    from headkit.io import write_csv
    from headkit.scores.positional_symbolic import classify_heads

    for task, cfg in tqdm(ctx.configs.items(), desc="classify heads", unit="task", disable=not ctx.progress):
        tokens = cfg.task.build(CLASSIFY_PROMPTS, seed=DEMO_PROMPT_SEED).tokens
        heads = classify_heads(ctx.models[task], tokens)
        ctx.tables[f"heads_{task}"] = heads
        ctx.files.append(write_csv(ctx.out / f"heads_{task}.csv", heads))
        tqdm.write(f"\n{task} heads ({CLASSIFY_PROMPTS} prompts of length {tokens.shape[1]}):")
        shown = heads[["layer", "head", "label", "purity", "positional_score", "symbolic_score", "signal"]]
        tqdm.write(shown.to_string(index=False, float_format=lambda x: f"{x:.2f}"))


def step_ablate(ctx: DemoContext) -> None:
    """Mean-ablate each head; accuracy drop per hop (which heads the task needs)."""
    import pandas as pd
    from tqdm.auto import tqdm

    from headkit.interventions import metrics
    from headkit.interventions.ablation import ablation_sweep_by_hop
    from headkit.io import write_csv

    for task, cfg in ctx.configs.items():
        batch = cfg.task.build(ABLATION_PROMPTS, seed=DEMO_PROMPT_SEED + 1)
        model = ctx.models[task]
        heads = [(layer, head) for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)]
        metric = metrics.accuracy(batch, per_example=True)
        table = pd.concat(
            [
                ablation_sweep_by_hop(model, batch, method="mean", metric=metric, heads=[head])
                for head in tqdm(heads, desc=f"ablate {task} heads", unit="head", disable=not ctx.progress)
            ],
            ignore_index=True,
        )
        ctx.tables[f"ablation_{task}"] = table
        ctx.files.append(write_csv(ctx.out / f"ablation_{task}.csv", table))
        wide = _delta_by_hop(table)
        print(f"\n{task}: accuracy change when each head is mean-ablated ({ABLATION_PROMPTS} prompts):")
        print(wide.to_string(index=False, float_format=lambda x: f"{x:+.3f}"))


def _delta_by_hop(table: pd.DataFrame) -> pd.DataFrame:
    """Ablation table -> one row per head, one ``hopK`` column of accuracy change per hop."""
    wide = table.pivot_table(index=["layer", "head"], columns="hop", values="delta").reset_index()
    wide.columns = [c if isinstance(c, str) else f"hop{c}" for c in wide.columns]
    return wide


PATCH_PROMPTS = 256  # prompts per task of the report's activation patching


def step_report(ctx: DemoContext) -> None:
    """OUT/report.html: every figure embedded (`headkit report`'s sections, both tasks)."""
    import dataclasses as dc

    from tqdm.auto import tqdm

    from headkit.cli.cmd_report import (
        ablation_section, accuracy_section, attention_section, dynamics_section, heads_section, patching_section,
    )  # fmt: skip
    from headkit.io import write_text
    from headkit.plots import model_description
    from headkit.report import report_html
    from headkit.scores.dynamics import track_heads

    trained = {cfg.task.build(1, seed=0).length for cfg in ctx.configs.values()}
    models = {task: model_description(model) for task, model in ctx.models.items()}
    about = "; ".join(f"{task}: {models[task]}" for task in ctx.configs)
    sections = [accuracy_section(ctx.tables["accuracy"], about=about, trained_length=min(trained))]
    bar = tqdm(total=3 * len(ctx.configs), desc="report", unit="part", disable=not ctx.progress)
    for task, cfg in ctx.configs.items():
        model, length = ctx.models[task], cfg.task.build(1, seed=0).length
        named = f"{task} {models[task]}, step {cfg.steps}"
        dynamics = track_heads(ctx.out / task, n_prompts=CLASSIFY_PROMPTS, seed=DEMO_PROMPT_SEED, progress=False)
        bar.update(1)
        batch = cfg.task.build(PATCH_PROMPTS, seed=DEMO_PROMPT_SEED + 2)
        patching = patching_section(model, batch, about=named)
        bar.update(1)
        heads = ctx.tables[f"heads_{task}"]
        parts = [
            heads_section(heads, about=named, n_prompts=CLASSIFY_PROMPTS, length=length),
            dynamics_section(dynamics, about=f"{task} {models[task]}"),
            ablation_section(ctx.tables[f"ablation_{task}"], about=named, n_prompts=ABLATION_PROMPTS),
            patching,
            attention_section(model, batch, about=named, heads=heads),
        ]
        bar.update(1)
        sections += [dc.replace(part, title=f"{task} task: {part.title}") for part in parts]
    bar.close()
    report = ctx.out / "report.html"
    write_text(report, report_html("headkit demo: positional vs symbolic heads", sections, root=ctx.out))
    ctx.files.append(report)
    print(f"\nreport (every figure inside, works offline): {report}")


# the demo, in order: (name, step); later issues append their analyses here
DEMO_STEPS: list[tuple[str, Callable[[DemoContext], None]]] = [
    ("train", step_train),
    ("evaluate", step_evaluate),
    ("classify", step_classify),
    ("ablate", step_ablate),
    ("report", step_report),
]


def _demo(args: argparse.Namespace) -> int:
    lengths = tuple(parse_int_list(args.lengths, name="--lengths"))
    ctx = DemoContext(
        out=Path(args.out),
        steps_scale=args.steps_scale,
        lengths=lengths,
        n=args.n,
        progress=not args.no_progress,
        preset=args.preset,
    )
    check_output_path(ctx.out, directory=True)  # writable, not inside a run's own files or a checkpoint
    for task in DEMO_TASKS:  # every check before any training
        cfg = demo_config(task, steps_scale=ctx.steps_scale, preset=ctx.preset)
        too_long = [length for length in lengths if length > cfg.model.n_ctx]
        if too_long:
            raise HeadkitError(
                f"--lengths {too_long[0]} exceeds the {task} model's context n_ctx={cfg.model.n_ctx}: "
                f"allowed lengths are 1..{cfg.model.n_ctx}"
            )
        for length in lengths:  # the task's own limits (e.g. a minimum length): one prompt each
            try:
                cfg.task.build(1, seed=0, length=length)
            except HeadkitError as exc:
                raise HeadkitError(f"--lengths {length}: the {task} task cannot build prompts of it: {exc}") from None
    use_threads(args.threads)
    from headkit.runs import RunLock

    started = time.perf_counter()
    with RunLock(ctx.out):  # one demo at a time in OUT
        for name, step in DEMO_STEPS:
            logger.info("demo step %s", name)
            print(f"== {name} ==")
            step(ctx)
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s; files in {ctx.out}:")
    for task in ctx.configs:
        print(f"  {ctx.out / task}/ (run.json, metrics.csv, checkpoints/)")
    for path in ctx.files:
        print(f"  {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="train number/letter models, test length generalisation")
    p.add_argument("--out", default="headkit-demo", help="demo directory (default ./headkit-demo)")
    p.add_argument("--steps-scale", type=positive_float, default=1.0, help="scale every schedule length (default 1)")
    p.add_argument(
        "--lengths", default=",".join(map(str, DEMO_LENGTHS)), help="evaluation lengths (default 17,33,65,129,257)"
    )
    p.add_argument("--n", type=positive_int, default=512, help="evaluation prompts per length (default 512)")
    p.add_argument("--preset", choices=["cpu", "paper"], default="cpu", help="training preset (default cpu; paper is for a GPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_threads_argument(p)
    p.set_defaults(func=_demo)
