"""repeated_tokens_task: every scored target re-derived by an induction solver on the strings."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from headkit.errors import HeadkitError
from headkit.tasks import IGNORE, TaskSpec
from headkit.tasks.repeated import repeated_tokens_task


def induction(strings: list[str], pos: int) -> str | None:
    """The token after the earliest earlier occurrence of ``strings[pos]`` (None if none)."""
    for j in range(pos):
        if strings[j] == strings[pos]:
            return strings[j + 1]
    return None


def check(b, half: int, bos: bool) -> None:
    start = int(bos)
    length = start + 2 * half
    assert b.tokens.shape == (b.n, length) and b.task == "induction"
    for i in range(b.n):
        strings = b.decode(i)
        assert (strings[0] == "BOS") == bos and "BOS" not in strings[start:]
        # scored positions are exactly those whose next token induction can predict
        scored = (b.targets[i] != IGNORE).nonzero().squeeze(-1).tolist()
        predictable = [p for p in range(length - 1) if induction(strings, p) is not None]
        assert scored == predictable == list(range(start + half, length - 1))
        assert b.vocab.decode(b.targets[i, scored]) == [induction(strings, p) for p in scored]
        assert b.vocab.decode([b.answers[i]]) == [induction(strings, length - 2)]
    assert (b.answer_pos == length - 2).all() and (b.positions["query"] == length - 2).all()
    assert (b.positions["first_half"] == start).all() and (b.positions["second_half"] == start + half).all()
    assert (b.positions["induction_source"] == start + half - 1).all()


@pytest.mark.parametrize("bos", [True, False])
def test_prompts_repeat_distinct_tokens(bos):
    batch = repeated_tokens_task(40, seed=0, half_length=6, vocab_size=8, bos=bos)
    check(batch, 6, bos)
    start = int(bos)
    for i in range(batch.n):
        strings = batch.decode(i)
        first, second = strings[start : start + 6], strings[start + 6 :]
        assert first == second and len(set(first)) == 6


def test_twin_replaces_last_first_half_token_with_a_new_one():
    batch = repeated_tokens_task(40, seed=1, half_length=5, vocab_size=20)
    twin = batch.corrupted
    assert twin.corrupted is None and twin.tokens.shape == batch.tokens.shape
    differ = (twin.tokens != batch.tokens).nonzero()
    assert torch.equal(differ[:, 0], torch.arange(40)) and (differ[:, 1] == 5).all()
    for i in range(40):
        clean, corrupt = batch.decode(i), twin.decode(i)
        assert corrupt[5] not in clean
        # induction at the answer position now predicts r'
        assert twin.vocab.decode([twin.answers[i]]) == [induction(corrupt, 9)] == [corrupt[5]]
        assert twin.vocab.decode(twin.targets[i, 9:10]) == [corrupt[5]]
    assert (twin.answers != batch.answers).all()
    assert torch.equal(batch.wrong_answers, twin.answers) and torch.equal(twin.wrong_answers, batch.answers)


def test_deterministic_by_seed_round_trip_and_spec(check_seeded):
    a, _ = check_seeded(partial(repeated_tokens_task, 20), seed=3, other_seed=4)
    assert len(a.vocab) == 51 and a.vocab.tokens[0] == "BOS"
    assert a.vocab.encode(a.decode(0)) == a.tokens[0].tolist()
    assert torch.equal(TaskSpec(a.task, a.params).build(20, seed=3).tokens, a.tokens)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(n_prompts=0), "n_prompts="),
        (dict(half_length=1), "half_length=1"),
        (dict(half_length=10, vocab_size=10), "vocab_size=10"),
        (dict(bos="yes"), "bos"),
    ],
)
def test_bad_parameters_name_themselves(kwargs, name):
    args = dict(n_prompts=5, seed=0) | kwargs
    with pytest.raises(HeadkitError, match=name):
        repeated_tokens_task(args.pop("n_prompts"), **args)
