"""analyses/paper_preset.py: R1-R4 over seeds from paper-preset runs, beside the paper.

Tiny runs stand in for the paper's (the config is the tiny shared-run config of R1-R4,
4 updates): the test checks the aggregation against the per-seed numbers it wrote,
the computed verdicts, and that an unfinished seed is listed, not dropped silently.
"""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

from analyses import paper_preset, r1_length
from headkit.errors import HeadkitError
from headkit.report import paper
from headkit.training.loop import train


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper_runs")
    for task in paper_preset.TASKS:
        for seed in (0, 1):
            cfg = dataclasses.replace(r1_length.shared_run_config(task, steps=4, tiny=True), seed=seed, eval_every=2)
            train(cfg, out_dir=root / f"{task}_s{seed}", progress=False)
    return root


@pytest.mark.slow
def test_aggregates_equal_the_per_seed_numbers_and_verdicts_are_computed(runs, tmp_path):
    cfg = dataclasses.replace(paper_preset.quick_config(), runs=str(runs), seeds=(0, 1, 2))
    r1 = paper_preset.main(cfg, out=tmp_path)
    per_seed = pd.read_csv(tmp_path / "per_seed.csv")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert sorted(summary["runs"]) == ["letter_s0", "letter_s1", "number_s0", "number_s1"]
    assert [m.split(" ")[0].rsplit("/", 1)[-1] for m in summary["missing"]] == ["number_s2", "letter_s2"]
    assert json.loads((tmp_path / "config.json").read_text())["commit"]
    for row in r1.itertuples():
        values = per_seed[(per_seed.result == "r1") & (per_seed.task == row.task) & (per_seed.added == row.added)]
        assert len(values) == 2 and row.mean == pytest.approx(values.accuracy.mean())
        assert row.std == pytest.approx(values.accuracy.std(ddof=1))
        ok = sum(paper.verdict(a, row.paper, n=cfg.n) == "reproduces" for a in values.accuracy)
        assert row.verdict == f"{ok} of 2 seeds reproduce"
    r2 = pd.read_csv(tmp_path / "r2.csv")
    assert set(zip(r2.task, r2.gamma, r2.kind)) == {(t, g, k) for t in ("number", "letter") for g in (0.1, 0.05) for k in ("positional", "symbolic")}
    assert r2.verdict.str.match(r"[0-2] of 2 seeds reproduce the kinds").all()
    r3 = pd.read_csv(tmp_path / "r3.csv")
    steps = per_seed[per_seed.result == "r3"]
    for row in r3.itertuples():
        values = steps[(steps.task == row.task) & (steps.hop == row.hop)].step
        assert row.mean == pytest.approx(values.mean(), nan_ok=True)
    assert summary["r3_number_hop_order"].endswith("of 2 seeds reach 0.9 in hop order")
    r4 = pd.read_csv(tmp_path / "r4.csv")
    r4_seed = per_seed[per_seed.result == "r4"]
    assert set(zip(r4.task, r4.label)) == {(t, k) for t in ("number", "letter") for k in ("positional", "symbolic")}
    for row in r4.itertuples():
        values = r4_seed[(r4_seed.task == row.task) & (r4_seed.label == row.label)]
        assert row.heads_per_seed == " | ".join(str(int(h)) for h in values.heads)
        measured = values[values.heads > 0].slope_max
        assert row.slope_max_mean == pytest.approx(measured.mean(), nan_ok=True)
        ok = int((values.verdict == "consistent").sum())
        assert row.verdict == f"{ok} of 2 seeds consistent ({int((values.heads == 0).sum())} without such a head)"


def test_no_finished_run_is_an_error_naming_what_is_missing(tmp_path):
    cfg = dataclasses.replace(paper_preset.quick_config(), runs=str(tmp_path), seeds=(0,))
    with pytest.raises(HeadkitError, match=r"no finished paper-preset run under .*number_s0 \(absent\)"):
        paper_preset.main(cfg, out=tmp_path / "out")


def test_step_at_is_the_first_step_reaching_the_threshold():
    metrics = pd.DataFrame({"step": [50, 100, 150], "accuracy_hop1": [0.5, 0.92, 0.85], "accuracy_hop2": [0.1, 0.2, 0.3]})
    assert paper_preset.step_at(metrics, 1) == 100
    assert pd.isna(paper_preset.step_at(metrics, 2)) and pd.isna(paper_preset.step_at(metrics, 3))
