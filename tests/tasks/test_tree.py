"""tree_task: every prompt re-solved by walking its decoded edge list."""

from __future__ import annotations

from collections import Counter
from functools import partial

import pytest
import torch

from headkit.errors import HeadkitError
from headkit.tasks import IGNORE, TaskSpec
from headkit.tasks.tree import tree_task


def parse(strings: list[str]) -> tuple[dict[str, str], str, str, list[str]]:
    """(child -> parent, goal, root, path tokens as written) from a decoded prompt."""
    bar = strings.index("|")
    parent = {}
    for k in range(0, bar, 3):
        a, b, comma = strings[k : k + 3]
        assert comma == "," and b.startswith(">") and not a.startswith(">")
        assert b[1:] not in parent, f"node {b[1:]} has two parents"
        parent[b[1:]] = a
    assert strings[bar + 2] == ":"
    goal, root = strings[bar + 1], strings[bar + 3]
    written = strings[bar + 4 :]
    return parent, goal, root, written


def solve(strings: list[str]) -> list[str]:
    """The path tokens ``>X ... >goal`` found by walking parents up from the goal."""
    parent, goal, root, _ = parse(strings)
    path = [goal]
    while path[-1] != root:
        path.append(parent[path[-1]])
    return [">" + x for x in reversed(path[:-1])]


def check_batch(batch, n_nodes: int) -> None:
    length = 4 * n_nodes - 1
    assert batch.tokens.shape == (batch.n, length)
    for b in (batch, batch.corrupted):
        assert b.task == "tree"
        for i in range(b.n):
            strings = b.decode(i)
            parent, goal, root, written = parse(strings)
            labels = {str(k) for k in range(n_nodes)}
            # a binary tree over all labels, rooted at `root`, root with two children
            assert set(parent) | {root} == labels and root not in parent and len(parent) == n_nodes - 1
            children = Counter(parent.values())
            assert max(children.values()) <= 2 and children[root] == 2
            assert goal != root
            path = solve(strings)
            assert written[: len(path)] == path and all(s == "PAD" for s in written[len(path) :])
            assert b.hops[i] == len(path)
            assert b.vocab.decode([b.answers[i]]) == [path[0]]
            root_pos = strings.index(":") + 1
            assert b.answer_pos[i] == root_pos == b.positions["root"][i]
            assert b.positions["goal"][i] == root_pos - 2 and b.positions["edges_start"][i] == 0
            expected_path_pos = list(range(root_pos + 1, root_pos + 1 + len(path)))
            assert b.positions["path"][i].tolist() == expected_path_pos + [-1] * (n_nodes - 2 - len(path))
            # targets: root and every non-last path token predict the next path token
            scored = (b.targets[i] != IGNORE).nonzero().squeeze(-1).tolist()
            assert scored == list(range(root_pos, root_pos + len(path)))
            assert b.vocab.decode(b.targets[i, scored]) == path
    twin = batch.corrupted
    assert twin.corrupted is None
    goal = batch.positions["goal"][0]
    assert torch.equal(twin.tokens[:, :goal], batch.tokens[:, :goal])  # same tree, same edge order
    assert (twin.tokens[:, goal] != batch.tokens[:, goal]).all()  # another goal
    assert torch.equal(twin.tokens[:, goal + 1 : goal + 3], batch.tokens[:, goal + 1 : goal + 3])  # ": root"
    assert (twin.answers != batch.answers).all()
    assert torch.equal(batch.wrong_answers, twin.answers) and torch.equal(twin.wrong_answers, batch.answers)


@pytest.mark.parametrize("n_nodes", [3, 10, 16])
def test_prompts_solve(n_nodes):
    check_batch(tree_task(60, seed=0, n_nodes=n_nodes), n_nodes)


def test_edges_are_shuffled_and_labels_random():
    batch = tree_task(200, seed=1, n_nodes=8)
    first_edge_from_root = sum(s[0] == s[s.index(":") + 1] for s in (batch.decode(i) for i in range(200)))
    assert first_edge_from_root < 150  # 2 of the 7 edges leave the root
    roots = Counter(batch.decode(i)[batch.positions["root"][i]] for i in range(200))
    assert len(roots) == 8


def test_deep_goals_occur():
    batch = tree_task(300, seed=2, n_nodes=10)
    assert batch.hops.min() == 1 and batch.hops.max() >= 4


def test_deterministic_by_seed_and_global_rng_untouched(check_seeded):
    check_seeded(partial(tree_task, 30), seed=7, other_seed=8)


def test_vocab_round_trip_and_spec():
    batch = tree_task(10, seed=3, n_nodes=6)
    assert len(batch.vocab) == 2 * 6 + 4
    for i in range(batch.n):
        assert batch.vocab.encode(batch.decode(i)) == batch.tokens[i].tolist()
    assert torch.equal(TaskSpec(batch.task, batch.params).build(10, seed=3).tokens, batch.tokens)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(n=0), "n="),
        (dict(n_nodes=2), "n_nodes=2"),
        (dict(n_nodes=129), "n_nodes=129"),
        (dict(seed=None), "seed"),
    ],
)
def test_bad_parameters_name_themselves(kwargs, name):
    args = dict(n=5, seed=0) | kwargs
    with pytest.raises(HeadkitError, match=name):
        tree_task(args.pop("n"), **args)
