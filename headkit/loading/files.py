"""A Hugging Face model directory, read without building any model: where it lives, its
config.json, its weight files (one tensor at a time) and its tokenizer.

Both loaders (`headkit.loading.gptj.load_gptj`, `headkit.pretrained.load_pretrained`)
read checkpoints only through this module:

- `resolve_checkpoint_dir`: a local directory, or a hub repo id found in the local
  Hugging Face cache (downloaded only when the hub is reachable and
  ``HF_HUB_OFFLINE`` is unset);
- `read_hf_config`: ``config.json`` as a dict, with one clear error when it is
  missing or broken;
- `open_weight_files`: ``model.safetensors``, sharded safetensors with an index, or
  ``pytorch_model.bin`` (sharded or not), opened from their headers only, so that a
  missing or truncated file is found before any tensor is read; `WeightFiles.read`
  then reads one tensor into memory the model owns, refusing NaN and infinity;
- `saved_tokenizer`: the tokenizer saved beside the weights, if any.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from headkit.errors import HeadkitError
from headkit.io import read_json

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_PATTERNS = ["config.json", "*.safetensors", "*.json", "*.txt", "*.model"]
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")


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
    return raw


def saved_tokenizer(directory: Path) -> Any | None:
    """The tokenizer saved in ``directory`` (BOS prepended, as TransformerLens does), or None when there is none."""
    if not any((directory / name).is_file() for name in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory), add_bos_token=True)
    except Exception as error:
        raise HeadkitError(f"{directory}: the tokenizer files cannot be loaded: {error}") from None


# --- weight files, read one tensor at a time ----------------------------------------


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
        if out.numel():  # an empty tensor has no bytes to read (and no writable buffer to read into)
            f.seek(8 + header_size + begin)
            view = memoryview(out.reshape(-1).view(torch.uint8).numpy())
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
