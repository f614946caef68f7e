"""``headkit report RUN_DIR [--out DIR] [--png] [--eval-n N] [--n-prompts N]``: one page with every figure of a trained run.

Loads the run's latest checkpoint (`headkit.training.checkpoints.load_checkpoint`) and
writes ``OUT/report.html`` (default ``OUT = RUN_DIR/report``; for a checkpoint
directory ``./report_<its name>``, never inside the checkpoint; an existing OUT must
hold a report or nothing: the new one, built beside it, replaces it whole), a single
self-contained file (`headkit.report.page`): interactive plotly graphs and
circuitsvis attention widgets embedded, plotly.js and the circuitsvis bundle
inlined once, so it opens offline with nothing else. The tables behind the
figures are written beside it as CSV. Sections, each with a one-line "how to
read this":

1. accuracy by length and hop, the trained length marked (`evaluate`);
2. head census: positional / symbolic / mixed / inactive label, purity and
   swap scores of every head (`classify_heads`);
3. learning dynamics over the run's checkpoints (`track_heads`; a run directory only);
4. mean ablation of each head, accuracy change per hop (`ablation_sweep_by_hop`);
5. activation patching heat maps: each head's output (``z``) and the residual
   stream by position (``resid_pre``), denoising (`activation_patching`);
6. attention views of a few example prompts per hop count (`task_attention_view`).

``headkit report --model DIR --suite SUITE [--suite ...] --out FOLDER``: the same
page for a pretrained model (`headkit.report.model`): per suite, find (head census),
confirm (ablation, activation patching, path patching to the logits; for IOI also to
the name movers' queries), roles (the evidence joined per head, sorted by effect) and
look (attention views of the top heads), with ``config.json`` and every table as CSV
beside ``report.html``. DIR must hold the model's tokenizer files.

``--png`` also writes every plotly figure as ``OUT/figures/figure_N.png`` for
papers (needs kaleido >= 1 and a Chromium: ``pip install -e ".[figures]"``),
beside a small interactive ``figure_N.html`` sharing one ``plotly.min.js``.

The report is built by `headkit.report.run` (`build_report`, `write_report`; its sections are
shared with ``headkit demo``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from headkit.checks import some_names
from headkit.cli import args as types
from headkit.cli.threads import use_threads
from headkit.errors import HeadkitError
from headkit.training.layout import check_output_path, is_one_checkpoint

if TYPE_CHECKING:  # heavy modules load when the command runs, not for `headkit --help`
    from headkit.report.run import Report

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- command


def _report(args: argparse.Namespace) -> int:
    types.check_run_or_model(args)
    if args.model is not None:
        return _report_model(args)
    if args.suite:
        raise HeadkitError("--suite applies to --model DIR (a run's report uses its own task)")
    run = types.check_run_dir(args.run_dir)
    assert run is not None  # check_run_or_model: RUN_DIR is given when --model is not
    one_checkpoint = is_one_checkpoint(run)
    # default: RUN_DIR/report; for a checkpoint directory ./report_<name>, never inside the checkpoint
    out = Path(args.out) if args.out is not None else (Path(f"report_{run.name}") if one_checkpoint else run / "report")
    check_output_path(out if args.out is None else args.out, directory=True, inputs=[run])  # before any work: not "", writable, not a run's files
    _check_report_folder(out)
    use_threads(args.threads)
    from headkit.report.run import ReportOptions, build_report

    options = ReportOptions(
        n_prompts=args.n_prompts, eval_n=args.eval_n, seed=args.seed, device=args.device, progress=not args.no_progress
    )
    _write(build_report(run, options, say=print), out, png=args.png)
    return 0


def _report_model(args: argparse.Namespace) -> int:
    """``report --model DIR``: find, confirm, roles and look per suite (`headkit.report.model`)."""
    if args.out is None:
        raise HeadkitError("--out FOLDER is needed with --model (the page, config.json and the CSVs go there)")
    out = Path(args.out)
    check_output_path(args.out, directory=True, inputs=types.inputs_of(args))
    _check_report_folder(out)
    from headkit.report.model import ModelReportOptions

    options = ModelReportOptions(
        suites=tuple(args.suite or ("ioi",)), n_prompts=args.n_prompts, seed=args.seed, method=args.method,
        effect_threshold=args.threshold, progress=not args.no_progress,
    )  # fmt: skip
    from headkit.loading.pretrained import require_tokenizer

    require_tokenizer(args.model)  # before the weights load
    use_threads(args.threads)
    from headkit.loading.pretrained import load_pretrained
    from headkit.plots import model_description
    from headkit.report.model import model_report

    model = load_pretrained(args.model, dtype=args.dtype, device=args.device)
    about = f"{args.model}: {model_description(model)}"
    print(f"report of {about} on {', '.join(options.suites)}")
    from headkit.report.run import Report

    tables, sections = model_report(model, model.tokenizer, options, about=about)
    config = {"model": str(args.model), "dtype": args.dtype, "device": str(model.cfg.device), **options.as_json()}
    _write(Report(f"headkit report: {about}", about, tables, sections, config=config), out, png=args.png)
    return 0


REPORT_ENTRIES = ("report.html", "accuracy.csv", "heads.csv", "dynamics.csv", "ablation.csv", "figures", "config.json")


def _is_report_entry(name: str) -> bool:
    """A file a report folder holds: its own, or a temporary of one (``.report.html.XXXX.tmp``)."""
    own = name in REPORT_ENTRIES or (name.endswith(".csv") and "_" in name)  # --model: <suite>_<table>.csv
    return own or (name.endswith(".tmp") and name.startswith(tuple(f".{e}." for e in REPORT_ENTRIES)))


def _check_report_folder(out: Path) -> None:
    """An existing ``--out`` must hold a report (or nothing): the new report replaces the folder whole."""
    if not out.is_dir():
        return
    others = sorted(p.name for p in out.iterdir() if not _is_report_entry(p.name))
    if others:
        shown = some_names(others)
        raise HeadkitError(
            f"--out {out} holds files that are not a headkit report's ({shown}): a report replaces its folder "
            "whole, so choose an empty or new folder"
        )


def _write(report: Report, out: Path, *, png: bool) -> None:
    """`headkit.report.run.write_report`, then the files it wrote listed."""
    from headkit.report.run import write_report

    written = write_report(report, out, png=png, say=print)
    print(f"wrote {len(written)} files to {out}:")
    for path in written:
        print(f"  {path}")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report", help="one self-contained HTML page with every figure of a trained run or a pretrained model (offline)"
    )
    types.add_run(p, optional=True)
    p.add_argument("--model", help="a pretrained model directory (with its tokenizer) instead of RUN_DIR")
    p.add_argument(
        "--suite", action="append", choices=types.suite_names(), default=None,
        help="--model: a prompt suite, repeat for several (default ioi)",
    )  # fmt: skip
    p.add_argument("--dtype", default="float32", help="--model weights dtype: float32, float16, bfloat16")
    p.add_argument("--method", choices=("zero", "mean", "resample"), default="mean", help="--model: ablation (default mean)")
    types.add_float(p, "--threshold", default=0.1, help="--model: normalised effect that confirms a role (default 0.1)")
    p.add_argument(
        "--out", default=None,
        help="folder of report.html and its tables (default RUN_DIR/report; for a checkpoint directory ./report_NAME)",
    )  # fmt: skip
    p.add_argument("--png", action="store_true", help="also write every plotly figure as PNG (needs kaleido >= 1)")
    types.add_eval_prompts(p, default=256, help="prompts per length, and of the ablation and patching", replaces_n=True)
    types.add_prompts(p, default=64, help="prompts of the head census")
    p.add_argument("--seed", type=types.seed, default=0, help="seed of the prompts, 0..2**64-1 (default 0)")
    types.add_compute(p, device_help="torch device, e.g. cpu or cuda (default: as saved)")
    p.set_defaults(func=_report)
