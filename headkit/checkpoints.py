"""Training checkpoints: one directory per step, written all at once or not at all.

Layout of a run and of one checkpoint::

    RUN/checkpoints/step_0001200/
        model.safetensors   the model's state dict (safetensors, contiguous tensors)
        meta.json           model_config, task, step, metrics, train_config, dtype,
                            headkit version, sha256 of every other file
        optimizer.pt        optional, torch.save of the optimizer state dict

Writing: everything goes into a hidden temporary sibling directory, each file
and the directory are fsynced, and only then is the directory renamed into
place (an older checkpoint of the same step is moved aside first and deleted
after the swap). A crash or an error at any point leaves either the old
checkpoint or the new one, never a mix, and no half-written directory.

Reading: `load_checkpoint` checks everything before it builds a model: the
files exist, meta.json parses and names a valid `ModelConfig`, and every file's
sha256 matches the one recorded (this catches truncation and flipped bytes).
The model is rebuilt with `headkit.models.model_from_config` and its state dict
loaded strictly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file
from transformer_lens import HookedTransformer

from headkit.errors import HeadkitError
from headkit.io import honour_umask
from headkit.models import DTYPES, ModelConfig, gptj_config, model_from_config, resolve_dtype
from headkit.tasks.base import TaskSpec

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
META_FILE = "meta.json"
OPTIMIZER_FILE = "optimizer.pt"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint as loaded: the model plus everything recorded with it."""

    path: Path  # the checkpoint directory
    model: HookedTransformer  # rebuilt from model_config, weights loaded, in eval mode
    model_config: ModelConfig
    step: int  # training step at which it was written
    task: TaskSpec | None  # the task trained on, to build fresh prompts
    metrics: dict[str, float]  # e.g. loss, accuracy at that step
    train_config: dict[str, Any]  # the training settings, as JSON values
    optimizer_state: dict | None  # only with load_checkpoint(..., with_optimizer=True)


# --- run directories -----------------------------------------------------------------


def _check_step(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise HeadkitError(f"step={step!r} must be a non-negative integer")
    return step


def checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    """RUN/checkpoints/step_{step:07d}."""
    return Path(run_dir) / "checkpoints" / f"step_{_check_step(step):07d}"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, directory) of every checkpoint of a run, sorted by step."""
    run = Path(run_dir)
    if not run.is_dir():
        raise HeadkitError(f"run directory {run} does not exist")
    folder = run / "checkpoints"
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The directory of the highest-step checkpoint of a run."""
    found = list_checkpoints(run_dir)
    if not found:
        raise HeadkitError(f"run directory {run_dir} has no checkpoints (expected checkpoints/step_*/)")
    return found[-1][1]


# --- saving ----------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_model_matches(model: HookedTransformer, config: ModelConfig) -> str:
    """Refuse a model whose state dict is not the one ``config`` builds; return its dtype name."""
    with torch.device("meta"):
        expected = HookedTransformer(gptj_config(config, seed=None), move_to_device=False).state_dict()
    actual = model.state_dict()
    if expected.keys() != actual.keys():
        extra = sorted(set(actual) - set(expected))[:3]
        missing = sorted(set(expected) - set(actual))[:3]
        raise HeadkitError(
            f"model does not match model_config: extra tensors {extra}, missing tensors {missing}"
        )
    for name, tensor in expected.items():
        if tuple(actual[name].shape) != tuple(tensor.shape):
            raise HeadkitError(
                f"model does not match model_config: {name} has shape {tuple(actual[name].shape)}, "
                f"model_config implies {tuple(tensor.shape)}"
            )
    dtypes = {p.dtype for p in model.parameters()}
    names = [name for name, dtype in DTYPES.items() if {dtype} == dtypes]
    if not names:
        raise HeadkitError(f"model parameters have dtypes {dtypes}: allowed one of {', '.join(DTYPES)}")
    return names[0]


def _metrics(metrics: Mapping[str, float] | None) -> dict[str, float]:
    out = {}
    for key, value in (metrics or {}).items():
        try:
            out[str(key)] = math.nan if value is None else float(value)  # None: not measured
        except (TypeError, ValueError):
            raise HeadkitError(f"metric {key!r}={value!r} is not a number") from None
    return out


def _write_into(
    folder: Path, model: HookedTransformer, meta: dict[str, Any], optimizer_state: Mapping | None
) -> None:
    """Write every file of a checkpoint into ``folder`` and fsync them."""
    state = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    save_file(state, str(folder / MODEL_FILE))
    hashes = {MODEL_FILE: _sha256(folder / MODEL_FILE)}
    if optimizer_state is not None:
        torch.save(dict(optimizer_state), folder / OPTIMIZER_FILE)
        hashes[OPTIMIZER_FILE] = _sha256(folder / OPTIMIZER_FILE)
    text = json.dumps({**meta, "sha256": hashes}, indent=2, sort_keys=True, default=str)
    (folder / META_FILE).write_text(text + "\n")
    for name in [*hashes, META_FILE]:
        _fsync(folder / name)
    _fsync(folder)


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing ``target`` is replaced only after the swap."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
        os.rename(target, old / target.name)
    try:
        os.rename(tmp, target)
    except BaseException:
        if old is not None:
            os.rename(old / target.name, target)
            shutil.rmtree(old, ignore_errors=True)
        raise
    _fsync(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(
    directory: str | os.PathLike,
    model: HookedTransformer,
    *,
    model_config: ModelConfig,
    step: int,
    task: TaskSpec | None = None,
    metrics: Mapping[str, float] | None = None,
    train_config: Mapping[str, Any] | None = None,
    optimizer_state: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` and its metadata atomically into ``directory``; return it.

    ``directory`` is usually ``checkpoint_dir(run_dir, step)``. An existing
    checkpoint there is replaced. Values of ``train_config`` and task
    parameters that JSON cannot hold are stored as strings.
    """
    if not isinstance(model_config, ModelConfig):
        raise HeadkitError(f"model_config must be a ModelConfig, got {type(model_config).__name__}")
    if task is not None and not isinstance(task, TaskSpec):
        raise HeadkitError(f"task must be a TaskSpec or None, got {type(task).__name__}")
    from headkit import __version__

    meta = {
        "format": FORMAT_VERSION,
        "headkit_version": __version__,
        "step": _check_step(step),
        "model_config": model_config.to_dict(),
        "dtype": _check_model_matches(model, model_config),
        "task": None if task is None else task.to_dict(),
        "metrics": _metrics(metrics),
        "train_config": dict(train_config or {}),
    }
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        _write_into(tmp, model, meta, optimizer_state)
        honour_umask(tmp)  # mkdtemp makes it 0700, safetensors its file 0600
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("saved checkpoint step %d to %s", step, target)
    return target


# --- loading ---------------------------------------------------------------------------


def _read_meta(folder: Path) -> dict[str, Any]:
    path = folder / META_FILE
    if not path.is_file():
        raise HeadkitError(f"{path} not found: {folder} is not a headkit checkpoint")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise HeadkitError(f"{path} is not valid JSON: {error}") from None
    required = ("step", "model_config", "dtype", "metrics", "train_config", "sha256")
    missing = [key for key in required if not isinstance(meta, dict) or key not in meta]
    if missing:
        raise HeadkitError(f"{path} lacks {', '.join(missing)}")
    return meta


def _check_file(folder: Path, name: str, meta: dict[str, Any]) -> Path:
    path = folder / name
    if not path.is_file():
        raise HeadkitError(f"{path} not found")
    recorded = meta["sha256"].get(name) if isinstance(meta["sha256"], dict) else None
    if recorded is None:
        raise HeadkitError(f"{folder / META_FILE} records no sha256 for {name}")
    actual = _sha256(path)
    if actual != recorded:
        raise HeadkitError(
            f"{path} is corrupted or truncated: sha256 {actual[:12]}... != recorded {recorded[:12]}..."
        )
    return path


def load_checkpoint(
    directory: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    with_optimizer: bool = False,
) -> Checkpoint:
    """Check and load one checkpoint directory (see the module docstring)."""
    folder = Path(directory)
    if not folder.is_dir():
        raise HeadkitError(f"checkpoint directory {folder} does not exist")
    meta = _read_meta(folder)
    model_path = _check_file(folder, MODEL_FILE, meta)
    optimizer_path = _check_file(folder, OPTIMIZER_FILE, meta) if with_optimizer else None
    meta_path = folder / META_FILE
    try:
        config = ModelConfig.from_dict(meta["model_config"])
        task = None if meta.get("task") is None else TaskSpec.from_dict(meta["task"])
        dtype = resolve_dtype(meta["dtype"])
        step = _check_step(meta["step"])
        metrics = {str(k): float(v) for k, v in dict(meta["metrics"]).items()}
        train_config = dict(meta["train_config"])
    except (HeadkitError, KeyError, TypeError, ValueError) as error:
        raise HeadkitError(f"{meta_path} is invalid: {error}") from None

    try:
        state = load_file(str(model_path))
    except Exception as error:
        raise HeadkitError(f"{model_path} is not a readable safetensors file: {error}") from None
    model = model_from_config(config, dtype=dtype, device=device)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise HeadkitError(f"{model_path} does not match the model_config in {meta_path}: {error}") from None
    model.eval()

    optimizer_state = None
    if optimizer_path is not None:
        try:
            optimizer_state = torch.load(optimizer_path, map_location=device, weights_only=True)
        except Exception as error:
            raise HeadkitError(f"{optimizer_path} cannot be read: {error}") from None
    return Checkpoint(
        path=folder,
        model=model,
        model_config=config,
        step=step,
        task=task,
        metrics=metrics,
        train_config=train_config,
        optimizer_state=optimizer_state,
    )
