"""headkit.report.demo: the demo pipeline as a library function (`run_demo` -> `DemoResult`).

The command ``headkit demo`` is covered end to end by tests/cli/test_cli_train.py; here the
module itself: its options are checked on construction, it returns every table it
writes, and it never prints (what it reports goes to ``say``).
"""

from __future__ import annotations

import dataclasses
import io

import pandas as pd
import pytest

from headkit.errors import HeadkitError
from headkit.report import demo


@pytest.mark.parametrize(
    "options, words",
    [
        ({"lengths": (17, 33), "added": (0,)}, "give lengths or added, not both"),
        ({"added": (0, 46, 0)}, "--added 0,46,0 repeats a value"),
        ({"lengths": None, "added": (-1,)}, "--added=-1 is out of range: allowed 0 or more"),
        ({"lengths": (0,), "added": None}, "--lengths=0 is out of range"),
        ({"eval_n": 0}, "eval_n=0 is out of range: allowed 1 or more"),
        ({"eval_n": True}, "eval_n must be an integer, got True"),
        ({"steps_scale": 0.0}, "steps_scale=0.0 must be a positive number"),
        ({"extend": "middle"}, "extend='middle' is unknown: allowed prefix, window"),
    ],
)
def test_options_are_checked_on_construction(options, words):
    with pytest.raises(HeadkitError, match=words.replace("(", r"\(").replace(".", r"\.")):
        demo.DemoOptions(**options)


def test_defaults_are_the_papers_protocol():
    options = demo.DemoOptions()
    assert options.added == demo.DEMO_ADDED == (0, 46, 96, 296, 996)
    assert (options.lengths, options.extend, options.eval_n) == (None, "prefix", 512)


def test_check_options_refuses_lengths_beyond_the_context_before_training(tmp_path):
    with pytest.raises(HeadkitError, match="--added 2100 exceeds the number model's context n_ctx=2048"):
        demo.check_options(tmp_path, demo.DemoOptions(added=(0, 2100)))
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def tiny_configs(monkeypatch):
    """`demo_configs` with each model shrunk to 2 layers of d_model 16 (the schedule unchanged)."""
    real = demo.demo_configs

    def tiny(options):
        shrink = {"n_layers": 2, "d_model": 16}
        return {t: dataclasses.replace(c, model=dataclasses.replace(c.model, **shrink), eval_n=32) for t, c in real(options).items()}

    monkeypatch.setattr(demo, "demo_configs", tiny)


@pytest.mark.slow
def test_run_demo_returns_its_tables_and_prints_nothing(tiny_configs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "DEMO_STEPS", demo.DEMO_STEPS[:2])  # train + evaluate
    said: list[str] = []
    options = demo.DemoOptions(steps_scale=0.002, lengths=(17, 33), added=None, eval_n=8, progress=False, parallel=False)
    result = demo.run_demo(tmp_path, options, say=said.append)
    assert capsys.readouterr().out == ""  # the library never prints
    assert "== train ==" in said and "== evaluate ==" in said
    assert sorted(result.configs) == sorted(result.models) == ["letter", "number"]
    assert result.files == [tmp_path / demo.ACCURACY_FILE]
    written = pd.read_csv(tmp_path / demo.ACCURACY_FILE)
    pd.testing.assert_frame_equal(written, pd.read_csv(io.StringIO(result.accuracy.to_csv(index=False))))
    assert set(result.accuracy["length"]) == {17, 33}
    assert set(result.r1["added"]) == {0}  # R1 rows only where a length is one of the paper's (17 = +0)
    assert result.heads == {} and result.ablation == {} and result.report is None


def test_classify_step_prints_r2_beside_the_papers_counts(tmp_path, monkeypatch):
    """R2 beside R1 (issue 19): pure heads at gamma 0.1 with their layers, the paper's counts, a computed verdict."""
    labels = {"number": ["symbolic"] * 6, "letter": ["symbolic"] * 6}  # "all six heads symbolic"
    tables = iter(
        pd.DataFrame({"layer": range(6), "head": 0, "label": "symbolic", "purity": 1.0, "positional_score": 0.0,
                      "symbolic_score": 1.0, "signal": 0.5, "pure_paper_0.1": labels[t]})
        for t in ("number", "letter")
    )  # fmt: skip
    monkeypatch.setattr(demo, "classify_heads", lambda model, tokens: next(tables))
    options = demo.DemoOptions(progress=False)
    result = demo.DemoResult(out=tmp_path, configs=demo.demo_configs(options), models={"number": None, "letter": None})
    said: list[str] = []
    demo.step_classify(options, result, said.append)
    text = "\n".join(said)
    assert "R2 against PosSym-2026" in text
    row = result.r2.set_index(["task", "kind"])
    assert row.loc[("number", "positional"), ["paper", "paper_layers", "headkit", "verdict"]].tolist() == [4, "L0-L3", 0, "4 fewer"]
    assert row.loc[("number", "symbolic"), ["paper", "paper_layers", "headkit_layers"]].tolist() == [8, "L4-L11", "L0-L5"]
    assert row.loc[("letter", "symbolic"), "paper"] == 11
    assert "R2 number: not reproduced: no pure positional head where the paper has 4" in said
    assert "R2 letter: reproduced in kind (symbolic); counts compared by layout, not number" in said


def test_report_dynamics_use_every_checkpoint():
    """The report's learning dynamics classify all 12 checkpoints (it took 4 and skipped steps 400-800, issue 19)."""
    for cfg in demo.demo_configs(demo.DemoOptions()).values():
        steps = demo._report_steps(cfg)
        assert steps == [*cfg.checkpoint_steps, cfg.steps] and len(steps) == 12
        assert {400, 600, 800} <= set(steps)
