"""evaluate / score_batch against slow explicit references and models with known answers."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from headkit.errors import HeadkitError
from headkit.evaluation import COLUMNS, accuracy_table, evaluate, score_batch
from headkit.tasks import IGNORE, TaskSpec

# length 4 + 4 + 1 = 9 by default; vocabulary 2 letters + 8 integers = 10
NUMBER = TaskSpec("number", {"n_letters": 2, "max_pointer": 8, "target_window": 4, "pointer_window": 4})


@pytest.fixture
def model(tiny_gptj):
    """A random tiny model nudged towards the two letters, so it is right about half the time."""
    m = tiny_gptj(d_vocab=10, n_ctx=32)
    with torch.no_grad():
        m.unembed.b_U[:2] += 3.0
    return m


def slow_accuracy(model, task, length, n, seed):
    """Reference: one prompt at a time, argmax at its answer position, tallied by hop in Python."""
    batch = task.build(n, seed=seed, length=length)
    tally: dict = {}
    for i in range(batch.n):
        with torch.no_grad():
            logits = model(batch.tokens[i : i + 1], return_type="logits")[0]  # [pos, d_vocab]
        right = int(logits[int(batch.answer_pos[i])].argmax()) == int(batch.answers[i])
        for key in (int(batch.hops[i]), "all"):
            hits, count = tally.get(key, (0, 0))
            tally[key] = (hits + right, count + 1)
    return {key: (hits / count, count) for key, (hits, count) in tally.items()}


def test_evaluate_equals_a_slow_per_prompt_loop(model):
    frame = evaluate(model, NUMBER, lengths=[9, 21], n_prompts=24, seed=7, batch_size=7)
    assert list(frame.columns) == list(COLUMNS)
    assert frame["length"].tolist() == [9] * 5 + [21] * 5
    assert frame["hop"].tolist() == [1, 2, 3, 4, "all"] * 2
    for length in (9, 21):
        expected = slow_accuracy(model, NUMBER, length, 24, 7)
        rows = frame[frame["length"] == length]
        got = {row.hop: (row.accuracy, row.n) for row in rows.itertuples()}
        assert got.keys() == expected.keys()
        for key in expected:
            assert got[key][0] == pytest.approx(expected[key][0], abs=1e-12), (length, key)
            assert got[key][1] == expected[key][1]
    overall = frame[frame["hop"] == "all"]["accuracy"]
    assert ((overall > 0.1) & (overall < 0.9)).all()  # the check is not trivially all-right or all-wrong


def test_a_model_that_always_says_one_token_scores_that_tokens_share(tiny_gptj):
    """Known by construction: accuracy == fraction of prompts whose answer is that token."""
    m = tiny_gptj(d_vocab=10, n_ctx=32)
    with torch.no_grad():
        m.unembed.b_U[0] = 1e4
    frame = evaluate(m, NUMBER, lengths=[13], n_prompts=64, seed=1)
    batch = NUMBER.build(64, seed=1, length=13)
    for hop in (1, 2, 3, 4):
        share = float((batch.answers[batch.hops == hop] == 0).float().mean())
        assert frame.set_index("hop").loc[hop, "accuracy"] == pytest.approx(share)
    assert frame.set_index("hop").loc["all", "accuracy"] == pytest.approx(float((batch.answers == 0).float().mean()))


def test_default_length_is_the_task_length_and_seed_fixes_prompts(model):
    a = evaluate(model, NUMBER, n_prompts=24, seed=3)
    b = evaluate(model, NUMBER, lengths=[9], n_prompts=24, seed=3)
    pd.testing.assert_frame_equal(a, b)


def test_score_batch_loss_equals_one_unchunked_cross_entropy(model):
    batch = NUMBER.build(30, seed=2)
    score = score_batch(model, batch, batch_size=4)
    with torch.no_grad():
        logits = model(batch.tokens)
    reference = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE)
    assert score.loss == pytest.approx(float(reference), rel=1e-5)
    assert torch.equal(score.correct, logits[torch.arange(30), batch.answer_pos].argmax(-1) == batch.answers)
    assert not model.training  # left as found (eval)


def test_lengths_beyond_the_context_are_refused_before_any_forward(model, monkeypatch):
    calls = []
    monkeypatch.setattr(type(model), "forward", lambda *a, **k: calls.append(1))
    with pytest.raises(HeadkitError, match="evaluation length 33 exceeds the model's context n_ctx=32"):
        evaluate(model, NUMBER, lengths=[9, 33], n_prompts=8)
    assert calls == []


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"n_prompts": 0}, "n_prompts=0"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"lengths": []}, "lengths is empty"),
        ({"lengths": [9, "x"]}, "length must be an integer, got 'x'"),  # issue 11: checks.check_int's message
    ],
)
def test_bad_arguments_are_named(model, kwargs, words):
    with pytest.raises(HeadkitError, match=words):
        evaluate(model, NUMBER, **kwargs)


def test_vocabulary_mismatch_and_unknown_task_and_lengthless_task(tiny_gptj):
    m = tiny_gptj(d_vocab=11, n_ctx=64)
    with pytest.raises(HeadkitError, match="vocabulary of 10 tokens but the model's d_vocab is 11"):
        evaluate(m, NUMBER, n_prompts=4)
    with pytest.raises(HeadkitError, match="unknown task 'chess'"):
        evaluate(m, TaskSpec("chess"), n_prompts=4)
    with pytest.raises(HeadkitError, match="task 'induction' has no length parameter"):
        evaluate(m, TaskSpec("induction"), lengths=[20], n_prompts=4)


def test_tasks_without_hops_get_only_the_pooled_row(tiny_gptj):
    m = tiny_gptj(d_vocab=5, n_ctx=16, n_layers=1, attn_only=True)
    frame = evaluate(m, TaskSpec("copy", {"vocab_size": 5}), lengths=[6, 10], n_prompts=16)
    assert frame["hop"].tolist() == ["all", "all"] and frame["n"].tolist() == [16, 16]


def test_accuracy_table_is_wide_by_hop(model):
    frame = evaluate(model, NUMBER, lengths=[9, 13], n_prompts=16)
    wide = accuracy_table(frame)
    assert list(wide.columns) == ["task", "extend", "length", "added", "hop1", "hop2", "hop3", "hop4", "all"]
    assert wide["added"].tolist() == [0, 4] and wide["extend"].tolist() == ["prefix", "prefix"]
    assert wide["length"].tolist() == [9, 13]
    assert wide.loc[1, "hop3"] == frame[(frame.length == 13) & (frame.hop == 3)]["accuracy"].item()
    # the CSV round trip (hop read back as strings) gives the same table
    pd.testing.assert_frame_equal(accuracy_table(frame.astype({"hop": str})), wide)


def slow_accuracy_of(model, batch):
    """Fraction of prompts of ``batch`` whose argmax at answer_pos is the answer, one prompt at a time."""
    hits = 0
    for i in range(batch.n):
        with torch.no_grad():
            logits = model(batch.tokens[i : i + 1], return_type="logits")[0]
        hits += int(logits[int(batch.answer_pos[i])].argmax()) == int(batch.answers[i])
    return hits / batch.n


@pytest.mark.parametrize("extend", ["prefix", "window"])
def test_extend_modes_score_the_builders_prompts(model, extend):
    frame = evaluate(model, NUMBER, lengths=[9, 20], extend=extend, n_prompts=20, seed=5, batch_size=6)
    assert set(frame["extend"]) == {extend} and frame["added"].tolist() == [0] * 5 + [11] * 5
    for length in (9, 20):
        override = {} if length == 9 else {"length": length, "extend": extend}
        batch = NUMBER.build(20, seed=5, **override)
        got = frame[(frame.length == length) & (frame.hop == "all")]["accuracy"].item()
        assert got == pytest.approx(slow_accuracy_of(model, batch), abs=1e-12)


def test_prefix_is_the_default_and_added_equals_lengths(model):
    by_added = evaluate(model, NUMBER, added=[0, 4, 11], n_prompts=12, seed=2)
    by_length = evaluate(model, NUMBER, lengths=[9, 13, 20], n_prompts=12, seed=2)
    pd.testing.assert_frame_equal(by_added, by_length)
    # the prefix protocol's prompts end with a trained-length prompt: tokens differ only in front
    a = NUMBER.build(12, seed=2, length=20)
    w = NUMBER.build(12, seed=2, length=20, extend="window")
    assert (a.answer_pos == 19).all() and (w.answer_pos == 19).all()
    assert (a.positions["answer_source"] >= 11).all()  # the answer lies in the last 9 tokens
    assert (w.positions["answer_source"] < 11).any()  # the window protocol puts it anywhere


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"lengths": [9, 13, 9]}, "lengths repeats 9"),
        ({"added": [0, 46, 46]}, "added repeats 46"),
        ({"added": [-1]}, "added token count=-1"),  # issue 11: checks.check_int's message
        ({"lengths": [9], "added": [0]}, "not both"),
        ({"extend": "middle"}, "extend='middle'"),
    ],
)
def test_repeats_and_bad_protocol_arguments_are_refused(model, kwargs, words):
    with pytest.raises(HeadkitError, match=words):
        evaluate(model, NUMBER, n_prompts=4, **kwargs)


def test_requests_that_cannot_fit_in_memory_are_refused_before_any_work(model, monkeypatch):
    calls = []
    monkeypatch.setattr(type(model), "forward", lambda *a, **k: calls.append("forward"))
    monkeypatch.setattr(TaskSpec, "build", lambda self, n, **k: calls.append(("build", n)) or NUMBER_BUILD(self, n, **k))
    with pytest.raises(HeadkitError, match="GiB of memory"):
        evaluate(model, NUMBER, n_prompts=10**9)
    assert calls == []  # issue 11: the trained length comes from the task's parameters, no probe is built


NUMBER_BUILD = TaskSpec.build


def test_extend_window_needs_a_task_that_has_it(tiny_gptj):
    m = tiny_gptj(d_vocab=5, n_ctx=16, n_layers=1, attn_only=True)
    with pytest.raises(HeadkitError, match="task 'copy' has no extend parameter"):
        evaluate(m, TaskSpec("copy", {"vocab_size": 5}), lengths=[6, 10], extend="window", n_prompts=4)
