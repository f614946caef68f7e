"""The letter task: symbolic pointers (SPEC 2.2, PosSym-2026).

Every token is an atomic pair. The target window holds ``T`` (symbol, digit) tokens
such as ``c2``, the pointer window ``P`` (symbol, symbol) tokens such as ``fc``, and
the query is one (symbol, symbol) token. A pair ``(x, y)`` means "go to the earlier
token whose first symbol is ``y``"; the chain continues until it reaches a
(symbol, digit) token, which is the answer, predicted at the query position. One
hop: ``a4 b3 c2 d1 fc`` -> ``c2``.

Layout, chains, balance and length protocol are those of the number task
(`headkit.tasks.chains`), with no jump limit: a pointer names content, not an
offset. ``balance="joint"`` balances hop, answer position, answer symbol and answer
digit jointly, as the paper's generator does (``jcalataiut-cli/CENIA``,
``Position_symbolic_dynamics/code/src/data/symbolic_dataset.py``).

Unique lookups (the paper's): the ``h`` symbols ``y_1..y_h`` looked up along the
chain are distinct and each occurs exactly once as a first symbol in the prompt (at
its chain position). All other tokens, the query and any prefix included, take their
first symbol from the remaining ``n_symbols - h`` symbols, so
``n_symbols >= max_hops + 2``. ``distractors="paper"``: a distractor pointer's second
symbol is one of those remaining symbols, possibly its own first (``(x, x)``);
``distractors="distinct"`` (ours, headkit's first generator): any symbol but ``x``.
Distractor targets have a random digit.

Defaults are the paper's vocabulary: 8 symbols a-h, digits 1-8, 128 tokens.
(ours) Training's letter default keeps ``n_symbols=24``: a quick trial trained well
at 24 symbols and stalled at 32.

Corrupted twin (ours): the same prompt with the answer token's digit changed to
another digit (``c2`` -> ``c5``): same chain, same lookups, different answer. (A
re-routed twin would have to re-pick which symbols are unique, changing many
tokens at once.)

Length (``length``, the total): ``extend="prefix"`` (PosSym-2026's protocol,
default) puts (symbol, digit) tokens with never-looked-up symbols in front of an
unchanged prompt; ``extend="window"`` (ours) sets ``T = length - P - 1``.
"""

from __future__ import annotations

from typing import Any

import torch
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
from headkit.tasks.params import DIGIT_NAMES, SYMBOL_NAMES, LetterParams, builder_of

DISTRACTORS = LetterParams.DISTRACTORS


def letter_vocab(n_symbols: int, n_digits: int) -> Vocab:
    """Target ``(x, d)`` has id ``x*n_digits + d``, pointer ``(x, y)`` ``S*n_digits + x*S + y``.

    ``S = n_symbols``; names are e.g. ``"c2"`` and ``"fc"``.
    """
    sym, dig = SYMBOL_NAMES[:n_symbols], DIGIT_NAMES[:n_digits]
    targets = [x + d for x in sym for d in dig]
    pointers = [x + y for x in sym for y in sym]
    return Vocab(tuple(targets + pointers))


def _other_symbols(perm: Tensor, hops: Tensor, shape: tuple[int, int], gen: torch.Generator) -> Tensor:
    """[batch, k] symbols drawn uniformly among each prompt's non-looked-up ones ``perm[:, h:]``."""
    s = perm.shape[1]
    pick = (torch.rand(*shape, generator=gen) * (s - hops)[:, None]).long()  # [batch, k]
    return perm.gather(1, hops[:, None] + pick)


@builder_of(LetterParams)
def letter_task(n_prompts: int, *, seed: int, **params: Any) -> TaskBatch:  # long: one run of the generator's draws, in order
    """``n_prompts`` letter-task prompts (SPEC 2.2), with a changed-digit corrupted twin.

    Parameters: `headkit.tasks.params.LetterParams`. Defaults are the paper's:
    symbols a-h, digits 1-8 (128 tokens). ``length`` (optional) is the total prompt length: ``extend="prefix"`` (the paper's protocol)
    puts ``length - (T + P + 1)`` random (symbol, digit) tokens, whose symbols are
    never looked up, in front of an unchanged prompt; ``extend="window"`` (ours) sets
    ``target_window`` to ``length - pointer_window - 1``. ``distractors``: ``"paper"``
    (a distractor pointer's second symbol is a non-looked-up symbol, possibly its
    own first) or ``"distinct"`` (ours: any other symbol). ``balance``: ``"joint"``
    (the paper's: hop, answer position, answer symbol and digit balanced jointly) or
    ``"hops"`` (ours); None = ``"joint"``, or ``"hops"`` when ``extend="window"`` enlarges the window.
    Positions: ``"query"`` [batch], ``"chain"`` [batch, max_hops+1] (query, then each
    landing, -1 padded), ``"answer_source"`` [batch] (the answer token's position).
    """
    config, record, gen = start_chains(LetterParams, params, n_prompts=n_prompts, seed=seed, task="letter")
    n = n_prompts  # checked by start_chains
    t, added, balance = config.target, config.added, config.chain_balance
    min_hops, max_hops, distractors = config.min_hops, config.max_hops, config.distractors
    p, s, d = config.pointer_window, config.n_symbols, config.n_digits
    vocab = letter_vocab(s, d)
    n_target_ids = s * d
    rows = torch.arange(n)
    layout: dict[str, Any] = dict(target_window=t, pointer_window=p, max_jump=None)
    if balance == "joint":
        counts = chain_counts_to(**layout, max_hops=max_hops)
        feasible = counts[min_hops:, t + p] > 0  # [hop, answer position]
        hops, ends, values = joint_balanced(n, feasible=feasible, min_hops=min_hops, n_values=s * d, gen=gen)
        chain = sample_chains(hops, **layout, gen=gen, ends=ends)
    else:
        hops = balanced_hops(n, min_hops, max_hops, gen)
        chain = sample_chains(hops, **layout, gen=gen)
    chain = pad_chains(chain, max_hops)

    # symbols: a random permutation per prompt; y_1..y_h = perm[:, :h] are looked up,
    # every other first symbol is drawn from perm[:, h:]
    perm = torch.rand(n, s, generator=gen).argsort(dim=1)  # [batch, n_symbols]
    if balance == "joint":  # the answer's symbol is the last one looked up, y_h
        # values is bound (set above under the same condition), which the type checker cannot follow
        at = (perm == (values // d)[:, None]).int().argmax(1)  # pyright: ignore[reportIndexIssue]
        last = hops - 1
        perm[rows, at], perm[rows, last] = perm[rows, last], perm[rows, at]
    length_ = t + p + 1
    first = _other_symbols(perm, hops, (n, length_), gen)  # [batch, pos]: first symbol of every token
    if distractors == "paper":
        second = _other_symbols(perm, hops, (n, length_), gen)
    else:
        second = (first + torch.randint(1, s, (n, length_), generator=gen)) % s  # != first
    digit = torch.randint(0, d, (n, length_), generator=gen)
    is_target = torch.arange(length_) < t
    tokens = torch.where(is_target[None, :], first * d + digit, n_target_ids + first * s + second)

    # the chain: token at c_i (i < h) is the pointer (first symbol, y_{i+1}); the token at
    # c_i (i >= 1) has first symbol y_i
    for i in range(max_hops):
        on = hops > i
        r, c, c_next = rows[on], chain[on, i], chain[on, i + 1]
        y_next = perm[on, i]
        first[r, c_next] = y_next
        tokens[r, c] = n_target_ids + first[r, c] * s + y_next
    source = chain_ends(chain, hops)  # [batch]
    if balance == "joint":
        digit[rows, source] = values % d
    tokens[rows, source] = first[rows, source] * d + digit[rows, source]
    answers = tokens[rows, source]

    # corrupted twin: the answer token with another digit
    twin_tokens = tokens.clone()
    new_digit = (digit[rows, source] + torch.randint(1, d, (n,), generator=gen)) % d
    twin_tokens[rows, source] = first[rows, source] * d + new_digit
    twin_answers = twin_tokens[rows, source]

    shared: dict[str, Any] = dict(chain=chain, hops=hops, vocab=vocab, params=record)
    twin = chain_batch(
        "letter", twin_tokens, answers=twin_answers, wrong_answers=answers.clone(), corrupted=None, **shared
    )
    batch = chain_batch(
        "letter", tokens, answers=answers, wrong_answers=twin_answers.clone(), corrupted=twin, **shared
    )
    if not added:
        return batch
    # the paper's length protocol: (symbol, digit) tokens in front, symbols never looked up
    prefix_symbols = _other_symbols(perm, hops, (n, added), gen)
    prefix = prefix_symbols * d + torch.randint(0, d, (n, added), generator=gen)
    return prepend(batch, prefix, params=record)
