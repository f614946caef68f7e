"""Hand-built attention models shared by the score tests (fixtures).

`lookup_model` builds one attention-only GPT-J layer whose heads are, by
construction, positional (constant biases on fast rotary pairs), content lookups
(unrotated dimensions) or uniform (all zero); `lookup_prompts` builds the prompts
they are tested on. Fixtures return the builder functions, so that the tests can
pick the layout (how many heads, which are what) and run under
``--import-mode=importlib``, where test modules cannot import each other.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import pytest
import torch

from headkit.model_types import Model

from hooked import hooked_gptj

ROTARY_DIM = 8
D_MODEL, D_HEAD = 32, 16


def hadamard(n: int) -> torch.Tensor:
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def build_lookup_model(
    *,
    n_symbols: int,
    n_heads: int,
    n_ctx: int,
    positional: Mapping[int, Sequence[int]],
    content_heads: Sequence[int],
    amp: float = 8.0,
    content: float = 8.0,
) -> Model:
    """One attention-only layer (d_model 32, d_head 16, rotary_dim 8), answers known by construction.

    Tokens ``0..n_symbols-1`` are symbols, ``n_symbols + s`` the pointer asking for
    symbol ``s``. Embeddings are rows of a Hadamard matrix (mean 0, variance 1), so
    the LayerNorm leaves them unchanged and ``x @ H[t] = 32 [x is token t]``.
    - ``positional[h]``: rotary pairs ``f`` of head ``h`` that get constant q/k biases,
      the key's turned by θ_f = 10000^(-2f/8) (θ_0 = 1 rad/position), so pair ``f``
      adds amp²/4 · cos((1 - k) θ_f) to the logit at offset ``k``: the previous token
      wins whatever it holds.
    - ``content_heads``: pointer ``s`` queries and symbol ``s`` keys share the
      unrotated direction e_s: logit content²/4 on the matching symbol, 0 elsewhere.
    - every other weight and bias is zero (a head with neither attends uniformly).
    """
    # a HookedTransformer: the q/k biases below have no place in a GPT-J (so on TransformerLens 3.x only)
    model = hooked_gptj(
        1, D_MODEL, n_heads, 2 * n_symbols, n_ctx, rotary_dim=ROTARY_DIM, d_head=D_HEAD, attn_only=True
    )
    emb = hadamard(D_MODEL)[1 : 2 * n_symbols + 1]
    attn = model.blocks[0].attn
    with torch.no_grad():
        model.embed.W_E.copy_(emb)
        for p in (attn.W_Q, attn.W_K, attn.W_V, attn.W_O, attn.b_Q, attn.b_K, attn.b_V, attn.b_O):
            p.zero_()
        for head, pairs in positional.items():
            for f in pairs:
                theta = 10000 ** (-2 * f / ROTARY_DIM)
                attn.b_Q[head, 2 * f : 2 * f + 2] = torch.tensor([amp, 0.0])
                attn.b_K[head, 2 * f : 2 * f + 2] = torch.tensor([amp * math.cos(theta), amp * math.sin(theta)])
        for head in content_heads:
            for s in range(n_symbols):
                attn.W_K[head, :, ROTARY_DIM + s] = emb[s] * content / D_MODEL
                attn.W_Q[head, :, ROTARY_DIM + s] = emb[n_symbols + s] * content / D_MODEL
    return model


def build_lookup_prompts(n: int, *, n_symbols: int, seed: int = 0) -> torch.Tensor:
    """The ``n_symbols`` symbols in a random order, then a pointer to one of them: [n, n_symbols + 1]."""
    gen = torch.Generator().manual_seed(seed)
    symbols = torch.stack([torch.randperm(n_symbols, generator=gen) for _ in range(n)])
    target = torch.randint(0, n_symbols, (n,), generator=gen)
    return torch.cat([symbols, (n_symbols + target)[:, None]], dim=1)


@pytest.fixture
def lookup_model() -> Callable[..., Model]:
    """`build_lookup_model`: a hand-built one-layer model of positional/content/uniform heads."""
    return build_lookup_model


@pytest.fixture
def lookup_prompts() -> Callable[..., torch.Tensor]:
    """`build_lookup_prompts`: shuffled symbols, then a pointer to one of them."""
    return build_lookup_prompts


TINY_NUMBER = {"target_window": 4, "pointer_window": 4, "max_hops": 2, "n_letters": 10, "max_pointer": 8}


@pytest.fixture(scope="session")
def tiny_number_run(tmp_path_factory):
    """A 4-step number-task run (2 layers x 2 heads, checkpoints at steps 2 and 4): (run_dir, TaskSpec)."""
    from headkit.model_config import ModelConfig
    from headkit.tasks.registry import TaskSpec
    from headkit.training.config import TrainConfig
    from headkit.training.loop import train

    task = TaskSpec("number", dict(TINY_NUMBER))
    d_vocab = len(task.build(1, seed=0).vocab)
    cfg = TrainConfig(
        task=task,
        model=ModelConfig(n_layers=2, d_model=16, n_heads=2, d_vocab=d_vocab, n_ctx=16),
        steps=4,
        batch_size=8,
        warmup_steps=1,
        eval_every=2,
        eval_n=8,
        checkpoint_steps=(2,),
    )
    out = tmp_path_factory.mktemp("run") / "number"
    train(cfg, out_dir=out, progress=False)
    return out, task


@pytest.fixture
def no_hooks_left() -> Callable[[Model], bool]:
    """``no_hooks_left(model)``: True when no forward or backward hook is left on the model."""

    def check(model: Model) -> bool:
        return all(not hp.fwd_hooks and not hp.bwd_hooks for hp in model.hook_dict.values())

    return check


@pytest.fixture
def refused_before_forward(no_hooks_left) -> Callable[..., str]:
    """``refused_before_forward(model, fn, *args, **kwargs)``: the message of the
    `HeadkitError` ``fn`` raises, asserting that no forward pass started and no hook is left."""
    from headkit.errors import HeadkitError

    def run(model: Model, fn: Callable[..., object], *args: object, **kwargs: object) -> str:
        calls: list[int] = []
        handle = model.embed.register_forward_pre_hook(lambda *a: calls.append(1))
        try:
            with pytest.raises(HeadkitError) as err:
                fn(*args, **kwargs)
        finally:
            handle.remove()
        assert not calls, "a forward pass started before the error"
        assert no_hooks_left(model)
        return str(err.value)

    return run
