"""Training checkpoints: Hugging Face GPT-J directories, written all at once or not at all.

Layout of a run and of one checkpoint (see `headkit.training.layout` for the run)::

    RUN/checkpoints/step_0001200/
        config.json         the Hugging Face `GPTJConfig` (model_type "gptj")
        model.safetensors   the weights in Hugging Face names (GPTJForCausalLM)
        meta.json           headkit's metadata: model_config, task, step, metrics,
                            train_config, dtype, headkit version, sha256 of every other file
        optimizer.pt        optional, torch.save of the optimizer state dict
        rng.pt              optional, the RNG state (dropout) at that step, for exact resume

So a checkpoint opens in any Hugging Face tool (``GPTJForCausalLM.from_pretrained``),
and headkit opens it as Hugging Face's model wrapped in TransformerLens's
`TransformerBridge` (`headkit.bridge.build.wrap`).

Writing: everything goes into a hidden temporary sibling directory, each file
and the directory are fsynced, and only then is the directory renamed into
place (an older checkpoint of the same step is moved aside first and deleted
after the swap). A crash or an error at any point leaves either the old
checkpoint or the new one, never a mix, and no half-written directory (a
killed process can leave a hidden ``.step_*.tmp-*`` directory, which
`headkit.training.layout.clean_temporaries` removes when the run is next opened).

Reading: `load_checkpoint` checks everything before it builds a model: the
files exist (as regular files), meta.json parses and names a valid `ModelConfig`
and task (no unknown task parameter), its sizes fit the weight file's header (layer
count, largest dimension, the task's vocabulary within the model's: nothing is
built of a hostile ``n_layers`` or ``max_pointer``), config.json agrees with the model_config, every
file's sha256 matches the one recorded (this catches truncation and flipped
bytes), the step agrees with the directory name and the task with the run's
``run.json``. The model is then loaded with ``GPTJForCausalLM.from_pretrained``
(offline, no remote code) and wrapped; a model with a non-finite weight is
refused, naming the tensor. Checkpoints of format 1 (headkit before the Hugging
Face backend: a HookedTransformer state dict, no config.json) are still read: as a
HookedTransformer on TransformerLens 3.x, and on 4.x as the GPT-J they convert to
(refused, naming the tensor, where a GPT-J cannot hold them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file
from transformers import GPTJForCausalLM

from headkit import __version__
from headkit.bridge.build import wrap
from headkit.checks import check_int
from headkit.errors import HeadkitError
from headkit.gptj_hf import build_hf_model, hf_config, hf_state, hf_state_from_tl
from headkit.io import disk_full, honour_umask, read_json, swap_folder
from headkit.loading.files import check_regular_file, check_sizes, open_weight_files
from headkit.loading.gptj import check_weights, read_gptj_config
from headkit.loading.hf import from_pretrained
from headkit.model_config import DTYPES, ModelConfig, resolve_dtype
from headkit.model_types import Model, has_hooked_transformer, is_bridge, is_hooked
from headkit.models import gptj_config, synthetic
from headkit.tasks.registry import TaskSpec
from headkit.training.config import TrainConfig, read_run_config

# run-directory layout (torch-free, for `headkit info`): re-exported here
from headkit.training.layout import (
    CONFIG_FILE,
    META_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    RNG_FILE,
    run_of_checkpoint,
    step_of_dir,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 1: HookedTransformer state dict; 2: Hugging Face GPT-J directory
# config.json fields that must agree with the model_config in meta.json
_SHAPE_FIELDS = ("n_layer", "n_embd", "n_head", "vocab_size", "n_positions", "rotary_dim", "n_inner", "activation_function")


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint as loaded: the model plus everything recorded with it."""

    path: Path  # the checkpoint directory
    model: Model  # a TransformerBridge of the Hugging Face GPT-J, in eval mode
    model_config: ModelConfig
    step: int  # training step at which it was written
    task: TaskSpec | None  # the task trained on, to build fresh prompts
    metrics: dict[str, float]  # e.g. loss, accuracy at that step
    train_config: TrainConfig | None  # the run's training config (None: saved outside a training run)
    optimizer_state: dict | None  # only with load_checkpoint(..., with_optimizer=True)
    rng_state: dict | None = None  # only with with_optimizer=True, if recorded


# --- run directories -----------------------------------------------------------------


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


def _dtype_name(dtypes: set[torch.dtype]) -> str:
    names = [name for name, dtype in DTYPES.items() if {dtype} == dtypes]
    if not names:
        raise HeadkitError(f"model parameters have dtypes {dtypes}: allowed one of {', '.join(DTYPES)}")
    return names[0]


def _check_model_matches(model: Model, config: ModelConfig) -> str:
    """Refuse a HookedTransformer whose state dict is not the one ``config`` builds; return its dtype name."""
    from transformer_lens import HookedTransformer  # only reached with a HookedTransformer (TransformerLens 3.x)

    with torch.device("meta"):
        # TransformerLens 3.x only: on 4.x the type checker resolves this removed name to TransformerBridge
        expected = HookedTransformer(gptj_config(config, seed=None), move_to_device=False).state_dict()  # pyright: ignore[reportCallIssue]
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
    return _dtype_name({p.dtype for p in model.parameters()})


def _check_hf_matches(model: GPTJForCausalLM, config: ModelConfig) -> str:
    """Refuse a Hugging Face model whose shapes differ from ``config``; return its dtype name."""
    expected = hf_config(config).to_dict()
    found = model.config.to_dict()
    for key in _SHAPE_FIELDS:
        if expected.get(key) != found.get(key):
            raise HeadkitError(
                f"model does not match model_config: config {key}={found.get(key)!r}, "
                f"model_config implies {expected.get(key)!r}"
            )
    return _dtype_name({p.dtype for p in model.parameters()})


def _metrics(metrics: Mapping[str, float] | None) -> dict[str, float]:
    out = {}
    for key, value in (metrics or {}).items():
        try:
            out[str(key)] = math.nan if value is None else float(value)  # None: not measured
        except (TypeError, ValueError):
            raise HeadkitError(f"metric {key!r}={value!r} is not a number") from None
    return out


def _hf_config_json(model_config: ModelConfig, dropout: float) -> str:
    config = hf_config(model_config, dropout=dropout)
    config.architectures = ["GPTJForCausalLM"]
    return json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"


def _write_into(
    folder: Path,
    state: dict[str, torch.Tensor],
    config_json: str,
    meta: dict[str, Any],
    extra: Mapping[str, Mapping | None],
) -> None:
    """Write every file of a checkpoint into ``folder`` and fsync them."""
    save_file(state, str(folder / MODEL_FILE), metadata={"format": "pt"})
    (folder / CONFIG_FILE).write_text(config_json)
    hashes = {name: _sha256(folder / name) for name in (MODEL_FILE, CONFIG_FILE)}
    for name, value in extra.items():
        if value is not None:
            torch.save(dict(value), folder / name)
            hashes[name] = _sha256(folder / name)
    text = json.dumps({**meta, "sha256": hashes}, indent=2, sort_keys=True, default=str)
    (folder / META_FILE).write_text(text + "\n")
    for name in [*hashes, META_FILE]:
        _fsync(folder / name)
    _fsync(folder)


def _check_types(**values: tuple[Any, type, bool]) -> None:
    """Each ``name=(value, expected type, None allowed)`` checked; else a HeadkitError naming it."""
    for name, (value, kind, optional) in values.items():
        if not isinstance(value, kind) and not (optional and value is None):
            allowed = f"a {kind.__name__}" + (" or None" if optional else "")
            raise HeadkitError(f"{name} must be {allowed}, got {type(value).__name__}")


def save_checkpoint(
    directory: str | os.PathLike,
    model: GPTJForCausalLM | Model,
    *,
    model_config: ModelConfig,
    step: int,
    task: TaskSpec | None = None,
    metrics: Mapping[str, float] | None = None,
    train_config: TrainConfig | None = None,
    optimizer_state: Mapping[str, Any] | None = None,
    rng_state: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` and its metadata atomically into ``directory``; return it.

    ``model`` is the `GPTJForCausalLM` training trains, a `TransformerBridge` of
    one (what `load_checkpoint` returns), or (TransformerLens 3.x) a
    HookedTransformer that is a GPT-J (converted with `headkit.gptj_hf.hf_state_from_tl`).
    ``directory`` is usually ``checkpoint_dir(run_dir, step)``. An existing
    checkpoint there is replaced. Task parameters that JSON cannot hold are
    stored as strings.
    """
    _check_types(model_config=(model_config, ModelConfig, False), task=(task, TaskSpec, True),
                 train_config=(train_config, TrainConfig, True))  # fmt: skip

    if is_bridge(model) and isinstance(original := getattr(model, "original_model", None), GPTJForCausalLM):
        model = original  # the bridge runs this module in place: its weights are the model's
    if isinstance(model, GPTJForCausalLM):
        dtype = _check_hf_matches(model, model_config)
        state, dropout = hf_state(model), float(model.config.resid_pdrop)
    elif is_hooked(model):
        dtype = _check_model_matches(model, model_config)
        state, dropout = hf_state_from_tl(model.state_dict(), model_config), 0.0
    else:
        raise HeadkitError(
            "model must be a GPTJForCausalLM, a TransformerBridge of one, or a HookedTransformer, "
            f"got {type(model).__name__}"
        )
    meta = {
        "format": FORMAT_VERSION,
        "headkit_version": __version__,
        "step": check_int("step", step, low=0),
        "model_config": model_config.to_dict(),
        "dtype": dtype,
        "task": None if task is None else task.to_dict(),
        "metrics": _metrics(metrics),
        "train_config": {} if train_config is None else train_config.to_dict(),
    }
    target = Path(directory)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    except OSError as error:
        raise disk_full(error, target) or error
    try:
        extra = {OPTIMIZER_FILE: optimizer_state, RNG_FILE: rng_state}
        _write_into(tmp, state, _hf_config_json(model_config, dropout), meta, extra)
        honour_umask(tmp)  # mkdtemp makes it 0700, safetensors its file 0600
        swap_folder(tmp, target)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        full = disk_full(error, target)  # ENOSPC, or torch.save's "basic_ios::clear"
        if full is not None:
            raise full from None
        raise
    log.info("saved checkpoint step %d to %s", step, target)
    return target


# --- loading ---------------------------------------------------------------------------


def _read_meta(folder: Path) -> dict[str, Any]:
    path = folder / META_FILE
    meta = read_json(path, missing=f"{folder} is not a headkit checkpoint")
    required = ("step", "model_config", "dtype", "metrics", "train_config", "sha256")
    missing = [key for key in required if not isinstance(meta, dict) or key not in meta]
    if missing:
        raise HeadkitError(f"{path} lacks {', '.join(missing)}")
    return meta


def _check_file(folder: Path, name: str, meta: dict[str, Any]) -> Path:
    path = folder / name
    check_regular_file(path)  # "not found", or not a regular file (/dev/zero would be hashed forever)
    recorded = meta["sha256"].get(name) if isinstance(meta["sha256"], dict) else None
    if recorded is None:
        raise HeadkitError(f"{folder / META_FILE} records no sha256 for {name}")
    actual = _sha256(path)
    if actual != recorded:
        raise HeadkitError(
            f"{path} is corrupted or truncated: sha256 {actual[:12]}... != recorded {recorded[:12]}..."
        )
    return path


def _check_sizes(folder: Path, config: ModelConfig, task: TaskSpec | None) -> None:
    """meta.json's sizes, bounded by the weight file's header before any model or prompt is built of them.

    Its ``n_layers`` by the blocks ``model.safetensors`` holds, its other sizes by
    the largest stored dimension (`headkit.loading.files.check_sizes`), and its
    task's vocabulary by the model's: a ``max_pointer`` of 10**9 would build a
    vocabulary of a billion tokens before any prompt met the model.
    """
    meta_path = folder / META_FILE
    sizes = {"d_model": config.d_model, "d_vocab": config.d_vocab, "n_heads": config.n_heads,
             "d_head": config.d_head, "d_mlp": config.d_mlp, "rotary_dim": config.rotary_dim}  # fmt: skip
    check_sizes(
        meta_path, open_weight_files(folder), layers=("n_layers", config.n_layers),
        sizes={name: value for name, value in sizes.items() if value is not None},
    )  # fmt: skip
    if task is not None and task.d_vocab > config.d_vocab:
        raise HeadkitError(
            f"{meta_path}: task {task.name} {task.params} has a vocabulary of {task.d_vocab} tokens but "
            f"model_config's d_vocab is {config.d_vocab}: its prompts would hold tokens the model cannot read"
        )


def _check_config_json(folder: Path, config: ModelConfig) -> None:
    """config.json must describe the model that meta.json's model_config names."""
    path = folder / CONFIG_FILE
    found = read_json(path, missing=f"{folder} is not a Hugging Face model directory")
    expected = hf_config(config).to_dict()
    for key in _SHAPE_FIELDS:
        if found.get(key) != expected.get(key):
            raise HeadkitError(
                f"{path}: {key}={found.get(key)!r} but meta.json's model_config implies {expected.get(key)!r}"
            )


def check_finite(model: torch.nn.Module, *, what: str) -> None:
    """Refuse a model with a NaN or infinite weight, naming the first such tensor."""
    for name, tensor in model.named_parameters():  # buffers may hold -inf on purpose (masks)
        if not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise HeadkitError(f"{what}: tensor {name} has {bad} non-finite value(s) (NaN or inf)")


def _model_from_hf_dir(folder: Path, config: ModelConfig, dtype: torch.dtype, device) -> Model:
    """The Hugging Face GPT-J of a checked checkpoint directory, wrapped (`headkit.bridge.build.wrap`).

    Offline and without remote code; an ``attn_only`` model keeps its zero, one-unit
    MLPs (`headkit.gptj_hf`), which add exactly nothing.
    """
    check_weights(open_weight_files(folder), read_gptj_config(folder), folder)  # from the headers, one line
    hf_model = from_pretrained(GPTJForCausalLM, folder, dtype=dtype)
    if device is not None:
        hf_model.to(device)
    return synthetic(wrap(hf_model, model_name=folder.name), attn_only=config.attn_only)


def _read_legacy(model_path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(model_path))
    except Exception as error:
        raise HeadkitError(f"{model_path} is not a readable safetensors file: {error}") from None


def _legacy_model(folder: Path, model_path: Path, config: ModelConfig, dtype: torch.dtype, device) -> Model:
    """A format-1 checkpoint (a HookedTransformer state dict): a HookedTransformer on
    TransformerLens 3.x (as it was written); on 4.x the GPT-J it converts to, wrapped."""
    state = _read_legacy(model_path)
    if not has_hooked_transformer():
        return _legacy_as_gptj(model_path, state, config, dtype, device)
    from transformer_lens import HookedTransformer

    # TransformerLens 3.x only: on 4.x the type checker resolves this removed name to TransformerBridge
    model = HookedTransformer(gptj_config(config, seed=None, dtype=dtype, device=device))  # pyright: ignore[reportCallIssue]
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in state:
            raise HeadkitError(f"{model_path} lacks tensor {name} (the model_config in {folder / META_FILE} expects it)")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise HeadkitError(
                f"{model_path}: tensor {name} has shape {tuple(state[name].shape)}, "
                f"the model_config implies {tuple(tensor.shape)}"
            )
    extra = sorted(set(state) - set(expected))
    if extra:
        raise HeadkitError(f"{model_path} holds tensors the model_config has no place for: {', '.join(extra[:3])}")
    model.load_state_dict(state, strict=True)
    return model


def _legacy_as_gptj(model_path: Path, state: dict[str, torch.Tensor], config: ModelConfig, dtype: torch.dtype, device) -> Model:
    """TransformerLens 4.x: a format-1 state dict as the Hugging Face GPT-J it describes, wrapped."""
    try:
        hf_state = hf_state_from_tl(state, config)
    except KeyError as error:
        raise HeadkitError(f"{model_path} lacks tensor {error.args[0]} (format 1)") from None
    except HeadkitError as error:
        raise HeadkitError(
            f"{model_path} (format 1) holds a model a GPT-J cannot hold ({error}); it loads as a "
            "HookedTransformer with TransformerLens 3.x"
        ) from None
    hf_model = build_hf_model(config, seed=0, device="cpu")
    try:
        hf_model.load_state_dict(hf_state, strict=True)
    except RuntimeError as error:
        raise HeadkitError(f"{model_path} (format 1) does not fit its model_config: {error}") from None
    # transformers' @wraps(nn.Module.to) on PreTrainedModel.to hides its signature from the type checker
    return synthetic(wrap(hf_model.to(dtype=dtype, device=device or "cpu")), attn_only=config.attn_only)  # pyright: ignore[reportCallIssue]


def _check_place(folder: Path, step: int, task: TaskSpec | None) -> None:
    """A checkpoint inside a run directory must be of that run's task, at its directory's step."""
    named = step_of_dir(folder)
    if named is not None and named != step:
        raise HeadkitError(f"{folder / META_FILE} records step {step} but the directory is named for step {named}")

    run = run_of_checkpoint(folder)
    if run is None:
        return
    run_task = read_run_config(run).task  # resolved in full (TrainConfig); so is the checkpoint's below
    if task is None or task.resolved().to_dict() != run_task.to_dict():
        found = "no task" if task is None else f"task {task.to_dict()}"
        raise HeadkitError(
            f"checkpoint {folder} holds {found} but its run {run} trains task {run_task.to_dict()}: "
            "it does not belong to this run"
        )


@dataclass
class _Checked:
    """A checkpoint directory's files and metadata, checked before any model is built."""

    folder: Path
    legacy: bool  # format 1: a HookedTransformer state dict
    model_path: Path
    optimizer_path: Path | None
    rng_path: Path | None
    config: ModelConfig
    task: TaskSpec | None
    dtype: torch.dtype
    step: int
    metrics: dict[str, float]
    train_config: TrainConfig | None


def _check_checkpoint(directory: str | os.PathLike, *, with_optimizer: bool) -> _Checked:
    folder = Path(directory)
    if not folder.is_dir():
        raise HeadkitError(f"checkpoint directory {folder} does not exist")
    meta = _read_meta(folder)
    legacy = meta.get("format", 1) == 1
    model_path = _check_file(folder, MODEL_FILE, meta)
    if not legacy:
        _check_file(folder, CONFIG_FILE, meta)
    optimizer_path = _check_file(folder, OPTIMIZER_FILE, meta) if with_optimizer else None
    rng_path = folder / RNG_FILE if with_optimizer and RNG_FILE in meta["sha256"] else None
    if rng_path is not None:
        _check_file(folder, RNG_FILE, meta)
    meta_path = folder / META_FILE
    try:
        config = ModelConfig.from_dict(meta["model_config"])
        task = None if meta.get("task") is None else TaskSpec.from_dict(meta["task"])  # checked on creation
        dtype = resolve_dtype(meta["dtype"])
        step = check_int("step", meta["step"], low=0)
        metrics = {str(k): float(v) for k, v in dict(meta["metrics"]).items()}
        train_config = TrainConfig.from_dict(meta["train_config"]) if meta["train_config"] else None
    except (HeadkitError, KeyError, TypeError, ValueError) as error:
        raise HeadkitError(f"{meta_path} is invalid: {error}") from None
    _check_sizes(folder, config, task)
    _check_place(folder, step, task)
    if not legacy:
        _check_config_json(folder, config)
    return _Checked(
        folder=folder, legacy=legacy, model_path=model_path, optimizer_path=optimizer_path, rng_path=rng_path,
        config=config, task=task, dtype=dtype, step=step, metrics=metrics, train_config=train_config,
    )  # fmt: skip


def _read_states(checked: _Checked, device: str | torch.device | None) -> tuple[dict | None, dict | None]:
    """The optimizer state (on ``device``) and the RNG state (on the CPU), where asked for and recorded."""
    states: dict[str, dict | None] = {"optimizer": None, "rng": None}
    for path, name in ((checked.optimizer_path, "optimizer"), (checked.rng_path, "rng")):
        if path is None:
            continue
        try:
            states[name] = torch.load(path, map_location=device if name == "optimizer" else "cpu", weights_only=True)
        except Exception as error:
            raise HeadkitError(f"{path} cannot be read: {error}") from None
    return states["optimizer"], states["rng"]


def load_checkpoint(
    directory: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    with_optimizer: bool = False,
) -> Checkpoint:
    """Check and load one checkpoint directory (see the module docstring)."""
    checked = _check_checkpoint(directory, with_optimizer=with_optimizer)
    folder, config = checked.folder, checked.config
    if checked.legacy:
        model = _legacy_model(folder, checked.model_path, config, checked.dtype, device)
        check_finite(model, what=f"checkpoint {folder}")
    else:  # every weight checked finite as it was read from the file (headkit.loading.hf.from_pretrained)
        model = _model_from_hf_dir(folder, config, checked.dtype, device)
    model.eval()
    optimizer_state, rng_state = _read_states(checked, device)
    return Checkpoint(
        path=folder, model=model, model_config=config, step=checked.step, task=checked.task, metrics=checked.metrics,
        train_config=checked.train_config, optimizer_state=optimizer_state, rng_state=rng_state,
    )  # fmt: skip


@dataclass
class TrainingState:
    """A checkpoint read to continue training: Hugging Face's model as training builds it, and its states."""

    path: Path
    step: int
    model: GPTJForCausalLM  # built as `train` builds one (``dropout``), weights exact, on the asked device
    optimizer_state: dict | None
    rng_state: dict | None


def load_training_state(
    directory: str | os.PathLike, *, dropout: float, device: str | torch.device = "cpu"
) -> TrainingState:
    """One checkpoint, checked as `load_checkpoint` checks it and loaded once, to resume training:
    the weights into a `GPTJForCausalLM` built with the run's ``dropout`` (nothing wrapped), the
    optimizer and RNG states."""
    checked = _check_checkpoint(directory, with_optimizer=True)
    if checked.legacy:
        raise HeadkitError(
            f"{checked.folder} is a format-1 checkpoint (headkit before the Hugging Face backend): training "
            "cannot resume from it; start a new run"
        )
    model = load_hf_model(checked.folder, dropout=dropout, device=device, checked=checked)
    optimizer_state, rng_state = _read_states(checked, "cpu")
    return TrainingState(
        path=checked.folder, step=checked.step, model=model, optimizer_state=optimizer_state, rng_state=rng_state
    )


def load_hf_model(
    directory: str | os.PathLike, *, dropout: float, device: str | torch.device = "cpu", checked: _Checked | None = None
) -> GPTJForCausalLM:
    """The `GPTJForCausalLM` of a checked checkpoint (for resuming training), weights exact."""
    checked = checked or _check_checkpoint(directory, with_optimizer=False)
    check_weights(open_weight_files(checked.folder), read_gptj_config(checked.folder), checked.folder)
    model = build_hf_model(checked.config, seed=0, dropout=dropout, device="cpu")
    model.load_state_dict(load_file(str(checked.model_path)), strict=True)
    check_finite(model, what=f"checkpoint {checked.folder}")
    # transformers' @wraps(nn.Module.to) on PreTrainedModel.to hides its signature from the type checker
    return model.to(device)  # pyright: ignore[reportArgumentType]
