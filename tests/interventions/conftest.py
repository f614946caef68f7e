"""Fixtures shared by the intervention tests."""

from __future__ import annotations

import pytest
from transformer_lens import HookedTransformer


@pytest.fixture
def no_forward(monkeypatch):
    """Make any forward pass fail: bad input must be refused before any work is spent."""

    def forward(*args, **kwargs):
        raise AssertionError("a forward pass ran before the input was checked")

    monkeypatch.setattr(HookedTransformer, "forward", forward)
