"""save_checkpoint / load_checkpoint: exact round trips, atomic writes, corruption caught."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import headkit.training.checkpoints as ckpt
from headkit.errors import HeadkitError
from headkit.model_config import ModelConfig
from headkit.model_types import is_bridge, is_hooked
from headkit.models import model_from_config
from headkit.tasks.registry import TaskSpec
from headkit.training.checkpoints import load_checkpoint, save_checkpoint
from headkit.training.layout import checkpoint_dir, latest_checkpoint, list_checkpoints

from hooked import hooked_gptj, needs_hooked

SIZES = dict(n_layers=2, d_model=32, n_heads=2, d_vocab=40, n_ctx=64, rotary_dim=8)
CONFIG = ModelConfig(**SIZES)
TASK = TaskSpec("number", {"target_window": 8, "max_hops": 4, "n_letters": 24})  # d_vocab 24 + 16 = CONFIG.d_vocab


def model(seed: int = 0):
    return model_from_config(CONFIG, seed=seed, device="cpu")


def write(run: Path, step: int, seed: int = 0, **kwargs) -> Path:
    return save_checkpoint(
        checkpoint_dir(run, step), model(seed), model_config=CONFIG, step=step, **kwargs
    )


def tokens() -> torch.Tensor:
    return torch.randint(0, CONFIG.d_vocab, (2, 10), generator=torch.Generator().manual_seed(3))


def test_round_trip_gives_identical_logits(tmp_path):
    original = model(seed=5)
    path = save_checkpoint(tmp_path / "c", original, model_config=CONFIG, step=7)
    loaded = load_checkpoint(path, device="cpu").model
    with torch.no_grad():
        assert torch.equal(loaded(tokens()), original(tokens()))
    for name, tensor in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_bfloat16_round_trip_keeps_dtype(tmp_path):
    original = model_from_config(CONFIG, seed=1, device="cpu", dtype="bfloat16")
    path = save_checkpoint(tmp_path / "c", original, model_config=CONFIG, step=0)
    loaded = load_checkpoint(path, device="cpu").model
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    for name, tensor in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_metadata_round_trip(tmp_path):
    from headkit.training.config import TrainConfig

    # issue 11: train_config is a TrainConfig (it was a free-form dict), read back as one
    train_config = TrainConfig(task=TASK, model=CONFIG, lr=1e-3, batch_size=128, schedule="cosine", seed=5)
    metrics = {"loss": 0.25, "accuracy": 0.875}
    optimizer = torch.optim.AdamW(model().parameters(), lr=1e-3)
    path = save_checkpoint(
        tmp_path / "c", model(), model_config=CONFIG, step=1200, task=TASK, metrics=metrics,
        train_config=train_config, optimizer_state=optimizer.state_dict(),
    )
    loaded = load_checkpoint(path, with_optimizer=True, device="cpu")
    assert loaded.path == path
    assert loaded.step == 1200
    assert loaded.model_config == CONFIG
    assert loaded.task == TASK
    assert loaded.metrics == metrics
    assert loaded.train_config == train_config and isinstance(loaded.train_config, TrainConfig)
    assert load_checkpoint(save_checkpoint(tmp_path / "d", model(), model_config=CONFIG, step=0)).train_config is None
    assert loaded.optimizer_state["param_groups"][0]["lr"] == 1e-3
    assert load_checkpoint(path, device="cpu").optimizer_state is None
    meta = json.loads((path / "meta.json").read_text())
    assert set(meta["sha256"]) == {"config.json", "model.safetensors", "optimizer.pt"}
    assert meta["headkit_version"]


def test_failed_write_leaves_old_checkpoint_and_no_partial_directory(tmp_path, monkeypatch):
    run = tmp_path / "run"
    old = write(run, 100, seed=1, metrics={"loss": 1.0})
    before = {p.name: p.read_bytes() for p in old.iterdir()}

    def broken_writer(state, filename, *args, **kwargs):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", broken_writer)
    with pytest.raises(OSError, match="disk full"):
        write(run, 100, seed=2)  # replacing the same step
    with pytest.raises(OSError, match="disk full"):
        write(run, 200, seed=2)  # a new step
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000100"]
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before
    assert load_checkpoint(old, device="cpu").metrics == {"loss": 1.0}


@pytest.mark.parametrize(
    "failure,words",
    [
        (OSError(28, "No space left on device"), "the disk is full: could not write "),
        (RuntimeError("basic_ios::clear: iostream error"), "the disk is probably full: could not write "),
        (RuntimeError("[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing file data/0: file write failed"),
         "the disk is probably full: could not write "),
    ],
)
def test_a_full_disk_is_one_line_and_leaves_the_old_checkpoint(tmp_path, monkeypatch, failure, words):
    """Issue 18.11: torch.save on a full disk raised its "basic_ios::clear"; now a DiskFullError
    names the checkpoint, and the checkpoint already there is untouched."""
    from headkit.errors import DiskFullError

    run = tmp_path / "run"
    old = write(run, 100, seed=1, metrics={"loss": 1.0}, optimizer_state={"a": 1})
    before = {p.name: p.read_bytes() for p in old.iterdir()}

    def full(*args, **kwargs):
        raise failure

    monkeypatch.setattr(ckpt.torch, "save", full)
    with pytest.raises(DiskFullError, match=words + r".*step_0000100 .*holding .*checkpoints\)?"):
        write(run, 100, seed=2, optimizer_state={"a": 2})
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000100"]
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before
    monkeypatch.undo()
    monkeypatch.setattr(ckpt.torch, "save", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("some other bug")))
    with pytest.raises(RuntimeError, match="some other bug"):  # not every RuntimeError is a full disk
        write(run, 100, seed=2, optimizer_state={"a": 2})


def test_failed_swap_restores_old_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    old = write(run, 100, seed=1, metrics={"loss": 1.0})
    real_rename = ckpt.os.rename

    def rename(src, dst):
        if ".tmp-" in Path(src).name:  # the moment the new directory would take its place
            raise OSError("crash during rename")
        real_rename(src, dst)

    monkeypatch.setattr(ckpt.os, "rename", rename)
    with pytest.raises(OSError, match="crash during rename"):
        write(run, 100, seed=2)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000100"]
    assert load_checkpoint(old, device="cpu").metrics == {"loss": 1.0}


def test_replacing_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    write(run, 100, seed=1, metrics={"loss": 1.0})
    path = write(run, 100, seed=2, metrics={"loss": 0.5})
    assert load_checkpoint(path, device="cpu").metrics == {"loss": 0.5}
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000100"]


def test_truncated_weights_named(tmp_path):
    path = write(tmp_path, 1)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    with pytest.raises(HeadkitError, match=r"model\.safetensors is corrupted or truncated"):
        load_checkpoint(path)


def test_flipped_byte_named(tmp_path):
    path = write(tmp_path, 1)
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(HeadkitError, match=r"model\.safetensors is corrupted or truncated"):
        load_checkpoint(path)


def test_missing_or_bad_meta_named(tmp_path):
    path = write(tmp_path, 1)
    meta = path / "meta.json"
    text = meta.read_text()
    meta.write_text(text[:20])
    with pytest.raises(HeadkitError, match=r"meta\.json is not valid JSON"):
        load_checkpoint(path)
    meta.write_text(json.dumps({**json.loads(text), "model_config": {"n_layers": 0}}))
    with pytest.raises(HeadkitError, match=r"meta\.json is invalid: n_layers=0"):
        load_checkpoint(path)
    meta.unlink()
    with pytest.raises(HeadkitError, match=r"meta\.json not found"):
        load_checkpoint(path)


def test_missing_files_named(tmp_path):
    path = write(tmp_path, 1)
    with pytest.raises(HeadkitError, match=r"optimizer\.pt not found"):
        load_checkpoint(path, with_optimizer=True)
    (path / "model.safetensors").unlink()
    with pytest.raises(HeadkitError, match=r"model\.safetensors not found"):
        load_checkpoint(path)
    with pytest.raises(HeadkitError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")


def test_model_not_matching_config_refused(tmp_path):
    other = model_from_config(ModelConfig(n_layers=1, d_model=32, n_heads=2, d_vocab=40))
    with pytest.raises(HeadkitError, match="model does not match model_config"):
        save_checkpoint(tmp_path / "c", other, model_config=CONFIG, step=0)
    with pytest.raises(HeadkitError, match="step=-1"):
        save_checkpoint(tmp_path / "c", model(), model_config=CONFIG, step=-1)
    with pytest.raises(HeadkitError, match="metric 'loss'"):
        save_checkpoint(tmp_path / "c", model(), model_config=CONFIG, step=0, metrics={"loss": "x"})
    assert not (tmp_path / "c").exists()


def test_list_and_latest(tmp_path):
    run = tmp_path / "run"
    for step in (300, 20, 1000):
        write(run, step)
    (run / "checkpoints" / ".step_0002000.tmp-abc").mkdir()  # a crashed write is not listed
    assert checkpoint_dir(run, 20).name == "step_0000020"
    assert list_checkpoints(run) == [(s, checkpoint_dir(run, s)) for s in (20, 300, 1000)]
    assert latest_checkpoint(run) == checkpoint_dir(run, 1000)


def test_run_dir_errors(tmp_path):
    with pytest.raises(HeadkitError, match=f"run directory {tmp_path / 'missing'} does not exist"):
        latest_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert list_checkpoints(tmp_path / "empty") == []
    with pytest.raises(HeadkitError, match=f"run directory {tmp_path / 'empty'} has no checkpoints"):
        latest_checkpoint(tmp_path / "empty")


def _format_1(folder, original) -> None:
    """A format-1 checkpoint of ``original`` in ``folder``: a HookedTransformer state dict, no config.json."""
    from safetensors.torch import save_file

    folder.mkdir()
    save_file({k: v.contiguous() for k, v in original.state_dict().items()}, str(folder / "model.safetensors"))
    meta = {
        "format": 1, "step": 3, "model_config": CONFIG.to_dict(), "dtype": "float32", "task": TASK.to_dict(),
        "metrics": {}, "train_config": {}, "sha256": {"model.safetensors": ckpt._sha256(folder / "model.safetensors")},
    }  # fmt: skip
    (folder / "meta.json").write_text(json.dumps(meta))


@needs_hooked
def test_format_1_checkpoints_still_load(tmp_path, monkeypatch):
    """headkit before the Hugging Face backend wrote a HookedTransformer state dict, no config.json:
    a HookedTransformer again on TransformerLens 3.x, the GPT-J it converts to where 4.x has none."""
    original = hooked_gptj(**SIZES, seed=4)
    _format_1(tmp_path / "old", original)
    loaded = load_checkpoint(tmp_path / "old", device="cpu")
    assert loaded.step == 3 and loaded.task == TASK and is_hooked(loaded.model)
    with torch.no_grad():
        assert torch.equal(loaded.model(tokens()), original(tokens()))
    monkeypatch.setattr(ckpt, "has_hooked_transformer", lambda: False)  # as on TransformerLens 4.x
    converted = load_checkpoint(tmp_path / "old", device="cpu").model
    assert is_bridge(converted)
    with torch.no_grad():
        torch.testing.assert_close(converted(tokens()), original(tokens()), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        original.blocks[0].ln2.w.mul_(2)  # a HookedTransformer that no GPT-J holds
    _format_1(tmp_path / "other", original)
    with pytest.raises(HeadkitError, match=r"format 1\) holds a model a GPT-J cannot hold .*ln2\.w differs"):
        load_checkpoint(tmp_path / "other", device="cpu")


@needs_hooked
def test_hooked_transformer_that_is_not_a_gptj_is_refused(tmp_path):
    m = hooked_gptj(**SIZES)
    with torch.no_grad():
        m.blocks[0].attn.b_Q.fill_(0.5)
    with pytest.raises(HeadkitError, match=r"blocks\.0\.attn\.b_Q is not zero"):
        save_checkpoint(tmp_path / "c", m, model_config=CONFIG, step=0)
    m = hooked_gptj(**SIZES)
    with torch.no_grad():
        m.blocks[1].ln2.w.mul_(2)
    with pytest.raises(HeadkitError, match=r"blocks\.1\.ln2\.w differs from ln1\.w"):
        save_checkpoint(tmp_path / "c", m, model_config=CONFIG, step=0)


# --- issue 18: sizes bounded by the weight headers, special files ----------------------


def rewrite_meta(path: Path, **changes) -> None:
    """Change meta.json (and config.json to agree, with its recorded sha256), as a hostile file would."""
    meta = json.loads((path / "meta.json").read_text())
    for key, value in changes.items():
        section, field = key.split("__")
        target = meta[section] if section == "model_config" else meta[section]["params"]
        target[field] = value
    if "model_config__n_layers" in changes:
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**config, "n_layer": changes["model_config__n_layers"]}))
        meta["sha256"]["config.json"] = ckpt._sha256(path / "config.json")
    (path / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("legacy", [False, True], ids=["format2", "format1"])
def test_a_billion_layers_in_meta_json_is_refused_from_the_weight_header(tmp_path, legacy):
    path = write(tmp_path, 1)
    if legacy:  # a format-1 checkpoint: HookedTransformer names, no config.json
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model().state_dict().items()}, str(path / "model.safetensors"))
        meta = json.loads((path / "meta.json").read_text())
        meta |= {"format": 1, "sha256": {"model.safetensors": ckpt._sha256(path / "model.safetensors")}}
        (path / "meta.json").write_text(json.dumps(meta))
    rewrite_meta(path, model_config__n_layers=10**9)
    message = r"meta\.json: n_layers=1000000000 but the weight files \(model\.safetensors\) hold 2 blocks"
    with pytest.raises(HeadkitError, match=message):
        load_checkpoint(path, device="cpu")
    with pytest.raises(HeadkitError, match=message):
        ckpt.load_hf_model(path, dropout=0.0)


def test_a_billion_token_task_in_meta_json_is_refused_before_any_prompt(tmp_path):
    path = write(tmp_path, 1, task=TASK)
    rewrite_meta(path, task__max_pointer=10**9)
    with pytest.raises(HeadkitError, match=r"meta\.json: task number .*'max_pointer': 1000000000.* has a vocabulary of "
                       r"1000000024 tokens but model_config's d_vocab is 40"):
        load_checkpoint(path, device="cpu")


@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
def test_a_weight_file_that_is_a_device_is_not_reported_missing(tmp_path, special):
    import os

    path = write(tmp_path, 1)
    (path / "model.safetensors").unlink()
    if special == "fifo":
        os.mkfifo(path / "model.safetensors")
    else:
        (path / "model.safetensors").symlink_to(special)
    with pytest.raises(HeadkitError, match=r"model\.safetensors is not a regular file \(a (character device|FIFO)\)"):
        load_checkpoint(path, device="cpu")
