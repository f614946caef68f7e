"""``headkit classify``, ``headkit dynamics``, ``headkit discrepancy``: head scores from the shell.

- ``classify RUN_DIR [--task T] [--n-prompts N] [--seed S] --out heads.csv``: the
  head census (`headkit.scores.census.head_census`) of a run's latest checkpoint,
  on ``N`` prompts of the run's own task (``--task`` names another trainable
  task, with its default parameters). All composition kinds by default.
- ``classify --gptj PATH [--n-prompts N] --out heads.csv``: the same for a
  pretrained GPT-J (`headkit.loading.load_gptj`). When PATH holds a tokenizer the
  task prompts are IOI sentences (`headkit.tasks.ioi_task`) and the heads are also
  classified positional/symbolic; without one only the token-free scores are
  filled (detectors on repeated random tokens, induction, copying). Composition
  is off by default here (``--composition k`` etc. turns it on: it costs about
  ``(n_layers · n_heads)² · d_model · d_head²`` operations per kind).
- ``dynamics RUN_DIR --out dynamics.csv``: `headkit.scores.dynamics.track_heads`
  over every checkpoint of the run.
- ``discrepancy RUN_DIR --lengths 17,33,65 --out disc.csv``: Δ(n) per head and
  length (`headkit.scores.discrepancy.discrepancy`) for the latest checkpoint.

Each command checks its arguments first, writes its CSV atomically and prints a
compact table; bad input is one ``headkit: error:`` line and exit code 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from headkit.checks import check_heads, parse_heads, parse_int_list
from headkit.errors import HeadkitError
from headkit.io import write_csv

CLASSIFY_SHOWN = [
    "layer", "head", "label", "purity", "positional_score", "symbolic_score",
    "previous_token", "induction_score", "copying_score",
]  # fmt: skip
DYNAMICS_SHOWN = ["step", "layer", "head", "label", "purity", "positional_score", "symbolic_score", "accuracy"]


def _check_count(option: str, value: int) -> int:
    if value < 1:
        raise HeadkitError(f"{option} {value} is out of range: allowed 1 or more")
    return value


def _check_out(out: str) -> Path:
    path = Path(out)
    if path.is_dir():
        raise HeadkitError(f"--out {path} is a directory: give a CSV file name")
    return path


def _print_table(frame: pd.DataFrame, columns: list[str], *, max_rows: int = 60) -> None:
    shown = frame[[c for c in columns if c in frame.columns]]
    print(shown.to_string(index=False, max_rows=max_rows, float_format=lambda x: f"{x:.3f}"))


def _composition_kinds(text: str | None, *, default: tuple[str, ...]) -> tuple[str, ...]:
    if text is None:
        return default
    if text.strip() == "none":
        return ()
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in ("q", "k", "v")]
    if bad or not kinds:
        raise HeadkitError(f"--composition {text!r}: allowed a list of q, k, v (e.g. k or q,k,v) or none")
    return kinds


def _latest(run_dir: str):
    """The latest checkpoint of a run directory (or a checkpoint directory itself)."""
    from headkit.runs import open_checkpoint

    return open_checkpoint(run_dir)


def _task_of(ckpt: Any, name: str | None):
    """The run's own TaskSpec, or the named trainable task with default parameters."""
    from headkit.tasks import BUILDERS, TaskSpec

    if name is None or (ckpt.task is not None and ckpt.task.name == name):
        if ckpt.task is None:
            raise HeadkitError(f"checkpoint {ckpt.path} records no task: pass --task ({', '.join(BUILDERS)})")
        return ckpt.task
    if name not in BUILDERS:
        raise HeadkitError(f"--task {name!r} is unknown: allowed {', '.join(BUILDERS)}")
    return TaskSpec(name)


def _classify_run(args: argparse.Namespace, kinds: tuple[str, ...]) -> tuple[str, pd.DataFrame]:
    from headkit.scores.census import head_census

    ckpt = _latest(args.run_dir)
    task = _task_of(ckpt, args.task)
    tokens = task.build(args.n_prompts, seed=args.seed).tokens.to(ckpt.model.cfg.device)
    census = head_census(ckpt.model, tokens, seed=args.seed, composition_kinds=kinds)
    return f"{task.name} model at step {ckpt.step} ({ckpt.path}), {args.n_prompts} prompts", census


def _classify_gptj(args: argparse.Namespace, kinds: tuple[str, ...]) -> tuple[str, pd.DataFrame]:
    from headkit.loading import load_gptj
    from headkit.scores.census import head_census

    model = load_gptj(args.gptj, dtype=args.dtype, device=args.device)
    tokenizer = model.tokenizer
    if tokenizer is None:
        census = head_census(model, None, n_random=args.n_prompts, seed=args.seed, composition_kinds=kinds)
        return f"{args.gptj}: no tokenizer, repeated random tokens only", census
    from headkit.tasks.ioi import ioi_task

    batch = ioi_task(args.n_prompts, seed=args.seed, tokenizer=tokenizer)
    census = head_census(
        model,
        batch.tokens.to(model.cfg.device),
        n_random=args.n_prompts,
        seed=args.seed,
        vocab_range=(0, min(len(tokenizer), model.cfg.d_vocab)),  # ids the tokenizer can produce
        bos_id=tokenizer.bos_token_id,
        composition_kinds=kinds,
    )
    return f"{args.gptj}: {args.n_prompts} IOI prompts", census


def _classify(args: argparse.Namespace) -> int:
    _check_count("--n-prompts", args.n_prompts)
    out = _check_out(args.out)
    if (args.run_dir is None) == (args.gptj is None):
        raise HeadkitError("give exactly one of RUN_DIR (a headkit run) or --gptj PATH (a pretrained GPT-J)")
    if args.gptj is not None and args.task is not None:
        raise HeadkitError("--task applies to a RUN_DIR, not to --gptj")
    if args.run_dir is not None:
        title, census = _classify_run(args, _composition_kinds(args.composition, default=("q", "k", "v")))
    else:
        title, census = _classify_gptj(args, _composition_kinds(args.composition, default=()))
    write_csv(out, census)
    print(f"head census of {title}:")
    _print_table(census, CLASSIFY_SHOWN)
    print(f"wrote {len(census)} rows to {out}")
    return 0


def _dynamics(args: argparse.Namespace) -> int:
    from headkit.scores.dynamics import track_heads

    _check_count("--n-prompts", args.n_prompts)
    _check_count("--eval-n", args.eval_n)
    out = _check_out(args.out)
    steps = None if args.steps is None else parse_int_list(args.steps, name="--steps", low=0)
    task = None
    if args.task is not None:
        from headkit.tasks import BUILDERS, TaskSpec

        if args.task not in BUILDERS:
            raise HeadkitError(f"--task {args.task!r} is unknown: allowed {', '.join(BUILDERS)}")
        task = TaskSpec(args.task)
    if not Path(args.run_dir).is_dir():
        raise HeadkitError(f"run directory {args.run_dir} does not exist")
    table = track_heads(
        args.run_dir,
        n_prompts=args.n_prompts,
        seed=args.seed,
        steps=steps,
        task=task,
        eval_n=args.eval_n,
        progress=not args.no_progress,
    )
    write_csv(out, table)
    print(f"heads of {args.run_dir} at {table.step.nunique()} checkpoints:")
    _print_table(table, DYNAMICS_SHOWN + [c for c in table.columns if c.startswith("accuracy_hop")])
    print(f"wrote {len(table)} rows to {out}")
    return 0


def _discrepancy(args: argparse.Namespace) -> int:
    from headkit.scores.discrepancy import discrepancy

    _check_count("--n-prompts", args.n_prompts)
    out = _check_out(args.out)
    lengths = parse_int_list(args.lengths, name="--lengths", low=2)
    ckpt = _latest(args.run_dir)
    heads = None if args.heads is None else check_heads(ckpt.model, parse_heads(args.heads))
    task = _task_of(ckpt, args.task)
    table = discrepancy(ckpt.model, task, lengths=lengths, n=args.n_prompts, seed=args.seed, heads=heads)
    write_csv(out, table)
    print(f"discrepancy of the {task.name} model at step {ckpt.step} (largest minus second-largest logit):")
    wide = table.pivot(index=["layer", "head"], columns="length", values="discrepancy").reset_index()
    wide.columns = [str(c) if not isinstance(c, str) else c for c in wide.columns]
    _print_table(wide, list(wide.columns))
    print(f"wrote {len(table)} rows to {out}")
    return 0


def _common(parser: argparse.ArgumentParser, *, n_prompts: int) -> None:
    parser.add_argument("--n-prompts", type=int, default=n_prompts, help=f"prompts to score (default {n_prompts})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompts (default 0)")
    parser.add_argument("--out", required=True, help="CSV file to write")


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "classify": _classify,
    "dynamics": _dynamics,
    "discrepancy": _discrepancy,
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("classify", help="census of every head: detectors, circuits, positional/symbolic")
    p.add_argument("run_dir", nargs="?", help="a run directory of `headkit train` (its latest checkpoint)")
    p.add_argument("--gptj", help="a pretrained GPT-J directory or cached hub id, instead of RUN_DIR")
    p.add_argument("--task", help="task of the prompts (default: the run's own task)")
    p.add_argument("--composition", help="composition kinds: q,k,v (run default) or none (--gptj default)")
    p.add_argument("--dtype", default="float32", help="--gptj weights dtype: float32, float16, bfloat16")
    p.add_argument("--device", help="--gptj device (default: TransformerLens's choice)")
    _common(p, n_prompts=64)
    p.set_defaults(func=COMMANDS["classify"])

    p = subparsers.add_parser("dynamics", help="positional/symbolic heads and accuracy at every checkpoint")
    p.add_argument("run_dir", help="a run directory of `headkit train`")
    p.add_argument("--steps", help="checkpoint steps to use, e.g. 100,200 (default: all)")
    p.add_argument("--task", help="task of the prompts (default: each checkpoint's own task)")
    p.add_argument("--eval-n", type=int, default=512, help="prompts of the accuracy evaluation (default 512)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _common(p, n_prompts=64)
    p.set_defaults(func=COMMANDS["dynamics"])

    p = subparsers.add_parser("discrepancy", help="largest minus second-largest attention logit per head and length")
    p.add_argument("run_dir", help="a run directory of `headkit train` (its latest checkpoint)")
    p.add_argument("--lengths", required=True, help="prompt lengths, e.g. 17,33,65")
    p.add_argument("--heads", help="heads as LAYER.HEAD[,LAYER.HEAD...] (default: all)")
    p.add_argument("--task", help="task of the prompts (default: the run's own task)")
    _common(p, n_prompts=64)
    p.set_defaults(func=COMMANDS["discrepancy"])
