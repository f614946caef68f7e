"""``headkit ablate | patch | path-patch``: CSVs equal the library calls; bad input exits 2.

The run directory is a tiny untrained number-task model saved with
`save_checkpoint`; the expected tables come from calling the library functions
directly on the same checkpoint and prompts.
"""

from __future__ import annotations

import pandas as pd
import pytest

from headkit.cli import main
from headkit.interventions.ablation import ablation_sweep, ablation_sweep_by_hop
from headkit.interventions.activation_patching import activation_patching
from headkit.interventions.metrics import accuracy, logit_diff
from headkit.interventions.path_patching import path_patching_sweep
from headkit.model_config import ModelConfig
from headkit.models import model_from_config
from headkit.tasks import TaskSpec
from headkit.training.checkpoints import load_checkpoint, save_checkpoint
from headkit.training.layout import checkpoint_dir, latest_checkpoint

from model_edits import forbid_forward

TASK = TaskSpec(
    "number",
    {"target_window": 4, "pointer_window": 4, "max_hops": 2, "n_letters": 10, "max_pointer": 6},
)
N = 16


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    d_vocab = len(TASK.build(1, seed=0).vocab)
    cfg = ModelConfig(n_layers=3, d_model=32, n_heads=2, d_vocab=d_vocab, n_ctx=32)
    save_checkpoint(checkpoint_dir(run, 1), model_from_config(cfg, seed=3), model_config=cfg, step=1, task=TASK)
    return run


@pytest.fixture(scope="module")
def loaded(run_dir):
    ckpt = load_checkpoint(latest_checkpoint(run_dir))
    return ckpt.model, TASK.build(N, seed=0)


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _read(path):
    """The CSV as written; label columns like ``heads`` = "0.1" stay strings."""
    return pd.read_csv(path, dtype={"heads": str, "receivers": str})


def _assert_frames_equal(got: pd.DataFrame, expected: pd.DataFrame):
    assert list(got.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected.reset_index(drop=True), atol=1e-5, check_dtype=False)


def test_ablate_writes_the_sweep(run_dir, loaded, tmp_path, capsys):
    model, batch = loaded
    out = tmp_path / "ablation.csv"
    code, stdout, _ = _run(capsys, "ablate", str(run_dir), "--method", "mean", "--n-prompts", str(N), "--out", str(out))
    assert code == 0
    expected = ablation_sweep(model, batch, method="mean", metric=logit_diff(batch))
    _assert_frames_equal(_read(out), expected)
    assert "mean ablation, metric logit_diff" in stdout and f"wrote {len(expected)} rows to {out}" in stdout


def test_ablate_heads_together_and_by_hop(run_dir, loaded, tmp_path, capsys):
    model, batch = loaded
    out = tmp_path / "together.csv"
    code, _, _ = _run(
        capsys, "ablate", str(run_dir), "--method", "mean", "--heads", "0.0,2.1", "--together",
        "--metric", "accuracy", "--n-prompts", str(N), "--out", str(out),
    )  # fmt: skip
    assert code == 0
    expected = ablation_sweep(model, batch, method="mean", metric=accuracy(batch), heads=[(0, 0), (2, 1)], together=True)
    _assert_frames_equal(_read(out), expected)

    out = tmp_path / "hop.csv"
    code, _, _ = _run(capsys, "ablate", str(run_dir), "--method", "zero", "--by-hop", "--n-prompts", str(N), "--out", str(out))
    assert code == 0
    expected = ablation_sweep_by_hop(model, batch, method="zero", metric=logit_diff(batch, per_example=True))
    _assert_frames_equal(_read(out), expected)


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_patch_writes_activation_patching(run_dir, loaded, tmp_path, capsys, direction):
    model, batch = loaded
    out = tmp_path / "patch.csv"
    code, stdout, _ = _run(
        capsys, "patch", str(run_dir), "--site", "z", "--by-position", "--direction", direction,
        "--n-prompts", str(N), "--out", str(out),
    )  # fmt: skip
    assert code == 0
    expected = activation_patching(
        model, batch.tokens, batch.corrupted.tokens, logit_diff(batch), site="z", by_position=True, direction=direction
    )
    _assert_frames_equal(_read(out), expected)
    assert f"activation patching ({direction}) of z" in stdout


def test_path_patch_runs_head_receivers_and_final_separately(run_dir, loaded, tmp_path, capsys):
    model, batch = loaded
    out = tmp_path / "path.csv"
    code, stdout, _ = _run(
        capsys, "path-patch", str(run_dir), "--receivers", "2.0.q,final,2.1.k", "--n-prompts", str(N), "--out", str(out)
    )
    assert code == 0
    got = _read(out)
    assert list(got.columns) == ["receivers", "layer", "head", "value", "normalised"]
    assert list(got.receivers.unique()) == ["2.0.q+2.1.k", "final"]
    metric = logit_diff(batch)
    heads = path_patching_sweep(model, batch.tokens, batch.corrupted.tokens, [(2, 0, "q"), (2, 1, "k")], metric)
    final = path_patching_sweep(model, batch.tokens, batch.corrupted.tokens, "final", metric)
    _assert_frames_equal(got[got.receivers != "final"].drop(columns="receivers"), heads)
    _assert_frames_equal(got[got.receivers == "final"].drop(columns="receivers"), final)
    assert "path patching, metric logit_diff (clean" in stdout


def test_path_patch_given_senders(run_dir, loaded, tmp_path, capsys):
    model, batch = loaded
    out = tmp_path / "path.csv"
    code, _, _ = _run(
        capsys, "path-patch", str(run_dir), "--receivers", "2.0.v", "--senders", "1.1,0.0",
        "--metric", "answer_logprob", "--n-prompts", str(N), "--out", str(out),
    )  # fmt: skip
    assert code == 0
    got = _read(out)
    assert list(zip(got["layer"], got["head"])) == [(0, 0), (1, 1)]
    from headkit.interventions.metrics import answer_logprob

    expected = path_patching_sweep(
        model, batch.tokens, batch.corrupted.tokens, [(2, 0, "v")], answer_logprob(batch), senders=[(1, 1), (0, 0)]
    )
    _assert_frames_equal(got.drop(columns="receivers"), expected)


@pytest.fixture
def no_forward(monkeypatch):
    """Any forward pass fails loudly: errors below must be raised before one."""

    forbid_forward(monkeypatch, AssertionError("a forward pass ran before the input was checked"))


@pytest.mark.parametrize(
    "argv,message",
    [
        (["ablate", "{run}", "--heads", "5.0"], "head 5.0: layer 5 is out of range: this model has layers 0..2"),
        (["ablate", "{run}", "--heads", "0.2"], "head 0.2: head 2 is out of range: this model has heads 0..1"),
        (["ablate", "{run}", "--heads", "0-1"], "head spec '0-1' must look like LAYER.HEAD"),
        (["ablate", "{run}", "--metric", "f1"], "argument --metric: invalid choice: 'f1' (choose from 'logit_diff', 'answer_logprob', 'accuracy', 'loss')"),
        (["ablate", "{run}", "--n-prompts", "0"], "--n-prompts=0 is out of range: allowed 1 or more"),
        (["ablate", "{missing}"], "does not exist"),
        (["patch", "{run}", "--site", "resid_mid"], "resid_mid"),
        (["patch", "{run}", "--site", "mlp_in"], "argument --site: invalid choice: 'mlp_in'"),
        (["patch", "{run}", "--heads", "3.0"], "layer 3 is out of range"),
        (["path-patch", "{run}", "--receivers", "2.0"], "receiver spec '2.0' must look like LAYER.HEAD.q|k|v"),
        (["path-patch", "{run}", "--receivers", "9.0.q"], "head 9.0: layer 9 is out of range: this model has layers 0..2"),
        (["path-patch", "{run}", "--receivers", "1.0.k", "--senders", "1.1"], "sender head 1.1 (layer 1) is not before receiver 1.0.k"),
        (["path-patch", "{run}", "--receivers", "0.0.q"], "in layer 0: no earlier heads"),
        (["path-patch", "{run}", "--receivers", "final", "--senders", "0.5"], "head 0.5: head 5 is out of range"),
    ],
)
def test_bad_input_exits_2_with_one_line(run_dir, tmp_path, capsys, no_forward, argv, message):
    out = tmp_path / "result.csv"
    argv = [a.format(run=run_dir, missing=tmp_path / "nope") for a in argv] + ["--out", str(out)]
    argv += [] if "--n-prompts" in argv else ["--n-prompts", "4"]
    code, stdout, err = _run(capsys, *argv)
    assert code == 2
    assert err.startswith("headkit: error: ") and err.count("\n") == 1
    assert message in err
    assert not out.exists()
    assert stdout == ""


def test_argparse_choices_are_one_line(run_dir, capsys):
    assert main(["patch", str(run_dir), "--direction", "sideways"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "denoise" in err and "noise" in err


def test_run_dir_without_checkpoints(tmp_path, capsys):
    code, _, err = _run(capsys, "path-patch", str(tmp_path), "--receivers", "final")
    assert code == 2 and "has no checkpoints" in err


def test_metric_names_of_the_command_line_are_the_library_metrics():
    # the CLI keeps its own tuple so that checking --metric imports no torch
    from headkit.cli.args import metric_names
    from headkit.interventions.metrics import METRICS

    assert metric_names() == tuple(METRICS)


def test_ablate_mean_of_one_prompt_warns(run_dir, tmp_path, capsys, caplog):
    """Issue 18: ``--method mean --n-prompts 1`` gave all-zero deltas without a word (resample warned)."""
    out = tmp_path / "a.csv"
    with caplog.at_level("WARNING"):
        code, _, _ = _run(capsys, "ablate", str(run_dir), "--method", "mean", "--n-prompts", "1", "--out", str(out))
    assert code == 0 and (_read(out)["delta"].abs() <= 1e-5).all()  # zero up to the engine's rounding
    assert any("mean ablation of a single prompt from itself" in r.getMessage() for r in caplog.records)
