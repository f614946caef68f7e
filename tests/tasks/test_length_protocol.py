"""The paper's length protocol (extend="prefix"), its window variant, and requests too big to build.

Every prompt is re-solved from its decoded strings by solvers written here, independent
of the builders' chain tables.
"""

from __future__ import annotations

import time

import pytest
import torch

from headkit.errors import HeadkitError
from headkit.tasks import IGNORE, copy_task, letter_task, number_task, repeated_tokens_task, tree_task


def solve_number(strings: list[str]) -> tuple[str, int]:
    """(answer, hops): jump back by each integer from the last token until a letter."""
    k, hops = len(strings) - 1, 0
    while strings[k].isdigit():
        k -= int(strings[k])
        assert k >= 0, "a chain jumped before the prompt"
        hops += 1
    return strings[k], hops


def solve_letter(strings: list[str]) -> tuple[str, int]:
    """(answer, hops): from the query (x, y), go to the one earlier token whose first symbol is y."""
    k, hops = len(strings) - 1, 0
    while not strings[k][1].isdigit():
        y = strings[k][1]
        found = [j for j in range(k) if strings[j][0] == y]
        assert len(found) == 1, f"symbol {y} is looked up but occurs {len(found)} times before {k}"
        k, hops = found[0], hops + 1
    return strings[k], hops


BUILDERS = {"number": (number_task, solve_number), "letter": (letter_task, solve_letter)}


@pytest.mark.parametrize("task", ["number", "letter"])
@pytest.mark.parametrize("added", [1, 46])
def test_prefix_keeps_the_trained_prompt_as_the_last_17_tokens(task, added):
    build, solve = BUILDERS[task]
    base = build(40, seed=3)
    longer = build(40, seed=3, length=17 + added)
    assert longer.params["extend"] == "prefix" and longer.length == 17 + added
    for short, long in ((base, longer), (base.corrupted, longer.corrupted)):
        assert torch.equal(long.tokens[:, added:], short.tokens)  # the prompt itself is unchanged
        assert torch.equal(long.answers, short.answers) and torch.equal(long.hops, short.hops)
        assert torch.equal(long.answer_pos, short.answer_pos + added)
        for name, pos in short.positions.items():
            assert torch.equal(long.positions[name], torch.where(pos >= 0, pos + added, pos)), name
        assert (long.targets[:, :added] == IGNORE).all()
    assert torch.equal(longer.tokens[:, :added], longer.corrupted.tokens[:, :added])  # twin: same prefix
    for i in range(longer.n):
        strings = longer.decode(i)
        answer, hops = solve(strings)
        assert [answer] == longer.vocab.decode([longer.answers[i]]) and hops == longer.hops[i]


def test_number_prefix_is_letters_and_letter_prefix_never_holds_a_looked_up_symbol():
    batch = number_task(50, seed=4, length=60)
    assert all(not s.isdigit() for i in range(50) for s in batch.decode(i)[:43])
    batch = letter_task(50, seed=4, length=60)
    for i in range(50):
        strings = batch.decode(i)
        assert all(s[1].isdigit() for s in strings[:43])  # (symbol, digit) tokens
        solve_letter(strings)  # asserts every looked-up symbol is unique in the whole prompt


@pytest.mark.parametrize("task", ["number", "letter"])
def test_window_protocol_redraws_the_chain_over_the_enlarged_window(task):
    build, solve = BUILDERS[task]
    batch = build(200, seed=5, length=65, extend="window")
    assert batch.params["extend"] == "window" and batch.params["balance"] == "hops"
    assert (batch.positions["answer_source"] < 56 - 8).any()  # answers far before the last 17 tokens
    for i in range(batch.n):
        answer, hops = solve(batch.decode(i))
        assert [answer] == batch.vocab.decode([batch.answers[i]]) and hops == batch.hops[i]


def test_paper_distractor_integers_point_inside_the_prompt():
    def earliest_target(batch, t):
        """Smallest position any integer points to (position k minus its value), over all prompts."""
        low = 0
        for i in range(batch.n):
            strings = batch.decode(i)
            for k in range(t, len(strings)):
                low = min(low, k - int(strings[k]))
        return low

    assert earliest_target(number_task(300, seed=6), 8) >= 0
    assert earliest_target(number_task(300, seed=6, distractors="uniform"), 8) < 0  # today's did not


def test_number_joint_balance_of_hop_answer_position_and_letter():
    # 4 target positions x 3 letters x 4 hops = 48 triples; every one reachable with jumps <= 8
    n_triples = 4 * 3 * 4
    batch = number_task(2 * n_triples, seed=7, target_window=4, pointer_window=4, n_letters=3, max_pointer=8)
    triples = {}
    for h, a, v in zip(batch.hops.tolist(), batch.positions["answer_source"].tolist(), batch.answers.tolist()):
        triples[(h, a, v)] = triples.get((h, a, v), 0) + 1
    assert len(triples) == n_triples and set(triples.values()) == {2}
    hops_only = number_task(2 * n_triples, seed=7, target_window=4, pointer_window=4, n_letters=3,
                            max_pointer=8, balance="hops")
    counts = {}
    for key in zip(hops_only.hops.tolist(), hops_only.positions["answer_source"].tolist(), hops_only.answers.tolist()):
        counts[key] = counts.get(key, 0) + 1
    assert set(counts.values()) != {2}  # hop balance alone does not balance the triples


def test_letter_paper_vocabulary_and_joint_balance():
    batch = letter_task(4, seed=0)
    assert len(batch.vocab) == 128 and batch.params["n_symbols"] == 8 and batch.params["n_digits"] == 8
    assert set(batch.vocab.tokens[:64]) == {x + d for x in "abcdefgh" for d in "12345678"}
    # 4 positions x (6 symbols x 2 digits) x 4 hops = 192 triples, each exactly once
    batch = letter_task(192, seed=8, target_window=4, pointer_window=4, n_symbols=6, n_digits=2)
    seen = set(zip(batch.hops.tolist(), batch.positions["answer_source"].tolist(), batch.answers.tolist()))
    assert len(seen) == 192
    for i in range(batch.n):
        answer, hops = solve_letter(batch.decode(i))
        assert [answer] == batch.vocab.decode([batch.answers[i]]) and hops == batch.hops[i]


def test_letter_paper_distractor_pointers_name_only_symbols_never_looked_up():
    batch = letter_task(200, seed=9)
    self_pointers = 0
    for i in range(batch.n):
        strings = batch.decode(i)
        chain = [c for c in batch.positions["chain"][i].tolist() if c >= 0]
        looked_up = {strings[c][1] for c in chain[:-1]}
        for k in range(8, 16):
            if k not in chain:
                assert strings[k][1] not in looked_up
                self_pointers += strings[k][0] == strings[k][1]
    assert self_pointers > 0  # (x, x) distractors occur, as in the paper's generator
    distinct = letter_task(200, seed=9, distractors="distinct")
    assert all(s[0] != s[1] for i in range(200) for s in distinct.decode(i)[8:16] if not s[1].isdigit())


@pytest.mark.parametrize(
    "build",
    [
        lambda: number_task(1, seed=0, length=10**9),
        lambda: letter_task(1, seed=0, length=10**9),
        lambda: number_task(1, seed=0, length=10**6, extend="window"),  # its chain tables are L x L
        lambda: number_task(10**10, seed=0),
        lambda: copy_task(1, seed=0, length=10**12),
        lambda: repeated_tokens_task(10**10, seed=0),
        lambda: tree_task(10**10, seed=0),
    ],
)
def test_requests_that_cannot_fit_are_refused_up_front(build):
    start = time.monotonic()
    with pytest.raises(HeadkitError, match="GiB of memory"):
        build()
    assert time.monotonic() - start < 5


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(length=16), "length=16"),
        (dict(extend="middle"), "extend='middle'"),
        (dict(distractors="none"), "distractors='none'"),
        (dict(balance="all"), "balance='all'"),
        (dict(length=40, extend="window", balance="joint"), "balance='joint' cannot"),
    ],
)
@pytest.mark.parametrize("build", [number_task, letter_task])
def test_bad_protocol_parameters_name_themselves(build, kwargs, words):
    with pytest.raises(HeadkitError, match=words):
        build(4, seed=0, **kwargs)


@pytest.mark.parametrize("task", ["number", "letter"])
def test_at_the_trained_length_both_protocols_give_the_trained_prompts(task):
    build, _ = BUILDERS[task]
    base = build(30, seed=11)
    for extend in ("prefix", "window"):
        same = build(30, seed=11, length=17, extend=extend)
        assert torch.equal(same.tokens, base.tokens) and torch.equal(same.corrupted.tokens, base.corrupted.tokens)
        assert same.params["balance"] == "joint"
