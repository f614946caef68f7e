"""``headkit ablate``, ``headkit patch``, ``headkit path-patch``: interventions from the shell.

Each command loads the latest checkpoint of a run directory written by
``headkit train`` (or a checkpoint directory itself), draws ``--n-prompts`` fresh
prompts of the run's task with ``--seed`` (clean = the batch, corrupted = its
twin) -- or, with ``--model DIR``, loads a pretrained model
(`headkit.loading.pretrained.load_pretrained`) and draws the prompts of a
natural-language ``--suite`` (`headkit.tasks.natural`) with its own tokenizer --
runs one analysis of `headkit.interventions`, writes its DataFrame as a CSV (atomically) when ``--out`` is given and prints a compact table.

- ``ablate RUN_DIR [--method zero|mean|resample (default zero, the library's)] [--heads 0.0,3.0] [--together]
  [--by-hop] [--metric M]``: `ablation_sweep` (or `ablation_sweep_by_hop`);
  the reference batch of mean/resample ablation is the prompts themselves.
- ``patch RUN_DIR [--site z] [--by-position] [--direction denoise|noise]
  [--heads ...] [--metric M]``: `activation_patching`.
- ``path-patch RUN_DIR --receivers 5.0.q,5.0.k|final [--senders 0.0,1.0]
  [--metric M]``: `path_patching_sweep`, each sender alone. Head receivers are
  patched together as one set; ``final`` is its own experiment, so a list with
  both runs two sweeps. The CSV has a ``receivers`` column (``final`` or the
  set, e.g. ``5.0.q+5.0.k``) before ``layer, head, value, normalised``.

``--metric``, ``--site``, ``--method``, ``--direction`` and ``--suite`` offer the
names of the library's registries (`headkit.cli.args`). ``--metric`` (default
``logit_diff`` where the task has wrong answers, else ``answer_logprob``),
computed on the clean batch's answers. Every argument is checked (numbers, names, RUN_DIR,
``--out`` writable and not a run's own file, seed and device before torch is imported; then heads and
layers against the model) before any forward pass; bad input is one
``headkit: error:`` line and exit code 2. A model whose logits or metric come
out NaN or infinite is an error too, never a table of numbers (see
docs/interventions.md).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from headkit.checks import FINAL, check_heads, parse_heads, parse_receivers
from headkit.cli import args as types
from headkit.cli.threads import use_threads
from headkit.errors import HeadkitError

if TYPE_CHECKING:  # pandas, torch and TransformerLens load when a command runs, not for --help
    import pandas as pd

    from headkit.model_types import Model

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- shared steps


def _check_args(args: argparse.Namespace) -> None:
    """Checks that need no model, before torch is imported: RUN_DIR or --model, output path
    (counts, names, seed, device: argparse, `headkit.cli.args`)."""
    types.check_run_or_model(args)
    types.check_csv_out(args)


@dataclass(frozen=True)
class _Pretrained:
    """What the commands read of a checkpoint, for a pretrained model (``--model DIR``)."""

    model: Model
    path: str
    task: object  # .name: the prompt suite
    step: str = "- (pretrained)"


def _load_model(args: argparse.Namespace):
    """(pretrained model, clean batch of the ``--suite`` prompts built with its own tokenizer)."""
    from types import SimpleNamespace

    from headkit.loading.pretrained import load_pretrained, require_tokenizer
    from headkit.tasks.natural import build_suite

    batch = build_suite(args.suite, args.n_prompts, seed=args.seed, tokenizer=require_tokenizer(args.model))
    model = load_pretrained(args.model, device=args.device)
    batch = batch.to(model.cfg.device)
    return _Pretrained(model=model, path=str(args.model), task=SimpleNamespace(name=args.suite)), batch


def _load(args: argparse.Namespace):
    """(checkpoint, clean batch) of the run's latest checkpoint and task, or of ``--model``."""
    from headkit.training.runs import open_checkpoint

    if args.model is not None:
        return _load_model(args)
    ckpt = open_checkpoint(args.run_dir, device=args.device)
    if ckpt.task is None:
        raise HeadkitError(f"checkpoint {ckpt.path} records no task: cannot build prompts")
    batch = ckpt.task.build(args.n_prompts, seed=args.seed).to(ckpt.model.cfg.device)
    log.info("loaded %s (step %d); %d %s prompts", ckpt.path, ckpt.step, batch.n, ckpt.task.name)
    return ckpt, batch


def _metric(args: argparse.Namespace, batch, *, per_example: bool = False):
    from headkit.interventions.metrics import METRICS, default_metric_name

    name = args.metric or default_metric_name(batch)
    return name, METRICS[name](batch, per_example=per_example)


def _corrupted(batch, ckpt):
    if batch.corrupted is None:
        raise HeadkitError(f"task {ckpt.task.name!r} gives no corrupted twin: patching needs one")
    return batch.corrupted


def _finish(args: argparse.Namespace, frame: pd.DataFrame, title: str) -> int:
    print(title)
    print(frame.to_string(index=False, max_rows=60, float_format=lambda x: f"{x:.4f}"))
    if args.out is not None:
        from headkit.io import write_csv

        write_csv(args.out, frame)
        print(f"wrote {len(frame)} rows to {args.out}")
    return 0


def _heads(model, parsed: list[tuple[int, int]] | None) -> list[tuple[int, int]] | None:
    return None if parsed is None else check_heads(model, parsed)


# --------------------------------------------------------------------------- commands


def _ablate(args: argparse.Namespace) -> int:
    _check_args(args)
    parsed = None if args.heads is None else parse_heads(args.heads)
    use_threads(args.threads)
    from headkit.interventions.ablation import ablation_sweep, ablation_sweep_by_hop

    ckpt, batch = _load(args)
    heads = _heads(ckpt.model, parsed)
    name, metric = _metric(args, batch, per_example=args.by_hop)
    sweep = ablation_sweep_by_hop if args.by_hop else ablation_sweep
    frame = sweep(
        ckpt.model, batch, method=args.method, metric=metric, heads=heads,
        together=args.together, batch_size=args.batch_size,
    )  # fmt: skip
    return _finish(args, frame, f"{args.method} ablation, metric {name}, {batch.n} prompts, step {ckpt.step}:")


def _patch(args: argparse.Namespace) -> int:
    _check_args(args)
    parsed = None if args.heads is None else parse_heads(args.heads)
    use_threads(args.threads)
    from headkit.interventions.activation_patching import activation_patching
    from headkit.interventions.sites import check_site

    ckpt, batch = _load(args)
    check_site(ckpt.model, args.site)
    heads = _heads(ckpt.model, parsed)
    corrupted = _corrupted(batch, ckpt)
    name, metric = _metric(args, batch)
    frame = activation_patching(
        ckpt.model, batch.tokens, corrupted.tokens, metric, site=args.site,
        by_position=args.by_position, direction=args.direction, heads=heads,
        batch_size=args.batch_size, progress=not args.no_progress,
    )  # fmt: skip
    title = f"activation patching ({args.direction}) of {args.site}, metric {name}, {batch.n} prompts, step {ckpt.step}:"
    return _finish(args, frame, title)


def _path_patch(args: argparse.Namespace) -> int:
    _check_args(args)
    receivers = parse_receivers(args.receivers)
    senders = None if args.senders is None else parse_heads(args.senders)
    use_threads(args.threads)
    import pandas as pd

    from headkit.interventions.path_patching import check_receivers, check_senders, path_patching_sweep

    groups = [g for g in ([r for r in receivers if r != FINAL], [r for r in receivers if r == FINAL]) if g]
    ckpt, batch = _load(args)
    checked = [check_receivers(ckpt.model, group) for group in groups]
    for group in checked:
        if senders is not None:
            check_senders(ckpt.model, senders, group)
    corrupted = _corrupted(batch, ckpt)
    name, metric = _metric(args, batch)
    frames = []
    for group in checked:
        frame = path_patching_sweep(
            ckpt.model, batch.tokens, corrupted.tokens, list(group.heads) or FINAL, metric,
            senders=senders, progress=not args.no_progress,
            # the sweep's own batch default unless --batch-size is given (works whether that default is a number or automatic)
            **({} if args.batch_size is None else {"batch_size": args.batch_size}),
        )  # fmt: skip
        frames.append(frame.assign(receivers=group.label()))
        clean, corrupt = frame.attrs["clean"], frame.attrs["corrupted"]
    frame = pd.concat(frames, ignore_index=True)
    frame = frame[["receivers", *[c for c in frame.columns if c != "receivers"]]]
    title = (
        f"path patching, metric {name} (clean {clean:.4f}, corrupted {corrupt:.4f}), "
        f"{batch.n} prompts, step {ckpt.step}:"
    )
    return _finish(args, frame, title)


# --------------------------------------------------------------------------- parser


def _common(parser: argparse.ArgumentParser, func: Callable[[argparse.Namespace], int]) -> None:
    types.add_run(parser, optional=True)
    parser.add_argument("--model", default=None, help="a pretrained model directory instead of RUN_DIR (its tokenizer builds the prompts)")
    parser.add_argument(
        "--suite", choices=types.suite_names(), default="ioi", help="--model prompt suite (default ioi)"
    )
    parser.add_argument(
        "--metric", choices=types.metric_names(), default=None,
        help="metric of the clean answers (default logit_diff where the task has wrong answers, else answer_logprob)",
    )  # fmt: skip
    types.add_prompts(parser, default=256, help="number of prompts", replaces_n=True)
    parser.add_argument("--seed", type=types.seed, default=0, help="seed of the prompts, 0..2**64-1 (default 0)")
    types.add_int(parser, "--batch-size", default=None, help="most rows per forward pass (default: automatic)")
    types.add_csv_out(parser)
    types.add_compute(parser, device_help="torch device, e.g. cpu or cuda (default: as saved)")
    parser.set_defaults(func=func)


def register(subparsers: argparse._SubParsersAction) -> None:
    ablate = subparsers.add_parser("ablate", help="ablate heads and measure a metric")
    _common(ablate, _ablate)
    method = types.default_ablation_method()
    ablate.add_argument(
        "--method", choices=types.ablation_methods(), default=method,
        help=f"replace each head's output by zero, its mean over the prompts, or another prompt's (default {method}, "
        "as in the library; the demo and report use mean)",
    )  # fmt: skip
    ablate.add_argument("--heads", default=None, help="LAYER.HEAD list, e.g. 0.0,3.0 (default all)")
    ablate.add_argument("--together", action="store_true", help="ablate the heads as one set")
    ablate.add_argument("--by-hop", action="store_true", help="one row per head and hop count")

    patch = subparsers.add_parser("patch", help="activation patching between clean and corrupted prompts")
    _common(patch, _patch)
    patch.add_argument("--site", choices=types.site_names(), default="z", help="activation to patch (default z)")
    patch.add_argument("--by-position", action="store_true", help="one row per position too")
    patch.add_argument(
        "--direction", choices=types.directions(), default="denoise",
        help="denoise: clean activations into the corrupted run; noise: corrupted into the clean run (default denoise)",
    )  # fmt: skip
    patch.add_argument("--heads", default=None, help="LAYER.HEAD list (head sites; default all)")

    path = subparsers.add_parser("path-patch", help="path patching from sender heads to receivers")
    _common(path, _path_patch)
    path.add_argument("--receivers", required=True, help="LAYER.HEAD.q|k|v list and/or final")
    path.add_argument("--senders", default=None, help="LAYER.HEAD list (default: all earlier heads)")
