"""A local Hugging Face directory -> the model it holds, offline, in memory the model owns.

`from_pretrained` (transformers' loader: offline, no remote code, eager attention,
without its progress bar) and `boot` (a directory -> a wrapped `TransformerBridge`,
sizes and shapes checked from the files' headers first). `headkit.loading.gptj`,
`headkit.loading.pretrained` and `headkit.training.checkpoints` load through them.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import torch
from transformer_lens.model_bridge import TransformerBridge

from headkit.bridge.build import Processing, wrap
from headkit.errors import HeadkitError
from headkit.loading.files import all_finite, check_config_sizes, non_finite_count, open_weight_files, read_hf_config


def _check_against_files(path: Path, weights: Any) -> None:
    """Every tensor the config's model declares that the files hold: a floating-point dtype and the
    shape the config implies, from the files' headers, before anything is read (one line naming
    the first that differs; transformers' own report is many lines, after the reading)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, OSError, TypeError) as error:
        raise HeadkitError(f"{path}: transformers cannot build a causal LM of its config.json: {error}") from None
    for name, tensor in skeleton.state_dict().items():
        if name not in weights:
            continue  # tied, renamed or buffers: transformers' own loading decides
        weights.check_dtype(name)
        if weights.shape(name) != tuple(tensor.shape):
            raise HeadkitError(
                f"{weights.file(name)}: tensor {name} has shape {weights.shape(name)}, "
                f"config.json implies {tuple(tensor.shape)}"
            )


def _own_memory(model: torch.nn.Module, weights: Any) -> None:
    """Give ``model`` weights in memory it owns, one tensor at a time.

    transformers leaves each weight a view of the memory-mapped file: a file rewritten
    (or truncated) in place later would change (or crash) the model, and cloning the
    views would page the whole file in next to the copy (2x the checkpoint). Instead
    each tensor the files hold as transformers loaded it (same shape, same first and
    last values) is read again from the file straight into fresh memory (``readinto``,
    no mapping; checked finite by `headkit.loading.files.WeightFiles.read`) and cast;
    a tensor transformers changed on loading, or the files do not hold, is cloned and
    checked here.
    """
    seen: set[int] = set()
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            if id(tensor) in seen or tensor.device.type != "cpu":
                continue
            seen.add(id(tensor))
            fresh = None
            if name in weights and weights.shape(name) == tuple(tensor.shape):
                fresh = weights.read(name).to(tensor.dtype)
                if fresh.numel() and not _same_ends(fresh, tensor):
                    fresh = None  # transformers converted it on loading: keep its version
            if fresh is None:  # not read (and checked) from the files: copied, then checked here
                fresh = tensor.data.clone()
                if fresh.is_floating_point() and not all_finite(fresh):
                    bad = non_finite_count(fresh)
                    raise HeadkitError(
                        f"tensor {name} holds {bad} non-finite value(s) (NaN or infinity): the checkpoint is broken"
                    )
            tensor.data = fresh


def _same_ends(a: torch.Tensor, b: torch.Tensor) -> bool:
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    return torch.equal(flat_a[:16], flat_b[:16]) and torch.equal(flat_a[-16:], flat_b[-16:])


@contextlib.contextmanager
def no_progress_bar() -> Iterator[None]:
    """transformers' "Loading weights" progress bar off inside (headkit's one-line errors stay one
    line; the demo's output stays its own), restored after."""
    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()


def from_pretrained(cls: Any, path: Path, *, dtype: torch.dtype, weights: Any = None) -> torch.nn.Module:
    """``cls.from_pretrained(path)`` offline, no remote code, in ``dtype``, without transformers'
    progress bar (`no_progress_bar`)."""
    with no_progress_bar():
        # eager attention: TransformerLens's hooks see the scores and pattern of Hugging Face's
        # eager code (with scaled-dot-product attention some never fire)
        model = cls.from_pretrained(
            path, local_files_only=True, trust_remote_code=False, dtype=dtype, attn_implementation="eager"
        )
    try:
        _own_memory(model, weights if weights is not None else open_weight_files(path))
    except HeadkitError as error:
        raise HeadkitError(f"{path}: {error}" if not str(error).startswith(str(path)) else str(error)) from None
    return model


def boot(
    directory: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | None = None,
    tokenizer: Any = None,
    processing: bool | Processing = False,
) -> TransformerBridge:
    """A local Hugging Face directory as a bridge: ``from_pretrained`` offline, then `wrap`.

    Nothing is fetched (``local_files_only``) and no code from the directory runs
    (``trust_remote_code=False``; a config with an ``auto_map`` is refused). Before
    transformers builds anything, the config's sizes are checked against the weight
    files' headers (`headkit.loading.files`), as `load_pretrained` does.
    """
    from transformers import AutoModelForCausalLM

    path = Path(directory)
    raw = read_hf_config(path)  # refuses a missing config, an auto_map, non-positive sizes
    weights = open_weight_files(path)
    check_config_sizes(raw, path / "config.json", weights)
    _check_against_files(path, weights)
    try:
        hf_model = from_pretrained(AutoModelForCausalLM, path, dtype=dtype, weights=weights)
    except (ValueError, KeyError, OSError) as error:  # an architecture or a file transformers cannot load
        raise HeadkitError(f"{path}: transformers cannot load it as a causal LM: {error}") from None
    if device is not None:
        hf_model.to(device)
    return wrap(hf_model, tokenizer=tokenizer, processing=processing, model_name=path.name)
