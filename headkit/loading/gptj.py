"""Load a pretrained GPT-J checkpoint, offline, as the model headkit's analyses read.

TransformerLens 3.9 could load GPT-J only by name from the Hugging Face hub (and
4.0 removed ``HookedTransformer.from_pretrained``). `load_gptj` takes a local
Hugging Face directory (or the hub name, resolved through the local cache):

1. Read ``config.json`` and check it is a GPT-J config with sizes that make sense
   (`read_gptj_config`).
2. Open the weight files (`headkit.loading.files`) and check, from the headers
   only, that every tensor GPT-J needs is there with the right shape and a
   supported dtype (`check_weights`), before anything is built of them.
3. ``GPTJForCausalLM.from_pretrained`` offline (``local_files_only``, no remote
   code) in the target dtype, then TransformerLens's `TransformerBridge` wrapped
   around it in place, with headkit's GPT-J attention (`headkit.bridge.build`).
   transformers builds the model on the ``meta`` device and fills it tensor by
   tensor; weights left as views of the memory-mapped file are then copied out
   of it, one tensor at a time (docs/loading.md; measured peaks: docs/bridge.md,
   ``benchmarks/load_memory.py``).

The optional weight processing (``fold_ln``, ``center_writing_weights``,
``center_unembed``, ``fold_value_biases``) is TransformerLens's own, applied by
``enable_compatibility_mode``; off by default (raw weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headkit.checks import check_int, options_of
from headkit.errors import HeadkitError
from headkit.loading.files import (
    WeightFiles,
    check_config_sizes,
    open_weight_files,
    read_hf_config,
    resolve_checkpoint_dir,
    saved_tokenizer,
)
from headkit.loading.hf import boot
from headkit.loading.options import LoadOptions
from headkit.model_types import Model

GPTJ_HUB_NAME = "EleutherAI/gpt-j-6B"
# Hugging Face's ACT2FN names GPT-J's MLP may use
ACTIVATIONS = ("gelu_new", "gelu", "gelu_fast", "gelu_pytorch_tanh", "relu", "silu", "quick_gelu")


# --- config.json ------------------------------------------------------------------------


@dataclass(frozen=True)
class GPTJShapes:
    """The sizes of a GPT-J checkpoint, read from its config.json."""

    n_layers: int  # n_layer
    d_model: int  # n_embd
    n_heads: int  # n_head
    d_mlp: int  # n_inner, or 4 * n_embd when null
    d_vocab: int  # vocab_size
    n_ctx: int  # n_positions
    rotary_dim: int  # dims per head that rotate
    eps: float  # layer_norm_epsilon
    act_fn: str  # activation_function
    tie_word_embeddings: bool  # lm_head shares wte

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads


def read_gptj_config(directory: str | Path) -> GPTJShapes:
    """Parse and check ``directory/config.json`` of a Hugging Face GPT-J model."""
    path = Path(directory) / "config.json"
    raw = read_hf_config(Path(directory))
    if raw.get("model_type") != "gptj":
        raise HeadkitError(f"{path} has model_type={raw.get('model_type')!r}: only 'gptj' checkpoints are supported")

    from transformers import GPTJConfig

    try:
        hf = GPTJConfig(**{k: v for k, v in raw.items() if k != "model_type"})
    except Exception as error:  # transformers validates field types
        raise HeadkitError(f"{path} is not a valid GPT-J config: {error}") from None
    for name in ("n_layer", "n_embd", "n_head", "vocab_size", "n_positions"):
        check_int(f"{path}: {name}", getattr(hf, name))
    if hf.n_embd % hf.n_head:
        raise HeadkitError(f"{path}: n_embd={hf.n_embd} is not divisible by n_head={hf.n_head}")
    d_head = hf.n_embd // hf.n_head
    rotary_dim = check_int(f"{path}: rotary_dim", hf.rotary_dim, low=2, high=d_head)
    if rotary_dim % 2:
        raise HeadkitError(f"{path}: rotary_dim={rotary_dim} must be even (it rotates pairs of dimensions)")
    d_mlp = check_int(f"{path}: n_inner", hf.n_inner) if hf.n_inner is not None else 4 * hf.n_embd
    if hf.activation_function not in ACTIVATIONS:
        raise HeadkitError(
            f"{path}: activation_function={hf.activation_function!r} is not supported: "
            f"allowed {', '.join(sorted(ACTIVATIONS))}"
        )
    return GPTJShapes(
        n_layers=hf.n_layer,
        d_model=hf.n_embd,
        n_heads=hf.n_head,
        d_mlp=d_mlp,
        d_vocab=hf.vocab_size,
        n_ctx=hf.n_positions,
        rotary_dim=rotary_dim,
        eps=float(hf.layer_norm_epsilon),
        act_fn=hf.activation_function,
        tie_word_embeddings=bool(hf.tie_word_embeddings),
    )


def expected_hf_shapes(shapes: GPTJShapes) -> dict[str, tuple[int, ...]]:
    """Every tensor a GPT-J checkpoint must hold, with its shape."""
    m, v, f = shapes.d_model, shapes.d_vocab, shapes.d_mlp
    out: dict[str, tuple[int, ...]] = {"transformer.wte.weight": (v, m)}
    for l in range(shapes.n_layers):
        h = f"transformer.h.{l}."
        out |= {
            h + "ln_1.weight": (m,),
            h + "ln_1.bias": (m,),
            h + "attn.q_proj.weight": (m, m),
            h + "attn.k_proj.weight": (m, m),
            h + "attn.v_proj.weight": (m, m),
            h + "attn.out_proj.weight": (m, m),
            h + "mlp.fc_in.weight": (f, m),
            h + "mlp.fc_in.bias": (f,),
            h + "mlp.fc_out.weight": (m, f),
            h + "mlp.fc_out.bias": (m,),
        }
    out |= {
        "transformer.ln_f.weight": (m,),
        "transformer.ln_f.bias": (m,),
        "lm_head.weight": (v, m),
        "lm_head.bias": (v,),
    }
    return out


def check_weights(weights: WeightFiles, shapes: GPTJShapes, directory: Path) -> dict[str, str]:
    """Check names and shapes against the config; return GPT-J name -> name in the files."""
    aliases = {name: name for name in expected_hf_shapes(shapes)}
    if shapes.tie_word_embeddings and "lm_head.weight" not in weights:
        aliases["lm_head.weight"] = "transformer.wte.weight"
    for name, shape in expected_hf_shapes(shapes).items():
        stored = aliases[name]
        if stored not in weights:
            raise HeadkitError(f"{directory}: the weights lack tensor {stored} (config.json expects it)")
        if weights.shape(stored) != shape:
            raise HeadkitError(
                f"{weights.file(stored)}: tensor {stored} has shape {weights.shape(stored)}, "
                f"config.json implies {shape}"
            )
        weights.check_dtype(stored)
    return aliases


# --- the loader ------------------------------------------------------------------------


def load_gptj(name_or_dir: str | Path, options: LoadOptions | None = None, **fields: Any) -> Model:
    """A pretrained GPT-J as a `TransformerBridge` with headkit's GPT-J attention (module doc).

    ``name_or_dir``: a Hugging Face directory (config.json + safetensors or
    pytorch_model.bin, sharded or not), or a hub id such as ``EleutherAI/gpt-j-6B``
    found in the local HF cache. ``options``: a `LoadOptions`, or its fields as
    keywords (``fields``; not both):
    ``dtype`` float32, float16 or bfloat16 (the weights are read straight into it);
    ``device`` (None: CUDA if available, else the CPU); ``n_devices`` (1 only);
    ``fold_ln``, ``center_writing_weights``, ``center_unembed``,
    ``fold_value_biases`` mean what they mean in TransformerLens's
    ``enable_compatibility_mode`` (and 3.x's ``HookedTransformer.from_pretrained``)
    but default to off (raw weights); all of them leave log-probabilities
    unchanged. A tokenizer is attached when the directory holds one.
    """
    checked = options_of(LoadOptions, options, fields, what="load_gptj")  # all checked before any tensor is read
    return gptj_from_directory(resolve_checkpoint_dir(name_or_dir), checked)


def gptj_from_directory(directory: Path, options: LoadOptions) -> Model:
    """`load_gptj` of a resolved checkpoint directory with checked options."""
    shapes = read_gptj_config(directory)
    weights = open_weight_files(directory)
    check_config_sizes(read_hf_config(directory), directory / "config.json", weights)  # before any per-layer list
    check_weights(weights, shapes, directory)
    return boot(
        # LoadOptions holds the checked torch.dtype and device name (its fields are typed as given)
        directory, dtype=options.dtype, device=options.device, tokenizer=saved_tokenizer(directory),  # pyright: ignore[reportArgumentType]
        processing=options.processing,
    )  # fmt: skip
