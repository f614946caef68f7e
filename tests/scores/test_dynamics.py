"""track_heads over a tiny training run, against classify_heads and evaluate run by hand."""

from __future__ import annotations

import numpy as np
import pytest

from headkit.errors import HeadkitError
from headkit.evaluation import evaluate
from headkit.scores.dynamics import DYNAMICS_COLUMNS, track_heads
from headkit.scores.positional_symbolic import classify_heads
from headkit.training.checkpoints import load_checkpoint


@pytest.fixture
def run_dir(tiny_number_run):
    return tiny_number_run[0]


def test_track_heads_rows_and_values(run_dir, tiny_number_run):
    task = tiny_number_run[1]
    table = track_heads(run_dir, n_prompts=4, seed=3, eval_n=16, eval_seed=9, progress=False)
    assert list(table.columns) == DYNAMICS_COLUMNS + ["accuracy_hop1", "accuracy_hop2"]
    assert table.step.tolist() == sorted(table.step.tolist())
    assert sorted(set(table.step)) == [2, 4]
    assert len(table) == 2 * 2 * 2  # steps x layers x heads
    assert not table.duplicated(["step", "layer", "head"]).any()
    for step in (2, 4):
        ckpt = load_checkpoint(run_dir / "checkpoints" / f"step_{step:07d}")
        rows = table[table.step == step].reset_index(drop=True)
        classes = classify_heads(ckpt.model, task.build(4, seed=3).tokens)
        for name in ("positional_score", "symbolic_score", "signal", "purity"):
            np.testing.assert_allclose(rows[name], classes[name], equal_nan=True)
        assert rows.label.tolist() == classes.label.tolist()
        acc = evaluate(ckpt.model, task, n_prompts=16, seed=9).set_index("hop").accuracy
        assert (rows.accuracy == acc["all"]).all()
        assert (rows.accuracy_hop1 == acc[1]).all() and (rows.accuracy_hop2 == acc[2]).all()


def test_track_heads_selected_steps(run_dir):
    table = track_heads(run_dir, n_prompts=2, steps=[4], eval_n=4, progress=False)
    assert set(table.step) == {4}


def test_track_heads_bad_input(run_dir, tmp_path):
    with pytest.raises(HeadkitError, match=r"step\(s\) \[3\] have no checkpoint .*available steps 2, 4"):
        track_heads(run_dir, steps=[3], progress=False)
    with pytest.raises(HeadkitError, match="n_prompts=0"):
        track_heads(run_dir, n_prompts=0, progress=False)
    with pytest.raises(HeadkitError, match="does not exist"):
        track_heads(tmp_path / "nope", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(HeadkitError, match="has no checkpoints"):
        track_heads(tmp_path / "empty", progress=False)
