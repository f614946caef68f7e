"""Fixtures shared by the task-builder tests."""

from __future__ import annotations

from typing import Callable

import pytest
import torch

from headkit.tasks.base import TaskBatch


def _check_seeded(build: Callable[..., TaskBatch], *, seed: int, other_seed: int) -> tuple[TaskBatch, TaskBatch]:
    """Build with ``seed`` twice and ``other_seed`` once; check determinism; return the two equal batches.

    Checks: the global torch RNG is untouched, equal seeds give equal prompts and
    equal corrupted twins, and another seed gives other prompts.
    """
    state = torch.get_rng_state()
    a, b, c = build(seed=seed), build(seed=seed), build(seed=other_seed)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.corrupted.tokens, b.corrupted.tokens)
    assert not torch.equal(a.tokens, c.tokens)
    return a, b


@pytest.fixture
def check_seeded() -> Callable[..., tuple[TaskBatch, TaskBatch]]:
    """``check_seeded(build, seed=, other_seed=)``: the determinism checks every builder must pass."""
    return _check_seeded
