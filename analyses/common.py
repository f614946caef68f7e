"""Helpers shared by the analysis scripts: where outputs go and how they are written.

An analysis writes exactly four kinds of file into its output folder, all
atomically (`headkit.io`): ``config.json`` (the config dataclass that made the
run), ``results.csv`` (the table ``main`` returns), ``summary.json`` (the few
headline numbers the docs quote) and one figure as ``NAME.html`` + ``NAME.png``
(`headkit.plots.write_figure`). One HTML per folder, because each inlines
plotly.js (~4.5 MB) so that it works offline.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

import pandas as pd
import plotly.graph_objects as go
import torch

from headkit.errors import HeadkitError
from headkit.io import write_csv, write_json
from headkit.plots import write_figure

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
FIGURES = REPO_ROOT / "figures"  # default parent of every analysis' output folder

ConfigT = TypeVar("ConfigT")


def output_dir(name: str, out: str | Path | None) -> Path:
    """``out`` if given, else ``figures/<name>`` in the repository."""
    return Path(out) if out is not None else FIGURES / name


def config_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as plain JSON-able data (tuples become lists)."""
    return dataclasses.asdict(cfg)


def write_outputs(
    out_dir: Path,
    *,
    cfg: Any,
    table: pd.DataFrame,
    summary: Mapping[str, Any],
    figure: go.Figure,
    figure_name: str,
    png: bool = True,
) -> list[Path]:
    """Write config.json, results.csv, summary.json and the figure; return the paths."""
    written = [
        write_json(out_dir / "config.json", config_dict(cfg)),
        write_csv(out_dir / "results.csv", table),
        write_json(out_dir / "summary.json", dict(summary)),
    ]
    written += write_figure(figure, out_dir / figure_name, png=png)
    log.info("wrote %s", ", ".join(str(p) for p in written))
    return written


def cli(
    argv: Sequence[str] | None,
    *,
    description: str,
    default: Callable[[], ConfigT],
    quick: Callable[[], ConfigT],
    runs: bool = False,
) -> tuple[ConfigT, Path | None]:
    """Parse ``[--runs DIR] [--out DIR] [--quick] [--threads N]`` into (config, output folder or None).

    ``--runs`` (only with ``runs=True``: the R1-R4 scripts' shared training runs)
    replaces the config's ``runs`` field. ``--threads`` (default 2) sets torch's
    CPU threads: scripts only, never the library.
    """
    parser = argparse.ArgumentParser(description=description)
    if runs:
        parser.add_argument("--runs", type=Path, default=None, help="shared training runs folder")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default figures/<name>)")
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke run in seconds")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        raise HeadkitError(f"--threads={args.threads} must be a positive integer")
    torch.set_num_threads(args.threads)
    cfg = quick() if args.quick else default()
    if runs and args.runs is not None:
        cfg = dataclasses.replace(cfg, runs=str(args.runs.resolve()))
    return cfg, args.out


def run_script(
    main: Callable[..., pd.DataFrame],
    *,
    description: str,
    default: Callable[[], ConfigT],
    quick: Callable[[], ConfigT],
    runs: bool = False,
    argv: Sequence[str] | None = None,
) -> None:
    """Command-line entry of an analysis script: parse, run ``main``, print its table.

    A `HeadkitError` (bad input) ends the script with a one-line message and exit code 2.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_figure_export()
    try:
        cfg, out = cli(argv, description=description, default=default, quick=quick, runs=runs)
        table = main(cfg, out=out)
    except HeadkitError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(table.to_string(index=False))  # the script's own output (the library never prints)


class Timer:
    """Wall-clock seconds since creation (for the summaries' ``elapsed_s``)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return round(time.perf_counter() - self.start, 1)


def quiet_figure_export() -> None:
    """Silence the INFO chatter of kaleido/choreographer (PNG export) in script logs."""
    for name in ("kaleido", "choreographer"):
        logging.getLogger(name).setLevel(logging.WARNING)
