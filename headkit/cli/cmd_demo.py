"""``headkit demo``: positional vs symbolic heads (PosSym-2026), end to end on a CPU.

Trains the default number-task and letter-task models (`headkit.training.default_config`)
into ``OUT/number`` and ``OUT/letter``, evaluates both with PosSym-2026's length
protocol (Fig. 5B: +0, +46, +96, +296, +996 tokens added *before* the 17-token
prompt, ``extend="prefix"``; ``--extend window`` is headkit's harder variant,
``--lengths`` gives total lengths instead), writes ``OUT/accuracy.csv`` (columns
``task, extend, length, added, hop, n, accuracy``), prints the accuracy table and,
for the paper's protocol, the R1 table beside the paper's numbers with a verdict
(`headkit.paper.r1_comparison`). Then it
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
from typing import TYPE_CHECKING, Any, Callable

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
DEMO_ADDED = (0, 46, 96, 296, 996)  # PosSym-2026 Fig. 5B's x-axis: tokens added
ACCURACY_FILE = "accuracy.csv"
# intermediate checkpoints (at steps_scale 1; the final step is always saved): an interrupted demo
# resumes, and analyses R3 (head roles over training) reads them; dense early, where roles change fastest
DEMO_CHECKPOINTS = (100, 200, 300, 400, 600, 800, 1000, 1200, 1400, 1600, 1800)
DEMO_EVAL_EVERY = 50  # a metrics row (accuracy per hop) every 50 updates: R3's step at 90 %
REPORT_CHECKPOINTS = 4  # checkpoints the report's head-roles-over-training section classifies


@dataclass
class DemoContext:
    """What the demo steps share: options in, models and tables out."""

    out: Path  # demo directory
    steps_scale: float  # multiplier of every schedule length
    lengths: tuple[int, ...] | None  # total evaluation lengths, or None: use ``added``
    added: tuple[int, ...] | None  # tokens added to the trained length (the paper's x-axis)
    extend: str  # "prefix" (the paper's protocol) or "window" (headkit's variant)
    n: int  # evaluation prompts per length
    progress: bool  # show progress bars
    configs: dict[str, TrainConfig] = field(default_factory=dict)  # task -> its training config
    models: dict[str, HookedTransformer] = field(default_factory=dict)  # task -> trained model
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # name -> result table
    files: list[Path] = field(default_factory=list)  # files written, to list at the end
    preset: str = "cpu"  # training preset (headkit.training.PRESETS)
    parallel: bool = True  # train both runs at once (one process each) when two cores are idle


def demo_config(task: str, *, steps_scale: float = 1.0, preset: str = "cpu") -> TrainConfig:
    """The demo's training config of a task: the preset's, a metrics row every
    `DEMO_EVAL_EVERY` updates and checkpoints at `DEMO_CHECKPOINTS` (in proportion
    to the preset's steps), every schedule length scaled. These are the runs
    analyses R1-R4 read (``analyses/r1_length.py``: ``--runs OUT``)."""
    from headkit.training import default_config

    if not (math.isfinite(steps_scale) and steps_scale > 0):
        raise HeadkitError(f"--steps-scale={steps_scale} must be a positive number")
    base = default_config(task, preset=preset)

    def scale(value: int) -> int:
        return max(1, round(value * steps_scale))

    steps = scale(base.steps)
    fractions = [s / 2000 for s in DEMO_CHECKPOINTS]  # DEMO_CHECKPOINTS are for a 2,000-update run
    checkpoints = tuple(sorted({max(1, round(steps * f)) for f in fractions if round(steps * f) < steps}))
    return dataclasses.replace(
        base,
        steps=steps,
        warmup_steps=min(scale(base.warmup_steps), steps) if base.warmup_steps else 0,
        eval_every=scale(DEMO_EVAL_EVERY * base.steps / 2000),
        curriculum_every=None if base.curriculum_every is None else scale(base.curriculum_every),
        checkpoint_steps=checkpoints,
    )


def _train_in_child(cfg_data: dict, run_dir: str) -> float:
    """Worker of `train_in_parallel`: one run on one torch thread; returns its wall seconds."""
    import torch

    from headkit.runs import train_or_reuse
    from headkit.training import TrainConfig

    torch.set_num_threads(1)
    started = time.perf_counter()
    train_or_reuse(TrainConfig.from_dict(cfg_data), run_dir, progress=False)
    return time.perf_counter() - started


def train_in_parallel(configs: dict[str, TrainConfig], out: Path) -> dict[str, float]:
    """Train the runs that are not complete yet at the same time, one process and one
    torch thread each (the demo's models are too small to use two threads well, but two
    runs fill two cores); returns task -> wall seconds. Training is deterministic on
    the CPU, so a run trained here equals one trained alone, bit for bit."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from headkit.runs import run_status

    todo = {
        task: cfg for task, cfg in configs.items()
        if not ((out / task / "run.json").exists() and run_status(out / task).complete)
    }  # fmt: skip
    if len(todo) < 2:
        return {}
    print(f"training {', '.join(todo)} in parallel ({len(todo)} processes, 1 thread each)")
    with ProcessPoolExecutor(len(todo), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {task: pool.submit(_train_in_child, cfg.to_dict(), str(out / task)) for task, cfg in todo.items()}
        return {task: future.result() for task, future in futures.items()}


def step_train(ctx: DemoContext) -> None:
    """Train (or reuse, or resume) the number and letter models: at once (one process
    per run) when the machine has a core per run, else (or with ``--serial``) in turn."""
    import os

    from headkit.runs import existing_run, train_or_reuse

    ctx.configs = {task: demo_config(task, steps_scale=ctx.steps_scale, preset=ctx.preset) for task in DEMO_TASKS}
    for task, cfg in ctx.configs.items():  # refuse foreign runs before any training
        existing_run(ctx.out / task, cfg)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if ctx.parallel and cores >= len(ctx.configs):  # under load too: two processes get two shares of the CPUs
        for task, seconds in train_in_parallel(ctx.configs, ctx.out).items():
            print(f"{task}: trained in a child process in {seconds:.0f} s")
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


def _fast_scorer(run_dir: Path, model: HookedTransformer, longest: int) -> Any:
    """What scores accuracy: the run's own Hugging Face model (the same weights as ``model``,
    its logits equal TransformerLens's to 1e-4, tests/test_training_backend.py), whose
    scaled-dot-product attention scores 64 prompts of 1,013 tokens ~2.9x faster than
    TransformerLens on this CPU; ``model`` itself where the HF model cannot take ``longest``."""
    from transformers import GPTJForCausalLM

    from headkit.gptj_hf import HFLogits
    from headkit.runs import resolve_checkpoint

    hf = GPTJForCausalLM.from_pretrained(resolve_checkpoint(run_dir), attn_implementation="sdpa")
    if longest > hf.config.n_positions:
        return model
    return HFLogits(hf.to(model.cfg.device).eval())


def step_evaluate(ctx: DemoContext) -> None:
    """Accuracy of both models at every length, by hop."""
    import pandas as pd

    from headkit.evaluation import accuracy_table, evaluate
    from headkit.io import write_csv

    from headkit.models import extend_context
    from headkit.paper import r1_comparison

    longest = max(ctx.lengths) if ctx.lengths else None
    frames = []
    for task, cfg in ctx.configs.items():
        model = ctx.models[task]
        trained = cfg.task.build(1, seed=0).length
        top = longest if longest is not None else trained + max(ctx.added)
        if top > model.cfg.n_ctx:  # a model trained before n_ctx became 2,048: rotary tables only
            extend_context(model, top)
        scorer = _fast_scorer(ctx.out / task, model, top)
        frames.append(
            evaluate(
                scorer, cfg.task, lengths=ctx.lengths, added=ctx.added, extend=ctx.extend, n=ctx.n,
                progress=ctx.progress,
            )  # fmt: skip
        )
    ctx.tables["accuracy"] = pd.concat(frames, ignore_index=True)
    ctx.files.append(write_csv(ctx.out / ACCURACY_FILE, ctx.tables["accuracy"]))
    print(f"\naccuracy by task, length and hop ({ctx.n} prompts per length, {ctx.extend} protocol; trained at length 17):")
    print(accuracy_table(ctx.tables["accuracy"]).to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    r1 = r1_comparison(ctx.tables["accuracy"])
    if not r1.empty:
        ctx.tables["r1"] = r1
        print(
            "\nR1 against PosSym-2026 Fig. 5B (accuracy vs tokens added, prefix protocol; paper read to +-0.02, "
            "verdict allows that plus 2 binomial SE; the paper's model is 12 layers x 6,750 updates, this one the cpu preset):"
        )
        print(r1.to_string(index=False, float_format=lambda x: f"{x:.3f}"))


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
        every = max(1, len(cfg.checkpoint_steps) // (REPORT_CHECKPOINTS - 1))
        steps = sorted({*cfg.checkpoint_steps[every - 1 :: every][: REPORT_CHECKPOINTS - 1], cfg.steps})
        dynamics = track_heads(
            ctx.out / task, n_prompts=CLASSIFY_PROMPTS, seed=DEMO_PROMPT_SEED, steps=steps, progress=False
        )
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
    lengths = None if args.lengths is None else tuple(parse_int_list(args.lengths, name="--lengths"))
    added = None if lengths is not None else tuple(parse_int_list(args.added, name="--added", low=0))
    if added is not None and len(set(added)) != len(added):
        raise HeadkitError(f"--added {args.added} repeats a value: give each once")
    ctx = DemoContext(
        out=Path(args.out),
        steps_scale=args.steps_scale,
        lengths=lengths,
        added=added,
        extend=args.extend,
        n=args.n,
        progress=not args.no_progress,
        preset=args.preset,
        parallel=not args.serial,
    )
    check_output_path(ctx.out, directory=True)  # writable, not inside a run's own files or a checkpoint
    for task in DEMO_TASKS:  # every check before any training
        cfg = demo_config(task, steps_scale=ctx.steps_scale, preset=ctx.preset)
        trained = cfg.task.build(1, seed=0).length
        option, values = ("--lengths", lengths) if lengths is not None else ("--added", added)
        totals = lengths if lengths is not None else tuple(trained + a for a in added)
        too_long = [(v, t) for v, t in zip(values, totals) if t > cfg.model.n_ctx]
        if too_long:
            raise HeadkitError(
                f"{option} {too_long[0][0]} exceeds the {task} model's context n_ctx={cfg.model.n_ctx}: "
                f"allowed lengths are 1..{cfg.model.n_ctx}"
            )
        for value, length in zip(values, totals):  # the task's own limits (e.g. a minimum length): one prompt each
            try:
                cfg.task.build(1, seed=0, length=length, extend=args.extend)
            except HeadkitError as exc:
                raise HeadkitError(f"{option} {value}: the {task} task cannot build prompts of it: {exc}") from None
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
        "--added",
        default=",".join(map(str, DEMO_ADDED)),
        help="tokens added to the trained 17, the paper's x-axis (default 0,46,96,296,996)",
    )
    p.add_argument("--lengths", default=None, help="total evaluation lengths instead of --added, e.g. 17,33,65")
    p.add_argument(
        "--extend", choices=["prefix", "window"], default="prefix",
        help="how longer prompts are made: prefix (PosSym-2026's, default) or window (headkit's harder variant)",
    )  # fmt: skip
    p.add_argument("--n", type=positive_int, default=512, help="evaluation prompts per length (default 512)")
    p.add_argument("--preset", choices=["cpu", "paper"], default="cpu", help="training preset (default cpu; paper is for a GPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--serial", action="store_true",
        help="train the two models one after the other (default: at once, one process each, given two cores)",
    )  # fmt: skip
    add_threads_argument(p)
    p.set_defaults(func=_demo)
