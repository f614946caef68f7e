"""track_heads over a tiny training run, against references that do not go through what it calls.

- Which checkpoints: listed here from the run's ``checkpoints/step_*`` folders.
- Each checkpoint's model: loaded here with transformers' own
  ``GPTJForCausalLM.from_pretrained`` (not headkit's `load_checkpoint`).
- Accuracy: one plain Hugging Face forward per prompt, argmax at ``answer_pos``
  compared with ``answers`` (not `evaluate` / `score_batch`).
- Classification: `classify_heads` (itself tested against a slow one-forward-per-swap
  loop in test_swap_modes.py) on the hand-loaded model with the prompts in reverse
  order. The two checkpoints' references differ, so rows given the wrong step, the
  wrong checkpoint or other prompts fail (`test_the_comparison_catches_swapped_steps`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import GPTJForCausalLM

from headkit.bridge.build import wrap
from headkit.errors import HeadkitError
from headkit.models import synthetic
from headkit.scores.dynamics import DYNAMICS_COLUMNS, track_heads
from headkit.scores.positional_symbolic import classify_heads

N_PROMPTS, SEED, EVAL_N, EVAL_SEED = 4, 3, 16, 9
SCORES = ("positional_score", "symbolic_score", "signal", "purity")
ATOL = 1e-7  # track_heads and the reference agree to ~1e-16 here; the two checkpoints differ by up to 7e-5


@pytest.fixture
def run_dir(tiny_number_run):
    return tiny_number_run[0]


@pytest.fixture(scope="module")
def table(tiny_number_run):
    return track_heads(tiny_number_run[0], n_prompts=N_PROMPTS, seed=SEED, eval_n=EVAL_N, eval_seed=EVAL_SEED, progress=False)


def checkpoint_steps(run_dir) -> dict[int, object]:
    """step -> folder, from the folder names alone."""
    folders = sorted((run_dir / "checkpoints").glob("step_*"))
    return {int(folder.name[len("step_"):]): folder for folder in folders}


def hand_accuracy(hf_model, batch) -> dict[str, float]:
    """Exact match, one prompt per forward: overall and per hop."""
    with torch.no_grad():
        correct = torch.tensor([
            int(hf_model(input_ids=batch.tokens[i : i + 1]).logits[0, batch.answer_pos[i]].argmax()) == int(batch.answers[i])
            for i in range(batch.n)
        ])  # fmt: skip
    out = {"accuracy": correct.double().mean().item()}
    for hop in sorted(set(batch.hops.tolist())):
        out[f"accuracy_hop{hop}"] = correct[batch.hops == hop].double().mean().item()
    return out


@pytest.fixture(scope="module")
def references(tiny_number_run):
    """step -> (classify_heads of that checkpoint on the prompts reversed, accuracy by hand)."""
    run_dir, task = tiny_number_run
    prompts = task.build(N_PROMPTS, seed=SEED).tokens.flip(0)  # the same prompts, in another order
    held_out = task.build(EVAL_N, seed=EVAL_SEED)
    out = {}
    for step, folder in checkpoint_steps(run_dir).items():
        hf_model = GPTJForCausalLM.from_pretrained(folder).eval()
        accuracy = hand_accuracy(hf_model, held_out)
        out[step] = (classify_heads(synthetic(wrap(hf_model)), prompts), accuracy)
    return out


def check_rows(table: pd.DataFrame, references: dict) -> None:
    """Each step's rows equal its own checkpoint's reference."""
    assert sorted(set(table.step)) == sorted(references)
    for step, (classes, accuracy) in references.items():
        rows = table[table.step == step].sort_values(["layer", "head"]).reset_index(drop=True)
        assert rows[["layer", "head"]].values.tolist() == classes[["layer", "head"]].values.tolist()
        for name in SCORES:
            np.testing.assert_allclose(rows[name], classes[name], rtol=0, atol=ATOL, equal_nan=True, err_msg=f"step {step} {name}")
        assert rows.label.tolist() == classes.label.tolist()
        assert (rows.n_prompts == N_PROMPTS).all()
        for name, value in accuracy.items():
            assert (rows[name] == value).all(), (step, name, rows[name].tolist(), value)


def test_track_heads_rows_and_values(table, references):
    assert list(table.columns) == DYNAMICS_COLUMNS + ["accuracy_hop1", "accuracy_hop2"]
    assert sorted(references) == [2, 4]  # the run's checkpoints: step 2 and the final step
    assert table.step.tolist() == sorted(table.step.tolist())
    assert len(table) == 2 * 2 * 2  # steps x layers x heads
    assert not table.duplicated(["step", "layer", "head"]).any()
    check_rows(table, references)


def test_the_comparison_catches_swapped_steps(table, references):
    """The references can tell the checkpoints apart, so a table that mixed up steps fails `check_rows`."""
    (first, _), (last, _) = references[2], references[4]
    gap = np.nanmax(np.abs(first[list(SCORES[:3])].to_numpy() - last[list(SCORES[:3])].to_numpy()))
    assert gap > 100 * ATOL, gap  # far above check_rows' tolerance
    swapped = table.assign(step=table.step.map({2: 4, 4: 2}))
    with pytest.raises(AssertionError):
        check_rows(swapped, references)


def test_track_heads_selected_steps(run_dir, references):
    """Asking for one step gives that checkpoint's rows (the first checkpoint in a run is not the one asked for)."""
    for step in (4, 2):
        table = track_heads(run_dir, n_prompts=N_PROMPTS, seed=SEED, steps=[step], eval_n=EVAL_N, eval_seed=EVAL_SEED, progress=False)
        check_rows(table, {step: references[step]})


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

