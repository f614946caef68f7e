"""Every command that writes refuses, in one line and before any work, to overwrite a run or its input.

Issue 9, through the installed ``headkit`` script in a real subprocess: ``--out``
pointing at a run's own files, into a checkpoint, at the command's input, or
somewhere unwritable (``/proc``); seeds beyond what ``torch.Generator`` takes,
non-ASCII digits in head specs, duplicate heads, unavailable devices, and demo
options the tasks cannot build. Each refusal must be one ``headkit: error:`` line
with exit code 2, leave the run's files byte-identical, and come before any work:
the run directory here has a checkpoint folder whose weights are garbage, so a
command that loaded the model first would fail with another message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from headkit.model_config import ModelConfig
from headkit.models import model_from_config
from headkit.tasks import TaskSpec
from headkit.training.checkpoints import save_checkpoint
from headkit.training.config import default_config
from headkit.training.layout import checkpoint_dir

SCRIPT = Path(sys.executable).with_name("headkit")
TASK = TaskSpec("number", {"target_window": 4, "pointer_window": 4, "max_hops": 2, "n_letters": 10, "max_pointer": 6})
BIG_SEED = str(2**70)  # 1180591620717411303424: torch.Generator.manual_seed overflows


def headkit(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [str(SCRIPT), *argv], capture_output=True, text=True, env=env, timeout=300, cwd=cwd
    )


def assert_refused(done: subprocess.CompletedProcess, words: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert done.stderr.startswith("headkit: error:") and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert words in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory: run.json, metrics.csv and a broken checkpoint (any load would fail)."""
    run = tmp_path_factory.mktemp("safety") / "run"
    step = checkpoint_dir(run, 10)
    step.mkdir(parents=True)
    (run / "run.json").write_text('{"marker": "run.json"}\n')
    (run / "metrics.csv").write_text("step,loss\n10,1.0\n")
    (step / "meta.json").write_text('{"marker": "meta.json"}\n')
    (step / "model.safetensors").write_bytes(b"not weights")
    return run


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """A loadable run: a tiny number-task model in checkpoints/, plus run files."""
    run = tmp_path_factory.mktemp("good") / "run"
    cfg = ModelConfig(n_layers=2, d_model=32, n_heads=2, d_vocab=len(TASK.build(1, seed=0).vocab), n_ctx=32)
    save_checkpoint(checkpoint_dir(run, 1), model_from_config(cfg, seed=0), model_config=cfg, step=1, task=TASK)
    # a real run.json: a checkpoint is checked against its run's task (issue 9)
    (run / "run.json").write_text(json.dumps(default_config("number", task=TASK, model=cfg, steps=1).to_dict()) + "\n")
    (run / "metrics.csv").write_text("step,loss\n1,1.0\n")
    return run


# --- --out never overwrites a run's files or the command's input --------------------------

RUN_FILES = ["run.json", "metrics.csv", "checkpoints/step_0000010/meta.json", "checkpoints/step_0000010/model.safetensors"]
COMMANDS = {
    "eval": ["eval", "{run}"],
    "census": ["census", "{run}"],
    "ablate": ["ablate", "{run}"],
    "patch": ["patch", "{run}"],
    "path-patch": ["path-patch", "{run}", "--receivers", "final"],
    "dynamics": ["dynamics", "{run}"],
    "discrepancy": ["discrepancy", "{run}", "--lengths", "17"],
}


# eval on every run file, every other command on one (classify on run.json: the example)
CASES = [("eval", target) for target in RUN_FILES] + [
    ("census", "run.json"),
    ("ablate", "metrics.csv"),
    ("patch", "checkpoints/step_0000010/meta.json"),
    ("path-patch", "checkpoints/step_0000010/model.safetensors"),
    ("dynamics", "run.json"),
    ("discrepancy", "metrics.csv"),
]


@pytest.mark.parametrize("command,target", CASES)
def test_out_never_overwrites_a_run_file(run, command, target):
    before = snapshot(run)
    argv = [a.format(run=run) for a in COMMANDS[command]]
    done = headkit(*argv, "--out", str(run / target))
    words = "inside the checkpoint" if target.startswith("checkpoints/") else "belongs to the run"
    assert_refused(done, words)
    assert snapshot(run) == before


@pytest.mark.parametrize("command", ["eval", "census", "ablate", "dynamics"])
def test_out_under_proc_is_refused_before_any_work(run, command):
    argv = [a.format(run=run) for a in COMMANDS[command]]
    assert_refused(headkit(*argv, "--out", "/proc/headkit.csv"), "--out /proc/headkit.csv: cannot write in /proc")


def test_out_in_a_file_is_refused(run, tmp_path):
    (tmp_path / "file").write_text("")
    assert_refused(headkit("ablate", str(run), "--out", str(tmp_path / "file" / "x.csv")), "is a file, not a directory")


@pytest.mark.parametrize("command", ["eval", "census", "report"])
def test_out_that_is_a_fifo_a_loop_or_ends_in_a_slash_is_refused_before_any_work(run, tmp_path, command):
    """Issue 18.1, 18.10, 18.13: a FIFO (as /dev/null would be, as root) was replaced by a regular
    file, ``x.csv/`` wrote ``x.csv``, a symlink loop gave a traceback. (The run's weights are
    garbage: a refusal after loading would name them instead.)"""
    fifo, loop = tmp_path / "pipe.csv", tmp_path / "loop.csv"
    os.mkfifo(fifo)
    loop.symlink_to(loop)
    argv = [a.format(run=run) for a in COMMANDS.get(command, [command, "{run}"])]
    if command != "report":  # a report's --out is a folder: a trailing '/' is fine there
        assert_refused(headkit(*argv, "--out", f"{tmp_path}/x.csv/"), "ends with '/', which names a directory")
        assert_refused(headkit(*argv, "--out", str(fifo)), "exists and is not a regular file (a FIFO)")
    assert_refused(headkit(*argv, "--out", str(loop)), "is a symlink loop")
    assert_refused(headkit(*argv, "--out", ""), "--out is empty")
    assert fifo.is_fifo() and loop.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loop.csv", "pipe.csv"]


def test_out_over_the_commands_input_is_refused(tmp_path):
    model = tmp_path / "gptj"
    model.mkdir()
    (model / "config.json").write_text("{}")
    done = headkit("census", "--gptj", str(model), "--out", str(model / "config.json"))
    assert_refused(done, "would write over this command's input")
    assert (model / "config.json").read_text() == "{}"


def test_train_never_writes_into_a_run_or_a_checkpoint(run):
    before = snapshot(run)
    for out, words in [(run / "checkpoints", "belongs to the run"), (run / "checkpoints" / "step_0000010" / "x", "inside the checkpoint")]:
        assert_refused(headkit("train", "--task", "copy", "--steps", "1", "--out", str(out)), words)
    assert_refused(headkit("train", "--task", "copy", "--out", "/proc/headkit-run"), "cannot write in /proc")
    assert snapshot(run) == before


@pytest.mark.slow
def test_a_new_file_inside_a_run_directory_is_allowed(good_run):
    before = snapshot(good_run)
    out = good_run / "ablation.csv"
    done = headkit("ablate", str(good_run), "--n-prompts", "4", "--heads", "0.0", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.is_file() and snapshot(good_run) == {**before, "ablation.csv": out.read_bytes()}


# --- the remaining tracebacks: one line, exit 2 ------------------------------------------

SEEDED = {
    "train": ["train", "--task", "copy", "--out", "{tmp}/new"],
    "eval": ["eval", "{run}"],
    "census": ["census", "{run}", "--out", "{tmp}/x.csv"],
    "ablate": ["ablate", "{run}"],
    "patch": ["patch", "{run}"],
    "path-patch": ["path-patch", "{run}", "--receivers", "final"],
    "dynamics": ["dynamics", "{run}", "--out", "{tmp}/x.csv"],
    "discrepancy": ["discrepancy", "{run}", "--lengths", "17", "--out", "{tmp}/x.csv"],
}


@pytest.mark.parametrize("command", list(SEEDED))
@pytest.mark.parametrize("seed,words", [(BIG_SEED, "is too large: seeds are 0..18446744073709551615"), ("-1", "'-1' is not a non-negative integer"), ("\u00b9", "is not a non-negative integer")])
def test_seeds_torch_cannot_take_are_refused(run, tmp_path, command, seed, words):
    argv = [a.format(run=run, tmp=tmp_path) for a in SEEDED[command]]
    done = headkit(*argv, f"--seed={seed}")
    assert_refused(done, f"{command}: argument --seed: ")
    assert words in done.stderr


@pytest.mark.slow
def test_largest_seed_is_accepted(good_run):
    # 2**64 - 1 reaches torch.Generator.manual_seed in the prompt builder and works
    done = headkit("ablate", str(good_run), "--n-prompts", "2", "--heads", "0.0", "--seed", str(2**64 - 1))
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize(
    "argv,words",
    [
        (["ablate", "{run}", "--heads", "\u00b2.0"], "head spec '\u00b2.0' must look like LAYER.HEAD"),
        (["patch", "{run}", "--heads", "0.\u0661"], "must look like LAYER.HEAD"),
        (["discrepancy", "{run}", "--lengths", "17", "--heads", "\u00b2.0", "--out", "{tmp}/x.csv"], "must look like LAYER.HEAD"),
        (["path-patch", "{run}", "--receivers", "\u00b2.0.q"], "must look like LAYER.HEAD.q|k|v"),
        (["path-patch", "{run}", "--receivers", "final", "--senders", "\u00b2.0"], "must look like LAYER.HEAD"),
        (["eval", "{run}", "--lengths", "\u00b9\u00b7"], "is not an integer"),
        (["ablate", "{run}", "--heads", "1.0,1.0", "--together"], "head 1.0 is given twice in '1.0,1.0'"),
        (["patch", "{run}", "--heads", "0.1,0.0,0.1"], "head 0.1 is given twice"),
        (["path-patch", "{run}", "--receivers", "1.0.q,1.0.q"], "receiver 1.0.q is given twice"),
        (["ablate", "{run}", "--metric", "f1"], "invalid choice: 'f1'"),
    ],
)
def test_bad_specs_are_one_line(run, tmp_path, argv, words):
    assert_refused(headkit(*[a.format(run=run, tmp=tmp_path) for a in argv]), words)


@pytest.mark.parametrize(
    "argv,device",
    [
        (["train", "--task", "copy", "--out", "{tmp}/new"], "cuda"),
        (["ablate", "{run}"], "cuda"),
        (["census", "--gptj", "{tmp}", "--out", "{tmp}/x.csv"], "cuda"),
        (["patch", "{run}"], "gpu"),
    ],
)
@pytest.mark.slow
def test_unavailable_devices_are_refused(run, tmp_path, argv, device):
    if device == "cuda" and torch.cuda.is_available():  # on a GPU machine, a GPU it does not have
        device = "cuda:999"
    done = headkit(*[a.format(run=run, tmp=tmp_path) for a in argv], "--device", device)
    words = "is not a torch device" if device == "gpu" else "is not available"
    assert_refused(done, f"argument --device: device '{device}' {words}")


@pytest.mark.parametrize(
    "options,words",
    [
        (["--lengths", "17,5"], "--lengths 5: the number task cannot build prompts of it: length=5 is out of range"),
        (["--lengths", "17,2049"], "--lengths 2049 exceeds the number model's context n_ctx=2048"),
        (["--steps-scale", "0"], "--steps-scale"),
        (["--eval-n", "0"], "--eval-n"),
    ],
)
@pytest.mark.slow
def test_demo_checks_every_option_before_training(tmp_path, options, words):
    out = tmp_path / "demo"
    assert_refused(headkit("demo", "--out", str(out), "--no-progress", *options), words)
    assert not out.exists()  # nothing trained, nothing written


def test_demo_out_must_be_writable(tmp_path, run):
    assert_refused(headkit("demo", "--out", "/proc/headkit-demo"), "cannot write in /proc")
    assert_refused(headkit("demo", "--out", str(run / "checkpoints" / "demo")), "belongs to the run")
