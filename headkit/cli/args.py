"""The arguments every ``headkit`` command shares: one name, one meaning, one check each.

- ``RUN_DIR`` (`add_run`): a run directory of ``headkit train`` or a checkpoint
  directory; `check_run_dir` refuses a missing one before anything heavy is imported.
- ``--n-prompts N`` (`add_prompts`): prompts of a score or an intervention;
  ``--eval-n N`` (`add_eval_prompts`): prompts per length of an accuracy
  evaluation, a different count. The old ``--n``, which meant one or the other
  by command, is refused (`add_removed`) with one line naming the flag to use there.
- ``--out FILE.csv`` (`add_csv_out`): optional wherever a command writes one table
  (the table is printed either way); `check_csv_out` checks it before any work.
  Commands that write a *folder* (``train``, ``report``, ``demo``) keep their own
  ``--out``: required for ``train`` (the run to create), defaulted for the others.
- ``--device``, ``--no-progress``, ``--threads`` (`add_compute`): on every command
  that runs a model.
- Integers and positive numbers (`add_int`, `add_float`): the one check of
  `headkit.checks` (`check_int`, `check_positive_float`), its message naming the
  flag as typed, as one ``headkit: error:`` line.
- ``choices=`` of ``--task``, ``--metric``, ``--site``, ``--method``,
  ``--direction``, ``--suite``, ``--preset``, ``--extend`` come from the registry lookups below.

Nothing here imports torch at module level (``headkit --help`` answers at once;
tests/cli/test_cli_startup.py): the device check imports it only when ``--device`` is given.
"""

from __future__ import annotations

import argparse
import math
import re
from functools import partial
from pathlib import Path
from typing import Any, Callable, cast

from headkit.checks import SEED_MAX, check_device, check_int, check_positive_float, is_number
from headkit.errors import HeadkitError
from headkit.training.layout import check_output_path

# --------------------------------------------------------------------------- registry lookups
# Every name list the command line offers comes from here, read from the library's
# registries where those import nothing heavy (tasks, interventions.sites). The metrics,
# suites, presets and extend modes live in modules that import numpy or torch, so they
# are copied; tests/cli/test_cli_args.py pins each copy to its registry.


def task_names() -> tuple[str, ...]:
    """Trainable tasks (``--task``): `headkit.tasks.BUILDERS` (torch-free)."""
    from headkit.tasks import BUILDERS

    return tuple(BUILDERS)


def metric_names() -> tuple[str, ...]:
    """``--metric``: `headkit.interventions.metrics.METRICS` (a copy: that module imports
    jaxtyping, hence numpy, which ``headkit --help`` must not wait for)."""
    return ("logit_diff", "answer_logprob", "accuracy", "loss")


def site_names() -> tuple[str, ...]:
    """``--site``: `headkit.interventions.sites.SITES`."""
    from headkit.interventions.sites import SITES

    return tuple(SITES)


def ablation_methods() -> tuple[str, ...]:
    """``--method``: `headkit.interventions.sites.ABLATION_METHODS` (= ablation.METHODS)."""
    from headkit.interventions.sites import ABLATION_METHODS

    return tuple(ABLATION_METHODS)


def default_ablation_method() -> str:
    """The library's default method (`ablation_sweep`'s ``method=``), also the CLI's."""
    from headkit.interventions.sites import DEFAULT_ABLATION_METHOD

    return DEFAULT_ABLATION_METHOD


def directions() -> tuple[str, ...]:
    """``--direction``: `headkit.interventions.sites.DIRECTIONS`."""
    from headkit.interventions.sites import DIRECTIONS

    return tuple(DIRECTIONS)


def suite_names() -> tuple[str, ...]:
    """``--suite`` of a pretrained model: `headkit.tasks.natural.SUITES`."""
    return ("ioi", "number", "letter", "induction", "duplicate")


def preset_names() -> tuple[str, ...]:
    """``--preset``: `headkit.training.config.PRESETS` (a copy: that module imports torch)."""
    return ("cpu", "paper")


def demo_added() -> tuple[int, ...]:
    """``demo --added``'s default: `headkit.report.demo.DEMO_ADDED` (a copy: that module imports torch)."""
    return (0, 46, 96, 296, 996)


def extend_modes() -> tuple[str, ...]:
    """``--extend``: `headkit.evaluation.EXTENDS` (a copy: that module imports torch)."""
    return ("prefix", "window")


# --------------------------------------------------------------------------- checked values


class _Checked(argparse.Action):
    """Store ``check(flag, text)``; a HeadkitError becomes one usage line naming the flag typed."""

    def __init__(self, option_strings: list[str], dest: str, *, check: Callable[[str, str], Any], **kwargs: Any):
        super().__init__(option_strings, dest, **kwargs)
        self.check = check

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001 (argparse's signature)
        try:
            # one value per flag (no nargs): argparse passes the string typed
            setattr(namespace, self.dest, self.check(option_string or self.dest, cast(str, values)))
        except HeadkitError as exc:  # argument_name None: the message alone, it names the flag itself
            raise argparse.ArgumentError(None, str(exc)) from None


_INTEGER = re.compile(r"-?[0-9]+")  # ASCII digits only ('²' and '1_0' are refused, as in check_int's callers)


def to_int(name: str, text: str, *, low: int = 1, high: int | None = None) -> int:
    """``text`` as an integer in ``low..high`` (`headkit.checks.check_int`)."""
    return check_int(name, int(text) if _INTEGER.fullmatch(text.strip()) else text, low=low, high=high)


def to_positive_float(name: str, text: str) -> float:
    """``text`` as a finite positive number (`headkit.checks.check_positive_float`)."""
    try:
        value = float(text)
    except ValueError:
        raise HeadkitError(f"{name}={text!r} must be a positive number") from None
    return check_positive_float(name, value if math.isfinite(value) else text)


def add_int(parser: argparse.ArgumentParser, *flags: str, low: int = 1, high: int | None = None, **kwargs: Any) -> None:
    """An integer option in ``low..high``, checked by `to_int`."""
    kwargs.setdefault("metavar", "N")
    parser.add_argument(*flags, action=_Checked, check=partial(to_int, low=low, high=high), **kwargs)


def add_float(parser: argparse.ArgumentParser, *flags: str, **kwargs: Any) -> None:
    """A finite positive number option, checked by `to_positive_float`."""
    kwargs.setdefault("metavar", "X")
    parser.add_argument(*flags, action=_Checked, check=to_positive_float, **kwargs)


class _Removed(argparse.Action):
    """A flag that no longer exists: one usage line naming the flag to use instead, at parse time."""

    def __init__(self, option_strings: list[str], dest: str, *, use: str, **kwargs: Any):
        super().__init__(option_strings, dest, **kwargs)
        self.use = use

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001 (argparse's signature)
        raise argparse.ArgumentError(None, f"{option_string} was removed: use {self.use}")


def add_removed(parser: argparse.ArgumentParser, flag: str, *, use: str) -> None:
    """Refuse ``flag`` (with or without a value), hidden from ``--help``, naming ``use``.

    Registered explicitly so that argparse does not take it as an abbreviation of
    another flag (``--n`` of ``--n-prompts`` or ``--no-progress``).
    """
    parser.add_argument(flag, action=_Removed, use=use, nargs="?", dest=argparse.SUPPRESS, help=argparse.SUPPRESS)


def seed(text: str) -> int:
    """A seed in 0..2**64-1, written in ASCII digits (an argparse ``type=``)."""
    if not is_number(text.strip()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative integer")
    value = int(text)
    if value > SEED_MAX:
        raise argparse.ArgumentTypeError(f"{value} is too large: seeds are 0..{SEED_MAX} (2**64 - 1)")
    return value


def device(text: str) -> str:
    """A torch device this machine has (`headkit.checks.check_device`; an argparse ``type=``)."""
    try:
        return check_device(text)
    except HeadkitError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# --------------------------------------------------------------------------- shared arguments

RUN_HELP = "run directory of `headkit train` (its latest checkpoint) or a checkpoint directory"


def add_run(parser: argparse.ArgumentParser, *, optional: bool = False, help: str = RUN_HELP) -> None:
    """The positional ``RUN_DIR`` (``args.run_dir``); ``optional`` where ``--model DIR`` may replace it."""
    parser.add_argument("run_dir", metavar="RUN_DIR", nargs="?" if optional else None, help=help)


def check_run_dir(run_dir: str | None) -> Path | None:
    """``RUN_DIR`` must be an existing directory: checked before torch is imported (fails at once)."""
    if run_dir is None:
        return None
    path = Path(run_dir)
    if not path.is_dir():
        raise HeadkitError(f"run directory {run_dir} does not exist (or is not a directory)")
    return path


def check_run_or_model(args: argparse.Namespace) -> None:
    """Commands taking RUN_DIR or ``--model DIR``: exactly one, and a RUN_DIR that exists."""
    if (args.run_dir is None) == (args.model is None):
        raise HeadkitError("give exactly one of RUN_DIR (a headkit run) or --model DIR (a pretrained model)")
    check_run_dir(args.run_dir)


def add_prompts(parser: argparse.ArgumentParser, *, default: int, help: str, replaces_n: bool = False) -> None:
    """``--n-prompts N`` (``args.n_prompts``): prompts of a score or an intervention.

    ``replaces_n``: this command's old ``--n`` meant this count; it is refused, naming ``--n-prompts``.
    """
    add_int(parser, "--n-prompts", default=default, help=f"{help} (default {default})")
    if replaces_n:
        add_removed(parser, "--n", use=f"--n-prompts ({help})")


def add_eval_prompts(parser: argparse.ArgumentParser, *, default: int, help: str, replaces_n: bool = False) -> None:
    """``--eval-n N`` (``args.eval_n``): prompts per length of an accuracy evaluation.

    Not ``--n-prompts``, the prompts of a score or an intervention, which a command may
    take too (its help says so). ``replaces_n``: this command's old ``--n`` meant this
    count; it is refused, naming ``--eval-n``.
    """
    add_int(parser, "--eval-n", default=default, help=f"{help} (default {default}; a different count from --n-prompts)")
    if replaces_n:
        add_removed(parser, "--n", use=f"--eval-n ({help})")


def add_csv_out(parser: argparse.ArgumentParser, *, columns: str = "") -> None:
    """``--out FILE.csv``: optional; the command prints its table either way."""
    shown = f" (columns {columns})" if columns else ""
    parser.add_argument("--out", default=None, metavar="FILE.csv", help=f"CSV file to write the table to{shown}")


def inputs_of(args: argparse.Namespace) -> list[str]:
    """The existing input paths of a command (RUN_DIR, ``--model``): outputs must not overwrite them."""
    paths = [getattr(args, "run_dir", None), getattr(args, "model", None)]
    return [p for p in paths if p is not None and Path(p).exists()]


def check_csv_out(args: argparse.Namespace) -> Path | None:
    """``--out`` writable and not a run's or an input's file, checked before any work (None: not given)."""
    return None if args.out is None else check_output_path(args.out, inputs=inputs_of(args))


def add_compute(parser: argparse.ArgumentParser, *, device_help: str = "torch device, e.g. cpu or cuda") -> None:
    """``--device``, ``--no-progress`` and ``--threads``: every command that runs a model."""
    from headkit.cli.threads import THREADS_HELP, check_threads

    parser.add_argument("--device", type=device, default=None, help=device_help)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--threads", action=_Checked, check=lambda flag, text: check_threads(to_int(flag, text)),
        metavar="N", default=None, help=THREADS_HELP,
    )  # fmt: skip


def add_extend(parser: argparse.ArgumentParser) -> None:
    """``--extend prefix|window``: how an evaluation makes prompts longer than the trained length."""
    parser.add_argument(
        "--extend", choices=extend_modes(), default="prefix",
        help="how longer prompts are made: prefix = tokens added before an unchanged prompt (PosSym-2026's, "
        "default); window = the chain redrawn over an enlarged window (headkit's harder variant)",
    )  # fmt: skip
