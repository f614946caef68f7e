"""Atomic writes, the synthetic vocabulary and the batch container."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch

from headkit.errors import HeadkitError
from headkit.io import atomic_path, write_csv, write_json
from headkit.tasks.base import IGNORE, TaskBatch, Vocab


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "table.csv"
    write_csv(target, pd.DataFrame({"a": [1, 2]}))
    before = target.read_text()
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]  # no temp left behind


def test_a_full_disk_is_a_headkit_error_naming_the_file(tmp_path, monkeypatch):
    """Issue 18.11: OSError 28 from a write became a traceback; now one DiskFullError line
    naming the file and its folder, the old file unchanged and no temporary left."""
    import errno

    from headkit.errors import DiskFullError

    target = tmp_path / "table.csv"
    write_csv(target, pd.DataFrame({"a": [1, 2]}))

    def full(self, path, **kwargs):
        with open(path, "w") as handle:
            handle.write("a\n1")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    with pytest.raises(DiskFullError, match=rf"^the disk is full: could not write {target} \(the file system holding {tmp_path}\)"):
        write_csv(target, pd.DataFrame({"a": [3]}))
    assert target.read_text() == "a\n1\n2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


def test_atomic_folder_swaps_whole_and_stale_temporaries_are_only_headkits(tmp_path):
    """Issue 18.8: a folder is built beside its target and swapped in whole; a temporary whose
    writer is gone is removed (a folder moved aside by a swap killed between its two renames is
    put back first); a user's hidden file and a running writer's temporary are left alone."""
    import os
    import subprocess
    import sys

    from headkit.io import atomic_folder, clean_stale_temporaries, temp_prefix

    target = tmp_path / "report"
    with atomic_folder(target) as folder:
        (folder / "a.csv").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as folder:
            (folder / "b.csv").write_text("2")
            raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"] and [p.name for p in target.iterdir()] == ["a.csv"]
    with atomic_folder(target) as folder:
        (folder / "b.csv").write_text("2")
    assert [p.name for p in target.iterdir()] == ["b.csv"]  # replaced whole: a.csv is gone

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = temp_prefix("report").replace(f"-{os.getpid()}-", f"-{gone.pid}-")
    aside = tmp_path / f"{dead}x1.old"
    (aside / "report").mkdir(parents=True)
    os.rename(target, aside / "report")  # killed after moving the old folder aside, before the new one came
    (tmp_path / f"{dead}x2.tmp").write_text("half")
    mine = [tmp_path / ".report.x3.tmp", tmp_path / f"{temp_prefix('report')}x4.tmp"]
    for path in mine:
        path.write_text("keep")
    assert sorted(p.name for p in clean_stale_temporaries(tmp_path)) == [f"{dead}x1.old", f"{dead}x2.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["report", *(p.name for p in mine)])
    assert (target / "b.csv").read_text() == "2"  # put back


def test_write_json_creates_parents(tmp_path):
    path = write_json(tmp_path / "a" / "b.json", {"x": 1})
    assert path.read_text().strip().startswith("{")


def test_vocab_round_trip_and_errors():
    vocab = Vocab(("a", "b", "7", "c2"))
    assert vocab.encode(["c2", "a"]) == [3, 0]
    assert vocab.decode(torch.tensor([3, 2])) == ["c2", "7"]
    assert Vocab.from_dict(vocab.to_dict()) == vocab
    with pytest.raises(HeadkitError, match="token 'zz' is not in this vocabulary"):
        vocab.encode(["zz"])
    with pytest.raises(HeadkitError, match=r"token id 9 is out of range: allowed 0\.\.3"):
        vocab.decode([9])
    with pytest.raises(HeadkitError, match="token 'a' twice"):
        Vocab(("a", "a"))


def _batch(n=4, pos=5):
    tokens = torch.arange(n * pos).reshape(n, pos) % 4
    targets = torch.full((n, pos), IGNORE)
    targets[:, -1] = tokens[:, 0]
    return TaskBatch(
        task="toy",
        tokens=tokens,
        targets=targets,
        answers=tokens[:, 0],
        answer_pos=torch.full((n,), pos - 1),
        vocab=Vocab(("a", "b", "c", "d")),
        hops=torch.arange(n) % 2 + 1,
        positions={"query": torch.full((n,), pos - 1)},
    )


def test_batch_select_and_shapes():
    batch = _batch()
    sub = batch.select(batch.hops == 2)
    assert sub.n == 2 and torch.equal(sub.tokens, batch.tokens[[1, 3]])
    assert sub.positions["query"].shape == (2,)
    assert batch.decode(0) == ["a", "b", "c", "d", "a"]
    with pytest.raises(ValueError, match="answers shape"):
        TaskBatch(
            task="toy",
            tokens=batch.tokens,
            targets=batch.targets,
            answers=batch.answers[:2],
            answer_pos=batch.answer_pos,
            vocab=batch.vocab,
        )


def test_batch_shape_errors_are_headkit_errors():
    # the command line turns HeadkitError into one line; a plain ValueError would be a traceback
    from headkit.errors import HeadkitError

    batch = _batch()
    with pytest.raises(HeadkitError, match="targets shape"):
        TaskBatch(
            task="toy", tokens=batch.tokens, targets=batch.targets[:, :-1], answers=batch.answers,
            answer_pos=batch.answer_pos, vocab=batch.vocab,
        )  # fmt: skip


def test_batch_select_refuses_bad_indices_and_map_keeps_the_twin():
    batch = _batch()
    twin = dataclasses.replace(batch, tokens=batch.tokens.flip(1))
    both = dataclasses.replace(batch, corrupted=twin)
    picked = both.select([3, 0])
    assert torch.equal(picked.tokens, batch.tokens[[3, 0]]) and torch.equal(picked.corrupted.tokens, twin.tokens[[3, 0]])
    assert torch.equal(picked.positions["query"], batch.positions["query"][[3, 0]])
    assert both.select([]).n == 0 and both.select([]).corrupted.n == 0
    moved = both.to("cpu")
    assert torch.equal(moved.corrupted.tokens, twin.tokens) and moved.hops is not None
    with pytest.raises(HeadkitError, match=r"prompt ids \[0, 9\] are out of range: this batch has prompts 0..3"):
        batch.select([0, 9])
    with pytest.raises(HeadkitError, match=r"must have shape \(4,\)"):
        batch.select(torch.tensor([True, False]))
    with pytest.raises(HeadkitError, match="integer ids or a bool mask"):
        batch.select(torch.tensor([0.5]))
    # a TypeError instead when jaxtyping's runtime shape checks are on: they run before __post_init__
    with pytest.raises((HeadkitError, TypeError), match=r"tokens must be a \[batch, pos\] tensor, got \(5,\)|tokens"):
        dataclasses.replace(batch, tokens=batch.tokens[0])


def test_read_json_and_stored_fields_name_the_problem(tmp_path):
    from headkit.io import read_json, stored_fields
    from headkit.model_config import ModelConfig

    with pytest.raises(HeadkitError, match=r"x\.json not found: no run here"):
        read_json(tmp_path / "x.json", missing="no run here")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(HeadkitError, match=r"bad\.json is not valid JSON"):
        read_json(tmp_path / "bad.json", missing="")
    assert read_json(write_json(tmp_path / "ok.json", {"n_layers": 2}), missing="") == {"n_layers": 2}
    assert stored_fields(ModelConfig, {"n_layers": 2}, what="model config") == {"n_layers": 2}
    with pytest.raises(HeadkitError, match="unknown model config fields: colour, size"):
        stored_fields(ModelConfig, {"size": 1, "n_layers": 2, "colour": 0}, what="model config")
    with pytest.raises(HeadkitError, match="model config must be a JSON object, got list"):
        stored_fields(ModelConfig, [1], what="model config")


def test_read_json_names_a_special_file_instead_of_calling_it_missing(tmp_path):
    """/dev/zero or a FIFO as config.json was reported "not found" (issue 18 #14)."""
    import os

    from headkit.errors import HeadkitError
    from headkit.io import read_json

    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    for path in (fifo, "/dev/zero", tmp_path):
        with pytest.raises(HeadkitError, match=r"is not a regular file: a JSON file must be one"):
            read_json(path, missing="give a model directory")
    with pytest.raises(HeadkitError, match=r"not found: give a model directory"):
        read_json(tmp_path / "absent.json", missing="give a model directory")
