"""headkit classify --swap / --per-hop and dynamics --swap on a tiny run written by the test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from headkit.checkpoints import latest_checkpoint, load_checkpoint
from headkit.cli import main
from headkit.models import ModelConfig
from headkit.scores.positional_symbolic import CLASSIFY_COLUMNS, classify_heads, classify_heads_by_hop
from headkit.tasks.base import TaskSpec
from headkit.training import TrainConfig, train

TASK = TaskSpec(
    "number", {"target_window": 4, "pointer_window": 4, "max_hops": 2, "n_letters": 10, "max_pointer": 8}
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d_vocab = len(TASK.build(1, seed=0).vocab)
    cfg = TrainConfig(
        task=TASK,
        model=ModelConfig(n_layers=2, d_model=16, n_heads=1, d_vocab=d_vocab, n_ctx=24),
        steps=2, batch_size=8, warmup_steps=1, eval_every=1, eval_n=8,
    )  # fmt: skip
    out = tmp_path_factory.mktemp("run") / "number"
    train(cfg, out_dir=out, progress=False)
    return out


def test_classify_swap_and_per_hop(run_dir, tmp_path, capsys):
    out, hops_out = tmp_path / "heads.csv", tmp_path / "hops.csv"
    args = ["classify", str(run_dir), "--n-prompts", "6", "--seed", "1", "--composition", "none"]
    assert main([*args, "--swap", "tokens", "--per-hop", str(hops_out), "--out", str(out)]) == 0
    model = load_checkpoint(latest_checkpoint(run_dir)).model
    batch = TASK.build(6, seed=1)
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
    code = main(["classify", str(run_dir), "--task", "copy", "--per-hop", str(tmp_path / "h.csv"),
                 "--out", str(tmp_path / "o.csv")])  # fmt: skip
    assert code == 2
    assert "--per-hop needs a pointer-chain task" in capsys.readouterr().err


def test_dynamics_swap_option(run_dir, tmp_path):
    out = tmp_path / "dyn.csv"
    args = ["dynamics", str(run_dir), "--n-prompts", "2", "--eval-n", "4", "--no-progress", "--swap", "tokens"]
    assert main([*args, "--out", str(out)]) == 0
    assert (pd.read_csv(out)["swap"] == "tokens").all()
