"""Hugging Face's `GPTJForCausalLM` built from a headkit `ModelConfig`: what training trains.

PosSym-2026 trained Hugging Face's GPT-J from scratch (with dropout 0.1, which
TransformerLens cannot apply); headkit trains the same class (`headkit.training`)
and analyses that same module wrapped in TransformerLens's `TransformerBridge`
(`headkit.bridge.build.wrap`; `headkit.training.checkpoints`). This module holds what that needs:

- `hf_config`: `ModelConfig` (+ dropout) -> `GPTJConfig`, with the attention
  kernel (`ATTN_IMPLEMENTATION`, PyTorch's scaled-dot-product attention, which
  GPT-J supports in the installed transformers) and no tied embeddings.
- `build_hf_model`: a seeded `GPTJForCausalLM` (Hugging Face's own initialisation,
  normal(0, 0.02), as in the paper's code). GPT-J always has an MLP; for an
  ``attn_only`` config its MLP is one unit wide, zero and frozen, so it adds exactly
  nothing; the wrapped model keeps it and its config says ``attn_only``, so analyses
  offer no MLP site (`headkit.models.synthetic`, `headkit.training.checkpoints`).
- `hf_state`: the weights to save, in Hugging Face's names, of the model or of a
  bridge wrapping it (the bridge nests each module as ``_original_component``).
- `hf_state_from_tl`: a state dict in HookedTransformer's names (a user's
  HookedTransformer on TransformerLens 3.x, or a format-1 checkpoint) in Hugging Face
  names, for a model that is a GPT-J (Q/K/V/O biases zero, ``ln2 == ln1``); anything
  else is refused.
"""

from __future__ import annotations

import contextlib
import re
from types import SimpleNamespace
from typing import Literal

import einops
import torch
from torch import Tensor
from transformers import GPTJConfig, GPTJForCausalLM

from headkit.errors import HeadkitError
from headkit.model_config import ModelConfig

ATTN_IMPLEMENTATION = "sdpa"  # torch.nn.functional.scaled_dot_product_attention (GPT-J supports it)
_ATTN_ONLY_MLP = 1  # MLP width standing in for "no MLP" (zero and frozen)


def hf_config(cfg: ModelConfig, *, dropout: float = 0.0) -> GPTJConfig:
    """The `GPTJConfig` of ``cfg``; ``dropout`` goes to attn_pdrop, resid_pdrop and embd_pdrop."""
    if cfg.head_dim * cfg.n_heads != cfg.d_model:
        raise HeadkitError(
            f"d_head={cfg.head_dim} x n_heads={cfg.n_heads} != d_model={cfg.d_model}: "
            "Hugging Face's GPT-J needs d_head = d_model / n_heads"
        )
    if not (0.0 <= dropout < 1.0):
        raise HeadkitError(f"dropout={dropout} must be in [0, 1)")
    config = GPTJConfig(
        vocab_size=cfg.d_vocab,
        n_positions=cfg.n_ctx,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layers,
        n_head=cfg.n_heads,
        rotary_dim=cfg.rotary_dim or cfg.head_dim,
        n_inner=_ATTN_ONLY_MLP if cfg.attn_only else cfg.d_mlp,
        activation_function=cfg.act_fn,
        attn_pdrop=dropout,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=False,
        use_cache=False,
        bos_token_id=None,
        eos_token_id=None,
    )
    config._attn_implementation = ATTN_IMPLEMENTATION
    return config


def freeze_absent_mlps(model: GPTJForCausalLM, cfg: ModelConfig) -> None:
    """For ``attn_only``: zero every (one-unit) MLP and stop its gradients."""
    if not cfg.attn_only:
        return
    with torch.no_grad():
        for block in model.transformer.h:
            for p in block.mlp.parameters():  # pyright: ignore[reportAttributeAccessIssue]  (torch: Tensor | Module)
                p.zero_()
                p.requires_grad_(False)


def build_hf_model(
    cfg: ModelConfig, *, seed: int, dropout: float = 0.0, device: str | torch.device = "cpu"
) -> GPTJForCausalLM:
    """A freshly initialised `GPTJForCausalLM` (same ``cfg`` and ``seed``: same weights).

    The global RNG is used for the initialisation inside `torch.random.fork_rng`,
    so the caller's RNG state is left as it was.
    """
    config = hf_config(cfg, dropout=dropout)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPTJForCausalLM(config)
    freeze_absent_mlps(model, cfg)
    # transformers' @wraps(nn.Module.to) on PreTrainedModel.to hides its signature from the type checker
    return model.to(device)  # pyright: ignore[reportArgumentType]


_WRAPPED = re.compile(r"\._original_component(?=\.)|^_original_component\.")


def hf_state(model: GPTJForCausalLM) -> dict[str, Tensor]:
    """The weights to save (persistent tensors, on CPU, contiguous), in Hugging Face's names.

    ``model`` may have been wrapped by a `TransformerBridge` (which nests each of its
    modules as ``_original_component`` and adds aliases of the same tensors): the
    names are those of an unwrapped `GPTJForCausalLM` of the same config.
    """
    with torch.device("meta"):
        expected = GPTJForCausalLM(model.config).state_dict().keys()
    found = {_WRAPPED.sub("", name): t for name, t in model.state_dict().items()}
    missing = sorted(set(expected) - set(found))
    if missing:
        raise HeadkitError(f"model lacks {', '.join(missing[:3])}: it is not the GPT-J its config describes")
    return {name: found[name].detach().to("cpu").contiguous() for name in expected}


def hf_state_from_tl(sd: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """A GPT-J-shaped state dict in HookedTransformer's names, in Hugging Face names and layouts.

    Refuses a model that a GPT-J cannot hold: non-zero Q/K/V/O biases or
    ``ln2`` different from ``ln1`` (GPT-J has one LayerNorm per block).
    """
    out: dict[str, Tensor] = {"transformer.wte.weight": sd["embed.W_E"]}
    d_mlp = _ATTN_ONLY_MLP if cfg.attn_only else (cfg.d_mlp or 4 * cfg.d_model)
    for layer in range(cfg.n_layers):
        tl, hf = f"blocks.{layer}.", f"transformer.h.{layer}."
        for bias in ("b_Q", "b_K", "b_V", "b_O"):
            if torch.any(sd[tl + f"attn.{bias}"] != 0):
                raise HeadkitError(f"{tl}attn.{bias} is not zero: a GPT-J has no attention biases")
        out[hf + "ln_1.weight"] = sd[tl + "ln1.w"]
        out[hf + "ln_1.bias"] = sd[tl + "ln1.b"]
        for name, proj in (("W_Q", "q_proj"), ("W_K", "k_proj"), ("W_V", "v_proj")):
            # [n_heads, d_model, d_head] -> [(n_heads d_head), d_model]
            out[hf + f"attn.{proj}.weight"] = einops.rearrange(sd[tl + f"attn.{name}"], "n m h -> (n h) m")
        # [n_heads, d_head, d_model] -> [d_model, (n_heads d_head)]
        out[hf + "attn.out_proj.weight"] = einops.rearrange(sd[tl + "attn.W_O"], "n h m -> m (n h)")
        if cfg.attn_only:
            out[hf + "mlp.fc_in.weight"] = torch.zeros(d_mlp, cfg.d_model)
            out[hf + "mlp.fc_in.bias"] = torch.zeros(d_mlp)
            out[hf + "mlp.fc_out.weight"] = torch.zeros(cfg.d_model, d_mlp)
            out[hf + "mlp.fc_out.bias"] = torch.zeros(cfg.d_model)
            continue
        for p in ("w", "b"):
            if not torch.equal(sd[tl + f"ln2.{p}"], sd[tl + f"ln1.{p}"]):
                raise HeadkitError(f"{tl}ln2.{p} differs from ln1.{p}: a GPT-J block has one LayerNorm")
        out[hf + "mlp.fc_in.weight"] = sd[tl + "mlp.W_in"].T  # [d_model, d_mlp] -> [d_mlp, d_model]
        out[hf + "mlp.fc_in.bias"] = sd[tl + "mlp.b_in"]
        out[hf + "mlp.fc_out.weight"] = sd[tl + "mlp.W_out"].T  # [d_mlp, d_model] -> [d_model, d_mlp]
        out[hf + "mlp.fc_out.bias"] = sd[tl + "mlp.b_out"]
    out["transformer.ln_f.weight"] = sd["ln_final.w"]
    out["transformer.ln_f.bias"] = sd["ln_final.b"]
    out["lm_head.weight"] = sd["unembed.W_U"].T  # [d_model, d_vocab] -> [d_vocab, d_model]
    out["lm_head.bias"] = sd["unembed.b_U"]
    return {name: t.detach().to("cpu").contiguous() for name, t in out.items()}


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; nothing elsewhere (CPU training stays float32, bit-exact)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class HFLogits:
    """A `GPTJForCausalLM` seen through the small part of the HookedTransformer API
    that `headkit.evaluation.score_batch` uses: ``model(tokens, return_type="logits")``,
    ``cfg.device/n_ctx/d_vocab`` (and the sizes `estimate_bytes` reads), ``training``, ``train()``, ``eval()``.
    """

    def __init__(self, model: GPTJForCausalLM) -> None:
        self.model = model
        config = model.config
        device = next(model.parameters()).device
        self.cfg = SimpleNamespace(
            device=device, n_ctx=config.n_positions, d_vocab=config.vocab_size,
            # what headkit.evaluation.estimate_bytes reads
            d_model=config.n_embd, d_mlp=config.n_inner or 4 * config.n_embd, n_heads=config.n_head,
            dtype=next(model.parameters()).dtype,
        )  # fmt: skip

    @property
    def training(self) -> bool:
        return self.model.training

    def train(self, mode: bool = True) -> "HFLogits":
        self.model.train(mode)
        return self

    def eval(self) -> "HFLogits":
        return self.train(False)

    def __call__(self, tokens: Tensor, *, return_type: Literal["logits"] = "logits") -> Tensor:
        with autocast(self.cfg.device):
            logits = self.model(input_ids=tokens).logits  # [batch, pos, d_vocab]
        return logits.float()
