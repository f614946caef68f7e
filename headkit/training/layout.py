"""The run directory's layout, in one place, without torch: names, listing, status, locking.

Layout::

    RUN/
        run.json            the TrainConfig (written once the first update succeeded)
        metrics.csv         one row per evaluation (rewritten atomically)
        checkpoints/step_NNNNNNN/   Hugging Face GPT-J directory + headkit metadata
            config.json, model.safetensors, meta.json, optimizer.pt, rng.pt
        .headkit.lock       held (fcntl) by the process writing the run; holds its pid

The bottom of `headkit.training`: it imports nothing of headkit but `checks`,
`errors` and `io`, and nothing heavy, so ``headkit info`` and ``headkit --help``
answer without importing torch. What it decides for every command:

- `is_run_dir`, `run_of_checkpoint`, `list_checkpoints`, `latest_checkpoint`,
  `checkpoint_dir`, `step_of_dir`: where a run's checkpoints are.
- `read_run_json` (the one reader of ``run.json`` as JSON; `headkit.training.config.read_run_config`
  builds the TrainConfig from it), `last_metrics_row` and `run_status`: where a run stands.
- `check_new_run` / `check_no_foreign_files`: a directory that already holds a run
  is refused for a new one (resume it instead); a directory of other files, holding
  no run, is refused.
- `check_output_path`: a path a command may write, never a run's or a checkpoint's own files.
- `RunLock`: an exclusive lock while a process writes a run. A second writer is
  refused at once, naming the holder's pid. The kernel drops an ``fcntl`` lock
  when its process dies, so a lock file left by a killed process is stale and is
  simply taken over (logged); a clean exit removes the file.
- `clean_temporaries`: hidden ``.step_*.tmp-*`` / ``.old-*`` / ``.step_*.headkit-*`` directories and
  ``.*.tmp`` files that a killed process left behind, removed on the next open
  (only under the lock, so never another writer's files in flight).
"""

from __future__ import annotations

import csv
import errno
import fcntl
import logging
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from headkit.checks import check_int, some_names
from headkit.errors import HeadkitError
from headkit.io import read_json

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
METRICS_FILE = "metrics.csv"
CHECKPOINTS_DIR = "checkpoints"
LOCK_FILE = ".headkit.lock"
RUN_OWNED = (RUN_FILE, METRICS_FILE, CHECKPOINTS_DIR)  # a run directory's own entries (and hidden files)
# one checkpoint directory, checkpoints/step_NNNNNNN/
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
META_FILE = "meta.json"  # headkit's metadata; marks a checkpoint directory
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.pt"
BOOKKEEPING = {LOCK_FILE}  # files that do not make a directory "hold a run"


def is_run_dir(path: str | os.PathLike) -> bool:
    """True if ``path`` holds a headkit run (``run.json`` or ``checkpoints/``)."""
    path = Path(path)
    return (path / RUN_FILE).is_file() or (path / CHECKPOINTS_DIR).is_dir()


def is_one_checkpoint(path: str | os.PathLike) -> bool:
    """True for a checkpoint directory given on its own (``meta.json``), not a run directory."""
    return (Path(path) / META_FILE).is_file() and not is_run_dir(path)


def run_of_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The run directory ``RUN`` of ``RUN/checkpoints/step_N`` (None outside a run)."""
    folder = Path(folder)
    run = folder.parent.parent
    if folder.parent.name == CHECKPOINTS_DIR and (run / RUN_FILE).is_file():
        return run
    return None


def _is_headkit_file(name: str) -> bool:
    """The lock, and temporaries of a run's first files, which a directory holding no run yet may have."""
    return name in BOOKKEEPING or (
        name.endswith(".tmp") and name.startswith((f".{RUN_FILE}.", f".{METRICS_FILE}."))
    )


def check_no_foreign_files(run_dir: str | os.PathLike) -> None:
    """Refuse a directory that holds no ``run.json`` but holds files headkit did not write there
    (training would write its ``metrics.csv`` over a user's own)."""
    run_dir = Path(run_dir)
    if is_run_dir(run_dir) or not run_dir.is_dir():
        return
    others = sorted(p.name for p in run_dir.iterdir() if not _is_headkit_file(p.name))
    if others:
        shown = some_names(others)
        raise HeadkitError(
            f"{run_dir} is not empty and holds no headkit run (it has {shown}): "
            "remove them or choose another directory"
        )


def check_new_run(run_dir: str | os.PathLike) -> None:
    """Refuse to start a new run in a directory that already holds one, or holds other files."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise HeadkitError(f"{run_dir} exists and is not a directory")
    if is_run_dir(run_dir):
        raise HeadkitError(
            f"{run_dir} already holds a run: resume it (resume=True / --resume) or choose another directory"
        )
    check_no_foreign_files(run_dir)


def clean_temporaries(run_dir: str | os.PathLike) -> list[Path]:
    """Remove what killed writers left behind (call only while holding the run's lock)."""
    run_dir = Path(run_dir)
    removed = []
    for folder in (run_dir, run_dir / CHECKPOINTS_DIR):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            name = path.name
            stale_dir = path.is_dir() and name.startswith(".step_") and any(
                mark in name for mark in (".tmp-", ".old-", ".headkit-")  # the last: io.swap_folder's aside copy
            )
            stale_file = path.is_file() and name.startswith(".") and name.endswith(".tmp")
            if stale_dir:
                shutil.rmtree(path, ignore_errors=True)
            elif stale_file:
                path.unlink(missing_ok=True)
            else:
                continue
            removed.append(path)
            logger.warning("removed %s, left by an interrupted write", path)
    return removed


class RunLock:
    """Exclusive lock on a run directory while this process writes it (a context manager).

    The directory is created if needed. The lock file keeps the holder's pid; a
    second process (or a second lock in this one) is refused at once with a
    one-line error naming it.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise HeadkitError(f"{self.run_dir} exists and is not a directory")
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise HeadkitError(f"cannot create run directory {self.run_dir}: {error.strerror}") from None
        while True:  # the lock file is removed on release: retry if it went away under us
            fd = self._open_locked()
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = os.read(fd, 64).decode(errors="replace").strip()
        if previous.isdigit() and int(previous) != os.getpid():  # the holder died without releasing
            logger.warning("taking over a stale lock of %s (pid %s, no longer running)", self.run_dir, previous)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def _open_locked(self) -> int:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise HeadkitError(f"cannot create the lock file {self.path}: {error.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise HeadkitError(
                    f"{self.run_dir} is in use by another headkit process (pid {holder}): "
                    "wait for it to finish or stop it"
                ) from None
            raise HeadkitError(f"cannot lock {self.path}: {error.strerror}") from None
        return fd

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # before unlocking, so no one locks a removed file
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


# --- layout, torch-free (``headkit info`` answers without importing torch) ------------------

_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    """RUN/checkpoints/step_{step:07d}."""
    return Path(run_dir) / "checkpoints" / f"step_{check_int('step', step, low=0):07d}"


def step_of_dir(path: str | os.PathLike) -> int | None:
    """The step a ``step_NNNNNNN`` directory name stands for (None for other names)."""
    match = _STEP_DIR.match(Path(path).name)
    return int(match.group(1)) if match else None


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
        step = step_of_dir(path)
        if step is not None and path.is_dir():
            found.append((step, path))
    return sorted(found)


def read_run_json(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``run.json`` as plain JSON (the TrainConfig's fields), read without torch; a clear error
    if it is absent or not a JSON object with a task and a step count."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise HeadkitError(f"{run_dir} is not a headkit run directory: {RUN_FILE} is missing")
    data = read_json(path, missing="", invalid="is corrupted")  # not JSON: "{path} is corrupted: ..."
    try:
        if not isinstance(data, dict) or not isinstance(data["task"]["name"], str) or not isinstance(data["steps"], int):
            raise TypeError("not a training config")
    except (TypeError, KeyError) as exc:
        raise HeadkitError(f"{path} is corrupted: {exc}") from None
    return data


def last_metrics_row(run_dir: str | os.PathLike) -> dict[str, str] | None:
    """The last row of ``metrics.csv`` as text fields (None without rows or file), read without pandas.

    A file that is not UTF-8 CSV, a row with more or fewer fields than the header, or a
    last row without a step number is a `HeadkitError` naming the file and the line.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return None
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            rows = [(reader.line_num, row) for row in reader if row]  # blank lines skipped
    except (UnicodeDecodeError, csv.Error) as exc:
        raise HeadkitError(f"{path} is corrupted: {exc}") from None
    if header is None:  # an empty file (no rows either)
        return None
    for line, row in rows:
        if len(row) != len(header):
            raise HeadkitError(
                f"{path} is corrupted: line {line} has {len(row)} field{'s' * (len(row) != 1)} but its header has {len(header)}"
            )
    if not rows:
        return None
    last = dict(zip(header, rows[-1][1]))
    try:
        float(last["step"])
    except (KeyError, ValueError):
        raise HeadkitError(f"{path} is corrupted: line {rows[-1][0]} has no step number") from None
    return last


@dataclass(frozen=True)
class RunStatus:
    """Where a run stands (for ``headkit info``)."""

    checkpoint_steps: tuple[int, ...]  # steps with a checkpoint directory
    last_metrics_step: int | None  # step of the last metrics row
    planned_steps: int  # cfg.steps

    @property
    def last_checkpoint(self) -> int | None:
        return self.checkpoint_steps[-1] if self.checkpoint_steps else None

    @property
    def complete(self) -> bool:
        return self.last_checkpoint == self.planned_steps

    def describe(self) -> str:
        """One line: complete, or how far the run got and what resume would do."""
        if self.complete:
            return f"complete: checkpoint at the final step {self.planned_steps}"
        last = self.last_checkpoint
        metrics = "" if self.last_metrics_step is None else f", metrics reach step {self.last_metrics_step}"
        if last is None:
            return f"incomplete: no checkpoint yet{metrics}; --resume starts it from step 0"
        return (
            f"incomplete: last checkpoint at step {last} of {self.planned_steps}{metrics}; "
            f"--resume continues from step {last}"
        )


def run_status(run_dir: str | os.PathLike) -> RunStatus:
    """Where a run stands, read from its files without importing torch."""
    planned = read_run_json(run_dir)["steps"]
    row = last_metrics_row(run_dir)
    last = None if row is None else int(float(row["step"]))
    steps = tuple(step for step, _ in list_checkpoints(run_dir))
    return RunStatus(checkpoint_steps=steps, last_metrics_step=last, planned_steps=planned)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The directory of the highest-step checkpoint of a run."""
    found = list_checkpoints(run_dir)
    if not found:
        raise HeadkitError(f"run directory {run_dir} has no checkpoints (expected checkpoints/step_*/)")
    return found[-1][1]


def check_output_path(
    out: str | os.PathLike,
    *,
    inputs: Iterable[str | os.PathLike] = (),
    option: str = "--out",
    directory: bool = False,
) -> Path:
    """``out`` as a Path a command may write, checked before any work.

    Refused, naming the reason: a path that would write over a file belonging to a
    run directory (its ``run.json``, ``metrics.csv``, anything under
    ``checkpoints/``, its hidden lock and temporary files) or into a checkpoint
    directory; a path equal to one of ``inputs``, or an existing file inside an
    input directory; a directory where a file is expected (or a file where
    ``directory=True`` expects a directory); and a location where nothing can be
    written (a read-only directory, ``/proc``, a parent that is a file), tested by
    creating and removing a temporary file in the nearest existing directory. Also
    refused: an empty path, a file path ending in ``/``, a symlink loop, a dangling
    symlink, and an existing target that is not a regular file (a device, FIFO or
    socket: `headkit.io.atomic_path` would replace it). A symlink to a regular file
    is allowed: the write goes through it to its target.
    """
    text = os.fspath(out)
    where = f"{option} {out}"
    if text == "":
        raise HeadkitError(f"{option} is empty: give a {'directory' if directory else 'file'} path")
    if not directory and text.endswith(("/", os.sep)):
        raise HeadkitError(f"{where} ends with '/', which names a directory: give a file name (without the '/')")
    path = Path(out)
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise HeadkitError(f"{where} is a symlink loop: give a path that resolves") from None
    if path.is_symlink() and not path.exists():
        raise HeadkitError(f"{where} is a symlink to {os.readlink(path)}, which does not exist: give the target itself")
    if path.exists():
        if directory and not path.is_dir():
            raise HeadkitError(f"{where} exists and is not a directory")
        if not directory and path.is_dir():
            raise HeadkitError(f"{where} is a directory: give a file name")
        if not directory and not path.is_file():
            raise HeadkitError(
                f"{where} exists and is not a regular file ({_file_kind(path)}): headkit writes a file by "
                "replacing it, and never replaces a device, FIFO or socket"
            )
    target = path.resolve()
    _check_not_run_owned(target, where)
    for item in inputs:
        source = Path(item).resolve()
        if target == source or (path.exists() and not directory and source in target.parents):
            raise HeadkitError(f"{where} would write over this command's input {item}: choose another path")
    _check_writable(target if directory and path.is_dir() else target.parent, where)
    return path


def _file_kind(path: Path) -> str:
    mode = path.stat().st_mode
    for test, kind in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):  # fmt: skip
        if test(mode):
            return kind
    return "not a file"


def _check_not_run_owned(target: Path, where: str) -> None:
    for folder in target.parents:
        if (folder / META_FILE).is_file():
            raise HeadkitError(f"{where} is inside the checkpoint {folder}: a checkpoint's files are never overwritten")
        if (folder / RUN_FILE).is_file():
            entry = target.relative_to(folder).parts[0]
            if entry in RUN_OWNED or entry.startswith("."):
                raise HeadkitError(
                    f"{where} would write over {folder / entry}, which belongs to the run {folder}: "
                    f"choose a path outside {', '.join(RUN_OWNED)} (e.g. {folder / 'results.csv'})"
                )


def _check_writable(folder: Path, where: str) -> None:
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise HeadkitError(f"{where}: {existing} is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".headkit-write-test-")
    except OSError as exc:
        raise HeadkitError(f"{where}: cannot write in {existing} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)


def resolve_checkpoint(path: str | os.PathLike, *, step: int | None = None) -> Path:
    """A run directory -> its latest checkpoint (or the one of ``step``); a checkpoint -> itself."""
    path = Path(path)
    if not path.is_dir():
        raise HeadkitError(f"run directory {path} does not exist (or is not a directory)")
    if is_one_checkpoint(path):
        if step is not None:
            raise HeadkitError(f"{path} is one checkpoint: a step can be chosen only in a run directory")
        return path
    if step is None:  # a run directory, or a directory that is neither (then: "has no checkpoints")
        return latest_checkpoint(path)
    folder = checkpoint_dir(path, step)
    if not folder.is_dir():
        steps = ", ".join(str(s) for s, _ in list_checkpoints(path)) or "none"
        raise HeadkitError(f"{path} has no checkpoint at step {step}: it has {steps}")
    return folder
