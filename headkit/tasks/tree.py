"""Tree path-finding (SPEC 2.4, Backward-chaining; Brinkmann et al. 2024).

A prompt describes a binary tree of ``n_nodes`` nodes with random labels
``0..n_nodes-1`` as an edge list, one edge ``A >B ,`` (parent ``A``, child ``B``) per
edge, then ``|``, the goal node, ``:``, the root, and then the path from the root to
the goal as ``>X >Y ... >goal``. Padding ``PAD`` fills every prompt to the same
length. Example, 4 nodes::

    3 >0 , 0 >2 , 3 >1 , | 2 : 3 >0 >2 PAD

Scored positions (``targets``): the root and every path token that has a next path
token, each predicting that next path token; IGNORE on the prompt, on the last
path token and on pads. ``answer_pos`` is the root position and ``answers`` the
first step ``>X``: the hardest step, since the model must chain backwards from the
goal through the whole edge list. ``hops`` is the path length.

``generator="brinkmann"`` (default; Brinkmann et al.'s repository
``abhay-sheshadri/backward-chaining-circuits``, ``src/tree_generation/gen.py``:
``sample_tree_graph_secondary_path``; ``dataset.py``): the root-goal path is built
first, its length balanced over ``1..n_nodes-1`` (the paper draws it uniformly);
then a second path from the root, of length uniform in ``1..n_nodes-1-L``; every
other node attaches to a uniform node with fewer than two children, never the goal,
so the goal is always a leaf. Half the prompts of a batch list their edges in
reverse topological order (the paper's even seeds, ``order="backward"``), the
others shuffled. Twin: the leaf the second path ends in (the paper's "second
goal"), in the other root subtree; a tree that is a single line has none, and its
twin (ours) swaps the labels of the root's child and grandchild. Prompts are
``4 * n_nodes`` tokens; 16 nodes by default, as in the paper.

``generator="random"`` (ours, headkit's first generator): trees grow by attaching
node ``i = 1..n_nodes-1`` to a uniform earlier node with fewer than two children;
the goal is a uniform non-root node; edges shuffled; the twin's goal is in the other
subtree of the root, and trees whose root has one child are redrawn, so the longest
path has ``n_nodes - 2`` steps and prompts are ``4 * n_nodes - 1`` tokens long.

Positions: ``"edges_start"`` (0), ``"goal"``, ``"root"`` [batch], ``"path"``
[batch, longest path] (positions of the path tokens, -1 padded).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from headkit.checks import check_int
from headkit.tasks.base import IGNORE, TaskBatch, Vocab, check_prompt_memory, make_generator
from headkit.tasks.chains import balanced_hops
from headkit.tasks.params import TREE_GENERATORS, TreeParams, builder_of


def tree_vocab(n_nodes: int) -> Vocab:
    """Ids: labels ``0..N-1``, then ``>0..>N-1``, then ``,`` ``:`` ``|`` ``PAD``."""
    labels = [str(i) for i in range(n_nodes)]
    return Vocab(tuple(labels + [">" + s for s in labels] + [",", ":", "|", "PAD"]))


def _random_trees(n: int, n_nodes: int, gen: torch.Generator) -> Int[Tensor, "batch node"]:
    """Parent of every node (root 0 has parent -1); every root has two children."""
    parent = torch.full((n, n_nodes), -1, dtype=torch.long)
    todo = torch.arange(n)
    while todo.numel():
        m = todo.numel()
        par = torch.full((m, n_nodes), -1, dtype=torch.long)
        n_children = torch.zeros(m, n_nodes, dtype=torch.long)
        rows = torch.arange(m)
        for i in range(1, n_nodes):
            free = (n_children[:, :i] < 2).double()  # [rows, i]: who can take a child
            p = torch.multinomial(free, 1, generator=gen).squeeze(-1)
            par[:, i] = p
            n_children[rows, p] += 1
        parent[todo] = par
        todo = todo[n_children[:, 0] < 2]  # redraw trees whose root has one child
    return parent


def _depth_and_branch(parent: Tensor) -> tuple[Tensor, Tensor]:
    """Depth of every node, and the root child each node descends from (root: -1)."""
    n, n_nodes = parent.shape
    rows = torch.arange(n)
    depth = torch.zeros(n, n_nodes, dtype=torch.long)
    branch = torch.full((n, n_nodes), -1, dtype=torch.long)
    for i in range(1, n_nodes):  # parents come before children
        p = parent[:, i]
        depth[:, i] = depth[rows, p] + 1
        branch[:, i] = torch.where(p == 0, i, branch[rows, p])
    return depth, branch


def _paths(parent: Tensor, depth: Tensor, goal: Tensor, width: int) -> Int[Tensor, "batch step"]:
    """Nodes on the path root -> goal (root excluded), -1 padded to ``width``."""
    n = parent.shape[0]
    rows = torch.arange(n)
    path = torch.full((n, width), -1, dtype=torch.long)
    node = goal.clone()
    for _ in range(width):
        on = node > 0
        path[rows[on], depth[rows[on], node[on]] - 1] = node[on]
        node = torch.where(on, parent[rows, node.clamp(min=0)], node)
    return path


def _brinkmann_trees(
    n: int, n_nodes: int, gen: torch.Generator
) -> tuple[Int[Tensor, "batch node"], Int[Tensor, " batch"], Int[Tensor, " batch"]]:
    """``(parent, goal, second_goal)`` built as Brinkmann et al.'s generator builds them.

    Node 0 is the root; nodes ``1..L`` are the root-goal path (``L`` balanced over
    ``1..n_nodes-1``), goal ``L``; then a second path from the root of length uniform
    in ``1..n_nodes-1-L`` (none when ``L = n_nodes-1``); every other node attaches to a
    uniform node that has fewer than two children, never the goal, so the goal is a
    leaf. ``second_goal`` is the leaf the second path ends in (-1 when there is none).
    """
    rows = torch.arange(n)
    path = balanced_hops(n, 1, n_nodes - 1, gen)  # [batch]
    room = n_nodes - 1 - path
    second = torch.where(room > 0, 1 + (torch.rand(n, generator=gen) * room).long().clamp(max=room - 1), 0)
    parent = torch.full((n, n_nodes), -1, dtype=torch.long)
    n_children = torch.zeros(n, n_nodes, dtype=torch.long)
    dest = torch.where(second > 0, path + second, -1)
    for i in range(1, n_nodes):
        free = (n_children[:, :i] < 2) & (torch.arange(i)[None, :] != path[:, None])  # [batch, i]
        free[:, 0] |= ~free.any(1)  # rows that use a fixed parent below: keep multinomial valid
        drawn = torch.multinomial(free.double(), 1, generator=gen).squeeze(-1)
        on_path = i <= path
        first_second = i == path + 1
        on_second = (i > path + 1) & (i <= path + second)
        p = torch.where(on_path | on_second, i - 1, torch.where(first_second & (second > 0), 0, drawn))
        moved = ~(on_path | on_second | first_second) & (p == dest)
        dest = torch.where(moved, i, dest)
        parent[:, i] = p
        n_children[rows, p] += 1
    return parent, path, dest


def _edge_order(parent: Tensor, depth: Tensor, reverse: Tensor, gen: torch.Generator) -> Int[Tensor, "batch edge"]:
    """Children ``1..N-1`` in edge-list order: random, or (``reverse`` rows) reverse topological.

    A topological edge order lists an edge only after the edge into its parent;
    reversing one (deeper parents first, ties random) gives Brinkmann et al.'s
    ``"backward"`` order.
    """
    n, n_nodes = parent.shape
    random_order = torch.rand(n, n_nodes - 1, generator=gen).argsort(dim=1) + 1
    tie = torch.rand(n, n_nodes - 1, generator=gen)
    parent_depth = depth.gather(1, parent[:, 1:]).double()  # [batch, edge]
    backward = (-(parent_depth + 0.5 * tie)).argsort(dim=1) + 1
    return torch.where(reverse[:, None], backward, random_order)


GENERATORS = TREE_GENERATORS


@builder_of(TreeParams)
def tree_task(n_prompts: int, *, seed: int, **params: Any) -> TaskBatch:  # long: one run of the generator's draws, in order
    """``n_prompts`` tree path-finding prompts (SPEC 2.4), with a corrupted twin.

    Parameters: `headkit.tasks.params.TreeParams` (``n_nodes``, ``generator``).

    ``generator="brinkmann"`` (the paper's, default): path first, goal a leaf, half
    the edge lists in reverse topological order (module docstring).
    ``generator="random"`` (ours, headkit's first generator): grown trees, any
    non-root goal, shuffled edges, prompts one token shorter.
    """
    config = TreeParams.of(params, task="tree")
    n_nodes, generator = config.n_nodes, config.generator
    n = check_int("n_prompts", n_prompts, low=1)
    # prompts of 4 * n_nodes tokens, plus about ten [batch, node] tables (parents, labels, ...)
    check_prompt_memory(n, 4 * n_nodes, task="tree", extra=10 * 8 * n * n_nodes)
    gen = make_generator(seed)
    vocab = tree_vocab(n_nodes)
    big = n_nodes  # id of ">0"
    comma, colon, bar, pad = (vocab.id(s) for s in (",", ":", "|", "PAD"))
    rows = torch.arange(n)

    if generator == "random":
        max_depth = n_nodes - 2
        parent = _random_trees(n, n_nodes, gen)
        depth, branch = _depth_and_branch(parent)
        label = torch.rand(n, n_nodes, generator=gen).argsort(dim=1)  # [batch, node] -> label
        goal = 1 + torch.randint(0, n_nodes - 1, (n,), generator=gen)
        other = (branch != branch[rows, goal][:, None]) & (branch >= 0)  # [batch, node]
        twin_goal = torch.multinomial(other.double(), 1, generator=gen).squeeze(-1)
        twin_label = label
        child = torch.rand(n, n_nodes - 1, generator=gen).argsort(dim=1) + 1  # [batch, edge]
    else:
        max_depth = n_nodes - 1
        parent, goal, second_goal = _brinkmann_trees(n, n_nodes, gen)
        depth, _ = _depth_and_branch(parent)
        label = torch.rand(n, n_nodes, generator=gen).argsort(dim=1)
        # twin: the second path's leaf (Brinkmann et al.'s second goal); a tree that is one
        # line has none: its twin swaps the labels of the root's child and grandchild
        line = second_goal < 0
        twin_goal = torch.where(line, goal, second_goal)
        twin_label = label.clone()
        twin_label[line, 1], twin_label[line, 2] = label[line, 2], label[line, 1]
        reverse = torch.zeros(n, dtype=torch.bool)
        reverse[torch.randperm(n, generator=gen)[: n // 2]] = True
        child = _edge_order(parent, depth, reverse, gen)
    record = config.to_dict()

    def build(g: Tensor, lab: Tensor, wrong: Tensor | None) -> TaskBatch:
        # edge list: child c contributes [label(parent c), >label(c), ","]
        edges = torch.stack(
            [lab.gather(1, parent.gather(1, child)), big + lab.gather(1, child), torch.full_like(child, comma)],
            dim=2,
        ).reshape(n, 3 * (n_nodes - 1))  # [batch, edge*3]
        goal_pos, root_pos = edges.shape[1] + 1, edges.shape[1] + 3
        path = _paths(parent, depth, g, max_depth)  # [batch, step] nodes
        on_path = path >= 0
        path_tokens = torch.where(on_path, big + lab.gather(1, path.clamp(min=0)), pad)
        tokens = torch.cat(
            [edges, torch.full((n, 1), bar), lab[rows, g][:, None], torch.full((n, 1), colon), lab[:, :1], path_tokens],
            dim=1,
        )  # [batch, length]
        targets = torch.full_like(tokens, IGNORE)
        # position root_pos + k predicts path token k, for k < hops
        targets[:, root_pos : root_pos + max_depth] = torch.where(on_path, path_tokens, IGNORE)
        step = torch.arange(max_depth)
        return TaskBatch(
            task="tree",
            tokens=tokens,
            targets=targets,
            answers=path_tokens[:, 0],
            answer_pos=torch.full((n,), root_pos, dtype=torch.long),
            vocab=vocab,
            hops=on_path.sum(1),
            wrong_answers=wrong,
            positions={
                "edges_start": torch.zeros(n, dtype=torch.long),
                "goal": torch.full((n,), goal_pos, dtype=torch.long),
                "root": torch.full((n,), root_pos, dtype=torch.long),
                "path": torch.where(on_path, root_pos + 1 + step[None, :], -1),
            },
            params=record,
        )

    twin = build(twin_goal, twin_label, None)
    clean = build(goal, label, twin.answers.clone())
    twin = dataclasses.replace(twin, wrong_answers=clean.answers.clone())
    return dataclasses.replace(clean, corrupted=twin)
