"""The demo: positional vs symbolic heads (PosSym-2026), end to end on a CPU (``headkit demo``).

`run_demo` trains the default number-task and letter-task models
(`headkit.training.config.default_config`) into ``OUT/number`` and ``OUT/letter``, evaluates
both with PosSym-2026's length protocol (Fig. 5B: +0, +46, +96, +296, +996 tokens
added *before* the 17-token prompt, ``extend="prefix"``; ``extend="window"`` is
headkit's harder variant, ``lengths`` gives total lengths instead), writes
``OUT/accuracy.csv`` (columns ``task, extend, length, added, hop, n, accuracy``) and,
for the paper's protocol, the R1 table beside the paper's numbers with a verdict
(`headkit.report.paper.r1_comparison`). Then it classifies every head (``OUT/heads_<task>.csv``,
`classify_heads`), mean-ablates every head and measures the accuracy drop per hop
(``OUT/ablation_<task>.csv``, `ablation_sweep_by_hop`) and writes ``OUT/report.html``,
one self-contained page with every figure embedded (the sections of ``headkit report``,
for both tasks). It returns a `DemoResult`: every table and file, by name.

A run already complete in OUT (same config, final checkpoint present) is reused, an
interrupted one is resumed; a run with a different config is an error, never
overwritten. ``steps_scale`` shrinks or stretches every schedule length (steps,
warm-up, curriculum, evaluation and checkpoint intervals), e.g. 0.1 for a smoke test.

The demo is a list of named steps, `DEMO_STEPS`, each a function of the options and
the result so far. What a step reports (tables, timings) goes to ``say`` (the command
line passes ``tqdm.write``; the default logs it): the library never prints.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, cast

from headkit.checks import check_int, check_length, check_positive_float
from headkit.errors import HeadkitError
from headkit.evaluation import EXTENDS, accuracy_table, evaluate
from headkit.gptj_hf import HFLogits
from headkit.interventions import metrics
from headkit.interventions.ablation import ablation_sweep_by_hop
from headkit.io import write_csv, write_text
from headkit.loading.hf import no_progress_bar
from headkit.models import extend_context
from headkit.plots import model_description
from headkit.report import sections as build
from headkit.report.page import report_html
from headkit.report.paper import r1_comparison, r2_comparison, r2_verdict
from headkit.report.run import run_sections
from headkit.report.sections import delta_by_hop
from headkit.scores.dynamics import track_heads
from headkit.scores.positional_symbolic import classify_heads
from headkit.training.config import TrainConfig, default_config
from headkit.training.layout import RunLock, check_output_path, resolve_checkpoint, run_status
from headkit.training.loop import train_or_reuse
from headkit.training.runs import existing_run

if TYPE_CHECKING:
    import pandas as pd

    from headkit.model_types import Model

logger = logging.getLogger(__name__)

DEMO_TASKS = ("number", "letter")
DEMO_ADDED = (0, 46, 96, 296, 996)  # PosSym-2026 Fig. 5B's x-axis: tokens added
ACCURACY_FILE = "accuracy.csv"
# intermediate checkpoints (at steps_scale 1; the final step is always saved): an interrupted demo
# resumes, and analyses R3 (head roles over training) reads them; dense early, where roles change fastest
DEMO_CHECKPOINTS = (100, 200, 300, 400, 600, 800, 1000, 1200, 1400, 1600, 1800)
DEMO_EVAL_EVERY = 50  # a metrics row (accuracy per hop) every 50 updates: R3's step at 90 %
DEMO_PROMPT_SEED = 2024  # prompts of the classification and ablation steps (disjoint from training seeds)
CLASSIFY_PROMPTS = 64  # prompts per task for the swap metric
ABLATION_PROMPTS = 512  # prompts per task for the ablation sweep
PATCH_PROMPTS = 256  # prompts per task of the report's activation patching

Say = Callable[[str], None]


@dataclass(frozen=True)
class DemoOptions:
    """What the demo does; checked on construction (the task-dependent checks: `check_options`).

    ``run_demo(out, DemoOptions(steps_scale=0.1))``; the command line's flags are its fields
    (``--eval-n`` is ``eval_n``).
    """

    steps_scale: float = 1.0  # multiplier of every schedule length
    lengths: tuple[int, ...] | None = None  # total evaluation lengths, or None: use ``added``
    added: tuple[int, ...] | None = DEMO_ADDED  # tokens added to the trained length (the paper's x-axis)
    extend: str = "prefix"  # "prefix" (the paper's protocol) or "window" (headkit's variant)
    eval_n: int = 512  # evaluation prompts per length (`evaluate`'s n_prompts)
    progress: bool = True  # show progress bars
    preset: str = "cpu"  # training preset (headkit.training.PRESETS)
    parallel: bool = True  # train both runs at once (one process each) when two cores are idle
    device: str | None = None  # training and analysis device (None: the preset's, "auto")

    def __post_init__(self) -> None:
        check_positive_float("steps_scale", self.steps_scale)
        check_int("eval_n", self.eval_n)

        if self.extend not in EXTENDS:
            raise HeadkitError(f"extend={self.extend!r} is unknown: allowed {', '.join(EXTENDS)}")
        if (self.lengths is None) == (self.added is None):
            raise HeadkitError("give lengths or added, not both")
        option, values = ("--lengths", self.lengths) if self.lengths is not None else ("--added", self.added)
        assert values is not None  # exactly one of lengths, added (checked above)
        for value in values:
            check_int(option, value, low=1 if option == "--lengths" else 0)
        if len(set(values)) != len(values):
            raise HeadkitError(f"{option} {','.join(map(str, values))} repeats a value: give each once")


@dataclass
class DemoResult:
    """What the demo made: configs and models per task, every table, the files written."""

    out: Path  # demo directory
    configs: dict[str, TrainConfig] = field(default_factory=dict)  # task -> its training config
    models: dict[str, Model] = field(default_factory=dict)  # task -> trained model
    accuracy: pd.DataFrame | None = None  # evaluate's table, both tasks
    r1: pd.DataFrame | None = None  # R1 beside PosSym-2026 (prefix protocol at the paper's lengths), else None
    heads: dict[str, pd.DataFrame] = field(default_factory=dict)  # task -> classify_heads table
    r2: pd.DataFrame | None = None  # pure heads at gamma 0.1 beside PosSym-2026's (headkit.report.paper.r2_comparison)
    ablation: dict[str, pd.DataFrame] = field(default_factory=dict)  # task -> ablation_sweep_by_hop table
    report: Path | None = None  # OUT/report.html
    files: list[Path] = field(default_factory=list)  # files written, in order


def demo_config(task: str, *, steps_scale: float = 1.0, preset: str = "cpu") -> TrainConfig:
    """The demo's training config of a task: the preset's, a metrics row every
    `DEMO_EVAL_EVERY` updates and checkpoints at `DEMO_CHECKPOINTS` (in proportion
    to the preset's steps), every schedule length scaled. These are the runs
    analyses R1-R4 read (``analyses/r1_length.py``: ``--runs OUT``)."""
    import math

    if not (math.isfinite(steps_scale) and steps_scale > 0):
        raise HeadkitError(f"--steps-scale={steps_scale} must be a positive number")
    base = default_config(task, preset=preset)

    def scale(value: float) -> int:
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


def demo_configs(options: DemoOptions) -> dict[str, TrainConfig]:
    """Task -> training config of the demo (`demo_config`, on ``options.device`` when given)."""
    configs = {task: demo_config(task, steps_scale=options.steps_scale, preset=options.preset) for task in DEMO_TASKS}
    if options.device is not None:
        configs = {task: dataclasses.replace(cfg, device=options.device) for task, cfg in configs.items()}
    return configs


def trained_length(cfg: TrainConfig) -> int:
    """The prompt length a run trains at (the task registry's, `TaskSpec.length`)."""
    return cfg.task.length


def check_options(out: str | os.PathLike, options: DemoOptions) -> Path:
    """Every check of a demo before any training: ``out`` writable, each evaluation length
    within the model's context and allowed by its task's parameters (no prompt is built)."""
    out = check_output_path(out, directory=True)  # writable, not inside a run's own files or a checkpoint
    option, values = ("--lengths", options.lengths) if options.lengths is not None else ("--added", options.added)
    assert values is not None  # exactly one of lengths, added (DemoOptions checks it)
    for task, cfg in demo_configs(options).items():
        trained = trained_length(cfg)
        totals = values if options.lengths is not None else tuple(trained + a for a in values)
        for value, length in zip(values, totals):
            check_length(length, cfg.model.n_ctx, label=f"{option} {value}", whose=f"the {task} model's")
        for value, length in zip(values, totals):  # the task's own limits (e.g. a minimum length)
            try:
                cfg.task.replace(length=length, extend=options.extend)
            except HeadkitError as exc:
                raise HeadkitError(f"{option} {value}: the {task} task cannot build prompts of it: {exc}") from None
    return out


# --------------------------------------------------------------------------- steps


def _train_in_child(cfg_data: dict, run_dir: str) -> float:
    """Worker of `train_in_parallel`: one run on one torch thread; returns its wall seconds."""
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    train_or_reuse(TrainConfig.from_dict(cfg_data), run_dir, progress=False)
    return time.perf_counter() - started


def train_in_parallel(configs: dict[str, TrainConfig], out: Path, *, say: Say = logger.info) -> dict[str, float]:
    """Train the runs that are not complete yet at the same time, one process and one
    torch thread each (the demo's models are too small to use two threads well, but two
    runs fill two cores); returns task -> wall seconds. Training is deterministic on
    the CPU, so a run trained here equals one trained alone, bit for bit."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    todo = {
        task: cfg for task, cfg in configs.items()
        if not ((out / task / "run.json").exists() and run_status(out / task).complete)
    }  # fmt: skip
    if len(todo) < 2:
        return {}
    say(f"training {', '.join(todo)} in parallel ({len(todo)} processes, 1 thread each)")
    with ProcessPoolExecutor(len(todo), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {task: pool.submit(_train_in_child, cfg.to_dict(), str(out / task)) for task, cfg in todo.items()}
        return {task: future.result() for task, future in futures.items()}


def step_train(options: DemoOptions, result: DemoResult, say: Say) -> None:
    """Train (or reuse, or resume) the number and letter models: at once (one process
    per run) when the machine has a core per run, else (or with ``parallel=False``) in turn."""

    result.configs = demo_configs(options)
    for task, cfg in result.configs.items():  # refuse foreign runs before any training
        existing_run(result.out / task, cfg)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if options.parallel and cores >= len(result.configs):  # under load too: two processes get two shares
        for task, seconds in train_in_parallel(result.configs, result.out, say=say).items():
            say(f"{task}: trained in a child process in {seconds:.0f} s")
    for task, cfg in result.configs.items():
        run_dir = result.out / task
        started = time.perf_counter()
        trained = train_or_reuse(cfg, run_dir, progress=options.progress)
        result.models[task] = trained.model
        last = trained.metrics.iloc[-1]
        say(
            f"{task}: step {trained.step}, held-out accuracy {last['accuracy']:.3f} "
            f"({time.perf_counter() - started:.0f} s here, {last['elapsed_s']:.0f} s of training in all) -> {run_dir}"
        )


def _fast_scorer(run_dir: Path, model: Model, longest: int) -> Any:
    """What scores accuracy: the run's own Hugging Face model (the same weights as ``model``,
    its logits equal TransformerLens's to 1e-4, tests/training/test_training_backend.py), whose
    scaled-dot-product attention scores 64 prompts of 1,013 tokens ~2.9x faster than
    TransformerLens on this CPU; ``model`` itself where the HF model cannot take ``longest``."""
    from transformers import GPTJForCausalLM

    with no_progress_bar():  # its bar would break the demo's own output
        hf = GPTJForCausalLM.from_pretrained(
            resolve_checkpoint(run_dir), attn_implementation="sdpa", trust_remote_code=False
        )
    if longest > hf.config.n_positions:
        return model
    # transformers' @wraps(nn.Module.to) on PreTrainedModel.to hides its signature from the type checker
    return HFLogits(hf.to(model.cfg.device).eval())  # pyright: ignore[reportArgumentType]


def _table(frame: pd.DataFrame, number: str = "{:.3f}") -> str:
    return frame.to_string(index=False, float_format=lambda x: number.format(x))


def step_evaluate(options: DemoOptions, result: DemoResult, say: Say) -> None:
    """Accuracy of both models at every length, by hop; the R1 table for the paper's protocol."""
    import pandas as pd

    frames = []
    for task, cfg in result.configs.items():
        model = result.models[task]
        top = max(options.lengths) if options.lengths else trained_length(cfg) + max(cast("tuple[int, ...]", options.added))
        if top > model.cfg.n_ctx:  # a model trained before n_ctx became 2,048: rotary tables only
            extend_context(model, top)
        scorer = _fast_scorer(result.out / task, model, top)
        frames.append(
            evaluate(
                scorer, cfg.task, lengths=options.lengths, added=options.added, extend=options.extend,
                n_prompts=options.eval_n, progress=options.progress,
            )  # fmt: skip
        )
    result.accuracy = pd.concat(frames, ignore_index=True)
    result.files.append(write_csv(result.out / ACCURACY_FILE, result.accuracy))
    say(
        f"\naccuracy by task, length and hop ({options.eval_n} prompts per length, {options.extend} protocol; "
        "trained at length 17):"
    )
    say(_table(accuracy_table(result.accuracy)))
    r1 = r1_comparison(result.accuracy)
    if not r1.empty:
        result.r1 = r1
        say(
            "\nR1 against PosSym-2026 Fig. 5B (accuracy vs tokens added, prefix protocol; paper read to +-0.02, "
            "verdict allows that plus 2 binomial SE; the paper's model is 12 layers x 6,750 updates, this one the cpu preset):"
        )
        say(_table(r1))


def step_classify(options: DemoOptions, result: DemoResult, say: Say) -> None:
    """Positional / symbolic / mixed / inactive label and purity of every head."""
    from tqdm.auto import tqdm

    for task, cfg in tqdm(result.configs.items(), desc="classify heads", unit="task", disable=not options.progress):
        tokens = cfg.task.build(CLASSIFY_PROMPTS, seed=DEMO_PROMPT_SEED).tokens
        heads = classify_heads(result.models[task], tokens)
        result.heads[task] = heads
        result.files.append(write_csv(result.out / f"heads_{task}.csv", heads))
        say(f"\n{task} heads ({CLASSIFY_PROMPTS} prompts of length {tokens.shape[1]}):")
        say(_table(heads[["layer", "head", "label", "purity", "positional_score", "symbolic_score", "signal"]], "{:.2f}"))
    _say_r2(result, say)


def _say_r2(result: DemoResult, say: Say) -> None:
    """R2: pure heads at the paper's gamma 0.1 with their layers, beside the paper's counts, and the verdict."""
    table = r2_comparison(result.heads, gamma=0.1)
    if table.empty:
        return
    result.r2 = table
    say(
        "\nR2 against PosSym-2026 (pure heads: s_pos >= 0.9 and s_sym <= 0.1 or mirrored, the paper's gamma 0.1; "
        "the paper's model has 12 one-head layers, this one n_layers):"
    )
    say(_table(table.drop(columns="verdict").assign(count=table["verdict"])))
    for task, line in r2_verdict(table, result.heads).items():
        say(f"R2 {task}: {line}")


def step_ablate(options: DemoOptions, result: DemoResult, say: Say) -> None:
    """Mean-ablate each head; accuracy drop per hop (which heads the task needs)."""
    import pandas as pd
    from tqdm.auto import tqdm

    for task, cfg in result.configs.items():
        batch = cfg.task.build(ABLATION_PROMPTS, seed=DEMO_PROMPT_SEED + 1)
        model = result.models[task]
        heads = [(layer, head) for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)]
        metric = metrics.accuracy(batch, per_example=True)
        table = pd.concat(
            [
                ablation_sweep_by_hop(model, batch, method="mean", metric=metric, heads=[head])
                for head in tqdm(heads, desc=f"ablate {task} heads", unit="head", disable=not options.progress)
            ],
            ignore_index=True,
        )
        result.ablation[task] = table
        result.files.append(write_csv(result.out / f"ablation_{task}.csv", table))
        say(f"\n{task}: accuracy change when each head is mean-ablated ({ABLATION_PROMPTS} prompts):")
        say(_table(delta_by_hop(table), "{:+.3f}"))  # one row per head, a column per hop


def _report_steps(cfg: TrainConfig) -> list[int]:
    """Every checkpoint step of the run, the final one included: a subset skipped the window where
    the number task's hops switch on (steps 400-800 of the cpu preset; issue 19)."""
    return sorted({*cfg.checkpoint_steps, cfg.steps})


def step_report(options: DemoOptions, result: DemoResult, say: Say) -> None:
    """OUT/report.html: every figure embedded (`headkit report`'s sections, both tasks)."""
    from tqdm.auto import tqdm

    models = {task: model_description(model) for task, model in result.models.items()}
    about = "; ".join(f"{task}: {models[task]}" for task in result.configs)
    shortest = min(trained_length(cfg) for cfg in result.configs.values())
    assert result.accuracy is not None, "step_evaluate runs before step_report"
    sections = [build.accuracy_section(result.accuracy, about=about, trained_length=shortest)]
    bar = tqdm(total=2 * len(result.configs), desc="report", unit="part", disable=not options.progress)
    for task, cfg in result.configs.items():
        model, named = result.models[task], f"{task} {models[task]}, step {cfg.steps}"
        dynamics = track_heads(
            result.out / task, n_prompts=CLASSIFY_PROMPTS, seed=DEMO_PROMPT_SEED, steps=_report_steps(cfg),
            progress=False,
        )  # fmt: skip
        bar.update(1)
        parts = run_sections(
            model, cfg.task.build(PATCH_PROMPTS, seed=DEMO_PROMPT_SEED + 2), heads=result.heads[task],
            dynamics=dynamics, ablation=result.ablation[task], about=named, dynamics_about=f"{task} {models[task]}",
            n_prompts=CLASSIFY_PROMPTS, ablation_prompts=ABLATION_PROMPTS, trained_length=trained_length(cfg),
        )  # fmt: skip
        bar.update(1)
        sections += [dataclasses.replace(part, title=f"{task} task: {part.title}") for part in parts]
    bar.close()
    result.report = result.out / "report.html"
    write_text(result.report, report_html("headkit demo: positional vs symbolic heads", sections, root=result.out))
    result.files.append(result.report)
    say(f"\nreport (every figure inside, works offline): {result.report}")


Step = Callable[[DemoOptions, DemoResult, Say], None]

# the demo, in order: (name, step); later analyses append theirs here
DEMO_STEPS: list[tuple[str, Step]] = [
    ("train", step_train),
    ("evaluate", step_evaluate),
    ("classify", step_classify),
    ("ablate", step_ablate),
    ("report", step_report),
]


def run_demo(out: str | os.PathLike, options: DemoOptions | None = None, *, say: Say = logger.info) -> DemoResult:
    """Run every step of `DEMO_STEPS` into ``out`` (one demo at a time there: `headkit.training.layout.RunLock`).

    ``options`` default to `DemoOptions()` (the paper's protocol, the cpu preset). Every
    option is checked first (`check_options`). ``say`` receives what the demo reports:
    step headers, tables, timings and the files written.
    """
    options = DemoOptions() if options is None else options
    result = DemoResult(out=check_options(out, options))
    started = time.perf_counter()
    with RunLock(result.out):  # one demo at a time in OUT
        for name, step in DEMO_STEPS:
            logger.info("demo step %s", name)
            say(f"== {name} ==")
            step(options, result, say)
    say(f"\ndemo finished in {time.perf_counter() - started:.0f} s; files in {result.out}:")
    for task in result.configs:
        say(f"  {result.out / task}/ (run.json, metrics.csv, checkpoints/)")
    for path in result.files:
        say(f"  {path}")
    return result
