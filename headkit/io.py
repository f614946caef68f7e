"""Atomic file writing: a reader never sees a half-written file; reading stored configs back.

Every file headkit writes goes through `atomic_path`: the content is written to a
temporary file in the same directory, flushed, and renamed over the target, so a
crash or an error leaves either the old file or nothing, never a truncated one. A
folder whose files belong together (a report) goes through `atomic_folder`: built
beside its target and swapped in whole. Temporaries carry their writer's host and
pid (`temp_prefix`); those of a writer that is gone are removed by the next write
into their folder (`clean_stale_temporaries`), never any other file. A target that
is not a regular file is refused (`file_target`); a full disk is one `DiskFullError`
line naming the file (`disk_full`).
`read_json` reads a stored JSON file back with a clear error, and `stored_fields`
turns a stored JSON object into a config dataclass's arguments, refusing fields the
dataclass does not have.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

if TYPE_CHECKING:  # pandas is imported by write_csv's caller anyway; not at import (CLI start-up)
    import pandas as pd

from headkit.distributed import is_main
from headkit.errors import DiskFullError, HeadkitError

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``.

    On an exception the temporary file is removed and ``path`` is untouched; a full
    disk is a `HeadkitError` saying so and naming the file. A symlink is written
    through: its target is replaced, the link kept. An existing ``path`` that is not
    a regular file (a device, FIFO or socket) is refused, never replaced. Stale
    temporaries of killed headkit writers in the folder are removed first
    (`clean_stale_temporaries`). Under torch.distributed only rank 0 writes: other
    ranks write into a temporary directory that is then removed
    (`headkit.distributed.is_main`).
    """
    if not is_main():
        with tempfile.TemporaryDirectory() as scratch:
            yield Path(scratch) / Path(path).name
        return
    target = file_target(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temporaries(target.parent)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=temp_prefix(target.name), suffix=".tmp")
    except OSError as error:
        raise disk_full(error, target) or error
    os.close(fd)
    tmp_path = Path(tmp)
    honour_umask(tmp_path)  # mkstemp makes it 0600; the file should get the usual 0644 (umask 022)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
    except BaseException as error:
        tmp_path.unlink(missing_ok=True)
        full = disk_full(error, target)
        if full is not None:
            raise full from None
        raise


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path`` whole.

    A folder of files that belong together (a report: its page and the tables
    behind it) is written as one unit: a reader, or a process killed midway, sees
    the old folder or the new one, never new tables beside an old page. The
    temporary is named by `temp_prefix`, so a killed writer's is removed by the
    next write there (`clean_stale_temporaries`). A symlink is written through.
    Under torch.distributed only rank 0 writes.
    """
    if not is_main():
        with tempfile.TemporaryDirectory() as scratch:
            yield Path(scratch)
        return
    target = Path(os.path.realpath(path)) if Path(path).is_symlink() else Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temporaries(target.parent)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=temp_prefix(target.name), suffix=".tmp"))
    except OSError as error:
        raise disk_full(error, target) or error
    try:
        yield tmp
        honour_umask(tmp)  # mkdtemp makes it 0700
        swap_folder(tmp, target)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        full = error if isinstance(error, DiskFullError) else disk_full(error, target)
        if full is not None:  # name the folder asked for, not its hidden temporary
            raise DiskFullError(str(full).replace(str(tmp), str(target))) from None
        raise


def swap_folder(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing ``target`` is moved aside first and removed after.

    The parent directory is synced after the rename, so the swap survives a crash.
    Shared by `atomic_folder` (reports) and `headkit.training.checkpoints` (checkpoint folders).
    """
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=temp_prefix(target.name), suffix=".old"))
        os.rename(target, old / target.name)
    try:
        os.rename(tmp, target)
    except BaseException:
        if old is not None:
            os.rename(old / target.name, target)
            shutil.rmtree(old, ignore_errors=True)
        raise
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def file_target(path: str | os.PathLike) -> Path:
    """The file a write to ``path`` replaces: ``path``, or the target of a symlink.

    Refused (`HeadkitError`): a symlink loop, and an existing target that is not a
    regular file (replacing ``/dev/null`` as root would replace the system's file).
    """
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return target
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise HeadkitError(f"cannot write {path}: it is a symlink loop") from None
        raise
    if not stat.S_ISREG(mode):
        raise HeadkitError(f"cannot write {path}: it exists and is not a regular file (a device, FIFO or socket)")
    return target


# --- temporaries: named after their writer, removed once it is gone ------------------------

_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
_TEMPORARY = re.compile(r"^\.(.+)\.headkit-([0-9a-f]{6})-([0-9]+)-[a-z0-9_]+\.(tmp|old)$")


def temp_prefix(name: str) -> str:
    """The prefix of a temporary headkit writes beside ``name``: ``.NAME.headkit-HOST-PID-``
    (then mkstemp's random part and ``.tmp`` or ``.old``), so that `clean_stale_temporaries`
    knows its writer."""
    return f".{name}.headkit-{_HOST}-{os.getpid()}-"


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def clean_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove headkit's temporaries in ``folder`` whose writer (a process on this host) is gone.

    Only names `temp_prefix` makes are considered, never another file; a temporary
    of a process still running, or of another host, is left alone.
    """
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for path in entries:
        match = _TEMPORARY.match(path.name)
        if match is None or match.group(2) != _HOST or _running(int(match.group(3))):
            continue
        name, kind = match.group(1), match.group(4)
        moved_aside = path / name
        if kind == "old" and moved_aside.exists() and not (path.parent / name).exists():
            os.rename(moved_aside, path.parent / name)  # killed between the two renames of a swap: put it back
            logger.warning("restored %s, moved aside by an interrupted headkit write", path.parent / name)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
        logger.warning("removed %s, left by an interrupted headkit write", path)
    return removed


# --- a full disk -------------------------------------------------------------------------------

# what torch.save raises when its stream cannot be written (its own text; the errno is lost)
TORCH_WRITE_FAILURES = ("basic_ios::clear", "PytorchStreamWriter failed writing", "file write failed")


def disk_full(error: BaseException, path: str | os.PathLike) -> DiskFullError | None:
    """The one-line error for a write of ``path`` that failed because the disk is full, or None.

    ``error`` is an OSError with ENOSPC or EDQUOT, an error whose text says so
    (safetensors: "No space left on device"), or torch.save's RuntimeError for a
    failed write (which does not say why: a full disk is then the likely cause).
    """
    folder = Path(path).parent
    errno_ = error.errno if isinstance(error, OSError) else None
    if errno_ in (errno.ENOSPC, errno.EDQUOT) or (errno_ is None and "No space left on device" in str(error)):
        why = "the disk quota is exceeded" if errno_ == errno.EDQUOT else "the disk is full"
        return DiskFullError(
            f"{why}: could not write {path} (the file system holding {folder}); "
            "files already written are unchanged: free space and run again"
        )
    if isinstance(error, RuntimeError) and any(text in str(error) for text in TORCH_WRITE_FAILURES):
        said = str(error).strip().splitlines()[-1][:120]
        return DiskFullError(
            f"the disk is probably full: could not write {path} (torch: {said}); check the free space of the "
            f"file system holding {folder}; files already written are unchanged"
        )
    return None


def honour_umask(path: str | os.PathLike) -> None:
    """Give ``path`` (a folder: and all in it) the permissions a plain ``open``/``mkdir`` would.

    That is 0666 (files) or 0777 (folders) minus the umask.

    `tempfile.mkstemp` and `tempfile.mkdtemp` create owner-only files (0600) and
    folders (0700), and safetensors writes 0600 files; what headkit writes
    should be as readable as any other file the user writes.
    """
    mask = os.umask(0)
    os.umask(mask)
    for item in [Path(path), *(Path(path).rglob("*") if Path(path).is_dir() else ())]:
        os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_csv(path: str | os.PathLike, df: pd.DataFrame) -> Path:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return Path(path)


def read_json(path: str | os.PathLike, *, missing: str, invalid: str = "is not valid JSON") -> Any:
    """The JSON value stored in ``path``; a HeadkitError when it is absent (``{path} not found: {missing}``)
    or not valid JSON (``{path} {invalid}: ...``, e.g. ``{path} is not valid JSON: ...``)."""
    path = Path(path)
    if not path.is_file():
        if path.exists():  # /dev/zero, a FIFO, a directory: reading one would hang or never end
            raise HeadkitError(f"{path} is not a regular file: a JSON file must be one")
        raise HeadkitError(f"{path} not found: {missing}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise HeadkitError(f"{path} {invalid}: {error}") from None


def stored_fields(cls: type, data: Any, *, what: str) -> dict[str, Any]:
    """``data`` (a stored JSON value, which must be an object) as keyword arguments of the dataclass ``cls``.

    A field ``cls`` does not have is refused, naming it: ``unknown {what} fields: ...``.
    """
    if not isinstance(data, Mapping):
        raise HeadkitError(f"{what} must be a JSON object, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise HeadkitError(f"unknown {what} fields: {', '.join(unknown)}")
    return dict(data)
