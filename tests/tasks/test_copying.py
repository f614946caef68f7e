"""copy_task: targets re-derived from the decoded strings (target at t = token at t-1)."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from headkit.errors import HeadkitError
from headkit.tasks import IGNORE, TaskSpec
from headkit.tasks.copying import copy_task


def check(b, length: int) -> None:
    assert b.tokens.shape == (b.n, length) and b.task == "copy"
    assert (b.targets[:, 0] == IGNORE).all()
    for i in range(b.n):
        strings = b.decode(i)
        assert b.vocab.decode(b.targets[i, 1:]) == strings[:-1]
        assert b.vocab.decode([b.answers[i]]) == [strings[-2]]
    assert (b.answer_pos == length - 1).all() and (b.positions["query"] == length - 1).all()
    assert (b.positions["source"] == length - 2).all()


def test_targets_are_previous_tokens_and_twin_changes_one_token():
    batch = copy_task(50, seed=0, length=12, vocab_size=5)
    check(batch, 12)
    check(batch.corrupted, 12)
    twin = batch.corrupted
    assert twin.corrupted is None
    differ = (twin.tokens != batch.tokens).nonzero()
    assert torch.equal(differ[:, 0], torch.arange(50)) and (differ[:, 1] == 10).all()
    assert (twin.answers != batch.answers).all()
    assert torch.equal(batch.wrong_answers, twin.answers) and torch.equal(twin.wrong_answers, batch.answers)


def test_tokens_cover_the_vocabulary_evenly():
    tokens = copy_task(400, seed=1, length=32, vocab_size=16).tokens
    counts = torch.bincount(tokens.reshape(-1), minlength=16)  # 12800 draws, 800 expected each
    assert counts.shape == (16,) and counts.min() > 650 and counts.max() < 950


def test_deterministic_by_seed_round_trip_and_spec(check_seeded):
    a, _ = check_seeded(partial(copy_task, 20), seed=3, other_seed=4)
    assert a.vocab.encode(a.decode(0)) == a.tokens[0].tolist()
    assert a.vocab.tokens == tuple(f"t{i}" for i in range(16))
    assert torch.equal(TaskSpec(a.task, a.params).build(20, seed=3).tokens, a.tokens)


@pytest.mark.parametrize(
    "kwargs, name", [(dict(n_prompts=0), "n_prompts="), (dict(length=1), "length=1"), (dict(vocab_size=1), "vocab_size=1")]
)
def test_bad_parameters_name_themselves(kwargs, name):
    args = dict(n_prompts=5, seed=0) | kwargs
    with pytest.raises(HeadkitError, match=name):
        copy_task(args.pop("n_prompts"), **args)
