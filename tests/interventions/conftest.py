"""Fixtures shared by the intervention tests."""

from __future__ import annotations

import pytest
from transformer_lens.model_bridge import TransformerBridge

from headkit.model_types import HookedTransformer, Model
from headkit.models import gptj_model

from hooked import REASON, hooked_gptj

TINY = dict(
    n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=30, n_ctx=16,
    act_fn="gelu", normalization_type="LN", positional_embedding_type="standard", seed=0,
)  # fmt: skip


def tiny_model(gptj: bool | str = False, **overrides) -> Model:
    """A tiny model built from config in eval mode: `TINY` with ``overrides``, or headkit's
    GPT-J-style model (``gptj=True``: parallel attention and MLP, rotary; a TransformerBridge)
    of the same size (``gptj="hooked"``: the same as a HookedTransformer)."""
    if gptj == "hooked":
        keep = ("n_layers", "d_model", "n_heads", "d_vocab", "n_ctx", "seed")
        return hooked_gptj(**{**{k: TINY[k] for k in keep}, **overrides})
    if gptj:
        keep = ("n_layers", "d_model", "n_heads", "d_vocab", "n_ctx", "seed")
        return gptj_model(**{**{k: TINY[k] for k in keep}, **overrides})
    if HookedTransformer is None:
        pytest.skip(REASON)
    from transformer_lens import HookedTransformerConfig

    model = HookedTransformer(HookedTransformerConfig(**{**TINY, **overrides}))
    model.eval()
    return model


@pytest.fixture(scope="session")
def build_model():
    """`tiny_model`, for tests that build models from a table of architecture overrides."""
    return tiny_model


@pytest.fixture
def no_forward(monkeypatch):
    """Make any forward pass fail: bad input must be refused before any work is spent."""

    def forward(*args, **kwargs):
        raise AssertionError("a forward pass ran before the input was checked")

    monkeypatch.setattr(TransformerBridge, "forward", forward)
    if HookedTransformer is not None:
        monkeypatch.setattr(HookedTransformer, "forward", forward)
