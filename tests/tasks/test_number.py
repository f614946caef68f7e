"""number_task: every prompt re-solved from its decoded strings by a solver written here."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from headkit.errors import HeadkitError
from headkit.tasks import IGNORE, TaskSpec
from headkit.tasks.number import number_task


def solve(strings: list[str]) -> tuple[str, list[int]]:
    """Follow the jumps from the last token; returns (answer string, visited positions)."""
    pos = len(strings) - 1
    visited = [pos]
    while strings[pos].isdigit():
        pos -= int(strings[pos])
        assert pos >= 0, f"jump out of the prompt: {strings}"
        visited.append(pos)
    return strings[pos], visited


def check_batch(batch, *, t: int, p: int, max_pointer: int, min_hops: int, max_hops: int) -> None:
    """Every prompt of ``batch`` and of its twin agrees with the solver and the layout rules."""
    length = t + p + 1
    assert batch.tokens.shape == (batch.n, length)
    for b in (batch, batch.corrupted):
        assert b.task == "number"
        assert (b.answer_pos == length - 1).all()
        assert (b.positions["query"] == length - 1).all()
        assert (b.targets[:, :-1] == IGNORE).all()
        assert torch.equal(b.targets[:, -1], b.answers)
        for i in range(b.n):
            strings = b.decode(i)
            # layout: letters in the target window, integers 1..max_pointer after it
            assert all(not s.isdigit() for s in strings[:t])
            assert all(s.isdigit() and 1 <= int(s) <= max_pointer for s in strings[t:])
            answer, visited = solve(strings)
            hops = len(visited) - 1
            assert b.vocab.decode([b.answers[i]]) == [answer]
            assert b.hops[i] == hops and min_hops <= hops <= max_hops
            assert all(t <= c < t + p for c in visited[1:-1]), "intermediate landing outside pointers"
            assert visited[-1] < t
            chain = b.positions["chain"][i].tolist()
            assert chain == visited + [-1] * (max_hops + 1 - len(visited))
            assert b.positions["answer_source"][i] == visited[-1]
    assert batch.corrupted.corrupted is None
    assert batch.corrupted.tokens.shape == batch.tokens.shape
    assert (batch.corrupted.answers != batch.answers).all()
    assert torch.equal(batch.wrong_answers, batch.corrupted.answers)
    assert torch.equal(batch.corrupted.wrong_answers, batch.answers)
    assert torch.equal(batch.corrupted.hops, batch.hops)


def test_default_prompts_solve_and_twin_differs():
    batch = number_task(300, seed=0)
    check_batch(batch, t=8, p=8, max_pointer=16, min_hops=1, max_hops=4)
    # (ours) the twin is re-routed: with the default windows another first jump always exists
    assert (batch.corrupted.positions["chain"][:, 1] != batch.positions["chain"][:, 1]).all()
    # the twin keeps the clean distractors: tokens differ only on the two chains
    differ = batch.tokens != batch.corrupted.tokens
    on_chains = torch.zeros_like(differ)
    for chain in (batch.positions["chain"], batch.corrupted.positions["chain"]):
        rows = torch.arange(batch.n)[:, None].expand_as(chain)
        on_chains[rows[chain >= 0], chain[chain >= 0]] = True
    assert not (differ & ~on_chains).any()


def test_one_hop_example_from_spec_reads_as_solver_says():
    # SPEC 2.1: `a z b y c x d w 5` -> `y` (query at 8 jumps back 5 to position 3)
    assert solve(["a", "z", "b", "y", "c", "x", "d", "w", "5"]) == ("y", [8, 3])


@pytest.mark.parametrize("n", [101, 7])
def test_hops_are_balanced(n):
    batch = number_task(n, seed=3, min_hops=2, max_hops=5)
    counts = torch.bincount(batch.hops, minlength=6)[2:]
    assert counts.sum() == n and counts.max() - counts.min() <= 1
    assert batch.hops.min() >= 2 and batch.hops.max() <= 5


def test_hop_order_is_shuffled():
    hops = number_task(200, seed=0).hops
    assert not torch.equal(hops, 1 + torch.arange(200) % 4)


def test_first_landing_is_spread_over_reachable_targets():
    # uniform chains: a one-hop query lands on each of the 8 target positions about equally
    batch = number_task(4000, seed=5, min_hops=1, max_hops=1)
    counts = torch.bincount(batch.positions["answer_source"], minlength=8)
    assert counts.shape == (8,) and counts.min() > 400 and counts.max() < 600


def test_deterministic_by_seed_and_global_rng_untouched(check_seeded):
    a, b = check_seeded(partial(number_task, 50), seed=7, other_seed=8)
    assert torch.equal(a.positions["chain"], b.positions["chain"])


def test_vocab_round_trip_and_readable_names():
    batch = number_task(20, seed=1, n_letters=120)
    vocab = batch.vocab
    assert len(vocab) == 120 + 16
    for i in range(batch.n):
        assert vocab.encode(batch.decode(i)) == batch.tokens[i].tolist()
    letters = vocab.tokens[:120]
    assert all(not s.isdigit() for s in letters) and len(set(letters)) == 120
    assert vocab.tokens[120:] == tuple(str(j) for j in range(1, 17))


@pytest.mark.parametrize("length", [33, 65, 257])
def test_length_extension_keeps_pointer_range(length):
    batch = number_task(60, seed=2, length=length)
    check_batch(batch, t=length - 9, p=8, max_pointer=16, min_hops=1, max_hops=4)


def test_spec_round_trip_rebuilds_the_batch():
    batch = number_task(30, seed=4, max_hops=3, length=33)
    again = TaskSpec(batch.task, batch.params).build(30, seed=4)
    assert torch.equal(again.tokens, batch.tokens)


def test_small_pointer_range_still_valid():
    # max_pointer=4 with 4 pointers: one hop cannot reach the targets, 2..4 hops can
    batch = number_task(90, seed=9, max_pointer=4, min_hops=2, max_hops=4, pointer_window=4, target_window=5)
    check_batch(batch, t=5, p=4, max_pointer=4, min_hops=2, max_hops=4)
    with pytest.raises(HeadkitError, match="hops=1 is impossible with max_pointer=4"):
        number_task(9, seed=9, max_pointer=4, min_hops=1, max_hops=4, pointer_window=4, target_window=5)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(n_prompts=0), "n_prompts="),
        (dict(max_hops=10), "max_hops=10"),
        (dict(min_hops=0), "min_hops"),
        (dict(min_hops=3, max_hops=2), "max_hops"),
        (dict(target_window=0), "target_window"),
        (dict(length=9), "length"),
        (dict(n_letters=1), "n_letters"),
        (dict(n_letters=10_000), "n_letters"),
        (dict(max_pointer=0), "max_pointer"),
        (dict(max_pointer=2, max_hops=1), "max_pointer=2"),  # one jump of <=2 cannot leave 8 pointers
        (dict(pointer_window=-1), "pointer_window"),
        (dict(seed=1.5), "seed"),
        (dict(max_hops=2.0), "max_hops"),
    ],
)
def test_impossible_parameters_name_themselves(kwargs, name):
    args = dict(n_prompts=10, seed=0) | kwargs
    with pytest.raises(HeadkitError, match=name):
        number_task(args.pop("n_prompts"), **args)


def test_max_hops_message_gives_allowed_range():
    with pytest.raises(HeadkitError, match=r"allowed 1\.\.9"):
        number_task(4, seed=0, max_hops=10, pointer_window=8)


def test_chains_are_uniform_over_all_valid_chains():
    # brute force: every 2-hop chain q=6 -> pointer (3..5) -> target (0..2) with jumps <= 3
    valid = [(6, a, b) for a in (3, 4, 5) for b in (0, 1, 2) if 6 - a <= 3 and a - b <= 3]
    assert len(valid) == 6
    batch = number_task(
        6000, seed=11, target_window=3, pointer_window=3, max_pointer=3, min_hops=2, max_hops=2, balance="hops"
    )
    seen = {}
    for chain in batch.positions["chain"].tolist():
        seen[tuple(chain)] = seen.get(tuple(chain), 0) + 1
    assert set(seen) == set(valid)
    assert all(850 < k < 1150 for k in seen.values()), seen  # 1000 expected each, sd about 29
