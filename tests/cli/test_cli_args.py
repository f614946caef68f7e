"""headkit.cli.args: one name, one meaning and one check per shared argument (issue 11).

- every command taking a RUN_DIR refuses a missing one before torch is imported;
- the name lists offered as ``choices=`` equal the library's registries;
- the prompt counts have one flag each; the old ``--n`` (one or the other by command) is refused, naming the flag;
- integers and positive numbers go through `headkit.checks` (one message format);
- every command that runs a model takes ``--device``, ``--no-progress``, ``--threads``.
"""

from __future__ import annotations

import argparse
import inspect
import os
import subprocess
import sys

import pytest

from headkit.cli import args as types
from headkit.cli import build_parser, main
from headkit.report.demo import DEMO_ADDED

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
HEAVY = ("torch", "transformer_lens", "pandas", "numpy", "transformers")

# every command that takes a run directory, with its other required arguments
RUN_COMMANDS = {
    "eval": [],
    "info": [],
    "report": [],
    "census": [],
    "dynamics": [],
    "discrepancy": ["--lengths", "17"],
    "ablate": [],
    "patch": [],
    "path-patch": ["--receivers", "final"],
}
MODEL_COMMANDS = ("train", "eval", "demo", "report", "census", "dynamics", "discrepancy", "ablate", "patch", "path-patch")

PROBE = """
import sys
from headkit.cli import main
code = main(sys.argv[1:])
print(f"CODE:{{code}}")
print("HEAVY:" + ",".join(m for m in {heavy!r} if m in sys.modules))
"""


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if a.dest == "command").choices


def test_the_commands_taking_a_run_are_all_listed():
    taking = {name for name, sub in _subcommands().items() if any(a.dest == "run_dir" for a in sub._actions)}
    assert taking == set(RUN_COMMANDS)


@pytest.mark.parametrize("command", sorted(RUN_COMMANDS))
def test_a_missing_run_dir_fails_before_torch_is_imported(command, tmp_path):
    # `headkit eval /nowhere` used to import torch and TransformerLens first (18 s under load)
    missing = str(tmp_path / "nowhere")
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), command, missing, *RUN_COMMANDS[command]],
        capture_output=True, text=True, env=ENV, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    lines = done.stdout.splitlines()
    assert lines[-2] == "CODE:2", done.stdout + done.stderr
    assert done.stderr.startswith("headkit: error: ") and done.stderr.count("\n") == 1, done.stderr
    assert f"{missing} does not exist" in done.stderr or f"{missing} is not a headkit run directory" in done.stderr
    assert lines[-1] == "HEAVY:", f"headkit {command} imported {lines[-1][6:]} before refusing the run directory"


def test_choices_are_the_library_registries():
    from headkit.evaluation import EXTENDS
    from headkit.interventions.ablation import METHODS, ablation_sweep
    from headkit.interventions.activation_patching import DIRECTIONS
    from headkit.interventions.metrics import METRICS
    from headkit.interventions.sites import SITES
    from headkit.tasks import BUILDERS
    from headkit.tasks.natural import SUITES
    from headkit.training.config import PRESETS

    assert types.task_names() == tuple(BUILDERS)
    assert types.metric_names() == tuple(METRICS)
    assert types.site_names() == tuple(SITES)
    assert types.ablation_methods() == tuple(METHODS)
    assert types.default_ablation_method() == inspect.signature(ablation_sweep).parameters["method"].default
    assert types.directions() == tuple(DIRECTIONS)
    assert types.suite_names() == tuple(SUITES)
    assert types.preset_names() == tuple(PRESETS)
    assert types.extend_modes() == EXTENDS
    assert types.demo_added() == DEMO_ADDED
    commands = _subcommands()
    offered = {a.dest: tuple(a.choices) for a in commands["patch"]._actions if a.choices}
    assert offered["metric"] == types.metric_names() and offered["site"] == types.site_names()
    method = next(a for a in commands["ablate"]._actions if a.dest == "method")
    assert method.default == types.default_ablation_method() == "zero"


def test_prompt_counts_have_one_flag_each():
    commands = _subcommands()
    for name, sub in commands.items():
        shown = sub.format_help()
        assert "--n " not in shown and "--n," not in shown, name  # the removed flag is not offered
        flags = {o for a in sub._actions for o in a.option_strings}
        if {"--n-prompts", "--eval-n"} & flags:
            assert not {"--eval_n", "--n_prompts"} & flags
        if "--eval-n" in flags:  # its help tells it from --n-prompts
            assert "a different count from --n-prompts" in " ".join(shown.split()), name
    parse = {name: sub.parse_args for name, sub in commands.items()}
    assert parse["ablate"](["r", "--n-prompts", "7"]).n_prompts == 7
    assert parse["ablate"](["r"]).n_prompts == 256
    assert parse["eval"](["r", "--eval-n", "9"]).eval_n == 9 and parse["eval"](["r"]).eval_n == 512
    assert parse["demo"](["--eval-n", "9"]).eval_n == 9
    report = parse["report"](["r", "--eval-n", "9", "--n-prompts", "3"])
    assert (report.eval_n, report.n_prompts) == (9, 3)
    assert "n" not in vars(report)  # the refusal stores nothing
    dynamics = parse["dynamics"](["r", "--eval-n", "9"])
    assert (dynamics.eval_n, dynamics.n_prompts) == (9, 64)


# the commands that took --n, and what it meant there
REMOVED_N = {
    "demo": "--eval-n (evaluation prompts per length)",
    "eval": "--eval-n (prompts per length)",
    "report": "--eval-n (prompts per length, and of the ablation and patching)",
    "ablate": "--n-prompts (number of prompts)",
    "patch": "--n-prompts (number of prompts)",
    "path-patch": "--n-prompts (number of prompts)",
}


@pytest.mark.parametrize("command", sorted(REMOVED_N))
@pytest.mark.parametrize("spelling", [["--n", "8"], ["--n=8"], ["--n"]], ids=["value", "equals", "bare"])
def test_the_removed_n_is_refused_naming_the_flag_of_that_command(command, spelling, tmp_path, capsys):
    # given a missing RUN_DIR (and, for the demo, an --out to write): --n is refused at parse time, before
    # the run directory is looked at (the first check of every command) or anything is written
    missing = tmp_path / "missing"
    argv = [command, *(["--out", str(missing)] if command == "demo" else [str(missing)])]
    assert main([*argv, *RUN_COMMANDS.get(command, []), *spelling]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"headkit: error: {command}: --n was removed: use {REMOVED_N[command]}\n"
    assert captured.out == "" and not missing.exists()


def test_the_removed_n_is_refused_exactly_where_it_existed():
    """Every command whose old --n meant a prompt count refuses it (none forgotten)."""
    refusing = {
        name for name, sub in _subcommands().items()
        if any(type(a).__name__ == "_Removed" and "--n" in a.option_strings for a in sub._actions)
    }  # fmt: skip
    assert refusing == set(REMOVED_N)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["ablate", "r", "--n-prompts", "0"], "headkit: error: ablate: --n-prompts=0 is out of range: allowed 1 or more"),
        (["ablate", "r", "--n-prompts", "x"], "headkit: error: ablate: --n-prompts must be an integer, got 'x'"),
        (["ablate", "r", "--batch-size", "\u00b2"], "--batch-size must be an integer, got '\u00b2'"),
        (["eval", "r", "--threads", "-1"], "headkit: error: eval: --threads=-1 is out of range: allowed 1 or more"),
        (["train", "--out", "x", "--steps", "1.5"], "--steps must be an integer, got '1.5'"),
        (["train", "--out", "x", "--lr", "nan"], "--lr='nan' must be a positive number"),
        (["train", "--out", "x", "--lr", "inf"], "--lr='inf' must be a positive number"),
        (["demo", "--steps-scale", "0"], "--steps-scale=0.0 must be a positive number"),
        (["patch", "r", "--site", "mlp_in"], "argument --site: invalid choice: 'mlp_in'"),
        (["ablate", "r", "--method", "half"], "argument --method: invalid choice: 'half'"),
    ],
)
def test_numbers_and_names_are_one_line_errors_at_parse_time(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_to_int_and_to_positive_float():
    assert types.to_int("--k", " 12 ") == 12 and types.to_int("--k", "0", low=0) == 0
    assert types.to_positive_float("--x", "2.5") == 2.5
    with pytest.raises(Exception, match=r"--k=9 is out of range: allowed 1\.\.8"):
        types.to_int("--k", "9", high=8)


def test_every_command_that_runs_a_model_takes_device_progress_and_threads():
    commands = _subcommands()
    for name in MODEL_COMMANDS:
        flags = {o for a in commands[name]._actions for o in a.option_strings}
        assert {"--device", "--no-progress", "--threads"} <= flags, name
    assert {o for a in commands["info"]._actions for o in a.option_strings} == {"-h", "--help"}


def test_csv_out_is_optional_wherever_a_command_writes_one_table():
    commands = _subcommands()
    for name in ("eval", "census", "dynamics", "discrepancy", "ablate", "patch", "path-patch"):
        out = next(a for a in commands[name]._actions if a.dest == "out")
        assert not out.required and out.default is None and out.metavar == "FILE.csv", name
    assert next(a for a in commands["train"]._actions if a.dest == "out").required  # the run to create
