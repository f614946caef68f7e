"""Files and folders headkit writes atomically get the permissions the umask allows."""

from __future__ import annotations

import os
import stat

import pandas as pd
import pytest

from headkit.io import write_csv


@pytest.fixture
def umask():
    def set_mask(mask: int) -> None:
        os.umask(mask)

    before = os.umask(0o022)
    yield set_mask
    os.umask(before)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_files_follow_the_umask(tmp_path, umask):
    frame = pd.DataFrame({"a": [1]})
    umask(0o022)
    assert _mode(write_csv(tmp_path / "a.csv", frame)) == 0o644
    umask(0o027)
    assert _mode(write_csv(tmp_path / "b.csv", frame)) == 0o640
    assert _mode(tmp_path / "b.csv") == 0o666 & ~0o027 & ~0o111


def test_run_folders_and_checkpoints_follow_the_umask(tmp_path, umask):
    from headkit.training.config import default_config
    from headkit.training.loop import train

    umask(0o022)
    run = tmp_path / "run"
    train(default_config("copy", steps=2, batch_size=4, eval_every=1, eval_n=4), out_dir=run, progress=False)
    folders = [p for p in run.rglob("*") if p.is_dir()]
    files = [p for p in run.rglob("*") if p.is_file()]
    assert folders and files
    assert {p.name: _mode(p) for p in folders} == {p.name: 0o755 for p in folders}
    assert {p.name: _mode(p) for p in files} == {p.name: 0o644 for p in files}
