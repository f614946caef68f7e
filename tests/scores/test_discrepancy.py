"""Discrepancy Δ(n) (SPEC 3.2).

References: top-two logits read from `run_with_cache` on a tiny model, and a
hand-built model whose logits are known in closed form: a positional head whose
Δ(n) is a known non-increasing function of n, and a content head whose Δ is the
same constant at every length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from headkit.errors import HeadkitError
from headkit.scores.discrepancy import DISCREPANCY_COLUMNS, discrepancy
from headkit.tasks import TaskBatch, TaskSpec, Vocab

N_SYMBOLS = 8
AMP, CONTENT = 8.0, 8.0


@dataclass(frozen=True)
class LookupTask:
    """Random distractors (other symbols, pointers), the target symbol once, a pointer to it."""

    def build(self, n: int, *, seed: int, length: int) -> TaskBatch:
        gen = torch.Generator().manual_seed(seed + length)
        target = torch.randint(0, N_SYMBOLS, (n,), generator=gen)
        shift = torch.randint(1, 2 * N_SYMBOLS, (n, length - 1), generator=gen)
        tokens = (target[:, None] + shift) % (2 * N_SYMBOLS)  # never the target symbol
        where = torch.randint(0, length - 1, (n,), generator=gen)
        tokens[torch.arange(n), where] = target
        tokens = torch.cat([tokens, (N_SYMBOLS + target)[:, None]], 1)
        vocab = Vocab(tuple(f"s{i}" for i in range(N_SYMBOLS)) + tuple(f"p{i}" for i in range(N_SYMBOLS)))
        return TaskBatch(
            task="lookup", tokens=tokens, targets=torch.full_like(tokens, -100),
            answers=target, answer_pos=torch.full((n,), length - 1), vocab=vocab,
        )


def positional_delta(n: int) -> float:
    """Δ(n) of head 0 by construction: offsets 0..n-1 from the last position."""
    logit = [AMP**2 / 4 * (math.cos(1 - k) + math.cos(0.1 * (1 - k))) for k in range(n)]
    top, second = sorted(logit, reverse=True)[:2]
    return top - second


def test_matches_explicit_cache_computation(tiny_gptj):
    task = TaskSpec("number", {"n_letters": 20})
    vocab_size = len(task.build(1, seed=0).vocab)
    model = tiny_gptj(n_layers=2, n_heads=2, d_vocab=vocab_size, n_ctx=64)
    df = discrepancy(model, task, lengths=[17, 25], n_prompts=6, seed=4, batch_size=4)
    assert list(df.columns) == DISCREPANCY_COLUMNS
    assert len(df) == 2 * 4
    for length in (17, 25):
        tokens = task.build(6, seed=4, length=length).tokens
        _, cache = model.run_with_cache(tokens)
        for layer in range(2):
            for head in range(2):
                scores = cache["attn_scores", layer][:, head, -1, :]  # last row: no masked key
                top2 = scores.sort(-1, descending=True).values[:, :2]
                gap = top2[:, 0] - top2[:, 1]
                row = df[(df.layer == layer) & (df["head"] == head) & (df.length == length)].iloc[0]
                assert row.discrepancy == pytest.approx(gap.mean().item(), abs=1e-5)
                assert row.discrepancy_std == pytest.approx(gap.std().item(), abs=1e-5)
                assert row.discrepancy_max == pytest.approx(gap.max().item(), abs=1e-5)  # the paper's Δ(n)
                assert row.n_prompts == 6


def test_positional_head_shrinks_with_length_content_head_does_not(lookup_model):
    # head 0 positional (fast rotary pairs f0, f1): logit at offset k is
    # AMP²/4 · (cos(1 - k) + cos(0.1 (1 - k))) whatever the tokens; head 1 content lookup:
    # CONTENT²/4 on the symbol the query points at, 0 on every other key
    model = lookup_model(
        n_symbols=N_SYMBOLS, n_heads=2, n_ctx=256, positional={0: (0, 1)}, content_heads=(1,),
        amp=AMP, content=CONTENT,
    )
    lengths = [5, 9, 17, 33, 65, 129]
    df = discrepancy(model, LookupTask(), lengths=lengths, n_prompts=8)
    pos = df[df["head"] == 0].set_index("length")["discrepancy"]
    sym = df[df["head"] == 1].set_index("length")["discrepancy"]
    for n in lengths:
        assert pos[n] == pytest.approx(positional_delta(n), rel=1e-4, abs=1e-4)
        # LayerNorm's eps=1e-5 shrinks q and k by sqrt(1 + 1e-5) each: relative 1e-5 off
        assert sym[n] == pytest.approx(CONTENT**2 / 4, rel=1e-4)
    assert all(pos[a] >= pos[b] - 1e-3 for a, b in zip(lengths, lengths[1:]))
    assert pos[129] < 0.1 * pos[5]  # blurs: other offsets come ever closer to the best one
    assert (df[df["head"] == 1]["discrepancy_std"] < 1e-4).all()


class ExplodingTask:
    def build(self, n, *, seed, length):
        raise AssertionError("build must not run when the options are bad")


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"lengths": [17, 65]}, ["length 65", "n_ctx=64"]),
        ({"lengths": []}, ["lengths is empty"]),
        ({"lengths": [1]}, ["length 1", "2..64"]),
        ({"lengths": [17], "heads": [(3, 0)]}, ["layer 3", "0..1"]),
        ({"lengths": [17], "n_prompts": 0}, ["n_prompts=0"]),
    ],
)
def test_bad_input_raises_before_building_prompts(tiny_gptj, kwargs, words):
    model = tiny_gptj()
    with pytest.raises(HeadkitError) as err:
        discrepancy(model, ExplodingTask(), **kwargs)
    for w in words:
        assert w in str(err.value)


def test_task_must_have_build(tiny_gptj):
    with pytest.raises(HeadkitError, match="TaskSpec"):
        discrepancy(tiny_gptj(), lambda n, seed, length: None, lengths=[8])
