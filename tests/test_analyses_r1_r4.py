"""Analysis scripts R1-R4: smoke runs of each main() on one tiny pair of shared runs,
checked against independent references (explicit forwards and hooks written here)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # importlib import mode: make `analyses` importable
    sys.path.insert(0, str(ROOT))

from analyses import r1_length, r2_heads, r3_dynamics, r4_discrepancy  # noqa: E402
from headkit.errors import HeadkitError  # noqa: E402
from headkit.training.config import read_metrics
from headkit.training.layout import list_checkpoints


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """One tiny pair of shared runs (4 updates each, as --quick), trained once for the module."""
    folder = tmp_path_factory.mktemp("runs")
    r1_length.shared_runs(folder, steps=4, tiny=True)
    return folder


def _outputs(folder: Path, table: pd.DataFrame, figures: list[str]) -> dict:
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "results.csv", "summary.json", "plotly.min.js"} <= names
    assert {f"{f}.html" for f in figures} <= names
    assert not [n for n in names if ".tmp" in n]  # atomic writes left nothing behind
    written = pd.read_csv(folder / "results.csv", dtype={"hop": str})
    expected = table.assign(hop=table["hop"].astype(str)) if "hop" in table else table
    pd.testing.assert_frame_equal(written, expected, check_dtype=False)
    return json.loads((folder / "summary.json").read_text())


def _accuracy(model, batch) -> torch.Tensor:
    """Per-prompt exact match, by an explicit forward (the reference)."""
    with torch.no_grad():
        logits = model(batch.tokens)  # [batch, pos, d_vocab]
    rows = torch.arange(batch.n)
    return (logits[rows, batch.answer_pos].argmax(-1) == batch.answers).float()


# --- shared runs ----------------------------------------------------------------------


def test_shared_runs_are_reused_and_checked(runs):
    cfg = r1_length.shared_run_config("letter", steps=4, tiny=True)
    before = sorted(p.stat().st_mtime_ns for p in (runs / "letter").rglob("*") if p.is_file())
    assert r1_length.ensure_run(cfg, runs / "letter") == runs / "letter"  # complete: nothing retrained
    after = sorted(p.stat().st_mtime_ns for p in (runs / "letter").rglob("*") if p.is_file())
    assert before == after
    assert [s for s, _ in list_checkpoints(runs / "letter")] == [*cfg.checkpoint_steps, 4]
    with pytest.raises(HeadkitError, match="another config.*steps"):
        r1_length.ensure_run(r1_length.shared_run_config("letter", steps=5, tiny=True), runs / "letter")
    # the full-size runs: 12 checkpoints for R3, letter curriculum one hop per 250 updates
    full = r1_length.shared_run_config("letter")
    assert len(full.checkpoint_steps) + 1 == 12 and full.curriculum_every == 250
    assert r1_length.shared_run_config("number").curriculum_every is None


def test_bad_input_is_refused_before_training(tmp_path):
    with pytest.raises(HeadkitError, match="added 5000 is out of range: allowed 0..2031"):
        r1_length.main(r1_length.LengthConfig(runs=str(tmp_path / "r"), added=(0, 5000)), out=tmp_path / "o")
    with pytest.raises(HeadkitError, match="repeats"):
        r1_length.main(r1_length.LengthConfig(runs=str(tmp_path / "r"), added=(0, 46, 46)), out=tmp_path / "o")
    with pytest.raises(HeadkitError, match="extends="):
        r1_length.main(r1_length.LengthConfig(runs=str(tmp_path / "r"), extends=("middle",)), out=tmp_path / "o")
    with pytest.raises(HeadkitError, match="length 129 .*17..65"):
        r4_discrepancy.main(
            r4_discrepancy.DiscrepancyConfig(runs=str(tmp_path / "r"), lengths=(17, 129), tiny=True, train_steps=4),
            out=tmp_path / "o",
        )
    with pytest.raises(HeadkitError, match="n_ablation=0"):
        r2_heads.main(r2_heads.HeadsConfig(runs=str(tmp_path / "r"), n_ablation=0), out=tmp_path / "o")
    with pytest.raises(HeadkitError, match="emerge_at"):
        r3_dynamics.main(r3_dynamics.DynamicsConfig(runs=str(tmp_path / "r"), emerge_at=1.5), out=tmp_path / "o")
    assert not (tmp_path / "r").exists() and not (tmp_path / "o").exists()


# --- R1 -------------------------------------------------------------------------------


def test_r1_smoke_matches_explicit_accuracy(runs, tmp_path):
    cfg = r1_length.quick_config()
    cfg = r1_length.LengthConfig(**{**cfg.__dict__, "runs": str(runs)})
    table = r1_length.main(cfg, out=tmp_path, png=False)
    assert list(table.columns) == ["task", "extend", "length", "added", "hop", "n", "accuracy"]
    summary = _outputs(tmp_path, table, ["accuracy_prefix", "accuracy_window"])
    assert cfg.added == (0, 16) and cfg.extends == ("prefix", "window")
    for task in r1_length.TASKS:
        model, spec = r1_length.final_model(runs / task)
        for extend in cfg.extends:
            for added in cfg.added:
                length = 17 + added
                batch = spec.build(cfg.n, seed=cfg.seed, length=length, extend=extend)
                if extend == "prefix":  # the paper's: an unchanged 17-token prompt at the end
                    assert torch.equal(batch.tokens[:, added:], spec.build(cfg.n, seed=cfg.seed).tokens)
                expected = _accuracy(model, batch).mean().item()
                pick = (table.task == task) & (table.extend == extend) & (table.added == added)
                row = table[pick & (table.hop.astype(str) == "all")]
                assert row.length.item() == length and row.accuracy.item() == pytest.approx(expected)
                assert summary["accuracy"][extend][task][f"+{added}"] == pytest.approx(expected, abs=1e-4)
                for hop in range(1, 5):
                    row = table[pick & (table.hop.astype(str) == str(hop))]
                    assert row.n.item() == int((batch.hops == hop).sum())


# --- R2 -------------------------------------------------------------------------------


def test_r2_smoke_and_mean_ablation_by_hand(runs, tmp_path):
    cfg = r2_heads.HeadsConfig(**{**r2_heads.quick_config().__dict__, "runs": str(runs)})
    table = r2_heads.main(cfg, out=tmp_path, png=False)
    assert list(table.columns) == r2_heads.COLUMNS + [f"delta_hop{h}" for h in range(1, 5)]
    assert len(table) == 2 * 2  # two tasks x two one-head layers
    assert np.allclose(table.delta, table.ablated - table.baseline)
    _outputs(tmp_path, table, ["heads_number", "heads_letter", "ablation"])
    # reference: mean-ablate L1H0 of the number model with a hook written here
    model, spec = r1_length.final_model(runs / "number")
    batch = spec.build(cfg.n_ablation, seed=cfg.seed + 1)
    reference = spec.build(cfg.n_reference, seed=cfg.seed + 2).tokens
    _, cache = model.run_with_cache(reference, names_filter="blocks.1.attn.hook_z")
    mean_z = cache["blocks.1.attn.hook_z"].mean(0, keepdim=True)  # [1, pos, head_index, d_head]

    def replace(z, hook):
        z[:, :, 0] = mean_z[:, :, 0]
        return z

    with torch.no_grad():
        logits = model.run_with_hooks(batch.tokens, fwd_hooks=[("blocks.1.attn.hook_z", replace)])
    correct = (logits[torch.arange(batch.n), batch.answer_pos].argmax(-1) == batch.answers).float()
    row = table[(table.task == "number") & (table.layer == 1)].iloc[0]
    assert row.ablated == pytest.approx(correct.mean().item())
    assert row.baseline == pytest.approx(_accuracy(model, batch).mean().item())
    for hop in range(1, 5):
        mask = batch.hops == hop
        expected = (correct[mask] - _accuracy(model, batch)[mask]).mean().item()
        assert row[f"delta_hop{hop}"] == pytest.approx(expected)


class _SelfAnswering:
    """A task whose answers are the model's own predictions: baseline accuracy 1, so an
    ablation that changes predictions shows up (the tiny runs are near chance)."""

    def __init__(self, model, spec):
        self.model, self.spec = model, spec

    def build(self, n, *, seed):
        batch = self.spec.build(n, seed=seed)
        with torch.no_grad():
            predicted = self.model(batch.tokens)[torch.arange(n), batch.answer_pos].argmax(-1)
        return dataclasses.replace(batch, answers=predicted, wrong_answers=None)


def test_r2_ablation_table_against_hooks_on_a_nontrivial_baseline(runs):
    model, spec = r1_length.final_model(runs / "number")
    task = _SelfAnswering(model, spec)
    table = r2_heads.ablation_table(model, task, n=64, n_reference=64, seed=5).set_index("layer")
    batch, reference = task.build(64, seed=5), spec.build(64, seed=6).tokens
    for layer in (0, 1):
        name = f"blocks.{layer}.attn.hook_z"
        _, cache = model.run_with_cache(reference, names_filter=name)
        mean_z = cache[name].mean(0, keepdim=True)  # [1, pos, head_index, d_head]
        with torch.no_grad():
            logits = model.run_with_hooks(batch.tokens, fwd_hooks=[(name, lambda z, hook: mean_z.expand_as(z))])
        correct = (logits[torch.arange(batch.n), batch.answer_pos].argmax(-1) == batch.answers).float()
        assert table.loc[layer, "baseline"] == 1.0
        assert table.loc[layer, "ablated"] == pytest.approx(correct.mean().item())
        for hop in range(1, 5):
            assert table.loc[layer, f"delta_hop{hop}"] == pytest.approx(correct[batch.hops == hop].mean().item() - 1)
    assert (table["ablated"] < 1).any()  # the check above is not 1 == 1 everywhere


# --- R3 -------------------------------------------------------------------------------


def test_r3_smoke(runs, tmp_path):
    cfg = r3_dynamics.DynamicsConfig(**{**r3_dynamics.quick_config().__dict__, "runs": str(runs)})
    table = r3_dynamics.main(cfg, out=tmp_path, png=False)
    summary = _outputs(tmp_path, table, ["accuracy_by_hop", "head_roles"])
    for task in r1_length.TASKS:
        steps = [s for s, _ in list_checkpoints(runs / task)]
        assert sorted(table[table.task == task].step.unique()) == steps
        # accuracy.csv is the run's metrics.csv, reshaped
        metrics = read_metrics(runs / task).set_index("step")
        accuracy = pd.read_csv(tmp_path / "accuracy.csv")
        for row in accuracy[accuracy.task == task].itertuples():
            column = "accuracy" if row.hop == "all" else f"accuracy_hop{row.hop}"
            assert row.accuracy == pytest.approx(metrics.loc[row.step, column])
        assert set(summary[task]["heads"]) == {"L0H0", "L1H0"}


def test_r3_emergence_and_settling_on_hand_made_tables():
    acc = pd.DataFrame(
        {"step": [0, 50, 100] * 2, "hop": ["1"] * 3 + ["2"] * 3, "accuracy": [0.1, 0.95, 0.9, 0.0, 0.5, 0.89]}
    )
    assert r3_dynamics.emergence(acc, threshold=0.9) == {"1": 50, "2": None}
    heads = pd.DataFrame(
        {
            "step": [10, 20, 30, 40],
            "layer": 0,
            "head": 0,
            "label": ["positional", "symbolic", "symbolic", "symbolic"],
            "pure": [True, True, False, True],
            "purity": [0.9, 0.9, 0.6, 0.95],
        }
    )
    assert r3_dynamics.settled(heads)["L0H0"] == {"final_label": "symbolic", "final_purity": 0.95, "pure_from_step": 40}
    assert r3_dynamics.settled(heads.assign(pure=True))["L0H0"]["pure_from_step"] == 20


def test_r3_hop_introduction_follows_the_curriculum(tmp_path):
    from headkit.io import write_json

    cfg = r1_length.shared_run_config("letter")  # one hop more every 250 updates
    write_json(tmp_path / "run.json", cfg.to_dict())
    assert r3_dynamics.hop_introduced(tmp_path, [1, 2, 3, 4]) == {"1": 1, "2": 251, "3": 501, "4": 751}


# --- R4 -------------------------------------------------------------------------------


def test_r4_smoke_matches_explicit_logit_gap(runs, tmp_path):
    cfg = r4_discrepancy.DiscrepancyConfig(**{**r4_discrepancy.quick_config().__dict__, "runs": str(runs)})
    table = r4_discrepancy.main(cfg, out=tmp_path, png=False)
    assert list(table.columns) == r4_discrepancy.COLUMNS
    _outputs(tmp_path, table, ["discrepancy"])
    r2_labels = r2_heads.classify(*r1_length.final_model(runs / "letter"), n_prompts=cfg.n_classify, seed=cfg.classify_seed)
    model, spec = r1_length.final_model(runs / "letter")
    length = cfg.lengths[-1]
    tokens = spec.build(cfg.n, seed=cfg.seed, length=length).tokens
    _, cache = model.run_with_cache(tokens, names_filter="blocks.1.attn.hook_attn_scores")
    last = cache["blocks.1.attn.hook_attn_scores"][:, 0, -1, :]  # [batch, key_pos]
    gaps = [sorted(row.tolist())[-1] - sorted(row.tolist())[-2] for row in last]
    row = table[(table.task == "letter") & (table.layer == 1) & (table.length == length)].iloc[0]
    assert row.discrepancy == pytest.approx(float(np.mean(gaps)), rel=1e-5)
    assert row.label == r2_labels.set_index("layer").loc[1, "label"]
    trends = pd.read_csv(tmp_path / "trends.csv")
    assert list(trends.columns) == r4_discrepancy.TREND_COLUMNS and len(trends) == 4


def test_r4_trend_slope_of_a_known_power_law():
    lengths = [17, 33, 65, 129, 257]
    table = pd.DataFrame(
        {
            "task": "t",
            "layer": [0] * 5 + [1] * 5,
            "head": 0,
            "label": ["positional"] * 5 + ["symbolic"] * 5,
            "purity": 1.0,
            "length": lengths * 2,
            "discrepancy": [3.0 / n**2 for n in lengths] + [2.0] * 5,
            "discrepancy_max": [5.0 / n for n in lengths] + [4.0] * 5,  # the paper's Δ(n): max over inputs
        }
    )
    trend = r4_discrepancy.trends(table).set_index("layer")
    assert trend.loc[0, "slope"] == pytest.approx(-2.0) and trend.loc[0, "slope_max"] == pytest.approx(-1.0)
    assert trend.loc[0, "ratio"] == pytest.approx((17 / 257) ** 2)
    assert trend.loc[1, "slope"] == pytest.approx(0.0, abs=1e-12) and trend.loc[1, "ratio"] == 1.0
    assert trend.loc[1, "slope_max"] == pytest.approx(0.0, abs=1e-12)
    # against the paper's bounds (Thm 3.2): the positional maximum falls only like 1/n -> not O(1/n²)
    comparison = r4_discrepancy.paper_comparison(trend.reset_index()).set_index("label")
    assert comparison.loc["positional", "verdict"] == "not consistent"
    assert comparison.loc["positional", "slope_max"] == pytest.approx(-1.0)
    assert comparison.loc["symbolic", "verdict"] == "consistent"
    steep = table.assign(discrepancy_max=[9.0 / n**2 for n in lengths] + [4.0] * 5)
    again = r4_discrepancy.paper_comparison(r4_discrepancy.trends(steep)).set_index("label")
    assert again.loc["positional", "verdict"] == "consistent"


def test_r1_to_r3_paper_tables_on_hand_made_inputs(runs, tmp_path):
    """R1's paper_comparison.csv is written; R2 counts the paper's pure heads per kind and
    gamma; R3 puts the paper's step at 0.9 beside headkit's, as fractions of each run."""
    from headkit.report.paper import R1_ACCURACY, R2_PURE

    r1_length.main(dataclasses.replace(r1_length.quick_config(), runs=str(runs)), out=tmp_path / "r1", png=False)
    r1 = pd.read_csv(tmp_path / "r1" / "paper_comparison.csv")
    assert r1[["task", "added"]].values.tolist() == [["number", 0], ["letter", 0]]  # quick: +0 and +16 (not in Fig. 5B)
    assert r1["paper"].tolist() == [R1_ACCURACY["number"][0], R1_ACCURACY["letter"][0]]

    heads = pd.DataFrame({
        "task": ["number"] * 6, "layer": range(6), "head": 0,
        "pure_paper_0.1": ["positional", "positional", "neither", "symbolic", "symbolic", "symbolic"],
        "pure_paper_0.05": ["positional", "neither", "neither", "neither", "symbolic", "symbolic"],
        "delta_hop1": [-0.5, 0.0, 0.0, 0.0, 0.0, -0.2], "delta_hop2": [-0.5, -0.3, 0.0, 0.0, 0.0, 0.0],
    })  # fmt: skip
    table = r2_heads.paper_comparison(heads).set_index(["gamma", "kind"])
    assert table.loc[(0.1, "positional"), "headkit"] == 2 and table.loc[(0.1, "positional"), "headkit_layers"] == "L0-L1"
    assert table.loc[(0.1, "positional"), "paper"] == 4 and table.loc[(0.1, "positional"), "paper_layers"] == "L0-L3"
    assert table.loc[(0.1, "positional"), "verdict"] == f"{R2_PURE[0.1]['number']['positional'] - 2} fewer"
    assert table.loc[(0.05, "symbolic"), "headkit"] == 2 and table.loc[(0.05, "symbolic"), "headkit_layers"] == "L4-L5"
    assert r2_heads.needed_by_hop(heads)["number"] == {"hop1": ["L0H0", "L5H0"], "hop2": ["L0H0", "L1H0"]}

    summary = {
        "number": {"emerged_at_step": {"1": 500, "2": 700, "3": 900, "4": 1000},
                   "hop_first_trained_at_step": {str(h): 1 for h in range(1, 5)}},
        "letter": {"emerged_at_step": {"1": 800, "2": 800, "3": None, "4": 900},
                   "hop_first_trained_at_step": {str(h): 1 for h in range(1, 5)}},
    }  # fmt: skip
    comparison = r3_dynamics.paper_comparison(summary, {"number": 2000, "letter": 2000})
    number = comparison[comparison.task == "number"]
    assert number["paper_step"].tolist() == [1950, 2700, 3200, 3350]
    assert number["headkit_fraction"].tolist() == [0.25, 0.35, 0.45, 0.5]
    shape = r3_dynamics.shape(comparison)
    assert shape["number"]["headkit_in_hop_order"] and shape["number"]["paper_in_hop_order"]
    assert shape["number"]["headkit_spread_fraction"] == 0.25
    assert shape["letter"]["headkit_in_hop_order"] is None  # hop 3 never reached 0.9
    pure = r3_dynamics.pure_over_training(heads.assign(step=100))
    assert pure[["positional", "symbolic"]].values.tolist() == [[2, 3]]
