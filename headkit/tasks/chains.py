"""Pointer chains shared by the number and letter tasks (SPEC 2.1-2.2).

Both tasks lay out a prompt of length ``L = T + P + 1``: a target window of ``T``
tokens (positions ``0..T-1``), a pointer window of ``P`` tokens (``T..T+P-1``) and
one query token (``q = T+P``). A chain of ``h`` hops is a strictly decreasing list
of positions ``q = c_0 > c_1 > ... > c_h`` whose intermediate landings
``c_1..c_{h-1}`` lie in the pointer window and whose last landing ``c_h`` lies in the
target window. The number task also bounds every jump ``c_i - c_{i+1}`` by
``max_jump``; the letter task has no bound (``max_jump=None``).

Chains are drawn *uniformly* among all valid chains of their hop count. The trick
is a count table: ``counts[r, c]`` is the number of valid ways to finish a chain
from position ``c`` with ``r`` hops left. Each next landing ``c'`` is then drawn with
weight ``counts[r - 1, c']`` among the positions reachable from ``c``, which makes
every complete chain equally likely. ``counts[h, q] == 0`` means ``h`` hops are
impossible with these windows, which the builders check before any work. With a
fixed last landing (``sample_chains(..., ends=)``, the paper's generator: answer
position drawn first) the table is split by end (`chain_counts_to`), and
`joint_balanced` draws (hop, answer position, answer value) as the paper balances them.

The length protocols (``extend="prefix"``, PosSym-2026's tokens added in front, or
``"window"``, ours) and every parameter check live in the parameters both builders
take (`headkit.tasks.params.ChainParams`: the target window ``T``, the tokens
``added``, the resolved ``balance``); here are `prepend` (the prefix, positions
shifted) and `check_chain_memory` (``n_prompts`` and the memory prompts and tables need).

The parts both builders share live here too: -1 padding of chains to ``max_hops + 1``
(`pad_chains`), the answer position ``c_h`` (`chain_ends`) and the batch itself,
scored at the query only (`chain_batch`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from headkit.checks import check_int
from headkit.tasks.base import IGNORE, TaskBatch, Vocab, check_prompt_memory, make_generator
from headkit.tasks.params import ChainParams

C = TypeVar("C", bound=ChainParams)


def balanced_hops(n: int, min_hops: int, max_hops: int, gen: torch.Generator) -> Int[Tensor, " batch"]:
    """``n`` hop counts in ``min_hops..max_hops``, counts differing by at most one, shuffled."""
    k = max_hops - min_hops + 1
    hops = min_hops + torch.arange(n) % k
    return hops[torch.randperm(n, generator=gen)]


def _moves(
    target_window: int, pointer_window: int, max_jump: int | None
) -> tuple[Float[Tensor, "pos pos"], Float[Tensor, "pos pos"]]:
    """``(to_target, to_pointer)``: [from, to] 0/1 matrices of allowed single jumps."""
    length = target_window + pointer_window + 1
    pos = torch.arange(length)
    jump = pos[:, None] - pos[None, :]  # [from, to]: how far back the jump goes
    reach = jump >= 1
    if max_jump is not None:
        reach &= jump <= max_jump
    in_target = pos < target_window
    in_pointer = (pos >= target_window) & (pos < target_window + pointer_window)
    to_target = (reach & in_target[None, :]).double()
    to_pointer = (reach & in_pointer[None, :]).double()
    return to_target, to_pointer


def _draw(weights: Float[Tensor, "rows pos"], gen: torch.Generator) -> Int[Tensor, " rows"]:
    """One index per row with probability proportional to ``weights`` (inverse CDF)."""
    cdf = weights.cumsum(dim=1)  # [rows, pos]
    u = torch.rand(weights.shape[0], 1, generator=gen, dtype=weights.dtype) * cdf[:, -1:]  # [rows, 1]
    # the first index whose cdf exceeds u; zero-weight entries never exceed it
    return torch.searchsorted(cdf, u, right=True).squeeze(-1)


def chain_counts(
    *, target_window: int, pointer_window: int, max_jump: int | None, max_hops: int
) -> Float[Tensor, "hops_plus_1 pos"]:
    """``counts[r, c]``: number of valid chain endings from position ``c`` with ``r`` hops left.

    Row 0 is unused (zeros). ``counts[h, T+P]`` is the number of ``h``-hop chains.
    """
    to_target, to_pointer = _moves(target_window, pointer_window, max_jump)
    counts = torch.zeros(max_hops + 1, to_target.shape[0], dtype=torch.float64)
    if max_hops >= 1:
        counts[1] = to_target.sum(1)
    for r in range(2, max_hops + 1):
        counts[r] = to_pointer @ counts[r - 1]
    return counts


def sample_chains(
    hops: Int[Tensor, " batch"],
    *,
    target_window: int,
    pointer_window: int,
    max_jump: int | None,
    gen: torch.Generator,
    avoid_first: Int[Tensor, " batch"] | None = None,
    ends: Int[Tensor, " batch"] | None = None,
) -> Int[Tensor, "batch hops_plus_1"]:
    """One uniform random chain per prompt: ``[q, c_1, ..., c_h, -1, ...]``.

    The width is ``max(hops) + 1``. ``avoid_first`` (optional) is a first landing
    each prompt should not use; it is avoided whenever another first landing exists.
    ``ends`` (optional) fixes each chain's last landing ``c_h``: the chain is then
    uniform among the valid chains with that end (for an unbounded jump, the
    intermediate landings are a uniform subset of the pointer window, as in
    PosSym-2026's generator; `chain_counts_to`). Every ``hops`` value (and
    (hop, end) pair) must be feasible (``chain_counts(...)[h, q] > 0``).
    """
    n = hops.shape[0]
    max_hops = int(hops.max()) if n else 0
    query = target_window + pointer_window
    to_target, to_pointer = _moves(target_window, pointer_window, max_jump)
    layout: dict[str, Any] = dict(
        target_window=target_window, pointer_window=pointer_window, max_jump=max_jump, max_hops=max_hops
    )
    counts = chain_counts(**layout) if ends is None else chain_counts_to(**layout)
    chain = torch.full((n, max_hops + 1), -1, dtype=torch.long)
    chain[:, 0] = query
    for h in hops.unique().tolist():
        rows = (hops == h).nonzero().squeeze(-1)
        here = torch.full((rows.shape[0],), query, dtype=torch.long)
        for step in range(1, h + 1):
            left = h - step  # hops still to take after this landing
            if left == 0:
                weights = to_target[here]  # [rows, pos]
                if ends is not None:  # land on the given end
                    weights = torch.nn.functional.one_hot(ends[rows], to_target.shape[0]).double()
            elif ends is None:
                weights = to_pointer[here] * counts[left][None, :]  # [rows, pos]
            else:
                weights = to_pointer[here] * counts[left][:, ends[rows]].T  # [rows, pos]
            if step == 1 and avoid_first is not None:
                masked = weights.clone()
                masked[torch.arange(rows.shape[0]), avoid_first[rows]] = 0.0
                has_other = masked.sum(1, keepdim=True) > 0
                weights = torch.where(has_other, masked, weights)
            here = _draw(weights, gen)
            chain[rows, step] = here
    return chain


def pad_chains(chain: Int[Tensor, "batch k"], max_hops: int) -> Int[Tensor, "batch hops_plus_1"]:
    """``chain`` padded with -1 to the fixed width ``max_hops + 1``."""
    width = max_hops + 1 - chain.shape[1]
    return torch.cat([chain, torch.full((chain.shape[0], width), -1, dtype=torch.long)], dim=1)


def chain_ends(chain: Int[Tensor, "batch k"], hops: Int[Tensor, " batch"]) -> Int[Tensor, " batch"]:
    """The last landing ``c_h`` of every chain: the answer's position."""
    return chain.gather(1, hops[:, None]).squeeze(1)


def chain_batch(
    task: str,
    tokens: Int[Tensor, "batch pos"],
    *,
    chain: Int[Tensor, "batch hops_plus_1"],
    hops: Int[Tensor, " batch"],
    answers: Int[Tensor, " batch"],
    wrong_answers: Int[Tensor, " batch"],
    vocab: Vocab,
    params: Mapping[str, Any],
    corrupted: TaskBatch | None,
) -> TaskBatch:
    """The `TaskBatch` of a pointer-chain task: only the query (last) position is scored.

    Positions: ``"query"`` [batch], ``"chain"`` [batch, max_hops+1] and
    ``"answer_source"`` [batch] (``chain_ends``).
    """
    n, length = tokens.shape
    targets = torch.full_like(tokens, IGNORE)
    targets[:, -1] = answers
    return TaskBatch(
        task=task,
        tokens=tokens,
        targets=targets,
        answers=answers,
        answer_pos=torch.full((n,), length - 1, dtype=torch.long),
        vocab=vocab,
        hops=hops.clone(),
        wrong_answers=wrong_answers,
        positions={
            "query": torch.full((n,), length - 1, dtype=torch.long),
            "chain": chain.clone(),
            "answer_source": chain_ends(chain, hops),
        },
        corrupted=corrupted,
        params=params,
    )


# --- the paper's generator: answers balanced jointly, chains conditioned on their end -----


def chain_counts_to(
    *, target_window: int, pointer_window: int, max_jump: int | None, max_hops: int
) -> Float[Tensor, "hops_plus_1 pos target"]:
    """``counts[r, c, a]``: valid chain endings from ``c`` with ``r`` hops left that land on ``a``.

    Like `chain_counts`, split by the answer position ``a`` (the last landing, in
    the target window). Row 0 is unused. Memory is ``(max_hops+1) * L * T`` floats.
    """
    to_target, to_pointer = _moves(target_window, pointer_window, max_jump)
    counts = torch.zeros(max_hops + 1, to_target.shape[0], target_window, dtype=torch.float64)
    if max_hops >= 1:
        counts[1] = to_target[:, :target_window]
    for r in range(2, max_hops + 1):
        counts[r] = to_pointer @ counts[r - 1]
    return counts


def joint_balanced(
    n: int,
    *,
    feasible: Bool[Tensor, "hops target"],
    min_hops: int,
    n_values: int,
    gen: torch.Generator,
) -> tuple[Int[Tensor, " batch"], Int[Tensor, " batch"], Int[Tensor, " batch"]]:
    """``(hops, answer_pos, value)`` balanced jointly, as PosSym-2026's generators do.

    The paper lists every (answer position, answer value, hop) triple, repeats the
    list ``n // M`` times and adds ``n % M`` distinct triples at random. Here the
    hops are balanced first (counts differ by at most one, also in a small batch),
    then within each hop ``h`` every feasible (position ``a`` with
    ``feasible[h - min_hops, a]``, value ``0..n_values-1``) pair appears equally
    often, distinct pairs at random filling the remainder; the batch is shuffled.
    Over ``n`` a multiple of ``M`` this is exactly the paper's balance.
    """
    hops = balanced_hops(n, min_hops, min_hops + feasible.shape[0] - 1, gen).sort().values
    answer_pos = torch.empty(n, dtype=torch.long)
    value = torch.empty(n, dtype=torch.long)
    for k in range(feasible.shape[0]):
        rows = (hops == min_hops + k).nonzero().squeeze(-1)
        positions = feasible[k].nonzero().squeeze(-1)
        m = positions.shape[0] * n_values
        full, rest = divmod(rows.shape[0], m)
        index = torch.cat([torch.arange(m).repeat(full), torch.randperm(m, generator=gen)[:rest]])
        answer_pos[rows], value[rows] = positions[index // n_values], index % n_values
    order = torch.randperm(n, generator=gen)
    return hops[order], answer_pos[order], value[order]


def prepend(batch: TaskBatch, prefix: Int[Tensor, "batch added"], *, params: Mapping[str, Any]) -> TaskBatch:
    """``batch`` with ``prefix`` tokens put in front of every prompt (and of its twin).

    The length-extrapolation protocol of PosSym-2026: the original prompt stays the
    last tokens, unchanged; every named position moves right by ``added``
    (-1 padding stays -1); the prefix is never scored.
    """
    added = prefix.shape[1]

    def shift(t: Tensor) -> Tensor:
        return torch.where(t >= 0, t + added, t)

    def one(b: TaskBatch, corrupted: TaskBatch | None) -> TaskBatch:
        return dataclasses.replace(
            b,
            tokens=torch.cat([prefix, b.tokens], dim=1),
            targets=torch.cat([torch.full_like(prefix, IGNORE), b.targets], dim=1),
            answer_pos=b.answer_pos + added,
            positions={k: shift(v) for k, v in b.positions.items()},
            corrupted=corrupted,
            params=params,
        )

    twin = None if batch.corrupted is None else one(batch.corrupted, None)
    return one(batch, twin)


def start_chains(
    params_type: type[C], params: Mapping[str, Any], *, n_prompts: int, seed: int, task: str
) -> tuple[C, dict[str, Any], torch.Generator]:
    """What a chain builder starts with: its checked parameters, the parameters its batch
    records (``balance`` resolved) and its generator, after `check_chain_memory`."""
    config = params_type.of(params, task=task)
    check_chain_memory(n_prompts, config, task=task)
    return config, {**config.to_dict(), "balance": config.chain_balance}, make_generator(seed)


def check_chain_memory(n_prompts: int, p: ChainParams, *, task: str) -> None:
    """Check ``n_prompts`` and refuse, before any work, prompts and chain tables that cannot fit in memory.

    The parameters ``p`` are checked on creation (`headkit.tasks.params.ChainParams`).
    """
    check_int("n_prompts", n_prompts, low=1)
    core = p.target + p.pointer_window + 1
    extra = chain_table_bytes(core, p.target, p.max_hops, p.chain_balance)
    check_prompt_memory(n_prompts, core + p.added, task=task, extra=extra)


def chain_table_bytes(length: int, target_window: int, max_hops: int, balance: str) -> int:
    """Bytes of the chain count tables for a prompt of ``length`` (`chain_counts`, `chain_counts_to`)."""
    square = 5 * 8 * length * length  # _moves: jump, reach, two float64 matrices
    if balance == "joint":
        return square + 8 * (max_hops + 1) * length * target_window
    return square
