"""Run directories (headkit.training.layout) and issue 9's safety cases: locks, dead ends, stale
temporaries, incomplete runs, truncated checkpoints, NaN, foreign checkpoints, bad metadata.

Command-line behaviour goes through a real ``headkit`` subprocess; the lock test runs two.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from headkit.errors import HeadkitError
from headkit.model_config import ModelConfig
from headkit.tasks import TaskSpec
from headkit.training.checkpoints import load_checkpoint
from headkit.training.config import TrainConfig, read_metrics
from headkit.training.layout import (
    LOCK_FILE,
    RunLock,
    checkpoint_dir,
    clean_temporaries,
    list_checkpoints,
    resolve_checkpoint,
    run_status,
)
from headkit.training.loop import train

NUMBER = TaskSpec("number", {"n_letters": 6, "max_pointer": 8, "target_window": 4, "pointer_window": 4})
SCRIPT = Path(sys.executable).with_name("headkit")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
# the copy task's default model is one attention-only layer: cheap to train from the command line
TRAIN = ["train", "--task", "copy", "--batch-size", "8", "--eval-every", "2", "--no-progress"]


def tiny(**overrides) -> TrainConfig:
    settings = dict(
        task=NUMBER,
        model=ModelConfig(n_layers=2, d_model=16, n_heads=2, d_vocab=14, n_ctx=40),
        steps=6, batch_size=16, lr=3e-3, warmup_steps=2, eval_every=2, eval_n=32, seed=3, device="cpu",
    )  # fmt: skip
    settings.update(overrides)
    return TrainConfig(**settings)


def headkit(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *argv], capture_output=True, text=True, env=ENV, timeout=timeout)


def assert_one_line_error(done: subprocess.CompletedProcess, words: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("headkit: error:"), done.stderr
    assert words in done.stderr, done.stderr


# --- resolution ---------------------------------------------------------------------------


def test_resolve_latest_chosen_or_the_checkpoint_itself(tmp_path):
    train(tiny(checkpoint_steps=(2,)), out_dir=tmp_path, progress=False)
    assert resolve_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 6)
    assert resolve_checkpoint(tmp_path, step=2) == checkpoint_dir(tmp_path, 2)
    assert resolve_checkpoint(checkpoint_dir(tmp_path, 2)) == checkpoint_dir(tmp_path, 2)
    with pytest.raises(HeadkitError, match="has no checkpoint at step 4: it has 2, 6"):
        resolve_checkpoint(tmp_path, step=4)
    with pytest.raises(HeadkitError, match="does not exist"):
        resolve_checkpoint(tmp_path / "nowhere")


# --- locks ---------------------------------------------------------------------------------


def test_lock_refuses_a_second_holder_and_is_released(tmp_path):
    with RunLock(tmp_path / "run"):
        assert (tmp_path / "run" / LOCK_FILE).read_text().strip() == str(os.getpid())
        with pytest.raises(HeadkitError, match=rf"in use by another headkit process \(pid {os.getpid()}\)"):
            with RunLock(tmp_path / "run"):
                pass
        with pytest.raises(HeadkitError, match="in use by another headkit process"):
            train(tiny(), out_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / LOCK_FILE).exists()
    with RunLock(tmp_path / "run"):  # free again
        pass


def test_a_stale_lock_file_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LOCK_FILE).write_text(dead.stdout)
    result = train(tiny(steps=2), out_dir=tmp_path / "run", progress=False)
    assert result.step == 2


@pytest.mark.slow
def test_two_train_processes_into_one_directory(tmp_path):
    """The second `headkit train` refuses at once, naming the first one's pid; the run is the first's."""
    run = tmp_path / "run"
    first = subprocess.Popen(
        [str(SCRIPT), *TRAIN, "--steps", "1000000", "--seed", "1", "--out", str(run)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (run / LOCK_FILE).is_file() or not (run / LOCK_FILE).read_text().strip():
            assert time.monotonic() < deadline and first.poll() is None, first.communicate()
            time.sleep(0.05)
        for argv in ([*TRAIN, "--steps", "4", "--seed", "2"], ["train", "--resume", "--no-progress"]):
            second = headkit(*argv, "--out", str(run))
            assert_one_line_error(second, f"is in use by another headkit process (pid {first.pid})")
            assert first.poll() is None  # refused at once: the first one is still training
    finally:
        first.terminate()
        first.communicate(timeout=60)
    if (run / "run.json").exists():
        assert json.loads((run / "run.json").read_text())["seed"] == 1


@pytest.mark.slow
def test_a_second_demo_into_the_same_folder_is_refused(tmp_path):
    with RunLock(tmp_path):  # this test process plays the first demo
        done = headkit("demo", "--out", str(tmp_path), "--steps-scale", "0.001", "--no-progress")
    assert_one_line_error(done, f"is in use by another headkit process (pid {os.getpid()})")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing trained


# --- dead ends, temporaries, incomplete runs -------------------------------------------------


def test_a_failure_before_the_first_update_leaves_no_dead_end(tmp_path, monkeypatch):
    import headkit.training.loop as training

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory")

    with monkeypatch.context() as patch:
        patch.setattr(training, "train_step", out_of_memory)
        with pytest.raises(HeadkitError, match="out of memory at step 1"):
            train(tiny(), out_dir=tmp_path / "run", progress=False)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []  # no run.json, no lock left
    assert train(tiny(), out_dir=tmp_path / "run", progress=False).step == 6  # a new run just works


@pytest.mark.slow
def test_cli_huge_batch_is_refused_up_front_and_leaves_nothing(tmp_path):
    done = headkit(*TRAIN, "--steps", "2", "--batch-size", "1000000000", "--out", str(tmp_path / "run"))
    assert_one_line_error(done, "one update of batch_size=1000000000 (prompts of length")
    assert not (tmp_path / "run").exists()


def test_resume_of_a_run_without_checkpoint_starts_afresh(tmp_path, monkeypatch):
    import headkit.training.loop as training

    with monkeypatch.context() as patch:
        patch.setattr(training, "_save", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            train(tiny(), out_dir=tmp_path, progress=False)
    assert list_checkpoints(tmp_path) == []
    assert train(tiny(), out_dir=tmp_path, resume=True, progress=False).step == 6


def test_stale_temporaries_are_cleaned_when_the_run_is_next_opened(tmp_path):
    train(tiny(steps=2), out_dir=tmp_path, progress=False)
    stale = [
        tmp_path / "checkpoints" / ".step_0000004.tmp-abc123",
        tmp_path / "checkpoints" / ".step_0000002.old-def456",
    ]
    for folder in stale:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
    (tmp_path / ".metrics.csv.x1y2.tmp").write_text("half")
    train(tiny(steps=4), out_dir=tmp_path, resume=True, progress=False)
    left = [p.name for p in [*tmp_path.iterdir(), *(tmp_path / "checkpoints").iterdir()] if p.name.startswith(".")]
    assert left == []
    assert clean_temporaries(tmp_path) == []


def test_info_says_a_run_is_incomplete(tmp_path):
    cfg = tiny(steps=6, checkpoint_steps=(2,))
    train(cfg, out_dir=tmp_path, progress=False)
    assert run_status(tmp_path).complete
    # killed after its last metrics row but before its last checkpoint
    import shutil

    shutil.rmtree(checkpoint_dir(tmp_path, 6))
    status = run_status(tmp_path)
    assert not status.complete and status.last_checkpoint == 2 and status.last_metrics_step == 6
    done = headkit("info", str(tmp_path))
    assert done.returncode == 0
    assert "status: incomplete: last checkpoint at step 2 of 6, metrics reach step 6; --resume continues from step 2" in done.stdout


def test_resume_falls_back_to_the_newest_valid_checkpoint(tmp_path):
    cfg = tiny(steps=6, checkpoint_steps=(2, 4))
    straight = train(cfg, out_dir=tmp_path / "straight", progress=False)
    train(TrainConfig.from_dict({**cfg.to_dict(), "steps": 4}), out_dir=tmp_path / "cut", progress=False)
    weights = checkpoint_dir(tmp_path / "cut", 4) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # the latest one is truncated
    resumed = train(cfg, out_dir=tmp_path / "cut", resume=True, progress=False)
    for name, tensor in straight.hf_model.state_dict().items():
        assert torch.equal(resumed.hf_model.state_dict()[name], tensor), name
    assert read_metrics(tmp_path / "cut")["step"].tolist() == read_metrics(tmp_path / "straight")["step"].tolist()


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_run_never_goes_into_a_folder_of_other_files_or_an_empty_path(tmp_path, monkeypatch):
    """Issue 18.2: a new run wrote its metrics.csv over a user's own in a folder holding no run,
    and ``out_dir=""`` trained into the current directory."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "metrics.csv").write_text("my own numbers\n")
    (mine / ".notes.tmp").write_text("mine too: never cleaned as a temporary\n")
    before = _files(mine)
    for resume in (False, True):
        with pytest.raises(HeadkitError, match=r"mine is not empty and holds no headkit run \(it has \.notes\.tmp, metrics\.csv\): remove them"):
            train(tiny(), out_dir=mine, resume=resume, progress=False)
    assert _files(mine) == before and sorted(p.name for p in mine.iterdir()) == [".notes.tmp", "metrics.csv"]
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    with pytest.raises(HeadkitError, match="out_dir is empty: give the run directory"):
        train(tiny(), out_dir="", progress=False)
    assert list(here.iterdir()) == []


def test_resume_refuses_when_checkpoints_exist_but_none_loads(tmp_path):
    """Issue 18.3: with every optimizer.pt deleted, --resume silently trained from step 0 over the run."""
    cfg = tiny(steps=4, checkpoint_steps=(2,))
    train(cfg, out_dir=tmp_path, progress=False)
    for _, folder in list_checkpoints(tmp_path):
        (folder / "optimizer.pt").unlink()
    before = _files(tmp_path)
    with pytest.raises(
        HeadkitError,
        match=r"^cannot resume .*: none of its 2 checkpoints can be used \(step 4: .*step_0000004/optimizer\.pt not found; "
        r"step 2: .*step_0000002/optimizer\.pt not found\); nothing was changed",
    ):
        train(TrainConfig.from_dict({**cfg.to_dict(), "steps": 6}), out_dir=tmp_path, resume=True, progress=False)
    assert _files(tmp_path) == before  # metrics.csv, run.json and the checkpoints untouched


def test_a_full_disk_stops_training_in_one_line_and_resume_is_exact(tmp_path, monkeypatch):
    """Issue 18.11: torch.save on a full disk raised "basic_ios::clear"; now one line naming the
    checkpoint and the last good one, and resuming from it gives the uninterrupted run bit for bit."""
    import headkit.training.checkpoints as ckpt
    from headkit.errors import DiskFullError

    cfg = tiny(steps=4, checkpoint_steps=(2,))
    straight = train(cfg, out_dir=tmp_path / "straight", progress=False)
    real_save = ckpt.torch.save

    def save(obj, f, *args, **kwargs):
        if "step_0000004" in str(f):
            raise RuntimeError("basic_ios::clear: iostream error")
        return real_save(obj, f, *args, **kwargs)

    cut = tmp_path / "cut"
    with monkeypatch.context() as patch:
        patch.setattr(ckpt.torch, "save", save)
        with pytest.raises(
            DiskFullError,
            match=r"^the disk is probably full: could not write .*cut/checkpoints/step_0000004 \(torch: basic_ios::clear: "
            r"iostream error\).*; training stopped at step 4, the last checkpoint is step 2 \(--resume continues from it\)$",
        ):
            train(cfg, out_dir=cut, progress=False)
    assert [p.name for p in (cut / "checkpoints").iterdir()] == ["step_0000002"]  # no half-written step 4
    resumed = train(cfg, out_dir=cut, resume=True, progress=False)
    for name, tensor in straight.hf_model.state_dict().items():
        assert torch.equal(resumed.hf_model.state_dict()[name], tensor), name
    assert read_metrics(cut).drop(columns="elapsed_s").equals(read_metrics(tmp_path / "straight").drop(columns="elapsed_s"))


# --- silently wrong results -------------------------------------------------------------------


@pytest.mark.slow
def test_training_stops_at_the_first_non_finite_loss(tmp_path):
    done = headkit(*TRAIN, "--steps", "40", "--lr", "1e9", "--checkpoint-steps", "1", "--out", str(tmp_path / "run"))
    # a non-finite loss, or held-out logits found non-finite at an evaluation (here: after the first update)
    assert_one_line_error(done, "training diverged: ")
    saved = [s for s, _ in list_checkpoints(tmp_path / "run")] if (tmp_path / "run").exists() else []
    if saved:  # only checkpoints whose held-out logits were finite are kept, and named
        assert f"the last good checkpoint is step {saved[-1]}" in done.stderr
        for step in saved:
            load_checkpoint(checkpoint_dir(tmp_path / "run", step))  # finite, loads
    else:
        assert "no checkpoint was written" in done.stderr


def test_a_diverging_run_keeps_its_last_good_checkpoint(tmp_path):
    # warm-up to lr 1e4: steps 1-2 stay finite (checkpoint at 2), a later update diverges
    cfg = tiny(lr=1e4, warmup_steps=20, steps=20, checkpoint_steps=(2,), eval_every=2)
    with pytest.raises(HeadkitError, match=r"training diverged: .*the last good checkpoint is step 2; lower"):
        train(cfg, out_dir=tmp_path / "run")
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [2]
    load_checkpoint(checkpoint_dir(tmp_path / "run", 2))  # finite, loads


def test_a_checkpoint_with_non_finite_weights_is_refused_naming_the_tensor(tmp_path):
    from headkit.gptj_hf import build_hf_model
    from headkit.training.checkpoints import save_checkpoint

    cfg = tiny()
    model = build_hf_model(cfg.model, seed=0)
    with torch.no_grad():
        model.transformer.h[1].attn.v_proj.weight[0, 0] = float("nan")
    path = save_checkpoint(tmp_path / "c", model, model_config=cfg.model, step=0)
    with pytest.raises(HeadkitError, match=r"tensor transformer\.h\.1\.attn\.v_proj\.weight holds 1 non-finite value"):
        load_checkpoint(path)


@pytest.mark.slow
def test_a_checkpoint_of_another_task_or_step_in_a_run_is_refused(tmp_path):
    train(tiny(steps=2), out_dir=tmp_path / "a", progress=False)
    copy = TaskSpec("copy", {"length": 6, "vocab_size": 14})
    train(tiny(task=copy, steps=4), out_dir=tmp_path / "b", progress=False)
    foreign = checkpoint_dir(tmp_path / "a", 4)
    os.rename(checkpoint_dir(tmp_path / "b", 4), foreign)
    with pytest.raises(HeadkitError, match="does not belong to this run"):
        load_checkpoint(foreign)
    done = headkit("eval", str(tmp_path / "a"), "--lengths", "9", "--eval-n", "4", "--no-progress")
    assert_one_line_error(done, "does not belong to this run")
    renamed = checkpoint_dir(tmp_path / "a", 7)
    os.rename(checkpoint_dir(tmp_path / "a", 2), renamed)
    with pytest.raises(HeadkitError, match="records step 2 but the directory is named for step 7"):
        load_checkpoint(renamed)


def _edit_meta(folder: Path, edit) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    edit(meta)
    (folder / "meta.json").write_text(json.dumps(meta))


@pytest.mark.slow
def test_unknown_task_parameter_in_meta_is_one_line(tmp_path):
    train(tiny(steps=2), out_dir=tmp_path, progress=False)
    (tmp_path / "run.json").unlink()  # a bare checkpoint folder: only meta.json speaks for the task
    folder = checkpoint_dir(tmp_path, 2)
    _edit_meta(folder, lambda m: m["task"]["params"].update(colour="red"))
    done = headkit("eval", str(folder), "--lengths", "9", "--eval-n", "4", "--no-progress")
    assert_one_line_error(done, "task 'number' has no parameter colour")


@pytest.mark.slow
def test_config_weights_mismatch_is_one_line(tmp_path):
    train(tiny(steps=2), out_dir=tmp_path, progress=False)
    folder = checkpoint_dir(tmp_path, 2)
    _edit_meta(folder, lambda m: m["model_config"].update(d_model=32))
    done = headkit("eval", str(folder), "--lengths", "9", "--eval-n", "4", "--no-progress")
    assert_one_line_error(done, "n_embd=16 but meta.json's model_config implies 32")
    # weights of another shape behind a matching config.json: load_gptj names the tensor
    meta = json.loads((folder / "meta.json").read_text())
    meta["model_config"]["d_model"] = 16
    state = load_file(str(folder / "model.safetensors"))
    state["lm_head.bias"] = torch.zeros(3)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    from headkit.training.checkpoints import _sha256

    meta["sha256"]["model.safetensors"] = _sha256(folder / "model.safetensors")
    (folder / "meta.json").write_text(json.dumps(meta))
    done = headkit("eval", str(folder), "--lengths", "9", "--eval-n", "4", "--no-progress")
    assert_one_line_error(done, "tensor lm_head.bias has shape (3,)")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a CPU-only torch")
def test_cli_device_cuda_without_cuda_is_one_line(tmp_path):
    done = headkit(*TRAIN, "--steps", "2", "--device", "cuda", "--out", str(tmp_path / "run"))
    assert_one_line_error(done, "device 'cuda' is not available")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_cli_paper_preset_and_resume(tmp_path):
    """--preset paper starts, checkpoints and resumes on the CPU (2 updates of batch 2)."""
    base = ["train", "--task", "number", "--preset", "paper", "--batch-size", "2", "--eval-every", "1", "--no-progress"]
    run = tmp_path / "run"
    assert headkit(*base, "--steps", "1", "--out", str(run), timeout=600).returncode == 0
    done = headkit("train", "--out", str(run), "--resume", "--steps", "2", "--no-progress", timeout=600)
    assert done.returncode == 0, done.stderr
    assert [s for s, _ in list_checkpoints(run)] == [1, 2]
    assert_one_line_error(headkit("train", "--out", str(run), "--resume", "--preset", "cpu"), "--preset applies to a new run")
