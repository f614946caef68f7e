"""``headkit demo``: positional vs symbolic heads (PosSym-2026), end to end on a CPU.

The pipeline is `headkit.report.demo.run_demo` (train both models, evaluate with the paper's
length protocol, classify and mean-ablate every head, write ``OUT/report.html``); this
command parses and checks its options, then prints what the demo reports.
"""

from __future__ import annotations

import argparse

from headkit.checks import parse_int_list
from headkit.cli import args as types
from headkit.cli.threads import use_threads
from headkit.training.layout import check_output_path


def _demo(args: argparse.Namespace) -> int:
    lengths = None if args.lengths is None else tuple(parse_int_list(args.lengths, name="--lengths"))
    added = None if lengths is not None else tuple(parse_int_list(args.added, name="--added", low=0))
    check_output_path(args.out, directory=True)  # writable, not inside a run's own files or a checkpoint
    use_threads(args.threads)
    from headkit.report.demo import DemoOptions, run_demo

    options = DemoOptions(
        steps_scale=args.steps_scale, lengths=lengths, added=added, extend=args.extend, eval_n=args.eval_n,
        progress=not args.no_progress, preset=args.preset, parallel=not args.serial, device=args.device,
    )  # fmt: skip
    from tqdm.auto import tqdm

    run_demo(args.out, options, say=tqdm.write)  # checks the lengths first; tqdm.write keeps progress bars whole
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="train number/letter models, test length generalisation")
    p.add_argument("--out", default="headkit-demo", help="demo directory (default ./headkit-demo)")
    types.add_float(p, "--steps-scale", default=1.0, help="scale every schedule length (default 1)")
    p.add_argument(
        "--added",
        default=",".join(map(str, types.demo_added())),
        help="tokens added to the trained 17, the paper's x-axis (default 0,46,96,296,996)",
    )
    p.add_argument("--lengths", default=None, help="total evaluation lengths instead of --added, e.g. 17,33,65")
    types.add_extend(p)
    types.add_eval_prompts(p, default=512, help="evaluation prompts per length", replaces_n=True)
    p.add_argument(
        "--preset", choices=types.preset_names(), default="cpu", help="training preset (default cpu; paper: PosSym-2026's models, ~25 min per task on one CPU core)"
    )
    p.add_argument(
        "--serial", action="store_true",
        help="train the two models one after the other (default: at once, one process each, given two cores)",
    )  # fmt: skip
    types.add_compute(p, device_help="torch device of training and analyses: auto (default: cuda if a GPU is present), cpu, cuda")
    p.set_defaults(func=_demo)
