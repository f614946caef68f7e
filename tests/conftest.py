"""Shared test set-up: offline, seeded, tiny models built from config."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sys

# jaxtyping's runtime shape checks on every tensor annotation of headkit (issue 11): a
# tensor whose shape disagrees with its ``Float[Tensor, "batch pos"]``-style annotation,
# or whose named dimensions disagree with another argument's, fails the test that passed
# it (tests/shapecheck.py says how). Installed before headkit is first imported.
sys.path.insert(0, os.path.dirname(__file__))
from jaxtyping import install_import_hook  # noqa: E402

_shape_checks = install_import_hook("headkit", "shapecheck.check_shapes")

import pytest  # noqa: E402
import torch  # noqa: E402

# One intra-op thread: tiny models gain nothing from more, and on a shared 2-core
# machine two threads made the suite ~8x slower (issue 11).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_everything():
    """Each test starts from the same global RNG state."""
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_gptj():
    """Builder of tiny GPT-J-style models: ``tiny_gptj(**overrides)``."""
    from headkit.models import gptj_model

    def build(**overrides):
        kwargs = dict(n_layers=2, d_model=32, n_heads=2, d_vocab=40, n_ctx=64, seed=0)
        kwargs.update(overrides)
        return gptj_model(**kwargs)

    return build


@pytest.fixture
def float32_allocations():
    """A TorchDispatchMode class recording float32 tensors of >= ``min_numel`` that ops create."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Float32Allocations(TorchDispatchMode):
        def __init__(self, min_numel: int) -> None:
            super().__init__()
            self.min_numel = min_numel
            self.seen: list[tuple[str, tuple[int, ...]]] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.numel() >= self.min_numel:
                    self.seen.append((str(func), tuple(t.shape)))
            return out

    return Float32Allocations
