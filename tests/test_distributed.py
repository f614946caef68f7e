"""Sweeps over torch.distributed ranks (gloo, CPU) equal one process; failures end every rank.

Library-level cases fork two (or three) ranks from the test process with
``torch.multiprocessing`` (the tiny model is built once, before the fork, so every
rank holds an identical replica); each rank joins the group from torchrun's
environment variables through `headkit.distributed.init_from_env`, like a
``torchrun`` launch does. The one-process reference is the same call in the test
process, which has no process group. Results must be *equal*, not close: a cell
computes exactly what it computes in one process. Two more tests launch the real
command line with ``torchrun`` (``python -m torch.distributed.run``, the module
behind the ``torchrun`` script).
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

from headkit import distributed
from headkit.cli import main
from headkit.errors import HeadkitError
from headkit.interventions.ablation import ablation_sweep, ablation_sweep_by_hop
from headkit.interventions.activation_patching import activation_patching
from headkit.interventions.metrics import logit_diff
from headkit.interventions.path_patching import path_patching_sweep
from headkit.model_config import ModelConfig
from headkit.models import model_from_config
from headkit.scores.positional_symbolic import classify_heads, positional_symbolic_scores
from headkit.tasks import TaskSpec
from headkit.training.checkpoints import save_checkpoint
from headkit.training.layout import checkpoint_dir

REPO = Path(__file__).resolve().parents[1]
TASK = TaskSpec(
    "number",
    {"target_window": 4, "pointer_window": 4, "max_hops": 2, "n_letters": 10, "max_pointer": 6},
)
N = 6  # prompts: batch_size=N puts one patch in each stacked pass, so every sweep has many cells


@pytest.fixture(scope="module")
def setup():
    batch = TASK.build(N, seed=0)
    cfg = ModelConfig(n_layers=3, d_model=32, n_heads=2, d_vocab=len(batch.vocab), n_ctx=32)
    return model_from_config(cfg, seed=3), batch, cfg


# --- running a function on forked ranks ----------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, size: int, port: int, job: Callable[[int], Any], out: Path, env: dict) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(size),
        LOCAL_RANK=str(rank), **env,
    )  # fmt: skip
    torch.set_num_threads(1)
    try:
        distributed.init_from_env()
        outcome = ("ok", job(rank))
    except Exception as exc:  # recorded for the test to inspect
        outcome = ("error", type(exc).__name__, str(exc))
    finally:
        distributed.shutdown()
    with open(out / f"rank{rank}.pkl", "wb") as f:
        pickle.dump(outcome, f)


def on_ranks(job: Callable[[int], Any], tmp_path: Path, *, size: int = 2, env: dict | None = None) -> list[tuple]:
    """``job(rank)`` on ``size`` forked gloo ranks; each rank's ("ok", result) or ("error", type, message)."""
    mp.start_processes(
        _rank_main, args=(size, _free_port(), job, tmp_path, env or {}), nprocs=size, start_method="fork"
    )
    outcomes = []
    for rank in range(size):
        with open(tmp_path / f"rank{rank}.pkl", "rb") as f:
            outcomes.append(pickle.load(f))
    return outcomes


def assert_all_equal(outcomes: list[tuple], expected: pd.DataFrame) -> None:
    """Every rank returned the one-process frame, exactly."""
    for outcome in outcomes:
        assert outcome[0] == "ok", outcome
        pd.testing.assert_frame_equal(outcome[1], expected, check_exact=True)


# --- equality with one process, per sweep kind ----------------------------------------

SWEEPS: dict[str, Callable[[Any, Any], pd.DataFrame]] = {
    "patching by head": lambda model, batch: activation_patching(
        model, batch.tokens, batch.corrupted.tokens, logit_diff(batch), site="z", batch_size=N
    ),
    "patching by position": lambda model, batch: activation_patching(
        model, batch.tokens, batch.corrupted.tokens, logit_diff(batch), site="q",
        by_position=True, direction="noise", batch_size=4 * N,
    ),  # fmt: skip
    "ablation sweep": lambda model, batch: ablation_sweep(model, batch, method="mean", batch_size=N),
    "ablation sweep by hop": lambda model, batch: ablation_sweep_by_hop(
        model, batch, method="resample", batch_size=N
    ),
    "path patching sweep": lambda model, batch: path_patching_sweep(
        model, batch.tokens, batch.corrupted.tokens, ["final"], logit_diff(batch), batch_size=N
    ),
    "positional/symbolic scores": lambda model, batch: positional_symbolic_scores(
        model, batch.tokens, batch_size=5
    ),
    "classification": lambda model, batch: classify_heads(model, batch.tokens, batch_size=5),
}


def counting_forwards(model, sweep: Callable, batch) -> tuple[pd.DataFrame, int]:
    """``sweep(model, batch)`` and how many times it ran a transformer block."""
    calls = []
    handles = [block.register_forward_pre_hook(lambda module, args: calls.append(1)) for block in model.blocks]
    try:
        return sweep(model, batch), len(calls)
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("kind", list(SWEEPS))
def test_two_ranks_equal_one_process(setup, tmp_path, kind):
    model, batch, _ = setup
    expected, alone = counting_forwards(model, SWEEPS[kind], batch)
    assert len(expected) > 0
    outcomes = on_ranks(lambda rank: counting_forwards(model, SWEEPS[kind], batch), tmp_path)
    assert_all_equal([(o[0], o[1][0]) if o[0] == "ok" else o for o in outcomes], expected)
    if kind == "path patching sweep":  # the clean/corrupted metrics travel with the frame
        assert outcomes[0][1][0].attrs == expected.attrs
    # the work was split: each rank ran fewer blocks than one process, together at least as many
    passes = [o[1][1] for o in outcomes]
    assert max(passes) < alone <= sum(passes), passes


def test_three_ranks_with_uneven_cells(setup, tmp_path):
    """Six cells (layers x heads) over three ranks, and a three-cell sweep over three ranks."""
    model, batch, _ = setup
    expected = SWEEPS["patching by head"](model, batch)
    heads = [(0, 1), (2, 0)]  # two cells: the third rank has none
    expected_two = activation_patching(
        model, batch.tokens, batch.corrupted.tokens, logit_diff(batch), heads=heads, batch_size=N
    )

    def job(rank: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        two = activation_patching(
            model, batch.tokens, batch.corrupted.tokens, logit_diff(batch), heads=heads, batch_size=N
        )
        return SWEEPS["patching by head"](model, batch), two

    outcomes = on_ranks(job, tmp_path, size=3)
    for outcome in outcomes:
        assert outcome[0] == "ok", outcome
        pd.testing.assert_frame_equal(outcome[1][0], expected, check_exact=True)
        pd.testing.assert_frame_equal(outcome[1][1], expected_two, check_exact=True)


def test_share_deals_every_cell_once_back_and_forth():
    assert [distributed.share(r, 2, 7) for r in range(2)] == [[0, 3, 4], [1, 2, 5, 6]]
    assert [distributed.share(r, 3, 7) for r in range(3)] == [[0, 5, 6], [1, 4], [2, 3]]
    for size, n in [(1, 5), (4, 2), (3, 10)]:
        cells = sorted(i for r in range(size) for i in distributed.share(r, size, n))
        assert cells == list(range(n))


def test_each_rank_runs_only_its_share(tmp_path):
    """Each rank runs its share, results come in cell order on every rank, tensors back on the CPU."""

    def job(rank: int) -> tuple[list, list]:
        ran = []

        def cell(i: int) -> tuple[torch.Tensor, int]:
            ran.append(i)
            return torch.tensor([float(i)]) * 2, i

        return distributed.map_cells(cell, list(range(7)), desc="cells"), ran

    outcomes = on_ranks(job, tmp_path)
    for rank, outcome in enumerate(outcomes):
        assert outcome[0] == "ok", outcome
        results, ran = outcome[1]
        assert ran == distributed.share(rank, 2, 7)
        assert [i for _, i in results] == list(range(7))
        assert all(torch.equal(t, torch.tensor([2.0 * i])) for t, i in results)


def test_local_runs_everything_on_one_rank(tmp_path):
    def job(rank: int) -> list[int]:
        if rank == 0:
            with distributed.local():
                return distributed.map_cells(lambda i: i * i, range(5), desc="cells")
        return []

    outcomes = on_ranks(job, tmp_path)
    assert outcomes == [("ok", [0, 1, 4, 9, 16]), ("ok", [])]


def test_without_a_group_map_cells_is_a_plain_loop(monkeypatch):
    """No process group (and no WORLD_SIZE): nothing joins, nothing is gathered."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.distributed, "all_gather_object", None)  # would fail if called
    assert distributed.world() == distributed.World(0, 1, 0) and distributed.is_main()
    assert distributed.map_cells(lambda c: c + 1, [3, 1, 2], desc="cells") == [4, 2, 3]


# --- failures ---------------------------------------------------------------------------


class _FailOnRank:
    """A metric that raises on one rank from its ``after``-th call on (patched runs only)."""

    def __init__(self, metric: Callable, rank: int, error: Exception, after: int = 2):
        self.metric, self.rank, self.error, self.after, self.calls = metric, rank, error, after, 0

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if distributed.world().rank == self.rank and self.calls > self.after:
            raise self.error
        return self.metric(logits)


@pytest.mark.parametrize(
    "error, shown",
    [
        (HeadkitError("metric on a patched run: injected"), "metric on a patched run: injected"),
        (ZeroDivisionError("injected bug"), "ZeroDivisionError: injected bug"),
    ],
)
def test_a_failing_rank_fails_every_rank_with_one_error(setup, tmp_path, error, shown):
    model, batch, _ = setup

    def job(rank: int) -> pd.DataFrame:
        metric = _FailOnRank(logit_diff(batch), 1, error)
        return activation_patching(model, batch.tokens, batch.corrupted.tokens, metric, batch_size=N)

    outcomes = on_ranks(job, tmp_path)
    first_cell = 2  # rank 1's first cell
    message = f"rank 1 of 2 failed (patching z, cell {first_cell} of 6): {shown}"
    assert outcomes == [("error", "RankFailed", message)] * 2


def test_a_rank_that_never_reaches_the_sweep_does_not_hang_the_others(setup, tmp_path):
    model, batch, _ = setup

    def job(rank: int) -> pd.DataFrame | None:
        if rank == 1:
            return None  # leaves the group without joining the sweep
        return SWEEPS["path patching sweep"](model, batch)

    start = time.monotonic()
    outcomes = on_ranks(job, tmp_path, env={distributed.TIMEOUT_ENV: "20"})
    assert time.monotonic() - start < 60
    assert outcomes[1] == ("ok", None)
    kind, name, message = outcomes[0]
    assert (kind, name) == ("error", "GroupFailed")
    assert message.startswith("rank 0 of 2: the process group failed during path patching")


def test_bad_timeout_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(HeadkitError, match="HEADKIT_DIST_TIMEOUT='soon' must be a positive number"):
        distributed.init_from_env()
    monkeypatch.delenv("MASTER_PORT")
    with pytest.raises(HeadkitError, match="MASTER_PORT unset: launch with torchrun"):
        distributed.init_from_env()


# --- the command line under torchrun -----------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, setup):
    model, _, cfg = setup
    run = tmp_path_factory.mktemp("run")
    save_checkpoint(checkpoint_dir(run, 1), model, model_config=cfg, step=1, task=TASK)
    return run


def _torchrun(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(
        os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1", HEADKIT_DIST_TIMEOUT="120",
    )  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *argv]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_torchrun_patch_writes_the_one_process_csv_once(run_dir, tmp_path, capsys):
    args = ["patch", str(run_dir), "--n-prompts", str(N), "--batch-size", str(N), "--by-position"]
    single = tmp_path / "single.csv"
    assert main([*args, "--out", str(single)]) == 0
    capsys.readouterr()
    out = tmp_path / "two_ranks.csv"
    done = _torchrun("-m", "headkit", "--", *args, "--out", str(out), cwd=tmp_path)  # "--": see docs
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == single.read_bytes()
    assert done.stdout.count(f"rows to {out}") == 1  # only rank 0 prints ("wrote N rows to OUT")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["single.csv", "two_ranks.csv"]  # no stray temp files


FAILING_LAUNCH = """
    import os, sys
    from headkit.errors import HeadkitError
    from headkit.interventions import metrics

    factory = metrics.METRICS["logit_diff"]

    def failing(batch, *, per_example=False):  # rank 1 fails on its first patched run
        metric, calls = factory(batch, per_example=per_example), []

        def run(logits):
            calls.append(1)
            if os.environ["RANK"] == "1" and len(calls) > 2:
                raise HeadkitError("injected failure")
            return metric(logits)

        return run

    metrics.METRICS["logit_diff"] = failing
    from headkit.cli import main

    sys.exit(main())
"""


@pytest.mark.slow
def test_torchrun_a_failing_rank_gives_one_error_and_no_file(run_dir, tmp_path):
    script = tmp_path / "launch.py"
    script.write_text(textwrap.dedent(FAILING_LAUNCH))
    out = tmp_path / "out" / "patch.csv"
    args = ["patch", str(run_dir), "--n-prompts", str(N), "--batch-size", str(N), "--out", str(out)]
    done = _torchrun(str(script), "--", *args, cwd=tmp_path)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("headkit: error:")]
    assert errors == ["headkit: error: rank 1 of 2 failed (patching z, cell 2 of 6): injected failure"]
    assert "rows to" not in done.stdout
    assert not out.parent.exists() or not any(out.parent.iterdir())
