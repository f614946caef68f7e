"""``headkit census``, ``headkit dynamics``, ``headkit discrepancy``: head scores from the shell.

- ``census RUN_DIR [--task T] [--n-prompts N] [--seed S] [--out heads.csv]``: the
  head census (`headkit.scores.census.head_census`) of a run's latest checkpoint,
  on ``N`` prompts of the run's own task (``--task`` names another trainable
  task, with its default parameters). All composition kinds by default.
- ``census --model DIR [--n-prompts N] [--out heads.csv]`` (``--gptj`` is an
  alias): the same for a pretrained model of any architecture
  `headkit.loading.pretrained.load_pretrained` loads, on IOI sentences
  (`headkit.tasks.ioi_task`) built with DIR's own tokenizer; a DIR without
  tokenizer files is refused before its weights load, naming the files looked for. Composition
  is off by default here (``--composition k`` etc. turns it on: it costs about
  ``(n_layers · n_heads)² · d_model · d_head²`` operations per kind).
- ``dynamics RUN_DIR [--eval-n N] [--out dynamics.csv]``: `headkit.scores.dynamics.track_heads`
  over every checkpoint of the run.
- ``discrepancy RUN_DIR --lengths 17,33,65 [--out disc.csv]``: Δ(n) per head and
  length (`headkit.scores.discrepancy.discrepancy`) for the latest checkpoint;
  with ``--model DIR`` instead, for a pretrained model on a natural-language
  suite (``--task number|letter|duplicate``, `headkit.tasks.natural`; lengths
  count the whole prompt, BOS and frame included).

Each command checks its arguments first, before torch is imported (RUN_DIR exists,
``--out`` writable and not a run's own file, counts, seed, device), prints a compact
table and writes the whole table as CSV (atomically) when ``--out`` is given; bad
input is one ``headkit: error:`` line and exit code 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from headkit.checks import check_heads, parse_heads, parse_int_list
from headkit.cli import args as types
from headkit.cli.threads import use_threads
from headkit.errors import HeadkitError, is_out_of_memory
from headkit.io import write_csv
from headkit.training.layout import check_output_path

TRAINED_POSITIONS = "rotary"  # every run headkit trains is a GPT-J: rotary positions (for --swap auto)

if TYPE_CHECKING:  # pandas, torch and TransformerLens load when a command runs, not for --help
    import pandas as pd

CENSUS_SHOWN = [
    "layer", "head", "label", "purity", "positional_score", "symbolic_score",
    "previous_token", "induction_score", "copying_score",
]  # fmt: skip
PER_HOP_SHOWN = ["hop", "layer", "head", "label", "pure_paper_0.1", "positional_score", "symbolic_score", "n_prompts"]
DYNAMICS_SHOWN = ["step", "layer", "head", "label", "purity", "positional_score", "symbolic_score", "accuracy"]


def _print_table(frame: pd.DataFrame, columns: list[str], *, max_rows: int = 60) -> None:
    shown = frame[[c for c in columns if c in frame.columns]]
    print(shown.to_string(index=False, max_rows=max_rows, float_format=lambda x: f"{x:.3f}"))


def _finish(table: pd.DataFrame, shown: list[str], out: Path | None) -> int:
    """Print ``shown`` columns of the table (none: already printed), write it to ``--out`` if given."""
    if shown:
        _print_table(table, shown)
    if out is not None:
        write_csv(out, table)
        print(f"wrote {len(table)} rows to {out}")
    return 0


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


def _latest(args: argparse.Namespace):
    """The latest checkpoint of RUN_DIR (or a checkpoint directory itself), on ``--device``."""
    from headkit.training.runs import open_checkpoint

    return open_checkpoint(args.run_dir, device=args.device)


def _task_of(ckpt: Any, name: str | None):
    """The run's own TaskSpec, or the named trainable task with default parameters."""
    from headkit.tasks import TaskSpec

    if name is None or (ckpt.task is not None and ckpt.task.name == name):
        if ckpt.task is None:
            raise HeadkitError(f"checkpoint {ckpt.path} records no task: pass --task ({', '.join(types.task_names())})")
        return ckpt.task
    _check_task_name(name)
    return TaskSpec(name)


def _check_task_name(name: str | None) -> None:
    """``discrepancy --task`` of a RUN_DIR (its choices depend on RUN_DIR vs --model, so no argparse choices)."""
    if name is not None and name not in types.task_names():
        raise HeadkitError(f"--task {name!r} is unknown: allowed {', '.join(types.task_names())}")


def _census_run(args: argparse.Namespace, kinds: tuple[str, ...]) -> tuple[str, pd.DataFrame]:
    from headkit.scores.census import head_census
    from headkit.scores.positional_symbolic import ClassifyOptions, classify_heads_by_hop
    from headkit.scores.swap_plan import resolve_swap

    ckpt = _latest(args)
    task = _task_of(ckpt, args.task)
    batch = task.build(args.n_prompts, seed=args.seed).to(ckpt.model.cfg.device)
    if args.per_hop is not None and "chain" not in batch.positions:
        raise HeadkitError(f"--per-hop needs a pointer-chain task (number, letter); {task.name} has no hops")
    options = ClassifyOptions(swap=resolve_swap(ckpt.model.cfg.positional_embedding_type, args.swap))
    census = head_census(ckpt.model, batch.tokens, seed=args.seed, composition_kinds=kinds, classify_options=options)
    if args.per_hop is not None:
        hops = classify_heads_by_hop(ckpt.model, batch, options)
        write_csv(args.per_hop, hops)  # checked with --out before any work
        print(f"heads at each hop's pointer ({options.swap} swaps):")
        _print_table(hops, PER_HOP_SHOWN)
        print(f"wrote {len(hops)} rows to {args.per_hop}")
    return f"{task.name} model at step {ckpt.step} ({ckpt.path}), {args.n_prompts} prompts", census


def _census_model(args: argparse.Namespace, kinds: tuple[str, ...]) -> tuple[str, pd.DataFrame]:
    from headkit.loading.pretrained import load_pretrained, require_tokenizer
    from headkit.scores.census import head_census
    from headkit.scores.positional_symbolic import ClassifyOptions
    from headkit.scores.swap_plan import resolve_swap
    from headkit.tasks.ioi import ioi_task

    require_tokenizer(args.model)  # IOI prompts need it: refused before the weights load
    model = load_pretrained(args.model, dtype=args.dtype, device=args.device)
    tokenizer = model.tokenizer
    assert tokenizer is not None  # require_tokenizer: the model directory has one

    batch = ioi_task(args.n_prompts, seed=args.seed, tokenizer=tokenizer)
    census = head_census(
        model,
        batch.tokens.to(model.cfg.device),
        n_prompts=args.n_prompts,
        seed=args.seed,
        vocab_range=(0, min(len(tokenizer), model.cfg.d_vocab)),  # ids the tokenizer can produce
        bos_id=tokenizer.bos_token_id,  # pyright: ignore[reportArgumentType]  (transformers 5 types special-token ids loosely)
        composition_kinds=kinds,
        classify_options=ClassifyOptions(swap=resolve_swap(model.cfg.positional_embedding_type, args.swap)),
    )
    return f"{args.model}: {args.n_prompts} IOI prompts", census


def _census(args: argparse.Namespace) -> int:
    types.check_run_or_model(args)
    out = types.check_csv_out(args)
    if args.model is not None and args.task is not None:
        raise HeadkitError("--task applies to a RUN_DIR, not to --model")
    if args.model is not None and args.per_hop is not None:
        raise HeadkitError("--per-hop applies to a RUN_DIR of a pointer-chain task, not to --model")
    if args.per_hop is not None:
        inputs = types.inputs_of(args) + ([] if out is None else [out])
        args.per_hop = check_output_path(args.per_hop, inputs=inputs, option="--per-hop")
    kinds = _composition_kinds(args.composition, default=("q", "k", "v") if args.run_dir is not None else ())
    use_threads(args.threads)
    of = _census_run if args.run_dir is not None else _census_model
    title, census = of(args, kinds)
    print(f"head census of {title}:")
    return _finish(census, CENSUS_SHOWN, out)


def _dynamics(args: argparse.Namespace) -> int:
    types.check_run_dir(args.run_dir)
    out = types.check_csv_out(args)
    steps = None if args.steps is None else parse_int_list(args.steps, name="--steps", low=0)
    use_threads(args.threads)
    from headkit.scores.dynamics import track_heads
    from headkit.scores.positional_symbolic import ClassifyOptions
    from headkit.scores.swap_plan import resolve_swap
    from headkit.tasks import TaskSpec

    task = None if args.task is None else TaskSpec(args.task)
    table = track_heads(
        args.run_dir,
        n_prompts=args.n_prompts,
        seed=args.seed,
        steps=steps,
        task=task,
        eval_n=args.eval_n,
        classify_options=ClassifyOptions(swap=resolve_swap(TRAINED_POSITIONS, args.swap)),
        device=args.device,
        progress=not args.no_progress,
    )
    print(f"heads of {args.run_dir} at {table.step.nunique()} checkpoints:")
    return _finish(table, DYNAMICS_SHOWN + [c for c in table.columns if c.startswith("accuracy_hop")], out)


def _model_and_suite(args: argparse.Namespace, lengths: list[int]):
    """(pretrained model, its natural-language suite as a TaskSpec-like, title) for ``--model``;
    ``lengths`` checked against the suite before the weights load."""
    from headkit.loading.pretrained import load_pretrained, require_tokenizer
    from headkit.tasks.natural import NaturalSpec

    suite = NaturalSpec(args.task or "number", require_tokenizer(args.model))
    for length in lengths:
        suite.check_length(length)
    model = load_pretrained(args.model, device=args.device)
    return model, suite, f"{args.model} on the {suite.name} suite"


def _discrepancy(args: argparse.Namespace) -> int:
    types.check_run_or_model(args)
    out = types.check_csv_out(args)
    lengths = parse_int_list(args.lengths, name="--lengths", low=2)
    parsed = None if args.heads is None else parse_heads(args.heads)
    if args.run_dir is not None:
        _check_task_name(args.task)
    elif args.task not in _MODEL_SUITES:
        raise HeadkitError(f"--task {args.task!r} with --model: allowed {', '.join(_MODEL_SUITES[1:])} (prompt suites)")
    use_threads(args.threads)
    from headkit.scores.discrepancy import discrepancy

    if args.model is not None:
        model, task, what = _model_and_suite(args, lengths)
    else:
        ckpt = _latest(args)
        model, task = ckpt.model, _task_of(ckpt, args.task)
        what = f"the {task.name} model at step {ckpt.step}"
    heads = None if parsed is None else check_heads(model, parsed)
    table = discrepancy(model, task, lengths=lengths, n_prompts=args.n_prompts, seed=args.seed, heads=heads)
    print(f"discrepancy of {what} (largest minus second-largest logit):")
    wide = table.pivot(index=["layer", "head"], columns="length", values="discrepancy").reset_index()
    wide.columns = [str(c) if not isinstance(c, str) else c for c in wide.columns]
    _print_table(wide, list(wide.columns))
    return _finish(table, [], out)


def _common(parser: argparse.ArgumentParser, *, n_prompts: int, device_help: str) -> None:
    types.add_prompts(parser, default=n_prompts, help="prompts to score")
    parser.add_argument("--seed", type=types.seed, default=0, help="seed of the prompts, 0..2**64-1 (default 0)")
    types.add_csv_out(parser)
    types.add_compute(parser, device_help=device_help)


def _swap_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--swap", choices=["auto", "residual", "tokens"], default="auto",
        help="swap metric: residual (the paper's layer-local swap), tokens (end to end), or auto "
        "(default: residual, except tokens for models with absolute position embeddings, e.g. GPT-2)",
    )  # fmt: skip


def _memory_bounded(name: str, command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``command``, with running out of memory turned into one line (as training does).

    Any other error keeps its traceback.
    """

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (MemoryError, RuntimeError) as error:
            if not is_out_of_memory(error):
                raise
            where = args.device or "the model's device"
            prompts = "--n-prompts" + (", --eval-n" if name == "dynamics" else "")
            raise HeadkitError(
                f"out of memory in {name} ({args.n_prompts} prompts on {where}): use fewer prompts ({prompts})"
                + (" or another --device" if args.device is None or args.device.startswith("cuda") else "")
            ) from None

    return run


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "census": _memory_bounded("census", _census),
    "dynamics": _memory_bounded("dynamics", _dynamics),
    "discrepancy": _memory_bounded("discrepancy", _discrepancy),
}


_MODEL_SUITES = (None, "number", "letter", "duplicate")  # discrepancy --task with --model: suites with a chain
_RUN_DEVICE = "torch device, e.g. cpu or cuda (default: as saved)"
_MODEL_DEVICE = "torch device, e.g. cpu or cuda (default: as saved; --model: TransformerLens's choice)"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "census", help="census of every head: detectors, circuits, positional/symbolic (headkit.head_census)"
    )
    types.add_run(p, optional=True)
    p.add_argument("--model", "--gptj", dest="model", help="a pretrained model directory or cached hub id "
                   "(any architecture of headkit.loading.pretrained; --gptj is an alias), instead of RUN_DIR")
    p.add_argument("--task", choices=types.task_names(), help="task of the prompts (default: the run's own task)")
    p.add_argument("--composition", help="composition kinds: q,k,v (run default) or none (--model default)")
    p.add_argument("--dtype", default="float32", help="--model weights dtype: float32, float16, bfloat16")
    p.add_argument("--per-hop", help="also write the classification at each hop's pointer to this CSV")
    _swap_option(p)
    _common(p, n_prompts=64, device_help=_MODEL_DEVICE)
    p.set_defaults(func=COMMANDS["census"])

    p = subparsers.add_parser("dynamics", help="positional/symbolic heads and accuracy at every checkpoint")
    types.add_run(p, help="a run directory of `headkit train`")
    p.add_argument("--steps", help="checkpoint steps to use, e.g. 100,200 (default: all)")
    p.add_argument("--task", choices=types.task_names(), help="task of the prompts (default: each checkpoint's own)")
    types.add_eval_prompts(p, default=512, help="prompts of the accuracy evaluation")
    _swap_option(p)
    _common(p, n_prompts=64, device_help=_RUN_DEVICE)
    p.set_defaults(func=COMMANDS["dynamics"])

    p = subparsers.add_parser("discrepancy", help="largest minus second-largest attention logit per head and length")
    types.add_run(p, optional=True)
    p.add_argument("--model", help="a pretrained model directory instead of RUN_DIR (prompts: --task number|letter|duplicate in text)")
    p.add_argument("--lengths", required=True, help="prompt lengths, e.g. 17,33,65")
    p.add_argument("--heads", help="heads as LAYER.HEAD[,LAYER.HEAD...] (default: all)")
    p.add_argument("--task", help="task of the prompts (default: the run's own task; --model: number)")
    _common(p, n_prompts=64, device_help=_MODEL_DEVICE)
    p.set_defaults(func=COMMANDS["discrepancy"])
