"""``headkit train``, ``headkit eval`` and ``headkit info``: train a model, score it, inspect a run.

- ``train --task T --out DIR`` trains `headkit.training.config.default_config(T, preset=P)`
  (``--preset cpu``, the default, or ``paper``) with the options given overriding
  the preset; ``--resume`` continues the run in DIR (its ``run.json`` supplies the
  config; only ``--steps`` and ``--device`` may change it).
- ``eval RUN_DIR --added 0,46,96,296,996 [--eval-n N] [--out FILE.csv]`` (or ``--lengths``) scores the
  latest checkpoint of a run (or one checkpoint directory) with
  `headkit.evaluation.evaluate`, longer prompts made as ``--extend`` says (``prefix``,
  the paper's protocol, by default; ``window``), writes the tidy CSV and prints the
  accuracy table. ``--n-ctx`` lets a run trained with a short context reach longer prompts.
- ``info RUN_DIR`` prints a run's config, its checkpoints, its last metrics and whether
  it is complete (`headkit.training.layout.run_status`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from headkit.checks import parse_int_list
from headkit.cli import args as types
from headkit.cli.threads import use_threads
from headkit.errors import HeadkitError
from headkit.training.layout import check_output_path

# torch, TransformerLens and the training code are imported inside the commands,
# after their arguments are checked, so that ``--help`` and argument errors answer at once.

# command-line option -> TrainConfig field
_OVERRIDES = {
    "steps": "steps",
    "batch_size": "batch_size",
    "lr": "lr",
    "seed": "seed",
    "eval_every": "eval_every",
    "device": "device",
}


def _train(args: argparse.Namespace) -> int:
    from headkit.training.layout import check_no_foreign_files

    check_output_path(args.out, directory=True)  # writable, not inside another run's files or a checkpoint
    check_no_foreign_files(args.out)  # a folder of the user's own files, holding no run: never written into
    given: dict[str, Any] = {
        field: getattr(args, option) for option, field in _OVERRIDES.items() if getattr(args, option) is not None
    }
    if args.checkpoint_steps is not None:
        given["checkpoint_steps"] = tuple(parse_int_list(args.checkpoint_steps, name="--checkpoint-steps"))
    if args.resume and args.preset is not None:
        raise HeadkitError("--preset applies to a new run; --resume takes the config from run.json")
    if not args.resume and args.task is None:
        raise HeadkitError(f"--task is required for a new run: allowed {', '.join(types.task_names())}")
    from headkit.training.config import default_config, read_run_config
    from headkit.training.loop import train

    out = Path(args.out)
    if args.resume:
        cfg = read_run_config(out)
        if args.task is not None and args.task != cfg.task.name:
            raise HeadkitError(f"--task {args.task} but the run in {out} trains task {cfg.task.name!r}")
        cfg = cfg.from_dict({**cfg.to_dict(), **given})
    else:
        cfg = default_config(args.task, preset=args.preset or "cpu", **given)
    use_threads(args.threads)
    result = train(cfg, out_dir=out, resume=args.resume, progress=not args.no_progress)
    last = result.metrics.iloc[-1]
    print(f"trained {cfg.task.name} to step {result.step}: eval accuracy {last['accuracy']:.4f}, eval loss {last['eval_loss']:.4f}")
    print(f"wrote the run to {out}")
    return 0


def _distinct_int_list(text: str | None, *, name: str, low: int) -> list[int] | None:
    """``--lengths`` / ``--added``: integers, each at most once (a repeat would duplicate rows)."""
    if text is None:
        return None
    values = parse_int_list(text, name=name, low=low)
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise HeadkitError(f"{name} repeats {', '.join(map(str, repeated))}: give each value once")
    return values


def _eval(args: argparse.Namespace) -> int:
    lengths = _distinct_int_list(args.lengths, name="--lengths", low=1)
    added = _distinct_int_list(args.added, name="--added", low=0)
    if lengths is not None and added is not None:
        raise HeadkitError("give --lengths or --added, not both")
    types.check_run_dir(args.run_dir)
    out = types.check_csv_out(args)
    use_threads(args.threads)
    from headkit.evaluation import accuracy_table, evaluate
    from headkit.io import write_csv
    from headkit.models import extend_context
    from headkit.training.runs import open_checkpoint

    ckpt = open_checkpoint(args.run_dir, device=args.device)
    if ckpt.task is None:
        raise HeadkitError(f"checkpoint {ckpt.path} records no task: cannot build prompts for it")
    if args.n_ctx is not None:
        extend_context(ckpt.model, args.n_ctx)
    frame = evaluate(
        ckpt.model, ckpt.task, lengths=lengths, added=added, extend=args.extend, n_prompts=args.eval_n, seed=args.seed,
        progress=not args.no_progress,
    )
    if out is not None:
        write_csv(out, frame)
    print(
        f"{ckpt.task.name} model at step {ckpt.step} ({ckpt.path}); accuracy on {args.eval_n} prompts per length, "
        f"longer prompts made by extend={args.extend}:"
    )
    print(accuracy_table(frame).to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    if out is not None:
        print(f"wrote {len(frame)} rows to {out}")
    return 0


def _info(args: argparse.Namespace) -> int:
    """Reads the run's files as JSON and CSV: no torch, TransformerLens or pandas (answers in < 1 s)."""
    from headkit.training.layout import last_metrics_row, list_checkpoints, read_run_json, run_status

    run = Path(args.run_dir)
    cfg = read_run_json(run)  # a missing run: "... is not a headkit run directory" (torch-free)
    found = list_checkpoints(run)
    last = last_metrics_row(run)
    status = run_status(run)
    print(f"run {run}: task {cfg['task']['name']}, {cfg['steps']} steps planned")
    print("config:")
    print(json.dumps(cfg, indent=2, sort_keys=True))
    if found:
        print("checkpoints: " + ", ".join(f"step {step}" for step, _ in found))
    else:
        print("checkpoints: none")
    if last is not None:
        print(f"last metrics (step {int(float(last['step']))}):")
        print("  " + ", ".join(f"{key} {_short(value)}" for key, value in last.items()))
    else:
        print("metrics: none yet")
    print(f"status: {status.describe()}")
    return 0


def _short(text: str) -> str:
    """A metrics field as printed by ``info``: numbers to 4 significant digits."""
    try:
        return f"{float(text):.4g}"
    except ValueError:
        return text or "-"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a model from scratch on a task")
    p.add_argument("--task", choices=types.task_names(), help="task to train on (required unless --resume)")
    p.add_argument("--out", required=True, help="run directory to write")
    types.add_int(p, "--steps", help="optimizer updates in total")
    types.add_int(p, "--batch-size", help="prompts per update")
    types.add_float(p, "--lr", help="peak learning rate")
    p.add_argument("--seed", type=types.seed, help="initialisation and data seed, 0..2**64-1")
    types.add_int(p, "--eval-every", help="updates between held-out evaluations")
    p.add_argument("--checkpoint-steps", help="extra steps to checkpoint at, e.g. 500,1000")
    p.add_argument(
        "--preset", choices=types.preset_names(),
        help="model and schedule: cpu (default, minutes on a CPU) or paper (PosSym-2026: 12 layers, 6,750 updates, ~25 min on one quiet CPU core at ~4.7 updates/s)",
    )  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    types.add_compute(p, device_help="torch device: auto (default: cuda if a GPU is present), cpu, cuda")
    p.set_defaults(func=_train)

    p = subparsers.add_parser("eval", help="accuracy of a trained model by length and hop")
    types.add_run(p)
    p.add_argument("--lengths", help="total prompt lengths, e.g. 17,63,113 (default: the trained length)")
    p.add_argument(
        "--added", help="tokens added to the trained length, e.g. 0,46,96,296,996 (PosSym-2026's x-axis)"
    )
    types.add_extend(p)
    types.add_int(
        p, "--n-ctx",
        help="let the model take prompts up to this length (rotary tables only; for runs trained with a short n_ctx)",
    )  # fmt: skip
    types.add_eval_prompts(p, default=512, help="prompts per length", replaces_n=True)
    p.add_argument("--seed", type=types.seed, default=12345, help="prompt seed, 0..2**64-1 (default 12345)")
    types.add_csv_out(p, columns="task,extend,length,added,hop,n,accuracy")
    types.add_compute(p, device_help="torch device, e.g. cpu or cuda (default: the checkpoint's)")
    p.set_defaults(func=_eval)

    p = subparsers.add_parser("info", help="config, checkpoints and last metrics of a run")
    types.add_run(p, help="run directory")
    p.set_defaults(func=_info)
