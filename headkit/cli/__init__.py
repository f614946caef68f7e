"""The headkit command line: train, evaluate, classify heads, intervene, report.

Each ``headkit/cli/cmd_*.py`` module defines ``register(subparsers)``, which adds
its sub-commands with ``set_defaults(func=...)``; this module discovers them, so
adding a command never touches this file. A `HeadkitError` (bad input) becomes a
one-line ``headkit: error: ...`` message and exit code 2, with no traceback; so does an
argparse error (`main` returns the status in both cases, it never raises SystemExit).
The shared arguments and their checks are `headkit.cli.args`.

Start-up is kept fast (``headkit --help``, argument errors): building the parser
imports no torch, TransformerLens or pandas (tests/cli/test_cli_startup.py pins it);
the commands import them after checking their arguments.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from typing import Sequence

from headkit import distributed
from headkit.errors import HeadkitError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one ``headkit: error: ...`` line (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        if distributed.is_main():  # under torchrun, one copy of the message
            command = self.prog.partition(" ")[2]  # "headkit ablate" -> "ablate"
            sys.stderr.write(f"headkit: error: {command + ': ' if command else ''}{message}\n")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="headkit", description=__doc__.splitlines()[0])  # pyright: ignore[reportOptionalMemberAccess]
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    package = importlib.import_module("headkit.cli")
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name.startswith("cmd_"):
            importlib.import_module(f"headkit.cli.{info.name}").register(sub)
    return parser


# commands renamed: the old name is refused with one line naming the new one (issue 20)
RENAMED = {"classify": "census"}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit status (2 for any bad input, argparse's included)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    old = next((a for a in argv if not a.startswith("-")), None)  # the command (after -v, if any)
    if old in RENAMED:
        sys.stderr.write(
            f"headkit: error: `headkit {old}` was renamed `headkit {RENAMED[old]}` (the library's "
            f"headkit.head_census; classify_heads is the positional/symbolic labelling): run headkit {RENAMED[old]}\n"
        )
        return EXIT_USAGE
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a usage error (one line already written) or --help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        with distributed.launch():  # under torchrun: join the group; only rank 0 prints and writes
            return _run(args)
    except HeadkitError as exc:  # the process group could not be joined
        sys.stderr.write(f"headkit: error: {exc}\n")
        return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    try:
        if hasattr(args, "threads"):  # OMP_NUM_THREADS, before torch (whose OpenMP reads it too) is imported
            from headkit.cli.threads import env_threads

            env_threads()
        if hasattr(args, "device"):
            args.device = distributed.rank_device(args.device)
        result = args.func(args)
    except HeadkitError as exc:
        if distributed.reports(exc):
            sys.stderr.write(f"headkit: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("headkit: interrupted\n")
        return 130
    except OSError as exc:  # a full disk outside headkit.io's writes: one line too
        from headkit.io import disk_full

        full = disk_full(exc, exc.filename or "a file")
        if full is None:
            raise
        if distributed.reports(full):
            sys.stderr.write(f"headkit: error: {full}\n")
        return EXIT_USAGE
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
