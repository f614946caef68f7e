"""A Hugging Face model directory, read without building any model: where it lives, its
config.json, its weight files (one tensor at a time) and its tokenizer.

Both loaders (`headkit.loading.gptj.load_gptj`, `headkit.loading.pretrained.load_pretrained`)
and `headkit.bridge.build.boot` find and check a checkpoint through this module before
transformers' ``from_pretrained`` reads its weights:

- `resolve_checkpoint_dir`: a local directory, or a hub repo id found in the local
  Hugging Face cache (downloaded only when the hub is reachable and
  ``HF_HUB_OFFLINE`` is unset);
- `read_hf_config`: ``config.json`` as a dict, with one clear error when it is
  missing or broken, when a size in it is not a positive integer, or when it (or
  ``tokenizer_config.json``) carries an ``auto_map``: code shipped with the model,
  which headkit never runs (`refuse_remote_code`; every transformers call here
  also passes ``trust_remote_code=False``, so nothing is ever asked on stdin);
- `open_weight_files`: ``model.safetensors``, sharded safetensors with an index, or
  ``pytorch_model.bin`` (sharded or not), opened from their headers only, so that a
  missing or truncated file is found before any tensor is read (a device, FIFO or
  directory in a weight file's place is refused as not a regular file), with each
  tensor's shape and dtype (non-float dtypes are refused from the header);
  `WeightFiles.read` reads one tensor into memory of its own, refusing NaN and
  infinity (the loaders themselves leave the reading to ``from_pretrained``);
- `check_sizes` / `check_config_sizes`: the sizes a config declares, bounded by the
  weight files' headers (its layer count by the blocks they hold, every other size
  by their largest dimension) before anything is built from them;
- `saved_tokenizer`: the tokenizer saved beside the weights, if any.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from headkit.checks import check_int, some_names
from headkit.errors import HeadkitError
from headkit.io import read_json
from headkit.memory import batches

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_PATTERNS = ["config.json", "*.safetensors", "*.json", "*.txt", "*.model"]
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")  # any one means a saved tokenizer


# --- where the checkpoint lives ----------------------------------------------------


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


# --- config.json and the tokenizer ----------------------------------------------------


def read_hf_config(directory: Path) -> dict[str, Any]:
    """``directory/config.json`` as a dict, with a clear error when it is missing or broken."""
    path = directory / "config.json"
    raw = read_json(path, missing=f"{directory} is not a Hugging Face model directory")
    if not isinstance(raw, dict):
        raise HeadkitError(f"{path} does not hold a JSON object")
    _refuse_auto_map(raw, path)
    config_sizes(raw, path)
    return raw


# The files through which transformers would import Python code from a model directory.
CODE_CONFIGS = ("config.json", "tokenizer_config.json")


def refuse_remote_code(directory: Path) -> None:
    """Refuse a directory whose ``config.json`` or ``tokenizer_config.json`` has an ``auto_map``.

    An ``auto_map`` names Python classes in the directory for transformers to
    import (``trust_remote_code``): code shipped with a model file. headkit
    never runs it, and refuses here rather than let transformers ask on stdin.
    """
    for name in CODE_CONFIGS:
        path = directory / name
        if path.is_file():
            raw = read_json(path, missing="")
            if isinstance(raw, dict):
                _refuse_auto_map(raw, path)


def _refuse_auto_map(raw: Mapping[str, Any], path: Path) -> None:
    if "auto_map" in raw:
        named = raw["auto_map"]
        what = ", ".join(map(str, named)) if isinstance(named, dict) else repr(named)
        raise HeadkitError(
            f"{path} has an auto_map ({what}): it asks to run Python code from the model directory, "
            "which headkit never does; remove auto_map to load the model with transformers' own code"
        )


def saved_tokenizer(directory: Path) -> Any | None:
    """The tokenizer saved in ``directory`` (BOS prepended, as TransformerLens does), or None when there is none."""
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        return None
    refuse_remote_code(directory)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            str(directory), add_bos_token=True, trust_remote_code=False, local_files_only=True
        )
    except Exception as error:
        raise HeadkitError(f"{directory}: the tokenizer files cannot be loaded: {error}") from None


# --- sizes a config declares, bounded by the weight files -----------------------------

# config.json fields (every supported architecture's spelling) that count decoder blocks
LAYER_FIELDS = ("n_layer", "n_layers", "num_layers", "num_hidden_layers")
# config.json fields that size a tensor (so no larger than some dimension of a stored one)
SIZE_FIELDS = (
    "n_embd", "hidden_size", "d_model", "n_head", "num_heads", "num_attention_heads", "num_key_value_heads",
    "n_inner", "intermediate_size", "ffn_dim", "vocab_size", "head_dim", "rotary_dim", "word_embed_proj_dim",
)  # fmt: skip
# sizes without a tensor of their own (rotary tables are computed): only checked positive
POSITION_FIELDS = ("n_positions", "n_ctx", "max_position_embeddings")


def config_sizes(raw: Mapping[str, Any], path: Path) -> tuple[tuple[str, int] | None, dict[str, int]]:
    """The layer count (field, value) and the tensor sizes ``raw`` declares, each checked a positive integer.

    A field set to null is left out (transformers then uses its default).
    """
    for name in (*LAYER_FIELDS, *SIZE_FIELDS, *POSITION_FIELDS):
        if raw.get(name) is not None:
            check_int(f"{path}: {name}", raw[name])
    layers = next(((n, raw[n]) for n in LAYER_FIELDS if raw.get(n) is not None), None)
    return layers, {n: raw[n] for n in SIZE_FIELDS if raw.get(n) is not None}


def check_sizes(
    path: Path, weights: WeightFiles, *, layers: tuple[str, int] | None, sizes: Mapping[str, int]
) -> None:
    """Refuse sizes the weight files cannot hold, from their headers, before anything is built.

    ``layers`` (field, value): no more blocks than the files hold (tensor names
    numbered ``...{i}...``); every one of ``sizes``: no larger than the largest
    dimension of a stored tensor. A config of ``n_layer: 10**9`` is refused here,
    not after a model of a billion blocks was half built. ``path`` names the file
    that declared the sizes.
    """
    files = weights.described()
    if layers is not None and layers[1] > weights.block_count():
        raise HeadkitError(
            f"{path}: {layers[0]}={layers[1]} but the weight files ({files}) hold {weights.block_count()} "
            "blocks: the config does not describe these weights"
        )
    largest = weights.largest_dim()
    for name, value in sizes.items():
        if value > largest:
            raise HeadkitError(
                f"{path}: {name}={value} but no tensor in the weight files ({files}) has a dimension that large "
                f"(largest {largest}): the config does not describe these weights"
            )


def check_config_sizes(raw: Mapping[str, Any], path: Path, weights: WeightFiles) -> None:
    """`check_sizes` of the sizes a Hugging Face ``config.json`` (read as ``raw``) declares.

    GPT-Neo's ``attention_types`` (``[[kinds, repeats], ...]``), which transformers
    expands into one entry per layer, counts as a layer count too.
    """
    layers, sizes = config_sizes(raw, path)
    check_sizes(path, weights, layers=layers, sizes=sizes)
    types = raw.get("attention_types")
    if isinstance(types, list):
        repeats = [t[1] for t in types if isinstance(t, list) and len(t) == 2 and isinstance(t[1], int)]
        kinds = [t[0] for t in types if isinstance(t, list) and len(t) == 2 and isinstance(t[0], list)]
        expanded = sum(abs(r) * len(k) for r, k in zip(repeats, kinds))
        check_sizes(path, weights, layers=("attention_types (expanded)", expanded), sizes={})


# --- weight files, read one tensor at a time ----------------------------------------


class WeightFiles:
    """Hugging Face tensor name -> the file that holds it; reads one tensor at a time.

    Built from the file headers only, so a missing or truncated file is found
    before any tensor is read. ``shape(name)`` and ``dtype(name)`` are free;
    ``read(name)`` loads that tensor alone, in its stored dtype.
    """

    def __init__(
        self,
        location: dict[str, Path],
        shapes: dict[str, tuple[int, ...]],
        reader: Callable[[Path, str], Tensor],
        dtypes: dict[str, str] | None = None,
    ) -> None:
        self._location = location
        self._shapes = shapes
        self._reader = reader
        self._dtypes = dtypes or {}

    def __contains__(self, name: str) -> bool:
        return name in self._location

    def names(self) -> list[str]:
        return list(self._location)

    def file(self, name: str) -> Path:
        return self._location[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def dtype(self, name: str) -> str:
        """The stored dtype as the file spells it (``F32``, ``I32``; ``float32`` for PyTorch files)."""
        return self._dtypes.get(name, "F32")

    def described(self) -> str:
        """The weight files by name, for messages."""
        names = sorted({p.name for p in self._location.values()})
        return some_names(names) if names else "none"

    def block_count(self) -> int:
        """How many numbered blocks the tensor names hold (``model.layers.{i}.``, ``transformer.h.{i}.``).

        The distinct numbers of the first numeric part of each name, under the prefix
        that has the most of them.
        """
        numbers: dict[str, set[int]] = {}
        for name in self._location:
            parts = name.split(".")
            at = next((i for i, part in enumerate(parts) if part.isascii() and part.isdigit()), None)
            if at is not None:
                numbers.setdefault(".".join(parts[:at]), set()).add(int(parts[at]))
        return max(map(len, numbers.values()), default=0)

    def largest_dim(self) -> int:
        """The largest dimension of any stored tensor (0 when none has one)."""
        return max((d for shape in self._shapes.values() for d in shape), default=0)

    def check_dtype(self, name: str) -> None:
        """Refuse tensor ``name`` unless it is stored as floating point (from the header alone)."""
        dtype = self.dtype(name)
        if dtype not in FLOAT_DTYPES:
            raise HeadkitError(
                f"{self._location[name]}: tensor {name} is stored as {dtype}: model weights must be "
                "floating point (F16, BF16, F32 or F64); an integer tensor holds no weights"
            )

    def read(self, name: str) -> Tensor:
        """Tensor ``name`` in its stored dtype; refused when it is not floating point or holds NaN or infinity."""
        path = self._location[name]
        self.check_dtype(name)
        try:
            tensor = self._reader(path, name)
        except Exception as error:
            raise HeadkitError(f"{path}: cannot read tensor {name}: {error}") from None
        if tensor.is_floating_point() and not all_finite(tensor):
            bad = non_finite_count(tensor)
            raise HeadkitError(
                f"{path}: tensor {name} holds {bad} non-finite value(s) (NaN or infinity): "
                "the checkpoint is broken"
            )
        return tensor


# stored dtypes that are weights: safetensors' names and torch's
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "float64", "float32", "float16", "bfloat16"})


_FINITE_CHUNK = 1 << 22  # elements checked at once: a few MiB of temporaries, whatever the tensor's size


def all_finite(tensor: Tensor) -> bool:
    """No NaN or infinity in ``tensor``, checked in chunks (a whole-tensor isfinite costs ~2x its size)."""
    return all(bool(torch.isfinite(c).all()) for c in batches(tensor.reshape(-1), _FINITE_CHUNK))


def non_finite_count(tensor: Tensor) -> int:
    """How many NaN or infinite values ``tensor`` holds, counted in chunks."""
    return sum(int((~torch.isfinite(c)).sum()) for c in batches(tensor.reshape(-1), _FINITE_CHUNK))


def _safetensors_files(files: list[Path]) -> WeightFiles:
    from safetensors import safe_open

    location: dict[str, Path] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    for path in files:
        check_regular_file(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    location[name] = path
                    shapes[name] = tuple(f.get_slice(name).get_shape())
                    dtypes[name] = f.get_slice(name).get_dtype()
        except Exception as error:
            raise HeadkitError(f"{path} is not a readable safetensors file: {error}") from None

    return WeightFiles(location, shapes, _read_safetensor, dtypes)


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
        if out.numel():  # an empty tensor has no bytes to read (and no writable buffer to read into)
            f.seek(8 + header_size + begin)
            view = memoryview(out.reshape(-1).view(torch.uint8).numpy())  # pyright: ignore[reportArgumentType]  (numpy: buffer)
            if f.readinto(view) != len(view):
                raise ValueError("the file ends inside the tensor (truncated)")
    return out


def _torch_files(files: list[Path]) -> WeightFiles:
    location: dict[str, Path] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    loaded: dict[Path, Mapping[str, Tensor]] = {}
    for path in files:
        check_regular_file(path)
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
            dtypes[name] = str(tensor.dtype).removeprefix("torch.")

    def read(path: Path, name: str) -> Tensor:
        return loaded[path][name].clone()  # an owned copy, not a view of the mapped file

    return WeightFiles(location, shapes, read, dtypes)


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
        for shard in shards:
            check_regular_file(shard, missing_ok=True)
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
        check_regular_file(directory / marker, missing_ok=True)
        if (directory / marker).is_file():
            return opener(directory)
    raise HeadkitError(f"{directory} has no weights: expected one of {', '.join(WEIGHT_FORMATS)}")


def check_regular_file(path: Path, *, missing_ok: bool = False) -> None:
    """Refuse a weight file that exists but is not a regular file (a device such as /dev/zero, a FIFO, a directory).

    Reading one would never end (``/dev/zero``) or block (a FIFO); a symlink to a
    regular file is fine. A missing file passes when ``missing_ok``.
    """
    if path.is_file() or (missing_ok and not os.path.lexists(path)):
        return
    if not os.path.exists(path):
        raise HeadkitError(f"{path} not found" + (" (a broken symbolic link)" if os.path.islink(path) else ""))
    raise HeadkitError(f"{path} is not a regular file ({_file_kind(path)}): a weight file must be a regular file")


def _file_kind(path: Path) -> str:
    mode = os.stat(path).st_mode
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "a special file"  # fmt: skip
