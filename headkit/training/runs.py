"""Run resolution: a path on the command line -> the checkpoint it names, loaded once;
an output directory -> whether it holds a run of this config (reuse, resume or refuse)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from headkit.errors import HeadkitError
from headkit.training.checkpoints import Checkpoint, TrainingState, load_checkpoint, load_training_state
from headkit.training.config import TrainConfig, config_differences, read_run_config
from headkit.training.layout import (
    BOOKKEEPING,
    RUN_FILE,
    list_checkpoints,
    resolve_checkpoint,
)

logger = logging.getLogger(__name__)


def open_checkpoint(path: str | os.PathLike, *, step: int | None = None, device: Any = None) -> Checkpoint:
    """`resolve_checkpoint` then `headkit.training.checkpoints.load_checkpoint`."""
    return load_checkpoint(resolve_checkpoint(path, step=step), device=device)


def newest_valid_checkpoint(
    run_dir: str | os.PathLike, *, dropout: float, device: str | torch.device = "cpu"
) -> TrainingState | None:
    """The newest checkpoint of a run that loads with its optimizer state, loaded once to resume
    training (`headkit.training.checkpoints.load_training_state`); None if the run has none.

    A checkpoint that does not load is skipped with a warning; when none loads, a
    `HeadkitError` names why each could not be used (never a silent restart from 0).
    """
    reasons = []
    found = list_checkpoints(run_dir)
    for step, folder in reversed(found):
        try:
            return load_training_state(folder, dropout=dropout, device=device)
        except HeadkitError as error:
            logger.warning("skipping checkpoint step %d: %s", step, error)
            reasons.append(f"step {step}: {error}")
    if found:
        raise HeadkitError(
            f"cannot resume {run_dir}: none of its {len(found)} checkpoints can be used ({'; '.join(reasons)}); "
            "nothing was changed: restore a checkpoint's files, or start a new run in another directory"
        )
    return None


def existing_run(run_dir: str | os.PathLike, cfg: TrainConfig, *, ignore: tuple[str, ...] = ("device",)) -> bool:
    """True if ``run_dir`` holds a run of ``cfg`` (to reuse or resume), False if empty/absent.

    A directory with other files, or a run of another config, is refused.
    """
    run_dir = Path(run_dir)
    if not (run_dir / RUN_FILE).exists():
        others = [p for p in run_dir.iterdir() if p.name not in BOOKKEEPING] if run_dir.is_dir() else []
        if others or run_dir.is_file():
            raise HeadkitError(f"{run_dir} is not empty and holds no headkit run: remove it or choose another --out")
        return False
    differ = config_differences(read_run_config(run_dir), cfg, ignore=ignore)
    if differ:
        raise HeadkitError(
            f"{run_dir} holds a {cfg.task.name} run with another config (differs in {', '.join(differ)}): "
            f"remove it or choose another --out"
        )
    return True
