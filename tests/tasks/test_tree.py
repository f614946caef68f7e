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


def check_batch(batch, n_nodes: int, generator: str = "random") -> None:
    max_path = n_nodes - 2 if generator == "random" else n_nodes - 1
    assert batch.tokens.shape == (batch.n, 3 * (n_nodes - 1) + 4 + max_path)
    for b in (batch, batch.corrupted):
        assert b.task == "tree"
        for i in range(b.n):
            strings = b.decode(i)
            parent, goal, root, written = parse(strings)
            labels = {str(k) for k in range(n_nodes)}
            # a binary tree over all labels, rooted at `root`, root with two children
            assert set(parent) | {root} == labels and root not in parent and len(parent) == n_nodes - 1
            children = Counter(parent.values())
            assert max(children.values()) <= 2
            assert children[root] == 2 or (generator == "brinkmann" and len(solve(strings)) == n_nodes - 1)
            assert goal != root
            path = solve(strings)
            assert written[: len(path)] == path and all(s == "PAD" for s in written[len(path) :])
            assert b.hops[i] == len(path)
            assert b.vocab.decode([b.answers[i]]) == [path[0]]
            root_pos = strings.index(":") + 1
            assert b.answer_pos[i] == root_pos == b.positions["root"][i]
            assert b.positions["goal"][i] == root_pos - 2 and b.positions["edges_start"][i] == 0
            expected_path_pos = list(range(root_pos + 1, root_pos + 1 + len(path)))
            assert b.positions["path"][i].tolist() == expected_path_pos + [-1] * (max_path - len(path))
            # targets: root and every non-last path token predict the next path token
            scored = (b.targets[i] != IGNORE).nonzero().squeeze(-1).tolist()
            assert scored == list(range(root_pos, root_pos + len(path)))
            assert b.vocab.decode(b.targets[i, scored]) == path
    twin = batch.corrupted
    assert twin.corrupted is None
    goal = batch.positions["goal"][0]
    # a line tree (Brinkmann, path n-1) has no other leaf: its twin swaps two labels instead
    same_tree = batch.hops < n_nodes - 1 if generator == "brinkmann" else torch.ones(batch.n, dtype=torch.bool)
    assert torch.equal(twin.tokens[same_tree, :goal], batch.tokens[same_tree, :goal])  # same tree, edge order
    assert (twin.tokens[same_tree, goal] != batch.tokens[same_tree, goal]).all()  # another goal
    assert torch.equal(twin.tokens[:, goal + 1 : goal + 3], batch.tokens[:, goal + 1 : goal + 3])  # ": root"
    assert (twin.answers != batch.answers).all()
    assert torch.equal(batch.wrong_answers, twin.answers) and torch.equal(twin.wrong_answers, batch.answers)


@pytest.mark.parametrize("generator", ["random", "brinkmann"])
@pytest.mark.parametrize("n_nodes", [3, 10, 16])
def test_prompts_solve(n_nodes, generator):
    check_batch(tree_task(60, seed=0, n_nodes=n_nodes, generator=generator), n_nodes, generator)


def test_brinkmann_is_the_default_with_16_nodes():
    batch = tree_task(5, seed=0)
    assert batch.params == {"n_nodes": 16, "generator": "brinkmann"}
    assert len(batch.vocab) == 2 * 16 + 4 and batch.length == 3 * 15 + 4 + 15


def test_brinkmann_goal_is_a_leaf():
    batch = tree_task(300, seed=5, n_nodes=12)
    for i in range(batch.n):
        parent, goal, _, _ = parse(batch.decode(i))
        assert goal not in parent.values(), f"prompt {i}: goal {goal} has children"


def test_random_generator_goal_is_often_inner():
    # today's generator draws any non-root goal: inner goals occur (so the leaf test can fail)
    batch = tree_task(300, seed=5, n_nodes=12, generator="random")
    inner = sum(parse(batch.decode(i))[1] in parse(batch.decode(i))[0].values() for i in range(batch.n))
    assert inner > 30


def test_brinkmann_path_lengths_balanced_over_1_to_n_minus_1():
    n_nodes = 10
    batch = tree_task(9 * 40 + 5, seed=6, n_nodes=n_nodes)
    lengths = torch.tensor([len(solve(batch.decode(i))) for i in range(batch.n)])  # independent solver
    assert torch.equal(lengths, batch.hops)
    counts = torch.bincount(lengths, minlength=n_nodes)[1:]
    assert counts.shape == (n_nodes - 1,) and counts.max() - counts.min() <= 1


def test_brinkmann_half_the_edge_lists_reverse_topological():
    batch = tree_task(400, seed=8, n_nodes=10)

    def reverse_topological(strings):
        parent, _, _, _ = parse(strings)
        bar = strings.index("|")
        order = [strings[k + 1][1:] for k in range(0, bar, 3)]  # children in edge order
        where = {c: k for k, c in enumerate(order)}
        # every edge into a node comes after every edge out of it
        return all(where[c] > where[child] for child, c in parent.items() if c in where)

    flags = [reverse_topological(batch.decode(i)) for i in range(batch.n)]
    assert 200 <= sum(flags) <= 215  # 200 by construction, a few random orders by chance


def test_brinkmann_twin_goal_is_the_other_root_branch_leaf():
    batch = tree_task(200, seed=9, n_nodes=10)
    twin = batch.corrupted
    for i in range(batch.n):
        if batch.hops[i] == 9:
            continue
        parent, goal, _, _ = parse(twin.decode(i))
        assert goal not in parent.values()  # a leaf
        assert solve(twin.decode(i))[0] != solve(batch.decode(i))[0]


def test_edges_are_shuffled_and_labels_random():
    batch = tree_task(200, seed=1, n_nodes=8, generator="random")
    first_edge_from_root = sum(s[0] == s[s.index(":") + 1] for s in (batch.decode(i) for i in range(200)))
    assert first_edge_from_root < 150  # 2 of the 7 edges leave the root
    roots = Counter(batch.decode(i)[batch.positions["root"][i]] for i in range(200))
    assert len(roots) == 8


def test_deep_goals_occur():
    batch = tree_task(300, seed=2, n_nodes=10, generator="random")
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
        (dict(n_prompts=0), "n_prompts="),
        (dict(n_nodes=2), "n_nodes=2"),
        (dict(n_nodes=129), "n_nodes=129"),
        (dict(seed=None), "seed"),
        (dict(generator="bfs"), "generator='bfs'"),
    ],
)
def test_bad_parameters_name_themselves(kwargs, name):
    args = dict(n_prompts=5, seed=0) | kwargs
    with pytest.raises(HeadkitError, match=name):
        tree_task(args.pop("n_prompts"), **args)
