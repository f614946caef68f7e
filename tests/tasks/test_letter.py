"""letter_task: every prompt re-solved from its decoded strings by a solver written here."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from headkit.errors import HeadkitError
from headkit.tasks import IGNORE, TaskSpec
from headkit.tasks.letter import letter_task


def is_target(token: str) -> bool:
    return token[1].isdigit()


def solve(strings: list[str]) -> tuple[str, list[int]]:
    """Follow "go to the earlier token whose first symbol is y" from the last token.

    Also asserts the (ours) rule: each looked-up symbol is the first symbol of
    exactly one token of the prompt.
    """
    pos = len(strings) - 1
    visited = [pos]
    while not is_target(strings[pos]):
        y = strings[pos][1]
        holders = [j for j, s in enumerate(strings) if s[0] == y]
        assert len(holders) == 1, f"symbol {y} is a first symbol {len(holders)} times in {strings}"
        assert holders[0] < pos, f"lookup of {y} goes forward in {strings}"
        pos = holders[0]
        visited.append(pos)
    return strings[pos], visited


def check_batch(batch, *, t: int, p: int, min_hops: int, max_hops: int) -> None:
    length = t + p + 1
    assert batch.tokens.shape == (batch.n, length)
    for b in (batch, batch.corrupted):
        assert b.task == "letter"
        assert (b.answer_pos == length - 1).all() and (b.positions["query"] == length - 1).all()
        assert (b.targets[:, :-1] == IGNORE).all()
        assert torch.equal(b.targets[:, -1], b.answers)
        for i in range(b.n):
            strings = b.decode(i)
            assert all(len(s) == 2 for s in strings)
            assert all(is_target(s) for s in strings[:t])
            assert all(not is_target(s) for s in strings[t:])
            answer, visited = solve(strings)
            hops = len(visited) - 1
            assert b.vocab.decode([b.answers[i]]) == [answer]
            assert b.hops[i] == hops and min_hops <= hops <= max_hops
            assert all(t <= c < t + p for c in visited[1:-1])
            assert b.positions["chain"][i].tolist() == visited + [-1] * (max_hops + 1 - len(visited))
            assert b.positions["answer_source"][i] == visited[-1]
    twin = batch.corrupted
    assert twin.corrupted is None and twin.tokens.shape == batch.tokens.shape
    assert (twin.answers != batch.answers).all()
    assert torch.equal(batch.wrong_answers, twin.answers)
    assert torch.equal(twin.wrong_answers, batch.answers)
    # (ours) the twin changes only the answer token's digit
    differ = (twin.tokens != batch.tokens).nonzero()
    assert torch.equal(differ[:, 0], torch.arange(batch.n))
    assert torch.equal(differ[:, 1], batch.positions["answer_source"])
    for i in range(batch.n):
        a, b = batch.vocab.decode([batch.answers[i], twin.answers[i]])
        assert a[0] == b[0] and a[1] != b[1]


def test_default_prompts_solve():
    check_batch(letter_task(300, seed=0), t=8, p=8, min_hops=1, max_hops=4)


def test_one_hop_example_from_spec():
    assert solve(["a4", "b3", "c2", "d1", "fc"]) == ("c2", [4, 2])


def test_paper_sized_alphabet_still_has_unique_lookups():
    # 8 symbols a-h as in the paper: allowed, lookups unique, other symbols repeat
    batch = letter_task(200, seed=1, n_symbols=8)
    check_batch(batch, t=8, p=8, min_hops=1, max_hops=4)
    assert set("".join(batch.vocab.tokens)) <= set("abcdefgh12345678")


@pytest.mark.parametrize("n", [101, 6])
def test_hops_are_balanced(n):
    batch = letter_task(n, seed=3, min_hops=1, max_hops=3)
    counts = torch.bincount(batch.hops, minlength=4)[1:]
    assert counts.sum() == n and counts.max() - counts.min() <= 1


def test_deterministic_by_seed_and_global_rng_untouched(check_seeded):
    check_seeded(partial(letter_task, 40), seed=7, other_seed=8)


def test_vocab_round_trip_and_names():
    batch = letter_task(20, seed=1, n_symbols=24, n_digits=8)
    vocab = batch.vocab
    assert len(vocab) == 24 * 8 + 24 * 24
    assert "c2" in vocab and "fc" in vocab
    for i in range(batch.n):
        assert vocab.encode(batch.decode(i)) == batch.tokens[i].tolist()


@pytest.mark.parametrize("length", [33, 129])
def test_length_extension(length):
    check_batch(letter_task(40, seed=2, length=length), t=length - 9, p=8, min_hops=1, max_hops=4)


def test_spec_round_trip_rebuilds_the_batch():
    batch = letter_task(30, seed=4, length=65, n_symbols=10)
    assert torch.equal(TaskSpec(batch.task, batch.params).build(30, seed=4).tokens, batch.tokens)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(n_prompts=0), "n_prompts="),
        (dict(max_hops=10), "max_hops=10"),
        (dict(min_hops=0), "min_hops"),
        (dict(min_hops=3, max_hops=2), "max_hops"),
        (dict(target_window=0), "target_window"),
        (dict(length=9), "length"),
        (dict(n_symbols=5, max_hops=4), "n_symbols=5"),
        (dict(n_symbols=53), "n_symbols"),
        (dict(n_digits=1), "n_digits"),
        (dict(n_digits=10), "n_digits"),
        (dict(pointer_window=2, max_hops=4), "pointer_window=2"),
        (dict(seed="x"), "seed"),
    ],
)
def test_impossible_parameters_name_themselves(kwargs, name):
    args = dict(n_prompts=10, seed=0) | kwargs
    with pytest.raises(HeadkitError, match=name):
        letter_task(args.pop("n_prompts"), **args)
