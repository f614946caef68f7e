"""The shift-by-one copy task (SPEC 2.5, Copy-phase; Lavie et al. 2026).

Tokens are i.i.d. uniform over ``vocab_size`` symbols ``t0..t{V-1}``; at every
position ``t >= 1`` the target is the previous token, ``tokens[t-1]`` (IGNORE at
position 0). A one-layer, one-head attention model solves it by attending from
each position to the one before: the copy (previous-token) head.

``answer_pos`` is the last position and ``answers`` the second-to-last token, so
accuracy at the answer position is one sample of the copy behaviour.

Corrupted twin (ours): the same tokens with position ``length - 2`` resampled to a
different symbol, so the twin's answer differs and nothing else changes.

Positions: ``"query"`` [batch] (= length - 1), ``"source"`` [batch] (= length - 2).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from headkit.checks import check_int
from headkit.tasks.base import IGNORE, TaskBatch, Vocab, check_prompt_memory, make_generator
from headkit.tasks.params import CopyParams, builder_of


def copy_vocab(vocab_size: int) -> Vocab:
    return Vocab(tuple(f"t{i}" for i in range(vocab_size)))


@builder_of(CopyParams)
def copy_task(n_prompts: int, *, seed: int, **params: Any) -> TaskBatch:
    """``n_prompts`` i.i.d. sequences of ``length`` tokens with next-token target = previous token (`CopyParams`)."""
    config = CopyParams.of(params, task="copy")
    length, vocab_size = config.length, config.vocab_size
    n = check_int("n_prompts", n_prompts, low=1)
    check_prompt_memory(n, length, task="copy")
    gen = make_generator(seed)
    vocab = copy_vocab(vocab_size)
    tokens = torch.randint(0, vocab_size, (n, length), generator=gen)
    twin_tokens = tokens.clone()
    shift = torch.randint(1, vocab_size, (n,), generator=gen)
    twin_tokens[:, -2] = (tokens[:, -2] + shift) % vocab_size

    def build(toks: torch.Tensor, wrong: torch.Tensor) -> TaskBatch:
        targets = torch.full_like(toks, IGNORE)
        targets[:, 1:] = toks[:, :-1]
        return TaskBatch(
            task="copy",
            tokens=toks,
            targets=targets,
            answers=toks[:, -2].clone(),
            answer_pos=torch.full((n,), length - 1, dtype=torch.long),
            vocab=vocab,
            wrong_answers=wrong,
            positions={
                "query": torch.full((n,), length - 1, dtype=torch.long),
                "source": torch.full((n,), length - 2, dtype=torch.long),
            },
            params=config.to_dict(),
        )

    twin = build(twin_tokens, tokens[:, -2].clone())
    clean = build(tokens, twin_tokens[:, -2].clone())
    return dataclasses.replace(clean, corrupted=twin)
