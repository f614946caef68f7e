"""GPT-J-style models built from a few sizes, as the analyses see them.

GPT-J (Wang & Komatsuzaki 2021) is the architecture of the positional-vs-symbolic
papers: rotary position embeddings applied to adjacent pairs of each query/key
head dimension (``rotate_every_two``), attention and MLP computed in parallel
from one LayerNorm of the residual, ``gelu_new``, no biases on Q/K/V/O, a biased
unembedding. `model_from_config` (and `gptj_model`) build Hugging Face's
`GPTJForCausalLM` of a small `ModelConfig` — the class training trains, seeded,
Hugging Face's own initialisation (`headkit.gptj_hf.build_hf_model`) — and wrap it
in TransformerLens's `TransformerBridge` with headkit's GPT-J attention
(`headkit.bridge.build.wrap`), so the same sizes and seed give the same weights on
TransformerLens 3.9 and 4.x. `gptj_config` (TransformerLens 3.x only) is the
`HookedTransformerConfig` of the same architecture, for comparisons with a
HookedTransformer.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
from transformer_lens.model_bridge import TransformerBridge

from headkit.bridge.build import wrap
from headkit.checks import check_int, check_length
from headkit.errors import HeadkitError
from headkit.gptj_hf import build_hf_model
from headkit.model_config import DEFAULT_N_CTX, ModelConfig, resolve_dtype
from headkit.model_types import Model, has_hooked_transformer

ModelT = TypeVar("ModelT", bound=Model)  # synthetic returns the model it was given


def gptj_config(
    cfg: ModelConfig,
    *,
    seed: int | None = 0,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "float32",
) -> Any:
    """The `HookedTransformerConfig` of a GPT-J-style model with the sizes in ``cfg``.

    TransformerLens 3.x only (4.0 removed HookedTransformer): for comparing headkit's
    bridge with a HookedTransformer of the same architecture.
    """
    if not has_hooked_transformer():
        raise HeadkitError("gptj_config builds a HookedTransformerConfig, which TransformerLens 4 removed: "
                           "use model_from_config (a TransformerBridge)")
    from transformer_lens import HookedTransformerConfig

    # Any: on TransformerLens 4.x the type checker resolves the removed name through
    # transformer_lens's module __getattr__ (which returns TransformerBridge)
    config_class: Any = HookedTransformerConfig
    head = cfg.head_dim
    return config_class(
        n_layers=cfg.n_layers,
        d_model=cfg.d_model,
        n_heads=cfg.n_heads,
        d_head=head,
        d_mlp=None if cfg.attn_only else (cfg.d_mlp or 4 * cfg.d_model),
        d_vocab=cfg.d_vocab,
        n_ctx=cfg.n_ctx,
        act_fn=cfg.act_fn,
        normalization_type="LN",
        positional_embedding_type="rotary",
        rotary_dim=cfg.rotary_dim or head,
        rotary_adjacent_pairs=True,  # GPT-J's rotate_every_two
        # Attention-only blocks have nothing to run in parallel, and TransformerLens
        # 3.9 crashes on parallel_attn_mlp with attn_only (it looks for ln2).
        parallel_attn_mlp=not cfg.attn_only,
        attn_only=cfg.attn_only,
        use_attn_scale=True,
        default_prepend_bos=False,  # synthetic tasks have no BOS unless they add one
        seed=seed,
        device=None if device is None else str(device),
        dtype=resolve_dtype(dtype),
        init_weights=True,
    )


def gptj_model(
    n_layers: int = 6,
    d_model: int = 64,
    n_heads: int = 1,
    d_vocab: int = 128,
    n_ctx: int = DEFAULT_N_CTX,
    *,
    rotary_dim: int | None = None,
    d_mlp: int | None = None,
    d_head: int | None = None,
    attn_only: bool = False,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "float32",
) -> TransformerBridge:
    """A freshly initialised GPT-J-style model (`model_from_config` of these sizes).

    The same sizes and ``seed`` give the same weights. ``attn_only=True``: the MLPs
    add nothing (zero and frozen, `headkit.gptj_hf`).
    """
    sizes: dict[str, Any] = dict(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_vocab=d_vocab, n_ctx=n_ctx)
    cfg = ModelConfig(**sizes, rotary_dim=rotary_dim, d_mlp=d_mlp, d_head=d_head, attn_only=attn_only)
    return model_from_config(cfg, seed=seed, device=device, dtype=dtype)


def model_from_config(
    cfg: ModelConfig,
    *,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "float32",
) -> TransformerBridge:
    """The model of ``cfg`` as analyses see it: a seeded `GPTJForCausalLM`, wrapped.

    ``device=None`` puts it on CUDA when a GPU is present, else the CPU (as
    TransformerLens's default). In eval mode; the bridge runs the Hugging Face
    module in place, so its parameters are the Hugging Face model's.
    """
    dtype = resolve_dtype(dtype)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    # transformers' @wraps(nn.Module.to) on PreTrainedModel.to hides its signature from the type checker
    hf_model = build_hf_model(cfg, seed=seed, device=device).to(dtype)  # pyright: ignore[reportArgumentType]
    return synthetic(wrap(hf_model), attn_only=cfg.attn_only)


def synthetic(model: ModelT, *, attn_only: bool = False) -> ModelT:
    """``model`` set up for headkit's synthetic tasks (no BOS prepended); returns it.

    ``attn_only``: the model's MLPs are the zero, one-unit stand-ins of an
    attention-only GPT-J (`headkit.gptj_hf`); its config says so, so that analyses
    offer no MLP site (their output is exactly zero).
    """
    model.cfg.default_prepend_bos = False
    model.cfg.attn_only = attn_only
    return model


def check_fits_context(model: Model, length: int, *, what: str = "sequence") -> None:
    """Refuse a sequence longer than the model's context before any forward pass.

    TransformerLens's rotary tables stop at ``n_ctx`` and a longer input fails
    deep inside with an unclear shape error; this names the length instead.
    """
    check_length(length, model.cfg.n_ctx, name=f"{what} length")


def extend_context(model: Model, n_ctx: int) -> Model:
    """Let a rotary ``model`` take sequences up to ``n_ctx`` tokens, in place; returns it.

    Rotary tables hold no parameters: TransformerLens and headkit's GPT-J attention
    compute them from the position alone (HookedTransformer grows its tables on demand
    up to ``cfg.n_ctx``), so raising ``cfg.n_ctx`` (and, for a bridge, its Hugging Face
    config's ``n_positions``) makes the model compute exactly what the same weights
    built with the larger ``n_ctx`` compute. For models trained with a short ``n_ctx`` (e.g. 257) to be tested with
    PosSym-2026's +996 added tokens. Models with learned position embeddings cannot grow.
    """
    check_int("n_ctx", n_ctx)
    if model.cfg.positional_embedding_type != "rotary":
        raise HeadkitError(
            f"only rotary models can extend their context: this model's position embedding is "
            f"{model.cfg.positional_embedding_type!r}"
        )
    if n_ctx > model.cfg.n_ctx:
        model.cfg.n_ctx = n_ctx
        _grow_gptj_tables(getattr(model, "original_model", None), n_ctx)
    return model


def _grow_gptj_tables(hf_model: torch.nn.Module | None, n_ctx: int) -> None:
    """A bridged Hugging Face GPT-J's sinusoid table (``rotary_emb.embed_positions``, which stops
    at ``n_positions``) regrown to ``n_ctx`` positions with Hugging Face's own function."""
    if hf_model is None:
        return
    from transformers.models.gptj import modeling_gptj

    for module in hf_model.modules():
        if isinstance(module, modeling_gptj.GPTJRotaryEmbedding):
            table = modeling_gptj.create_sinusoidal_positions(n_ctx, module.pos_embd_dim)
            # a Tensor set on a registered buffer's name replaces the buffer (transformers types it nn.Buffer)
            module.embed_positions = table.to(module.embed_positions.device)  # pyright: ignore[reportAttributeAccessIssue]
            module.max_positions = n_ctx
    config = getattr(hf_model, "config", None)
    if config is not None and hasattr(config, "n_positions"):
        config.n_positions = n_ctx
