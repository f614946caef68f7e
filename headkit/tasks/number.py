"""The number task: positional pointers (SPEC 2.1, PosSym-2026).

A prompt is ``T`` letter tokens (the target window), ``P`` integer tokens (the
pointer window) and one integer query token; default ``T = P = 8``, length 17.
Reading it: start at the query position ``q``; an integer ``j`` at position ``k``
means "jump back ``j`` positions", to ``k - j``; keep jumping while the landed token
is an integer. The answer is the letter where the chain lands, predicted at the
query position (the only scored position). One hop, in letters:
``a z b y c x d w 5`` -> ``y``.

As in the paper's generator (``jcalataiut-cli/CENIA``,
``Position_symbolic_dynamics/code/src/data/dataset.py``): the chain positions
strictly decrease, every intermediate landing is in the pointer window, the last
landing in the target window; ``balance="joint"`` balances hop, answer position and
answer letter jointly (the paper's triples), the chain then uniform among those
ending there; ``distractors="paper"``: a distractor integer at position ``k`` points
to a uniform earlier position ``0..k-1`` (value ``1..min(k, max_pointer)``), target
distractors are uniform letters. Headkit's own: every jump is in ``1..max_pointer``
(16: never binding at 17 tokens); ``balance="hops"`` (hops balanced, chains uniform
among all valid chains) and ``distractors="uniform"`` (``1..max_pointer``
anywhere) are the options of headkit's first generator.

Length (``length``, the total): ``extend="prefix"`` (PosSym-2026's protocol,
default) puts ``length - (T + P + 1)`` uniform letters in front of an unchanged
prompt; ``extend="window"`` (ours) sets ``T = length - P - 1`` and redraws the
chain over the enlarged window (`headkit.tasks.chains.resolve_length`).

Corrupted twin (ours): the same distractors with a *re-routed* chain of the same hop
count: a fresh uniform chain whose first landing (so the query value) differs from
the clean one whenever another first landing is possible, written over the clean
tokens; if the new chain still ends on the clean answer letter, that letter is
replaced by another one. So the twin's answer always differs, and the twin's answer
letter usually already appears, as a distractor, in the clean prompt.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from headkit.tasks.base import TaskBatch, Vocab
from headkit.tasks.chains import (
    balanced_hops,
    chain_batch,
    chain_counts_to,
    chain_ends,
    joint_balanced,
    pad_chains,
    prepend,
    sample_chains,
    start_chains,
)
from headkit.tasks.params import LETTER_NAMES, NumberParams, builder_of

DISTRACTORS = NumberParams.DISTRACTORS


def number_vocab(n_letters: int, max_pointer: int) -> Vocab:
    """Ids ``0..n_letters-1`` are letters, ``n_letters + j - 1`` is the integer ``j``."""
    return Vocab(LETTER_NAMES[:n_letters] + tuple(str(j) for j in range(1, max_pointer + 1)))


def _answers(
    tokens: Int[Tensor, "batch pos"], chain: Int[Tensor, "batch k"], hops: Int[Tensor, " batch"]
) -> Int[Tensor, " batch"]:
    source = chain_ends(chain, hops)  # position of the answer letter
    return tokens.gather(1, source[:, None]).squeeze(1)


def _write_chain(
    tokens: Int[Tensor, "batch pos"],
    chain: Int[Tensor, "batch k"],
    hops: Int[Tensor, " batch"],
    n_letters: int,
) -> None:
    """Write the jump values ``c_i - c_{i+1}`` at chain positions ``c_0..c_{h-1}``, in place."""
    rows = torch.arange(tokens.shape[0])
    for i in range(chain.shape[1] - 1):
        on = hops > i
        jump = chain[on, i] - chain[on, i + 1]
        tokens[rows[on], chain[on, i]] = n_letters + jump - 1


def _integers(
    n: int, *, target_window: int, pointer_window: int, max_pointer: int, distractors: str, gen: torch.Generator
) -> Int[Tensor, "batch pointer_plus_1"]:
    """Distractor jumps (1-based) for the pointer window and the query."""
    if distractors == "uniform":
        return torch.randint(0, max_pointer, (n, pointer_window + 1), generator=gen) + 1
    # the paper's: the integer at position k points to a uniform earlier position 0..k-1
    pos = torch.arange(target_window, target_window + pointer_window + 1)
    top = pos.clamp(max=max_pointer)  # [pointer+1]: largest jump allowed there
    return 1 + (torch.rand(n, pos.shape[0], generator=gen) * top).long().clamp(max=top - 1)


@builder_of(NumberParams)
def number_task(n_prompts: int, *, seed: int, **params: Any) -> TaskBatch:  # long: one run of the generator's draws, in order
    """``n_prompts`` number-task prompts (SPEC 2.1), with a re-routed corrupted twin.

    Parameters (`headkit.tasks.params.NumberParams`, defaults there): ``length``
    (optional) is the total prompt length. ``extend="prefix"`` (the
    paper's length protocol) puts ``length - (T + P + 1)`` random letters in front of
    an unchanged prompt; ``extend="window"`` (ours) sets ``target_window`` to
    ``length - pointer_window - 1``. ``distractors``: ``"paper"`` (an integer points
    to an earlier position of the prompt) or ``"uniform"`` (ours: any jump
    ``1..max_pointer``). ``balance``: ``"joint"`` (the paper's: hop, answer position
    and answer letter balanced jointly) or ``"hops"`` (ours: hops balanced, chains
    uniform); None = ``"joint"``, or ``"hops"`` when ``extend="window"`` enlarges the window.
    Positions: ``"query"`` [batch], ``"chain"`` [batch, max_hops+1] (query, then each
    landing, -1 padded), ``"answer_source"`` [batch] (the answer letter's position).
    """
    config, record, gen = start_chains(NumberParams, params, n_prompts=n_prompts, seed=seed, task="number")
    n = n_prompts  # checked by start_chains
    t, added, balance = config.target, config.added, config.chain_balance
    min_hops, max_hops, n_letters, max_pointer = config.min_hops, config.max_hops, config.n_letters, config.max_pointer
    p = config.pointer_window
    vocab = number_vocab(n_letters, max_pointer)
    layout: dict[str, Any] = dict(target_window=t, pointer_window=p, max_jump=max_pointer)
    if balance == "joint":
        counts = chain_counts_to(**layout, max_hops=max_hops)
        feasible = counts[min_hops:, t + p] > 0  # [hop, answer position]
        hops, ends, values = joint_balanced(n, feasible=feasible, min_hops=min_hops, n_values=n_letters, gen=gen)
    else:
        hops = balanced_hops(n, min_hops, max_hops, gen)

    # distractors: letters in the target window, integers in the pointer window and query
    letters = torch.randint(0, n_letters, (n, t), generator=gen)
    integers = n_letters - 1 + _integers(n, target_window=t, pointer_window=p, max_pointer=max_pointer,
                                         distractors=config.distractors, gen=gen)
    tokens = torch.cat([letters, integers], dim=1)  # [batch, T+P+1]

    def sample(avoid_first: Tensor | None) -> Tensor:
        chain = sample_chains(hops, **layout, gen=gen, avoid_first=avoid_first)
        return pad_chains(chain, max_hops)

    if balance == "joint":
        chain = pad_chains(sample_chains(hops, **layout, gen=gen, ends=ends), max_hops)
        tokens[torch.arange(n), ends] = values
    else:
        chain = sample(None)
    _write_chain(tokens, chain, hops, n_letters)
    answers = _answers(tokens, chain, hops)

    # corrupted twin: a re-routed chain over the same distractors, answer forced to differ
    twin_chain = sample(chain[:, 1])
    twin_tokens = tokens.clone()
    _write_chain(twin_tokens, twin_chain, hops, n_letters)
    twin_source = chain_ends(twin_chain, hops)
    rows = torch.arange(n)
    same = twin_tokens[rows, twin_source] == answers
    shift = torch.randint(1, n_letters, (n,), generator=gen)
    twin_tokens[rows[same], twin_source[same]] = (answers[same] + shift[same]) % n_letters
    twin_answers = _answers(twin_tokens, twin_chain, hops)

    shared: dict[str, Any] = dict(hops=hops, vocab=vocab, params=record)
    twin = chain_batch(
        "number", twin_tokens, chain=twin_chain, answers=twin_answers, wrong_answers=answers.clone(),
        corrupted=None, **shared,
    )
    batch = chain_batch(
        "number", tokens, chain=chain, answers=answers, wrong_answers=twin_answers.clone(),
        corrupted=twin, **shared,
    )
    if not added:
        return batch
    # the paper's length protocol: random letters in front of the unchanged prompt
    return prepend(batch, torch.randint(0, n_letters, (n, added), generator=gen), params=record)
