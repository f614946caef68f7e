"""``headkit eval``: the paper's length protocol from the command line, and requests refused up front."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from headkit.cli import main
from headkit.evaluation import COLUMNS, evaluate
from headkit.models import extend_context
from headkit.training.checkpoints import load_checkpoint
from headkit.training.config import default_config
from headkit.training.layout import list_checkpoints
from headkit.training.loop import train

TRAIN = ["train", "--task", "number", "--steps", "2", "--batch-size", "8", "--eval-every", "2", "--no-progress"]


@pytest.fixture(scope="module")
def number_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli_eval") / "number"
    assert main([*TRAIN, "--out", str(run)]) == 0
    return run


def headkit(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The installed ``headkit`` script in a real subprocess."""
    script = Path(sys.executable).with_name("headkit")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(script), *argv], capture_output=True, text=True, env=env, timeout=timeout)


def assert_one_line_error(done: subprocess.CompletedProcess, words: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("headkit"), done.stderr
    assert "error:" in done.stderr and "Traceback" not in done.stderr
    assert words in done.stderr and done.stdout == "", done.stderr


def test_added_with_both_protocols_writes_length_added_and_extend(number_run, tmp_path, capsys):
    out = tmp_path / "acc.csv"
    assert main(["eval", str(number_run), "--added", "0,46", "--eval-n", "16", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "extend=prefix" in printed and "added" in printed
    frame = pd.read_csv(out)
    assert list(frame.columns) == list(COLUMNS)
    assert frame["length"].tolist() == [17] * 5 + [63] * 5 and frame["added"].tolist() == [0] * 5 + [46] * 5
    assert set(frame["extend"]) == {"prefix"}
    ckpt = load_checkpoint(list_checkpoints(number_run)[-1][1])
    reference = evaluate(ckpt.model, ckpt.task, lengths=[17, 63], n_prompts=16)
    assert frame["accuracy"].tolist() == pytest.approx(reference["accuracy"].tolist())

    window = tmp_path / "window.csv"
    argv = ["eval", str(number_run), "--lengths", "63", "--extend", "window", "--eval-n", "16", "--out", str(window)]
    assert main([*argv, "--no-progress"]) == 0
    frame = pd.read_csv(window)
    assert set(frame["extend"]) == {"window"} and set(frame["added"]) == {46}
    reference = evaluate(ckpt.model, ckpt.task, lengths=[63], extend="window", n_prompts=16)
    assert frame["accuracy"].tolist() == pytest.approx(reference["accuracy"].tolist())


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A number run whose model was trained with n_ctx=257 (the default is now 2,048)."""
    cfg = default_config("number", steps=2, batch_size=8, eval_every=2)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, n_ctx=257))
    run = tmp_path_factory.mktemp("cli_eval_short") / "number"
    train(cfg, out_dir=run, progress=False)
    return run


def test_default_run_reaches_the_papers_lengths(number_run):
    assert load_checkpoint(list_checkpoints(number_run)[-1][1]).model.cfg.n_ctx >= 17 + 996


def test_n_ctx_lets_a_short_context_run_reach_the_papers_lengths(short_run, tmp_path, capsys):
    number_run = short_run
    assert load_checkpoint(list_checkpoints(number_run)[-1][1]).model.cfg.n_ctx == 257
    assert main(["eval", str(number_run), "--added", "296", "--eval-n", "4", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "evaluation length 313 exceeds the model's context n_ctx=257" in err
    out = tmp_path / "long.csv"
    argv = ["eval", str(number_run), "--added", "296", "--n-ctx", "1024", "--eval-n", "4", "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    ckpt = load_checkpoint(list_checkpoints(number_run)[-1][1])
    reference = evaluate(extend_context(ckpt.model, 1024), ckpt.task, added=[296], n_prompts=4)
    assert pd.read_csv(out)["accuracy"].tolist() == pytest.approx(reference["accuracy"].tolist())


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--added", "-1"], "--added: -1 is too small"),
        (["--lengths", "17", "--added", "0"], "not both"),
        (["--extend", "middle"], "invalid choice: 'middle'"),
    ],
)
def test_bad_protocol_options_are_one_line_errors(number_run, tmp_path, argv, words, capsys):
    try:
        code = main(["eval", str(number_run), *argv, "--out", str(tmp_path / "x.csv")])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize("option, value, words", [("--lengths", "17,17", "--lengths repeats 17"), ("--added", "0,46,46", "--added repeats 46")])
def test_repeated_lengths_are_refused_not_duplicated(number_run, tmp_path, option, value, words):
    done = headkit("eval", str(number_run), option, value, "--out", str(tmp_path / "x.csv"))
    assert_one_line_error(done, words)
    assert not (tmp_path / "x.csv").exists()


def test_a_billion_prompts_are_refused_before_any_work(number_run, tmp_path, capsys, monkeypatch):
    """Refused by the memory estimate before a single prompt is built (it was a wall-clock bound,
    which a loaded machine broke; issue 20)."""
    from headkit.tasks.registry import TaskSpec

    def no_prompts(self, *args, **kwargs):
        raise AssertionError("prompts were built before the memory check")

    monkeypatch.setattr(TaskSpec, "build", no_prompts)
    code = main(["eval", str(number_run), "--eval-n", "1000000000", "--out", str(tmp_path / "x.csv"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "GiB of memory" in err and "1000000000 prompts" in err, err
    assert not (tmp_path / "x.csv").exists()
