"""The swap metric's options and plans: what is swapped, for which prompts, checked before any forward.

`SwapOptions` holds the options shared by `headkit.scores.positional_symbolic`
and `headkit.scores.rope` (one home for their names, defaults and checks);
`prepare_swaps` checks them against a model and prompts and plans every swap
(`SwapRun`), and `headkit.scores.swap_engine` runs the plans.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, Mapping, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from headkit.bridge.probe import require
from headkit.checks import (
    Head,
    check_bool,
    check_int,
    check_optional_int,
    check_position,
    check_positive_float,
    check_seed,
    check_tokens,
)
from headkit.errors import HeadkitError
from headkit.model_types import Model
from headkit.scores.capture import resolve_heads, resolve_query_positions

SWAP_MODES = ("residual", "tokens")
# position encodings that leave no absolute position in the residual stream
RELATIVE_POSITION_TYPES = ("rotary", "alibi")

DEFAULT_SWAP = "residual"
DEFAULT_TAU = 1e-4
DEFAULT_BATCH_SIZE = 512


def check_swap_mode(swap: Any) -> str:
    """``swap`` if it is one of `SWAP_MODES`; else a HeadkitError listing them."""
    if swap not in SWAP_MODES:
        raise HeadkitError(f"swap={swap!r} is not known: allowed {', '.join(map(repr, SWAP_MODES))}")
    return swap


SWAP_CHOICES = (*SWAP_MODES, "auto")  # what a user may ask for: a mode, or auto


def resolve_swap(positional_embedding_type: str, choice: str) -> str:
    """The one rule for ``swap="auto"`` (the command line's default, the model report's): the paper's
    residual swap where the model's positions are relative (rotary, ALiBi), else ``tokens``
    (absolute position embeddings, e.g. GPT-2, move with a swapped residual row). A mode is
    returned checked."""
    if choice == "auto":
        return "residual" if positional_embedding_type in RELATIVE_POSITION_TYPES else "tokens"
    return check_swap_mode(choice)


@dataclass(frozen=True)
class SwapOptions:
    """Options of the swap metric, checked on creation (those that need no model or prompts).

    Pass one to `positional_symbolic_scores` or `rope_frequency_scores`
    (``positional_symbolic_scores(model, tokens, SwapOptions(tau=0.01))``) or give its
    fields as keywords (``positional_symbolic_scores(model, tokens, tau=0.01)``), not both.
    """

    KIND: ClassVar[str] = "swap-metric"  # what an unknown option is called in `of`'s error

    swap: str = DEFAULT_SWAP  # "residual" (the paper's: swap rows of hook_resid_pre, rerun block l) or "tokens"
    query_pos: int | Tensor = -1  # the query position scored (default last), or one per prompt [batch]
    tau: float = DEFAULT_TAU  # temperature of the pair weights softmax(|d_i - d_j| / tau) (paper: 1e-4)
    skip_identical: bool = False  # headkit's variant: drop pairs whose swap changes nothing
    block_size: int = 1  # size of the default key blocks, which tile 0..query_pos-1
    blocks: Sequence[Sequence[int]] | None = None  # explicit key blocks: positions before the query, equal size
    max_pairs: int | None = None  # sample at most this many pairs per prompt (seeded); None = all
    seed: int = 0  # seed of the pair sampling
    batch_size: int = DEFAULT_BATCH_SIZE  # swapped inputs per forward pass
    heads: Sequence[Sequence[int]] | None = None  # (layer, head) pairs; None = every head

    def __post_init__(self) -> None:
        check_swap_mode(self.swap)
        object.__setattr__(self, "tau", check_positive_float("tau", self.tau))
        check_int("batch_size", self.batch_size)
        check_bool("skip_identical", self.skip_identical)
        check_optional_int("max_pairs", self.max_pairs)
        check_seed(self.seed)

    @classmethod
    def of(cls, options: Mapping[str, Any], *, what: str = "") -> SwapOptions:
        """``cls(**options)``; an unknown name is a HeadkitError (naming function ``what``) listing the known ones."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise HeadkitError(
                f"{what + ': ' if what else ''}unknown {cls.KIND} option(s) {', '.join(unknown)}: allowed {', '.join(known)}"
            )
        return cls(**options)


@dataclass(frozen=True)
class SwapPlan:
    """Which key blocks get swapped, for every prompt of one query position."""

    query_pos: int  # resolved (non-negative) query position
    blocks: Int[Tensor, "n_blocks block_size"]  # key positions of each block
    pairs: Int[Tensor, "batch n_pairs 2"]  # block indices (i, j), i < j, per prompt


@dataclass(frozen=True)
class SwapRun:
    """Checked prompts, heads and options, and the plan of every query-position group."""

    tokens: Tensor  # [batch, pos]
    heads: list[Head]  # sorted
    options: SwapOptions
    queries: Tensor  # [batch]: each prompt's resolved query position
    groups: list[tuple[Tensor, SwapPlan]]  # (prompt indices, plan) per distinct query position


def check_swap(model: Model, swap: Any) -> str:
    """``swap`` checked against the model: ``"residual"`` needs relative positions."""
    check_swap_mode(swap)
    require(model, "swap" if swap == "residual" else "pattern")  # a bridge's hooks, probed
    kind = model.cfg.positional_embedding_type
    if swap == "residual" and kind not in RELATIVE_POSITION_TYPES:
        raise HeadkitError(
            f"swap='residual' needs a residual stream without absolute positions (rotary or "
            f"ALiBi models); this model's positional embeddings are {kind!r}, so exchanging two "
            f"residual rows would move their positions with their content: use swap='tokens'"
        )
    return swap


def resolve_blocks(
    length: int,
    *,
    query_pos: int,
    block_size: int = 1,
    blocks: Sequence[Sequence[int]] | None = None,
) -> tuple[int, Int[Tensor, "n_blocks block_size"]]:
    """The resolved query position and the key blocks, checked.

    Default blocks tile the keys before the query, ``0..q-1``, in runs of
    ``block_size``, which must divide ``q``. Explicit ``blocks`` are lists of key
    positions before the query, disjoint and of equal size.
    """
    q = check_position(length, query_pos, name="query_pos")
    if q < 2:
        raise HeadkitError(
            f"query_pos {query_pos} leaves {q} key(s) before it in prompts of length {length}: "
            f"need at least 2 to swap; allowed query positions are 2..{length - 1} "
            f"(or {-length + 2}..-1)"
        )
    if blocks is None:
        size = check_int("block_size", block_size)
        if q % size:
            allowed = [s for s in range(1, q // 2 + 1) if q % s == 0]
            raise HeadkitError(
                f"block_size={size} does not divide the {q} keys before query position {q}: "
                f"allowed block sizes {', '.join(map(str, allowed))}"
            )
        if q // size < 2:
            raise HeadkitError(
                f"block_size={size} makes only {q // size} block of the {q} keys before the "
                f"query: need at least 2 blocks (block_size at most {q // 2})"
            )
        return q, torch.arange(q).reshape(q // size, size)  # [n_blocks, block_size]
    if block_size != 1:
        raise HeadkitError("give either blocks or block_size, not both (blocks fix their own size)")
    return q, check_blocks(blocks, q)


def check_blocks(blocks: Sequence[Sequence[int]], q: int) -> Int[Tensor, "n_blocks block_size"]:
    """Explicit key blocks before query position ``q``: at least 2, disjoint, non-empty, of equal size."""
    lists = [list(b) for b in blocks]
    if len(lists) < 2:
        raise HeadkitError(f"blocks: got {len(lists)} block(s), need at least 2 to swap")
    size = len(lists[0])
    seen: dict[int, int] = {}
    for i, block in enumerate(lists):
        if len(block) != size or size == 0:
            raise HeadkitError(
                f"blocks: block {i} has {len(block)} positions but block 0 has {size}: "
                "swapped blocks must be non-empty and of equal size"
            )
        for p in block:
            if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < q:
                raise HeadkitError(
                    f"blocks: block {i} has position {p!r}: allowed key positions are "
                    f"0..{q - 1} (before query position {q})"
                )
            if p in seen:
                raise HeadkitError(f"blocks: position {p} is in block {seen[p]} and block {i}")
            seen[p] = i
    return torch.tensor(lists, dtype=torch.long)  # [n_blocks, block_size]


def plan_swaps(
    n_prompts: int,
    n_blocks: int,
    *,
    max_pairs: int | None,
    seed: int,
) -> Int[Tensor, "batch n_pairs 2"]:
    """Block pairs (i < j) per prompt: all of them, or ``max_pairs`` sampled per prompt."""
    all_pairs = torch.combinations(torch.arange(n_blocks), r=2)  # [n_all, 2]
    n_all = all_pairs.shape[0]
    if max_pairs is None or max_pairs >= n_all:
        return all_pairs.expand(n_prompts, n_all, 2)
    gen = torch.Generator().manual_seed(seed)
    picks = torch.stack([torch.randperm(n_all, generator=gen)[:max_pairs] for _ in range(n_prompts)])
    return all_pairs[picks]  # [batch, max_pairs, 2]


def make_plan(
    tokens: Tensor,
    *,
    query_pos: int = -1,
    block_size: int = 1,
    blocks: Sequence[Sequence[int]] | None = None,
    max_pairs: int | None = None,
    seed: int = 0,
) -> SwapPlan:
    """Check the swap options against prompts ``tokens`` [batch, pos] and plan the swaps."""
    check_optional_int("max_pairs", max_pairs)
    check_seed(seed)
    q, block_pos = resolve_blocks(tokens.shape[1], query_pos=query_pos, block_size=block_size, blocks=blocks)
    pairs = plan_swaps(tokens.shape[0], block_pos.shape[0], max_pairs=max_pairs, seed=seed)
    return SwapPlan(query_pos=q, blocks=block_pos, pairs=pairs)


def plan_groups(
    tokens: Tensor,
    *,
    query_pos: int | Tensor,
    block_size: int = 1,
    blocks: Sequence[Sequence[int]] | None = None,
    max_pairs: int | None = None,
    seed: int = 0,
) -> tuple[Int[Tensor, " batch"], list[tuple[Int[Tensor, " n"], SwapPlan]]]:
    """Per-prompt query positions, and (prompt indices, plan) for each distinct one.

    Every plan is made (and checked) before any forward pass.
    """
    queries = resolve_query_positions(tokens, query_pos)
    groups = []
    for q in queries.unique().tolist():
        idx = (queries == q).nonzero().squeeze(1)  # prompts with this query position
        plan = make_plan(
            tokens[idx], query_pos=q, block_size=block_size, blocks=blocks, max_pairs=max_pairs, seed=seed
        )
        groups.append((idx, plan))
    return queries, groups


def prepare_swaps(model: Model, tokens: Tensor, opts: SwapOptions) -> SwapRun:
    """Check the prompts, the heads and the swap mode of ``opts`` against ``model``; plan every swap."""
    tokens = check_tokens(model, tokens)
    heads = resolve_heads(model, opts.heads)
    check_swap(model, opts.swap)
    queries, groups = plan_groups(
        tokens, query_pos=opts.query_pos, block_size=opts.block_size, blocks=opts.blocks,
        max_pairs=opts.max_pairs, seed=opts.seed,
    )  # fmt: skip
    return SwapRun(tokens=tokens, heads=heads, options=opts, queries=queries, groups=groups)
