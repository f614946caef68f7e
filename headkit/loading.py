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
2. Open the weight files (``model.safetensors``, sharded safetensors with an
   index, or ``pytorch_model.bin`` [sharded]) and check, from the headers only,
   that every tensor GPT-J needs is there with the right shape.
3. Build the HookedTransformer on the ``meta`` device: no memory is allocated.
4. Read one tensor at a time, rearrange it into TransformerLens's layout
   (``q_proj.weight [(n_heads d_head), d_model] -> W_Q [n_heads, d_model,
   d_head]``, ``out_proj.weight [d_model, (n_heads d_head)] -> W_O [n_heads,
   d_head, d_model]``, transposes for the MLP and unembedding), cast it to the
   target dtype and device, and keep it. GPT-J has a single LayerNorm per block
   feeding both attention and MLP; TransformerLens's block reads the MLP input
   through ``ln2``, so ``ln2`` gets a copy of ``ln_1`` (as in
   ``convert_gptj_weights``).
5. Optional weight processing (``fold_ln``, ``center_writing_weights``,
   ``center_unembed``, ``fold_value_biases``, same meaning and order as
   TransformerLens's ``load_and_process_state_dict``) is done one block at a
   time, in place, in float32, then cast, so it never holds a float32 copy of
   the model, only of the block (or embedding matrix) being processed.
6. Assign everything with ``load_state_dict(strict=True, assign=True)``, with
   real rotary sin/cos tables computed for the target device and dtype.

Peak memory is therefore the model in the target dtype plus one block or one
embedding matrix in flight (see docs/loading.md for measured numbers).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import einops
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.utilities.activation_functions import SUPPORTED_ACTIVATIONS

from headkit.errors import HeadkitError
from headkit.models import resolve_dtype

log = logging.getLogger(__name__)

GPTJ_HUB_NAME = "EleutherAI/gpt-j-6B"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_PATTERNS = ["config.json", "*.safetensors", "*.json", "*.txt", "*.model"]
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")


# --- 1. where the checkpoint lives -------------------------------------------------


def resolve_checkpoint_dir(name_or_dir: str | Path) -> Path:
    """A local directory as is, or a hub repo id resolved through the local HF cache.

    A repo id that is not cached is downloaded only when the hub is reachable and
    ``HF_HUB_OFFLINE`` is not set; otherwise a HeadkitError says it is missing.
    """
    path = Path(name_or_dir).expanduser()
    if path.exists():
        if not path.is_dir():
            raise HeadkitError(f"{path} is a file: pass a Hugging Face model directory")
        return path
    text = str(name_or_dir)
    if not _HUB_ID.match(text) or text.startswith((".", "~")):
        raise HeadkitError(f"model directory {path} does not exist")
    return _from_hub_cache(text)


def _from_hub_cache(repo_id: str) -> Path:
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as cached_error:  # LocalEntryNotFoundError and friends
        if constants.HF_HUB_OFFLINE:
            raise HeadkitError(
                f"{repo_id!r} is neither a local directory nor in the Hugging Face cache "
                f"({constants.HF_HUB_CACHE}), and HF_HUB_OFFLINE is set: download it first "
                "or pass a local directory"
            ) from cached_error
    log.info("downloading %s from the Hugging Face hub", repo_id)
    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS))
    except Exception as error:
        raise HeadkitError(
            f"{repo_id!r} is neither a local directory nor in the Hugging Face cache, "
            f"and the hub could not provide it: {type(error).__name__}: {error}"
        ) from error


# --- 2. config.json -> HookedTransformerConfig -------------------------------------


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
    if not path.is_file():
        raise HeadkitError(f"{path} not found: {directory} is not a Hugging Face model directory")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise HeadkitError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(raw, dict) or raw.get("model_type") != "gptj":
        found = raw.get("model_type") if isinstance(raw, dict) else None
        raise HeadkitError(f"{path} has model_type={found!r}: only 'gptj' checkpoints are supported")

    from transformers import GPTJConfig

    try:
        hf = GPTJConfig(**{k: v for k, v in raw.items() if k != "model_type"})
    except Exception as error:  # transformers validates field types
        raise HeadkitError(f"{path} is not a valid GPT-J config: {error}") from None
    for name in ("n_layer", "n_embd", "n_head", "vocab_size", "n_positions"):
        value = getattr(hf, name)
        if not isinstance(value, int) or value < 1:
            raise HeadkitError(f"{path}: {name}={value!r} must be a positive integer")
    if hf.n_embd % hf.n_head:
        raise HeadkitError(f"{path}: n_embd={hf.n_embd} is not divisible by n_head={hf.n_head}")
    d_head = hf.n_embd // hf.n_head
    rotary_dim = hf.rotary_dim
    if not (isinstance(rotary_dim, int) and 2 <= rotary_dim <= d_head and rotary_dim % 2 == 0):
        raise HeadkitError(f"{path}: rotary_dim={rotary_dim!r} must be even and in 2..{d_head}")
    d_mlp = hf.n_inner if hf.n_inner is not None else 4 * hf.n_embd
    if not isinstance(d_mlp, int) or d_mlp < 1:
        raise HeadkitError(f"{path}: n_inner={hf.n_inner!r} must be a positive integer or null")
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


def hooked_config(
    shapes: GPTJShapes,
    *,
    dtype: torch.dtype,
    device: str | None,
    n_devices: int,
    fold_ln: bool,
    model_name: str,
) -> HookedTransformerConfig:
    """TransformerLens's GPT-J config (``loading_from_pretrained.py``) for ``shapes``."""
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
        normalization_type="LNPre" if fold_ln else "LN",
        default_prepend_bos=True,
        init_weights=False,
        dtype=dtype,
        device=device,
        n_devices=n_devices,
    )


# --- 3. weight files, read one tensor at a time -------------------------------------


class WeightFiles:
    """Hugging Face tensor name -> the file that holds it; reads one tensor at a time.

    Built from the file headers only, so a missing or truncated file is found
    before any tensor is read. ``shape(name)`` is free; ``read(name)`` loads that
    tensor alone, in its stored dtype.
    """

    def __init__(
        self,
        location: dict[str, Path],
        shapes: dict[str, tuple[int, ...]],
        reader: Callable[[Path, str], Tensor],
    ) -> None:
        self._location = location
        self._shapes = shapes
        self._reader = reader

    def __contains__(self, name: str) -> bool:
        return name in self._location

    def names(self) -> list[str]:
        return list(self._location)

    def file(self, name: str) -> Path:
        return self._location[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def read(self, name: str) -> Tensor:
        """Tensor ``name`` in its stored dtype; refused when it holds NaN or infinity."""
        path = self._location[name]
        try:
            tensor = self._reader(path, name)
        except Exception as error:
            raise HeadkitError(f"{path}: cannot read tensor {name}: {error}") from None
        if tensor.is_floating_point() and not _all_finite(tensor):
            bad = sum(int((~torch.isfinite(c)).sum()) for c in tensor.reshape(-1).split(_FINITE_CHUNK))
            raise HeadkitError(
                f"{path}: tensor {name} holds {bad} non-finite value(s) (NaN or infinity): "
                "the checkpoint is broken"
            )
        return tensor


_FINITE_CHUNK = 1 << 22  # elements checked at once: a few MiB of temporaries, whatever the tensor's size


def _all_finite(tensor: Tensor) -> bool:
    """No NaN or infinity in ``tensor``, checked in chunks (a whole-tensor isfinite costs ~2x its size)."""
    return all(bool(torch.isfinite(c).all()) for c in tensor.reshape(-1).split(_FINITE_CHUNK))


def _safetensors_files(files: list[Path]) -> WeightFiles:
    from safetensors import safe_open

    location: dict[str, Path] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    location[name] = path
                    shapes[name] = tuple(f.get_slice(name).get_shape())
        except Exception as error:
            raise HeadkitError(f"{path} is not a readable safetensors file: {error}") from None

    return WeightFiles(location, shapes, _read_safetensor)


# safetensors dtype names -> torch dtypes (the format's header spells them so)
_SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip


def _read_safetensor(path: Path, name: str) -> Tensor:
    """Tensor ``name`` of a safetensors file, read with ``readinto`` into memory the model owns.

    Not through a memory map: the mapped pages of a tensor count in the process's
    resident memory next to its copy, a transient second copy of the largest
    tensor. Reading straight into a fresh tensor keeps the load at the model's
    size (the file rewritten later cannot change the model either). The header was
    validated by safetensors when the files were opened.
    """
    with open(path, "rb") as f:
        header_size = int.from_bytes(f.read(8), "little")
        entry = json.loads(f.read(header_size))[name]
        begin, end = entry["data_offsets"]
        out = torch.empty(entry["shape"], dtype=_SAFETENSORS_DTYPES[entry["dtype"]])
        if end - begin != out.numel() * out.element_size():
            raise ValueError(f"{end - begin} bytes stored for {out.numel()} elements of {entry['dtype']}")
        f.seek(8 + header_size + begin)
        view = memoryview(out.reshape(-1).view(torch.uint8).numpy()) if out.numel() else memoryview(b"")
        if f.readinto(view) != len(view):
            raise ValueError("the file ends inside the tensor (truncated)")
    return out


def _torch_files(files: list[Path]) -> WeightFiles:
    location: dict[str, Path] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    loaded: dict[Path, Mapping[str, Tensor]] = {}
    for path in files:
        try:  # memory-mapped: tensors are paged in when read
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except Exception as error:
            raise HeadkitError(f"{path} is not a readable PyTorch weights file: {error}") from None
        if not isinstance(state, Mapping):
            raise HeadkitError(f"{path} does not hold a state dict (found {type(state).__name__})")
        loaded[path] = state
        for name, tensor in state.items():
            location[name] = path
            shapes[name] = tuple(tensor.shape)

    def read(path: Path, name: str) -> Tensor:
        return loaded[path][name].clone()  # an owned copy, not a view of the mapped file

    return WeightFiles(location, shapes, read)


def _sharded(index_name: str, opener: Callable[[list[Path]], WeightFiles]):
    def open_index(directory: Path) -> WeightFiles:
        index = directory / index_name
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as error:
            raise HeadkitError(f"{index} is not a valid shard index: {error!r}") from None
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise HeadkitError(f"{index} is not a valid shard index: weight_map must map names to files")
        outside = sorted({f for f in weight_map.values() if Path(f).is_absolute() or ".." in Path(f).parts})
        if outside:
            raise HeadkitError(
                f"{index} names shard files outside {directory}: {', '.join(outside)}: "
                "shards must be paths inside the model directory"
            )
        shards = sorted({directory / f for f in weight_map.values()})
        missing = [str(p) for p in shards if not p.is_file()]
        if missing:
            raise HeadkitError(f"{index} names shard files that are missing: {', '.join(missing)}")
        return opener(shards)

    return open_index


# file that marks a format -> how to open that format, in order of preference
WEIGHT_FORMATS: dict[str, Callable[[Path], WeightFiles]] = {
    "model.safetensors": lambda d: _safetensors_files([d / "model.safetensors"]),
    "model.safetensors.index.json": _sharded("model.safetensors.index.json", _safetensors_files),
    "pytorch_model.bin": lambda d: _torch_files([d / "pytorch_model.bin"]),
    "pytorch_model.bin.index.json": _sharded("pytorch_model.bin.index.json", _torch_files),
}


def open_weight_files(directory: str | Path) -> WeightFiles:
    """The weights of a Hugging Face directory, in the first format found."""
    directory = Path(directory)
    for marker, opener in WEIGHT_FORMATS.items():
        if (directory / marker).is_file():
            return opener(directory)
    raise HeadkitError(f"{directory} has no weights: expected one of {', '.join(WEIGHT_FORMATS)}")


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
    return aliases


# --- 4. HF tensors -> TransformerLens tensors, one component at a time --------------

Weights = dict[str, Tensor]


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


# --- 5. optional weight processing (TransformerLens's order and meaning) ------------


@dataclass(frozen=True)
class Processing:
    """Which of TransformerLens's weight-processing steps to apply."""

    fold_ln: bool = False
    center_writing_weights: bool = False
    center_unembed: bool = False
    fold_value_biases: bool = False

    @property
    def needed(self) -> bool:
        return self.fold_ln or self.center_writing_weights or self.center_unembed or self.fold_value_biases


def _fold_ln_block(w: Weights, opts: Processing) -> None:
    """LN scale and bias into Q/K/V and W_in; inputs are then only centred and normalised."""
    ln_w, ln_b = w.pop("ln1.w"), w.pop("ln1.b")
    del w["ln2.w"], w["ln2.b"]  # the tied copy of ln1
    for x in "QKV":
        W: Float[Tensor, "n_heads d_model d_head"] = w[f"attn.W_{x}"]
        w[f"attn.b_{x}"].add_(einops.einsum(W, ln_b, "n m h, m -> n h"))
        W.mul_(ln_w[None, :, None])
        W.sub_(W.mean(dim=1, keepdim=True))  # LNPre centres its input
    W_in: Float[Tensor, "d_model d_mlp"] = w["mlp.W_in"]
    w["mlp.b_in"].add_(ln_b @ W_in)
    W_in.mul_(ln_w[:, None])
    W_in.sub_(W_in.mean(dim=0, keepdim=True))


def _fold_ln_final(w: Weights, opts: Processing) -> None:
    ln_w, ln_b = w.pop("ln_final.w"), w.pop("ln_final.b")
    W_U: Float[Tensor, "d_model d_vocab"] = w["unembed.W_U"]
    w["unembed.b_U"].add_(ln_b @ W_U)
    W_U.mul_(ln_w[:, None])
    W_U.sub_(W_U.mean(dim=0, keepdim=True))


def _center_embed(w: Weights, opts: Processing) -> None:
    """What is written to the residual stream loses its mean over d_model (LN removes it anyway)."""
    w["embed.W_E"].sub_(w["embed.W_E"].mean(dim=-1, keepdim=True))


def _center_block(w: Weights, opts: Processing) -> None:
    for name in ("attn.W_O", "attn.b_O", "mlp.W_out", "mlp.b_out"):
        w[name].sub_(w[name].mean(dim=-1, keepdim=True))


def _center_unembed(w: Weights, opts: Processing) -> None:
    """Softmax ignores a constant added to every logit."""
    w["unembed.W_U"].sub_(w["unembed.W_U"].mean(dim=-1, keepdim=True))
    w["unembed.b_U"].sub_(w["unembed.b_U"].mean())


def _fold_value_biases(w: Weights, opts: Processing) -> None:
    """Attention rows sum to one, so b_V's effect is the constant sum_h b_V[h] @ W_O[h]."""
    b_O: Float[Tensor, " d_model"] = w["attn.b_O"]
    b_O.add_(einops.einsum(w["attn.b_V"], w["attn.W_O"], "n h, n h m -> m"))
    if opts.center_writing_weights:
        b_O.sub_(b_O.mean())
    w["attn.b_V"].zero_()


# step -> component kind -> function, applied in this order (TransformerLens's order)
PROCESSING_STEPS: dict[str, dict[str, Callable[[Weights, Processing], None]]] = {
    "fold_ln": {"block": _fold_ln_block, "unembed": _fold_ln_final},
    "center_writing_weights": {"embed": _center_embed, "block": _center_block},
    "center_unembed": {"unembed": _center_unembed},
    "fold_value_biases": {"block": _fold_value_biases},
}


def _process(w: Weights, kind: str, opts: Processing) -> None:
    for step, by_kind in PROCESSING_STEPS.items():
        if getattr(opts, step) and kind in by_kind:
            by_kind[kind](w, opts)


# --- 6. putting it together ----------------------------------------------------------


def _components(
    read: Callable[[str], Tensor], shapes: GPTJShapes
) -> Iterator[tuple[str, str, Callable[[], Weights]]]:
    """(kind, name prefix, loader) for embed, each block, unembed."""
    yield "embed", "", lambda: _embed_weights(read, shapes)
    for layer in range(shapes.n_layers):
        yield "block", f"blocks.{layer}.", lambda layer=layer: _block_weights(read, shapes, layer)
    yield "unembed", "", lambda: _unembed_weights(read, shapes)


def _buffers(model: HookedTransformer, device: torch.device) -> Weights:
    """Real values of the attention buffers, which the meta-device build left empty."""
    cfg = model.cfg
    out: Weights = {}
    for layer, block in enumerate(model.blocks):
        attn = block.attn
        prefix = f"blocks.{layer}.attn."
        if cfg.positional_embedding_type == "rotary":  # as AbstractAttention.__init__ computes them
            size = min(cfg.n_ctx, attn.ROTARY_INITIAL_CACHE_SIZE)
            sin, cos = attn.calculate_sin_cos_rotary(
                cfg.rotary_dim, size, base=attn._rotary_base(), dtype=cfg.dtype
            )
            out[prefix + "rotary_sin"] = sin.to(device)
            out[prefix + "rotary_cos"] = cos.to(device)
        out[prefix + "mask"] = torch.empty((0, 0), dtype=torch.bool, device=device)
        out[prefix + "IGNORE"] = torch.tensor(-torch.inf, device=device)
    return out


def meta_model(cfg: HookedTransformerConfig) -> tuple[HookedTransformer, torch.device]:
    """An empty HookedTransformer on the meta device (no memory), and the device its tensors go to."""
    with torch.device("meta"):
        model = HookedTransformer(cfg, move_to_device=False)
    from transformer_lens.utilities.multi_gpu import get_best_available_device

    return model, get_best_available_device(model.cfg)


def state_dict_mismatch(model: torch.nn.Module, state: Mapping[str, Tensor]) -> str | None:
    """One line naming the first disagreement between ``model``'s tensors and ``state``, or None.

    Covers what ``load_state_dict(strict=True)`` reports in many lines: a
    missing tensor, an unexpected one, a shape that differs (expected vs found).
    """
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in state:
            more = sum(n not in state for n in expected) - 1
            return f"tensor {name} is missing" + (f" ({more} more missing)" if more else "")
        if tuple(state[name].shape) != tuple(tensor.shape):
            more = sum(n in state and tuple(state[n].shape) != tuple(t.shape) for n, t in expected.items()) - 1
            return (
                f"tensor {name}: expected shape {tuple(tensor.shape)}, found {tuple(state[name].shape)}"
                + (f" ({more} more mismatching)" if more else "")
            )
    extra = [n for n in state if n not in expected]
    if extra:
        return f"unexpected tensor {extra[0]}" + (f" ({len(extra) - 1} more unexpected)" if len(extra) > 1 else "")
    return None


def assign_state(model: HookedTransformer, state: Mapping[str, Tensor], *, what: str) -> None:
    """Swap ``model``'s meta tensors for ``state`` (strict); a mismatch is one line, not a dump."""
    problem = state_dict_mismatch(model, state)
    if problem is not None:  # the weights and TransformerLens's model disagree
        raise HeadkitError(f"{what}: the converted weights do not fit the model: {problem}")
    model.load_state_dict(state, strict=True, assign=True)
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:  # a TransformerLens change this loader does not know about
        raise RuntimeError(f"{what} left tensors on the meta device: {', '.join(leftover)}")


def _target_device(device: str | torch.device | None, n_devices: int) -> str | None:
    if not isinstance(n_devices, int) or n_devices < 1:
        raise HeadkitError(f"n_devices={n_devices!r} must be a positive integer")
    if device is not None:
        try:
            torch.device(device)
        except (RuntimeError, TypeError):
            raise HeadkitError(f"device={device!r} is not a torch device") from None
    if n_devices > 1:
        kind = torch.device(device).type if device is not None else "cuda"
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if kind != "cuda" or available < n_devices:
            raise HeadkitError(
                f"n_devices={n_devices} needs a CUDA device and {n_devices} GPUs "
                f"(found device={device!r}, {available} GPUs): allowed n_devices=1 here"
            )
    return None if device is None else str(device)


def _tokenizer(directory: Path) -> Any | None:
    if not any((directory / name).is_file() for name in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory), add_bos_token=True)
    except Exception as error:
        raise HeadkitError(f"{directory}: the tokenizer files cannot be loaded: {error}") from None


def load_gptj(
    name_or_dir: str | Path,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = None,
    n_devices: int = 1,
    fold_ln: bool = False,
    center_writing_weights: bool = False,
    center_unembed: bool = False,
    fold_value_biases: bool = False,
) -> HookedTransformer:
    """A pretrained GPT-J as a HookedTransformer, built tensor by tensor (see module doc).

    ``name_or_dir``: a Hugging Face directory (config.json + safetensors or
    pytorch_model.bin, sharded or not), or a hub id such as ``EleutherAI/gpt-j-6B``
    found in the local HF cache. ``dtype``: float32, float16 or bfloat16; nothing
    is ever held in float32 when a half dtype is asked for, except one block
    while it is processed. ``device``: None = TransformerLens's default (CUDA if
    available). ``n_devices > 1`` is passed to TransformerLens, whose 3.9 release
    then puts the whole model on the GPU with the most free memory (it no longer
    splits layers); it needs CUDA. The processing flags mean what they mean in
    ``HookedTransformer.from_pretrained`` but default to off (raw weights); all
    of them leave log-probabilities unchanged. A tokenizer is attached when the
    directory holds one.
    """
    # 1. Check every argument and file before any tensor is read.
    torch_dtype = resolve_dtype(dtype)
    device_name = _target_device(device, n_devices)
    opts = Processing(
        fold_ln=bool(fold_ln),
        center_writing_weights=bool(center_writing_weights),
        center_unembed=bool(center_unembed),
        fold_value_biases=bool(fold_value_biases),
    )
    directory = resolve_checkpoint_dir(name_or_dir)
    shapes = read_gptj_config(directory)
    weights = open_weight_files(directory)
    aliases = check_weights(weights, shapes, directory)
    tokenizer = _tokenizer(directory)
    cfg = hooked_config(
        shapes,
        dtype=torch_dtype,
        device=device_name,
        n_devices=n_devices,
        fold_ln=opts.fold_ln,
        model_name=Path(str(name_or_dir)).name,
    )

    # 2. An empty model: parameters on the meta device take no memory.
    model, target = meta_model(cfg)

    # 3. Convert one component at a time; process it (in place, on the fresh
    # copies WeightFiles.read returns) in float32 only if asked.
    work_dtype = torch.float32 if opts.needed else torch_dtype

    def read(name: str) -> Tensor:
        return weights.read(aliases[name]).to(work_dtype)

    state: Weights = {}
    parts = _components(read, shapes)
    for kind, prefix, load in tqdm(parts, total=shapes.n_layers + 2, desc="loading GPT-J", leave=False, disable=None):
        part = load()
        _process(part, kind, opts)
        for name, tensor in part.items():
            state[prefix + name] = tensor.to(device=target, dtype=torch_dtype).contiguous()
        del part
        log.debug("converted %s%s", prefix, kind)
    state |= _buffers(model, target)

    # 4. Swap the meta tensors for the real ones; strict, so nothing is left empty.
    assign_state(model, state, what="load_gptj")
    del state
    if tokenizer is not None:
        model.set_tokenizer(tokenizer)
    model.eval()
    return model
