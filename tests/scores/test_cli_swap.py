"""headkit census --swap / --per-hop and dynamics --swap on a tiny run written by the test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from headkit.cli import main
from headkit.scores.positional_symbolic import CLASSIFY_COLUMNS, classify_heads, classify_heads_by_hop
from headkit.training.checkpoints import load_checkpoint
from headkit.training.layout import latest_checkpoint


@pytest.fixture
def run_dir(tiny_number_run):
    return tiny_number_run[0]


@pytest.fixture
def task(tiny_number_run):
    return tiny_number_run[1]


def test_classify_swap_and_per_hop(run_dir, task, tmp_path, capsys):
    out, hops_out = tmp_path / "heads.csv", tmp_path / "hops.csv"
    args = ["census", str(run_dir), "--n-prompts", "6", "--seed", "1", "--composition", "none"]
    assert main([*args, "--swap", "tokens", "--per-hop", str(hops_out), "--out", str(out)]) == 0
    model = load_checkpoint(latest_checkpoint(run_dir)).model
    batch = task.build(6, seed=1)
    census = pd.read_csv(out)
    want = classify_heads(model, batch.tokens, swap="tokens")
    np.testing.assert_allclose(census["symbolic_score"], want["symbolic_score"], rtol=1e-6)
    assert (census["swap"] == "tokens").all()
    hops = pd.read_csv(hops_out)
    assert list(hops.columns) == ["hop", *CLASSIFY_COLUMNS]
    want_hops = classify_heads_by_hop(model, batch, swap="tokens")
    np.testing.assert_allclose(hops["positional_score"], want_hops["positional_score"], rtol=1e-6)
    assert "heads at each hop's pointer" in capsys.readouterr().out
    # default: the paper's residual swap
    assert main([*args, "--out", str(out)]) == 0
    assert (pd.read_csv(out)["swap"] == "residual").all()


def test_per_hop_needs_a_chain_task(run_dir, tmp_path, capsys):
    code = main(["census", str(run_dir), "--task", "copy", "--per-hop", str(tmp_path / "h.csv"),
                 "--out", str(tmp_path / "o.csv")])  # fmt: skip
    assert code == 2
    assert "--per-hop needs a pointer-chain task" in capsys.readouterr().err


def test_dynamics_swap_option(run_dir, tmp_path):
    out = tmp_path / "dyn.csv"
    args = ["dynamics", str(run_dir), "--n-prompts", "2", "--eval-n", "4", "--no-progress", "--swap", "tokens"]
    assert main([*args, "--out", str(out)]) == 0
    assert (pd.read_csv(out)["swap"] == "tokens").all()
