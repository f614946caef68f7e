"""Repeated random tokens (SPEC 2.6, Framework; Olsson et al. 2022).

A prompt is ``[BOS, r_1 .. r_L, r_1 .. r_L]`` with ``L = half_length`` distinct
random tokens (so ``vocab_size >= half_length + 1``: ``L`` distinct tokens plus
one more for the corrupted twin). The second half is predictable only by
induction: at the second ``r_i`` the model finds the earlier ``r_i`` and copies the
token after it, ``r_{i+1}``.

``targets``: at the second-half positions of ``r_1 .. r_{L-1}`` the induction
prediction ``r_2 .. r_L``; IGNORE elsewhere (the first half, BOS and the last token
are not predictable by induction). ``answer_pos`` is the position of the second
``r_{L-1}``, ``answers`` = ``r_L``.

Corrupted twin (ours): the first-half ``r_L`` replaced by a token ``r'`` that does
not occur in the prompt. Induction at the second ``r_{L-1}`` now predicts ``r'``,
so the twin's answer (and its target there) is ``r'``; its ``wrong_answers`` is the
clean ``r_L`` and the clean batch's ``wrong_answers`` is ``r'``.

Vocabulary: ``BOS`` (id 0), then ``t0 .. t{V-1}`` (ids 1..V). With ``bos=False``
the prompt has no BOS (BOS stays in the vocabulary, unused).

Positions: ``"first_half"`` / ``"second_half"`` [batch] (where each half starts),
``"induction_source"`` [batch] (the first-half ``r_L``, the token induction copies
at ``answer_pos``), ``"query"`` [batch] (= answer_pos).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from headkit.checks import check_int
from headkit.tasks.base import IGNORE, TaskBatch, Vocab, check_prompt_memory, make_generator
from headkit.tasks.params import InductionParams, builder_of


def repeated_vocab(vocab_size: int) -> Vocab:
    return Vocab(("BOS",) + tuple(f"t{i}" for i in range(vocab_size)))


@builder_of(InductionParams)
def repeated_tokens_task(n_prompts: int, *, seed: int, **params: Any) -> TaskBatch:
    """``n_prompts`` prompts ``[BOS, r_1..r_L, r_1..r_L]`` with distinct ``r_i`` and an induction twin (`InductionParams`)."""
    config = InductionParams.of(params, task="induction")
    half_length, vocab_size, bos = config.half_length, config.vocab_size, config.bos
    n = check_int("n_prompts", n_prompts, low=1)
    # the prompts, plus one random permutation of the vocabulary per prompt
    check_prompt_memory(n, 2 * half_length + 1, task="induction", extra=3 * 8 * n * vocab_size)
    gen = make_generator(seed)
    vocab = repeated_vocab(vocab_size)
    big_l = half_length
    # per prompt a random permutation of the symbols: the first L are r_1..r_L, the next is r'
    perm = 1 + torch.rand(n, vocab_size, generator=gen).argsort(dim=1)  # [batch, vocab_size], ids 1..V
    half, r_prime = perm[:, :big_l], perm[:, big_l]
    start = 1 if bos else 0
    parts = [torch.zeros(n, 1, dtype=torch.long)] if bos else []
    tokens = torch.cat(parts + [half, half], dim=1)  # [batch, start + 2L]
    length = tokens.shape[1]
    second = start + big_l
    answer_pos = length - 2  # the second r_{L-1}
    twin_tokens = tokens.clone()
    twin_tokens[:, start + big_l - 1] = r_prime

    def build(toks: torch.Tensor, answers: torch.Tensor, wrong: torch.Tensor) -> TaskBatch:
        targets = torch.full_like(toks, IGNORE)
        targets[:, second : length - 1] = half[:, 1:]  # second r_i predicts r_{i+1}
        targets[:, answer_pos] = answers
        return TaskBatch(
            task="induction",
            tokens=toks,
            targets=targets,
            answers=answers,
            answer_pos=torch.full((n,), answer_pos, dtype=torch.long),
            vocab=vocab,
            wrong_answers=wrong,
            positions={
                "first_half": torch.full((n,), start, dtype=torch.long),
                "second_half": torch.full((n,), second, dtype=torch.long),
                "induction_source": torch.full((n,), start + big_l - 1, dtype=torch.long),
                "query": torch.full((n,), answer_pos, dtype=torch.long),
            },
            params=config.to_dict(),
        )

    r_last = half[:, -1].clone()
    twin = build(twin_tokens, r_prime.clone(), r_last.clone())
    clean = build(tokens, r_last.clone(), r_prime.clone())
    return dataclasses.replace(clean, corrupted=twin)
