"""``headkit classify``, ``headkit dynamics``, ``headkit discrepancy``: head scores from the shell.

- ``classify RUN_DIR [--task T] [--n-prompts N] [--seed S] --out heads.csv``: the
  head census (`headkit.scores.census.head_census`) of a run's latest checkpoint,
  on ``N`` prompts of the run's own task (``--task`` names another trainable
  task, with its default parameters). All composition kinds by default.
- ``classify --model DIR [--n-prompts N] --out heads.csv`` (``--gptj`` is an
  alias): the same for a pretrained model of any architecture
  `headkit.pretrained.load_pretrained` loads. When DIR holds a tokenizer the
  task prompts are IOI sentences (`headkit.tasks.ioi_task`) and the heads are also
  classified positional/symbolic; without one only the token-free scores are
  filled (detectors on repeated random tokens, induction, copying). Composition
  is off by default here (``--composition k`` etc. turns it on: it costs about
  ``(n_layers · n_heads)² · d_model · d_head²`` operations per kind).
- ``dynamics RUN_DIR --out dynamics.csv``: `headkit.scores.dynamics.track_heads`
  over every checkpoint of the run.
- ``discrepancy RUN_DIR --lengths 17,33,65 --out disc.csv``: Δ(n) per head and
  length (`headkit.scores.discrepancy.discrepancy`) for the latest checkpoint;
  with ``--model DIR`` instead, for a pretrained model on a natural-language
  suite (``--task number|letter|duplicate``, `headkit.tasks.natural`; lengths
  count the whole prompt, BOS and frame included).

Each command checks its arguments first (``--out`` writable and not a run's own
file, seed, device), writes its CSV atomically and prints a compact table; bad
input is one ``headkit: error:`` line and exit code 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from headkit.checks import check_heads, check_output_path, parse_heads, parse_int_list
from headkit.cli import args as types
from headkit.errors import HeadkitError
from headkit.io import write_csv
from headkit.threads import add_threads_argument, use_threads

if TYPE_CHECKING:  # pandas, torch and TransformerLens load when a command runs, not for --help
    import pandas as pd

CLASSIFY_SHOWN = [
    "layer", "head", "label", "purity", "positional_score", "symbolic_score",
    "previous_token", "induction_score", "copying_score",
]  # fmt: skip
PER_HOP_SHOWN = ["hop", "layer", "head", "label", "pure_paper_0.1", "positional_score", "symbolic_score", "n_prompts"]
DYNAMICS_SHOWN = ["step", "layer", "head", "label", "purity", "positional_score", "symbolic_score", "accuracy"]


def _check_count(option: str, value: int) -> int:
    if value < 1:
        raise HeadkitError(f"{option} {value} is out of range: allowed 1 or more")
    return value


def _check_out(args: argparse.Namespace) -> Path:
    """``--out``, refused before any work if it would overwrite a run's files or an input, or is not writable."""
    inputs = [p for p in (getattr(args, "run_dir", None), getattr(args, "model", None)) if p is not None]
    return check_output_path(args.out, inputs=[p for p in inputs if Path(p).exists()])


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


def _check_task_name(name: str | None) -> None:
    from headkit.tasks import BUILDERS

    if name is not None and name not in BUILDERS:
        raise HeadkitError(f"--task {name!r} is unknown: allowed {', '.join(BUILDERS)}")


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
    from headkit.scores.positional_symbolic import classify_heads_by_hop

    ckpt = _latest(args.run_dir)
    task = _task_of(ckpt, args.task)
    batch = task.build(args.n_prompts, seed=args.seed).to(ckpt.model.cfg.device)
    if args.per_hop is not None and "chain" not in batch.positions:
        raise HeadkitError(f"--per-hop needs a pointer-chain task (number, letter); {task.name} has no hops")
    options = {"swap": _swap_mode(ckpt.model, args.swap)}
    census = head_census(ckpt.model, batch.tokens, seed=args.seed, composition_kinds=kinds, classify_options=options)
    if args.per_hop is not None:
        hops = classify_heads_by_hop(ckpt.model, batch, **options)
        write_csv(args.per_hop, hops)
        print(f"heads at each hop's pointer ({options['swap']} swaps):")
        _print_table(hops, PER_HOP_SHOWN)
        print(f"wrote {len(hops)} rows to {args.per_hop}")
    return f"{task.name} model at step {ckpt.step} ({ckpt.path}), {args.n_prompts} prompts", census


def _classify_model(args: argparse.Namespace, kinds: tuple[str, ...]) -> tuple[str, pd.DataFrame]:
    from headkit.pretrained import load_pretrained
    from headkit.scores.census import head_census

    model = load_pretrained(args.model, dtype=args.dtype, device=args.device)
    tokenizer = model.tokenizer
    if tokenizer is None:
        census = head_census(model, None, n_random=args.n_prompts, seed=args.seed, composition_kinds=kinds)
        return f"{args.model}: no tokenizer, repeated random tokens only", census
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
        classify_options={"swap": _swap_mode(model, args.swap)},
    )
    return f"{args.model}: {args.n_prompts} IOI prompts", census


def _classify(args: argparse.Namespace) -> int:
    _check_count("--n-prompts", args.n_prompts)
    out = _check_out(args)
    if (args.run_dir is None) == (args.model is None):
        raise HeadkitError("give exactly one of RUN_DIR (a headkit run) or --model DIR (a pretrained model)")
    if args.model is not None and args.task is not None:
        raise HeadkitError("--task applies to a RUN_DIR, not to --model")
    _check_task_name(args.task)
    if args.model is not None and args.per_hop is not None:
        raise HeadkitError("--per-hop applies to a RUN_DIR of a pointer-chain task, not to --model")
    if args.per_hop is not None:
        inputs = [p for p in (args.run_dir, args.model) if p is not None and Path(p).exists()]
        args.per_hop = check_output_path(args.per_hop, inputs=inputs + [out], option="--per-hop")
    use_threads(args.threads)
    if args.run_dir is not None:
        title, census = _classify_run(args, _composition_kinds(args.composition, default=("q", "k", "v")))
    else:
        title, census = _classify_model(args, _composition_kinds(args.composition, default=()))
    write_csv(out, census)
    print(f"head census of {title}:")
    _print_table(census, CLASSIFY_SHOWN)
    print(f"wrote {len(census)} rows to {out}")
    return 0


def _dynamics(args: argparse.Namespace) -> int:
    _check_count("--n-prompts", args.n_prompts)
    _check_count("--eval-n", args.eval_n)
    out = _check_out(args)
    steps = None if args.steps is None else parse_int_list(args.steps, name="--steps", low=0)
    _check_task_name(args.task)
    task = None
    if args.task is not None:
        from headkit.tasks import TaskSpec

        task = TaskSpec(args.task)
    if not Path(args.run_dir).is_dir():
        raise HeadkitError(f"run directory {args.run_dir} does not exist")
    use_threads(args.threads)
    from headkit.scores.dynamics import track_heads

    table = track_heads(
        args.run_dir,
        n_prompts=args.n_prompts,
        seed=args.seed,
        steps=steps,
        task=task,
        eval_n=args.eval_n,
        classify_options={"swap": "residual" if args.swap == "auto" else args.swap},  # trained runs: rotary
        progress=not args.no_progress,
    )
    write_csv(out, table)
    print(f"heads of {args.run_dir} at {table.step.nunique()} checkpoints:")
    _print_table(table, DYNAMICS_SHOWN + [c for c in table.columns if c.startswith("accuracy_hop")])
    print(f"wrote {len(table)} rows to {out}")
    return 0


def _model_and_suite(args: argparse.Namespace):
    """(pretrained model, its natural-language suite as a TaskSpec-like, title) for ``--model``."""
    from headkit.pretrained import load_pretrained, require_tokenizer
    from headkit.tasks.natural import NaturalSpec

    if args.task not in (None, "number", "letter", "duplicate"):
        raise HeadkitError(f"--task {args.task!r} with --model: allowed number, letter, duplicate (prompt suites)")
    suite = NaturalSpec(args.task or "number", require_tokenizer(args.model))
    model = load_pretrained(args.model, device=args.device)
    return model, suite, f"{args.model} on the {suite.name} suite"


def _discrepancy(args: argparse.Namespace) -> int:
    _check_count("--n-prompts", args.n_prompts)
    out = _check_out(args)
    lengths = parse_int_list(args.lengths, name="--lengths", low=2)
    parsed = None if args.heads is None else parse_heads(args.heads)
    if (args.run_dir is None) == (args.model is None):
        raise HeadkitError("give exactly one of RUN_DIR (a headkit run) or --model DIR (a pretrained model)")
    if args.run_dir is not None:
        _check_task_name(args.task)
    use_threads(args.threads)
    from headkit.scores.discrepancy import discrepancy

    if args.model is not None:
        model, task, what = _model_and_suite(args)
    else:
        ckpt = _latest(args.run_dir)
        model, task = ckpt.model, _task_of(ckpt, args.task)
        what = f"the {task.name} model at step {ckpt.step}"
    heads = None if parsed is None else check_heads(model, parsed)
    table = discrepancy(model, task, lengths=lengths, n=args.n_prompts, seed=args.seed, heads=heads)
    write_csv(out, table)
    print(f"discrepancy of {what} (largest minus second-largest logit):")
    wide = table.pivot(index=["layer", "head"], columns="length", values="discrepancy").reset_index()
    wide.columns = [str(c) if not isinstance(c, str) else c for c in wide.columns]
    _print_table(wide, list(wide.columns))
    print(f"wrote {len(table)} rows to {out}")
    return 0


def _common(parser: argparse.ArgumentParser, *, n_prompts: int) -> None:
    parser.add_argument("--n-prompts", type=int, default=n_prompts, help=f"prompts to score (default {n_prompts})")
    parser.add_argument("--seed", type=types.seed, default=0, help="seed of the prompts, 0..2**64-1 (default 0)")
    parser.add_argument("--out", required=True, help="CSV file to write")
    add_threads_argument(parser)


def _swap_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--swap", choices=["auto", "residual", "tokens"], default="auto",
        help="swap metric: residual (the paper's layer-local swap), tokens (end to end), or auto "
        "(default: residual, except tokens for models with absolute position embeddings, e.g. GPT-2)",
    )  # fmt: skip


def _swap_mode(model: Any, choice: str) -> str:
    """``--swap auto``: the paper's residual swap where the model allows it, else tokens."""
    if choice != "auto":
        return choice
    from headkit.scores.swap_engine import RELATIVE_POSITION_TYPES

    return "residual" if model.cfg.positional_embedding_type in RELATIVE_POSITION_TYPES else "tokens"


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "classify": _classify,
    "dynamics": _dynamics,
    "discrepancy": _discrepancy,
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("classify", help="census of every head: detectors, circuits, positional/symbolic")
    p.add_argument("run_dir", nargs="?", help="a run directory of `headkit train` (its latest checkpoint)")
    p.add_argument("--model", "--gptj", dest="model", help="a pretrained model directory or cached hub id "
                   "(any architecture of headkit.pretrained; --gptj is an alias), instead of RUN_DIR")
    p.add_argument("--task", help="task of the prompts (default: the run's own task)")
    p.add_argument("--composition", help="composition kinds: q,k,v (run default) or none (--model default)")
    p.add_argument("--dtype", default="float32", help="--model weights dtype: float32, float16, bfloat16")
    p.add_argument("--device", type=types.device, help="--model device (default: TransformerLens's choice)")
    p.add_argument("--per-hop", help="also write the classification at each hop's pointer to this CSV")
    _swap_option(p)
    _common(p, n_prompts=64)
    p.set_defaults(func=COMMANDS["classify"])

    p = subparsers.add_parser("dynamics", help="positional/symbolic heads and accuracy at every checkpoint")
    p.add_argument("run_dir", help="a run directory of `headkit train`")
    p.add_argument("--steps", help="checkpoint steps to use, e.g. 100,200 (default: all)")
    p.add_argument("--task", help="task of the prompts (default: each checkpoint's own task)")
    p.add_argument("--eval-n", type=int, default=512, help="prompts of the accuracy evaluation (default 512)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _swap_option(p)
    _common(p, n_prompts=64)
    p.set_defaults(func=COMMANDS["dynamics"])

    p = subparsers.add_parser("discrepancy", help="largest minus second-largest attention logit per head and length")
    p.add_argument("run_dir", nargs="?", help="a run directory of `headkit train` (its latest checkpoint)")
    p.add_argument("--model", help="a pretrained model directory instead of RUN_DIR (prompts: --task number|letter|duplicate in text)")
    p.add_argument("--device", help="--model device (default: TransformerLens's choice)")
    p.add_argument("--lengths", required=True, help="prompt lengths, e.g. 17,33,65")
    p.add_argument("--heads", help="heads as LAYER.HEAD[,LAYER.HEAD...] (default: all)")
    p.add_argument("--task", help="task of the prompts (default: the run's own task; --model: number)")
    _common(p, n_prompts=64)
    p.set_defaults(func=COMMANDS["discrepancy"])
