"""The train / eval / info / demo commands: happy paths and one-line errors with exit code 2."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from headkit.cli import main
from headkit.evaluation import COLUMNS, evaluate
from headkit.training.checkpoints import load_checkpoint
from headkit.training.config import read_metrics, read_run_config
from headkit.training.layout import list_checkpoints

# the copy task's default model is one attention-only layer: cheap to train from the command line
TRAIN = ["train", "--task", "copy", "--steps", "4", "--batch-size", "8", "--eval-every", "2", "--no-progress"]


@pytest.fixture(scope="module")
def copy_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "copy"
    assert main([*TRAIN, "--out", str(run), "--checkpoint-steps", "2"]) == 0
    return run


def one_line_error(capsys, words: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("headkit") and "error:" in err, err
    assert "Traceback" not in err
    assert words in err, err
    return err


def test_train_writes_a_run_with_the_options_given(copy_run, capsys):
    cfg = read_run_config(copy_run)
    assert (cfg.task.name, cfg.steps, cfg.batch_size, cfg.eval_every) == ("copy", 4, 8, 2)
    assert cfg.checkpoint_steps == (2,)
    assert [s for s, _ in list_checkpoints(copy_run)] == [2, 4]
    assert read_metrics(copy_run)["step"].tolist() == [0, 2, 4]


def test_train_resume_extends_the_run(copy_run, tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(copy_run, run)
    assert main(["train", "--out", str(run), "--resume", "--steps", "6", "--no-progress"]) == 0
    assert "trained copy to step 6" in capsys.readouterr().out
    assert read_run_config(run).steps == 6
    assert read_metrics(run)["step"].tolist() == [0, 2, 4, 6]
    assert main(["train", "--out", str(run), "--resume", "--lr", "0.5", "--no-progress"]) == 2
    one_line_error(capsys, "differs from its run.json in lr")


def test_eval_writes_the_tidy_csv_and_prints_the_table(copy_run, tmp_path, capsys):
    out = tmp_path / "acc.csv"
    assert main(["eval", str(copy_run), "--lengths", "8,16", "--eval-n", "16", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "copy model at step 4" in printed and "all" in printed
    frame = pd.read_csv(out)
    assert list(frame.columns) == list(COLUMNS)
    assert frame["length"].tolist() == [8, 16] and frame["n"].tolist() == [16, 16]
    ckpt = load_checkpoint(list_checkpoints(copy_run)[-1][1])
    reference = evaluate(ckpt.model, ckpt.task, lengths=[8, 16], n_prompts=16)
    assert frame["accuracy"].tolist() == pytest.approx(reference["accuracy"].tolist())
    # a checkpoint directory works as well as a run directory
    assert main(["eval", str(list_checkpoints(copy_run)[0][1]), "--eval-n", "8", "--no-progress"]) == 0
    assert "copy model at step 2" in capsys.readouterr().out


def test_info_shows_config_checkpoints_and_last_metrics(copy_run, capsys):
    assert main(["info", str(copy_run)]) == 0
    out = capsys.readouterr().out
    assert "task copy, 4 steps planned" in out
    assert "checkpoints: step 2, step 4" in out
    assert "last metrics (step 4)" in out and '"batch_size": 8' in out


@pytest.mark.parametrize(
    "argv, words",
    [
        (["eval", "{run}", "--lengths", "17,x"], "--lengths: 'x' is not an integer"),
        (["eval", "{run}", "--lengths", "17,2100"], "evaluation length 2100 exceeds the model's context n_ctx=2048"),
        (["eval", "{tmp}/missing"], "does not exist"),
        (["info", "{tmp}/missing"], "is not a headkit run directory"),
        (["train", "--task", "chess", "--out", "{tmp}/x"], "invalid choice: 'chess'"),
        (["train", "--task", "copy", "--steps", "zero", "--out", "{tmp}/x"], "--steps must be an integer, got 'zero'"),
        (["train", "--out", "{tmp}/x"], "--task is required for a new run"),
        (["train", "--task", "copy", "--lr", "1e308", "--out", "{tmp}/x"], "lr=1e+308 is too large: it overflows float32 (largest 3.4028234663852886e+38), the precision"),
        (["train", "--task", "copy", "--out", "{run}"], "already holds a run"),
        (["train", "--task", "copy", "--checkpoint-steps", "2,999", "--out", "{tmp}/x"], "checkpoint step 999"),
        (["demo", "--out", "{tmp}/d", "--lengths", "17,2049"], "--lengths 2049 exceeds the number model's context"),
        (["demo", "--out", "{tmp}/d", "--steps-scale", "-1"], "must be a positive number"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(argv, words, copy_run, tmp_path, capsys):
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = [a.format(run=copy_run, tmp=tmp_path) for a in argv]
    if argv[0] == "eval":
        argv += ["--out", str(tmp_path / "out.csv")]
    assert exit_code(argv) == 2
    one_line_error(capsys, words)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def exit_code(argv: list[str]) -> int:
    """main's exit code, whether it returns it or argparse raises SystemExit."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def test_train_refuses_a_folder_of_the_users_files_and_an_empty_out(tmp_path, capsys, monkeypatch):
    """Issue 18.2: ``train --out DIR`` overwrote the user's own metrics.csv; ``--out ""`` trained into
    the current directory."""
    (tmp_path / "metrics.csv").write_text("mine\n")
    assert main([*TRAIN, "--out", str(tmp_path)]) == 2
    one_line_error(capsys, f"{tmp_path} is not empty and holds no headkit run (it has metrics.csv): remove them")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"] and (tmp_path / "metrics.csv").read_text() == "mine\n"
    empty = tmp_path / "cwd"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert main([*TRAIN, "--out", ""]) == 2
    one_line_error(capsys, "--out is empty: give a directory path")
    assert list(empty.iterdir()) == []


def test_a_full_disk_is_one_line_naming_the_file(copy_run, tmp_path, capsys, monkeypatch):
    """Issue 18.11: ``eval --out`` on a full disk ended in an OSError 28 traceback."""
    import errno

    def full(self, path, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    out = tmp_path / "acc.csv"
    assert main(["eval", str(copy_run), "--lengths", "8", "--eval-n", "4", "--out", str(out), "--no-progress"]) == 2
    one_line_error(capsys, f"the disk is full: could not write {out} (the file system holding {tmp_path})")
    assert list(tmp_path.iterdir()) == []
    # a full disk met outside headkit's own writes: one line too
    import headkit.training.layout

    def stat_full(run):
        raise OSError(errno.ENOSPC, "No space left on device", str(run / "x"))

    monkeypatch.setattr(headkit.training.layout, "run_status", stat_full)
    assert main(["info", str(copy_run)]) == 2
    one_line_error(capsys, f"the disk is full: could not write {copy_run / 'x'}")


def test_corrupted_run_is_one_line_error(copy_run, tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(copy_run, run)
    (run / "run.json").write_text("{truncated")
    assert main(["info", str(run)]) == 2
    one_line_error(capsys, "run.json is corrupted")
    last = list_checkpoints(run)[-1][1] / "model.safetensors"
    last.write_bytes(last.read_bytes()[:100])
    assert main(["eval", str(run), "--no-progress"]) == 2
    one_line_error(capsys, "is corrupted or truncated")


@pytest.mark.parametrize(
    "name,content,words",
    [
        ("run.json", b"\xff\xfe{", "run.json is corrupted: 'utf-8' codec can't decode byte 0xff in position 0"),
        ("metrics.csv", b"step,accuracy\n\xff\xfe\n", "metrics.csv is corrupted: 'utf-8' codec can't decode byte 0xff"),
        ("metrics.csv", b"step,accuracy\n0,0.5\n2\n", "metrics.csv is corrupted: line 3 has 1 field but its header has 2"),
        ("metrics.csv", b"step,accuracy\n0,0.5,7,8\n", "metrics.csv is corrupted: line 2 has 4 fields but its header has 2"),
        ("metrics.csv", b"step,accuracy\nabc,0.5\n", "metrics.csv is corrupted: line 2 has no step number"),
    ],
)
def test_a_run_file_that_is_not_utf8_or_has_a_malformed_row_is_one_line(copy_run, tmp_path, capsys, name, content, words):
    """Issue 18.12: invalid UTF-8 or a malformed row in run.json / metrics.csv crashed info and eval."""
    run = tmp_path / "copy"
    shutil.copytree(copy_run, run)
    (run / name).write_bytes(content)
    assert main(["info", str(run)]) == 2
    one_line_error(capsys, words)
    if name == "run.json":  # eval reads run.json (the checkpoint's place in its run), not metrics.csv
        assert main(["eval", str(run), "--lengths", "8", "--eval-n", "4", "--no-progress"]) == 2
        one_line_error(capsys, words)
    else:
        from headkit.errors import HeadkitError

        with pytest.raises(HeadkitError, match=r"metrics\.csv is corrupted"):  # what --resume reads
            read_metrics(run)


def test_installed_script_reports_errors_in_one_line(tmp_path):
    script = Path(sys.executable).with_name("headkit")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [str(script), "eval", str(tmp_path / "nowhere"), "--lengths", "17"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("headkit: error:"), done.stderr
    assert "does not exist" in done.stderr and done.stdout == ""


@pytest.fixture
def small_demo(monkeypatch):
    """The demo's flow with its default configs shrunk to 2-layer d_model 16 models."""
    from headkit.report import demo

    real = demo.default_config

    def shrunk(task, **options):
        cfg = real(task, **options)
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, n_layers=2, d_model=16), eval_n=32)

    monkeypatch.setattr(demo, "default_config", shrunk)


@pytest.mark.slow
def test_demo_trains_evaluates_and_then_reuses(small_demo, tmp_path, capsys):
    demo = ["demo", "--out", str(tmp_path), "--steps-scale", "0.002", "--lengths", "17,33", "--eval-n", "8", "--no-progress"]
    assert main(demo) == 0
    out = capsys.readouterr().out
    for words in ("== train ==", "== evaluate ==", "number: step 4", "letter: step 4", "accuracy.csv"):
        assert words in out
    frame = pd.read_csv(tmp_path / "accuracy.csv")
    assert list(frame.columns) == list(COLUMNS)
    assert sorted(set(zip(frame["task"], frame["length"]))) == [("letter", 17), ("letter", 33), ("number", 17), ("number", 33)]
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.safetensors")}
    metrics = (tmp_path / "number" / "metrics.csv").read_bytes()

    assert main(demo) == 0  # second run: the complete models are reused, not retrained
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.safetensors")} == stamps
    assert (tmp_path / "number" / "metrics.csv").read_bytes() == metrics
    again = pd.read_csv(tmp_path / "accuracy.csv")
    pd.testing.assert_frame_equal(again, frame)  # reloaded models score exactly as the trained ones

    capsys.readouterr()
    other = [a if a != "0.002" else "0.003" for a in demo]
    assert main(other) == 2  # another config in the same directory
    one_line_error(capsys, "holds a number run with another config (differs in steps")


@pytest.mark.slow
def test_demo_evaluates_with_the_papers_protocol_and_prints_r1_beside_the_paper(small_demo, tmp_path, capsys, monkeypatch):
    """Default evaluation = tokens added before the prompt (PosSym-2026 Fig. 5B); the R1
    table carries the paper's value, headkit's and a verdict. ``--extend window`` too."""
    from headkit.report import demo as cmd_demo
    from headkit.report.paper import R1_ACCURACY, verdict

    monkeypatch.setattr(cmd_demo, "DEMO_STEPS", cmd_demo.DEMO_STEPS[:2])  # train + evaluate only
    demo = ["demo", "--out", str(tmp_path), "--steps-scale", "0.002", "--added", "0,46", "--eval-n", "8", "--no-progress"]
    assert main(demo) == 0
    out = capsys.readouterr().out
    assert "R1 against PosSym-2026 Fig. 5B" in out
    frame = pd.read_csv(tmp_path / "accuracy.csv")
    assert set(frame["extend"]) == {"prefix"} and set(frame["added"]) == {0, 46}
    assert set(frame["length"]) == {17, 63}
    pooled = frame[frame["hop"] == "all"]
    for task in ("number", "letter"):  # every printed row: the paper's value, the measured one, the verdict
        for added in (0, 46):
            measured = float(pooled[(pooled["task"] == task) & (pooled["added"] == added)]["accuracy"].iloc[0])
            paper = R1_ACCURACY[task][added]
            line = next(l for l in out.splitlines() if l.split()[:2] == [task, str(added)])
            assert f"{paper:.3f}" in line and f"{measured:.3f}" in line and verdict(measured, paper, n=8).split()[0] in line
    assert main([*demo, "--extend", "window"]) == 0  # models reused; the window protocol
    window = pd.read_csv(tmp_path / "accuracy.csv")
    assert set(window["extend"]) == {"window"} and set(window["length"]) == {17, 63}
    assert "R1 against" not in capsys.readouterr().out  # the paper has no window curve
    assert main([*demo[:-5], "--added", "0,2100", "--no-progress"]) == 2
    one_line_error(capsys, "--added 2100 exceeds the number model's context n_ctx=2048")


@pytest.mark.slow
def test_demo_trains_both_runs_in_parallel_and_they_equal_serial_runs(small_demo, tmp_path, capsys, monkeypatch):
    """Two processes, one per run: the checkpoints equal those of a serial demo, byte for byte."""
    from headkit.report import demo as cmd_demo

    monkeypatch.setattr(cmd_demo, "DEMO_STEPS", cmd_demo.DEMO_STEPS[:1])  # train only
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    base = ["demo", "--steps-scale", "0.002", "--eval-n", "8", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "par")]) == 0
    assert "in parallel (2 processes" in capsys.readouterr().out
    assert main([*base, "--out", str(tmp_path / "ser"), "--serial"]) == 0
    assert "in parallel" not in capsys.readouterr().out
    for task in ("number", "letter"):
        par = sorted((tmp_path / "par" / task).rglob("model.safetensors"))
        ser = sorted((tmp_path / "ser" / task).rglob("model.safetensors"))
        assert len(par) == len(ser) == 4
        assert [p.read_bytes() for p in par] == [p.read_bytes() for p in ser]


def test_demo_scores_accuracy_on_the_runs_hf_model_exactly_as_transformerlens(copy_run):
    # the demo evaluates with the run's own Hugging Face model (SDPA, faster at long lengths);
    # the accuracy table must equal the one TransformerLens's forward gives
    from headkit.gptj_hf import HFLogits
    from headkit.report.demo import _fast_scorer

    ckpt = load_checkpoint(list_checkpoints(copy_run)[-1][1])
    scorer = _fast_scorer(copy_run, ckpt.model, 16)
    assert isinstance(scorer, HFLogits)
    fast = evaluate(scorer, ckpt.task, lengths=[8, 16], n_prompts=32)
    slow = evaluate(ckpt.model, ckpt.task, lengths=[8, 16], n_prompts=32)
    assert fast.equals(slow)
    # a length the HF model's rotary table cannot take falls back to the HookedTransformer
    assert _fast_scorer(copy_run, ckpt.model, scorer.cfg.n_ctx + 1) is ckpt.model
