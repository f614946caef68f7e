"""Load a pretrained GPT-J checkpoint into a HookedTransformer, offline and lean.

TransformerLens 3.9 can load GPT-J only by name from the Hugging Face hub: it
fetches the config online, materialises the whole Hugging Face model, converts
it into a second full state dict, and processes that one (up to 8.6x the
checkpoint size in memory for a bf16 checkpoint). `load_gptj` takes a local
Hugging Face directory (or the hub name, resolved through the local cache) and
builds the same model tensor by tensor:

1. Read ``config.json`` and translate it into a `HookedTransformerConfig`, the
   way TransformerLens maps GPT-J: rotary embeddings on adjacent pairs of the
   first ``rotary_dim`` dimensions of each head, attention and MLP in parallel
   from one LayerNorm, ``eps = layer_norm_epsilon``, ``d_mlp = n_inner`` (or
   ``4 * n_embd`` when ``n_inner`` is null; TransformerLens always uses the
   latter), no Q/K/V/O biases, a biased unembedding.
2. Open the weight files (`headkit.loading.files`) and check, from the headers
   only, that every tensor GPT-J needs is there with the right shape.
3. Build the HookedTransformer on the ``meta`` device: no memory is allocated.
4. Read one tensor at a time, rearrange it into TransformerLens's layout
   (``q_proj.weight [(n_heads d_head), d_model] -> W_Q [n_heads, d_model,
   d_head]``, ``out_proj.weight [d_model, (n_heads d_head)] -> W_O [n_heads,
   d_head, d_model]``, transposes for the MLP and unembedding), cast it to the
   target dtype and device, and keep it. GPT-J has a single LayerNorm per block
   feeding both attention and MLP; TransformerLens's block reads the MLP input
   through ``ln2``, so ``ln2`` gets a copy of ``ln_1`` (as in
   ``convert_gptj_weights``).
5. Optional weight processing (`headkit.loading.gptj_processing`: ``fold_ln``,
   ``center_writing_weights``, ``center_unembed``, ``fold_value_biases``, same
   meaning and order as TransformerLens's ``load_and_process_state_dict``) is done
   one block at a time, in place, in float32, then cast, so it never holds a
   float32 copy of the model, only of the block (or embedding matrix) being processed.
6. Assign everything with ``load_state_dict(strict=True, assign=True)``, with
   real rotary sin/cos tables computed for the target device and dtype.

Steps 3, 6 and the loop of step 4 are `headkit.loading.build.build_model`, shared
with `headkit.pretrained.load_pretrained`. Peak memory is therefore the model in
the target dtype plus one block or one embedding matrix in flight (see
docs/loading.md for measured numbers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import einops
import torch
from torch import Tensor
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.utilities.activation_functions import SUPPORTED_ACTIVATIONS

from headkit.checks import check_int
from headkit.errors import HeadkitError
from headkit.loading.build import LoadOptions, Processing, Weights, build_model
from headkit.loading.files import (
    WeightFiles,
    check_config_sizes,
    open_weight_files,
    read_hf_config,
    resolve_checkpoint_dir,
    saved_tokenizer,
)
from headkit.loading.gptj_processing import process

GPTJ_HUB_NAME = "EleutherAI/gpt-j-6B"


# --- config.json -> HookedTransformerConfig -----------------------------------------


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
    if hf.activation_function not in SUPPORTED_ACTIVATIONS:
        raise HeadkitError(
            f"{path}: activation_function={hf.activation_function!r} is not supported: "
            f"allowed {', '.join(sorted(SUPPORTED_ACTIVATIONS))}"
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


def hooked_config(shapes: GPTJShapes, options: LoadOptions, *, model_name: str) -> HookedTransformerConfig:
    """TransformerLens's GPT-J config (``loading_from_pretrained.py``) for ``shapes``, loaded as ``options`` ask."""
    return HookedTransformerConfig(
        model_name=model_name,
        original_architecture="GPTJForCausalLM",
        n_layers=shapes.n_layers,
        d_model=shapes.d_model,
        n_heads=shapes.n_heads,
        d_head=shapes.d_head,
        d_mlp=shapes.d_mlp,
        d_vocab=shapes.d_vocab,
        n_ctx=shapes.n_ctx,
        eps=shapes.eps,
        act_fn=shapes.act_fn,
        use_attn_scale=True,
        use_local_attn=False,
        scale_attn_by_inverse_layer_idx=False,
        parallel_attn_mlp=True,
        positional_embedding_type="rotary",
        rotary_dim=shapes.rotary_dim,
        rotary_adjacent_pairs=True,
        normalization_type="LNPre" if options.fold_ln else "LN",
        default_prepend_bos=True,
        init_weights=False,
        dtype=options.dtype,
        device=options.device,
        n_devices=options.n_devices,
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


# --- HF tensors -> TransformerLens tensors, one component at a time ------------------


def _embed_weights(read: Callable[[str], Tensor], shapes: GPTJShapes) -> Weights:
    return {"embed.W_E": read("transformer.wte.weight")}  # [d_vocab, d_model]


def _block_weights(read: Callable[[str], Tensor], shapes: GPTJShapes, layer: int) -> Weights:
    """Block ``layer`` in TransformerLens names (without the ``blocks.{layer}.`` prefix)."""
    h = f"transformer.h.{layer}."
    n, d = shapes.n_heads, shapes.d_head
    out: Weights = {"ln1.w": read(h + "ln_1.weight"), "ln1.b": read(h + "ln_1.bias")}
    out["ln2.w"], out["ln2.b"] = out["ln1.w"].clone(), out["ln1.b"].clone()  # one LN feeds both
    for x in "QKV":
        # [(n_heads d_head), d_model] -> [n_heads, d_model, d_head]
        w = read(h + f"attn.{x.lower()}_proj.weight")
        out[f"attn.W_{x}"] = einops.rearrange(w, "(n h) m -> n m h", n=n)
        out[f"attn.b_{x}"] = torch.zeros(n, d, dtype=w.dtype)
    # [d_model, (n_heads d_head)] -> [n_heads, d_head, d_model]
    out["attn.W_O"] = einops.rearrange(read(h + "attn.out_proj.weight"), "m (n h) -> n h m", n=n)
    out["attn.b_O"] = torch.zeros(shapes.d_model, dtype=out["attn.W_O"].dtype)
    out["mlp.W_in"] = read(h + "mlp.fc_in.weight").T  # [d_mlp, d_model] -> [d_model, d_mlp]
    out["mlp.b_in"] = read(h + "mlp.fc_in.bias")
    out["mlp.W_out"] = read(h + "mlp.fc_out.weight").T  # [d_model, d_mlp] -> [d_mlp, d_model]
    out["mlp.b_out"] = read(h + "mlp.fc_out.bias")
    return out


def _unembed_weights(read: Callable[[str], Tensor], shapes: GPTJShapes) -> Weights:
    return {
        "ln_final.w": read("transformer.ln_f.weight"),
        "ln_final.b": read("transformer.ln_f.bias"),
        "unembed.W_U": read("lm_head.weight").T,  # [d_vocab, d_model] -> [d_model, d_vocab]
        "unembed.b_U": read("lm_head.bias"),
    }


def converted_parts(read: Callable[[str], Tensor], shapes: GPTJShapes, processing: Processing) -> Iterator[Weights]:
    """Embedding, each block, unembedding: read, converted and processed, in full TransformerLens names.

    Each component is read only when asked for, and the generator keeps nothing
    of it between yields (`build_model` releases it before asking for the next).
    """
    yield _named(process(_embed_weights(read, shapes), "embed", processing), "")
    for layer in range(shapes.n_layers):
        yield _named(process(_block_weights(read, shapes, layer), "block", processing), f"blocks.{layer}.")
    yield _named(process(_unembed_weights(read, shapes), "unembed", processing), "")


def _named(part: Weights, prefix: str) -> Weights:
    return {prefix + name: tensor for name, tensor in part.items()}


# --- the loader ------------------------------------------------------------------------


def load_gptj(name_or_dir: str | Path, **options: Any) -> HookedTransformer:
    """A pretrained GPT-J as a HookedTransformer, built tensor by tensor (see module doc).

    ``name_or_dir``: a Hugging Face directory (config.json + safetensors or
    pytorch_model.bin, sharded or not), or a hub id such as ``EleutherAI/gpt-j-6B``
    found in the local HF cache. ``options`` are `LoadOptions`'s fields:
    ``dtype`` float32, float16 or bfloat16 (nothing is ever held in float32 when
    a half dtype is asked for, except one block while it is processed);
    ``device`` (None = TransformerLens's default, CUDA if available);
    ``n_devices > 1`` is passed to TransformerLens, whose 3.9 release then puts
    the whole model on the GPU with the most free memory (it no longer splits
    layers), and needs CUDA; ``fold_ln``, ``center_writing_weights``,
    ``center_unembed``, ``fold_value_biases`` mean what they mean in
    ``HookedTransformer.from_pretrained`` but default to off (raw weights); all
    of them leave log-probabilities unchanged. A tokenizer is attached when the
    directory holds one.
    """
    checked = LoadOptions.of("load_gptj", options)  # every argument and file is checked before any tensor is read
    return gptj_from_directory(resolve_checkpoint_dir(name_or_dir), checked, model_name=Path(str(name_or_dir)).name)


def gptj_from_directory(directory: Path, options: LoadOptions, *, model_name: str) -> HookedTransformer:
    """`load_gptj` of a resolved checkpoint directory with checked options."""
    shapes = read_gptj_config(directory)
    weights = open_weight_files(directory)
    check_config_sizes(read_hf_config(directory), directory / "config.json", weights)  # before any per-layer list
    aliases = check_weights(weights, shapes, directory)
    tokenizer = saved_tokenizer(directory)
    cfg = hooked_config(shapes, options, model_name=model_name)

    def read(name: str) -> Tensor:  # a fresh copy, processed in place in float32 only if asked
        return weights.read(aliases[name]).to(options.work_dtype)

    return build_model(
        cfg, lambda expected: converted_parts(read, shapes, options.processing), options=options,
        layout=Tensor.contiguous, tokenizer=tokenizer, n_parts=shapes.n_layers + 2, what="load_gptj",
        desc="loading GPT-J",
    )  # fmt: skip
