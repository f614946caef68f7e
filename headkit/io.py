"""Atomic file writing: a reader never sees a half-written file; reading stored configs back.

Every file headkit writes goes through `atomic_path`: the content is written to a
temporary file in the same directory, flushed, and renamed over the target, so a
crash or an error leaves either the old file or nothing, never a truncated one.
`read_json` reads a stored JSON file back with a clear error, and `stored_fields`
turns a stored JSON object into a config dataclass's arguments, refusing fields the
dataclass does not have.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

if TYPE_CHECKING:  # pandas is imported by write_csv's caller anyway; not at import (CLI start-up)
    import pandas as pd

from headkit.distributed import is_main
from headkit.errors import HeadkitError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``.

    On an exception the temporary file is removed and ``path`` is untouched.
    Under torch.distributed only rank 0 writes: other ranks write into a
    temporary directory that is then removed (`headkit.distributed.is_main`).
    """
    if not is_main():
        with tempfile.TemporaryDirectory() as scratch:
            yield Path(scratch) / Path(path).name
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    honour_umask(tmp_path)  # mkstemp makes it 0600; the file should get the usual 0644 (umask 022)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


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


def read_json(path: str | os.PathLike, *, missing: str) -> Any:
    """The JSON value stored in ``path``; a HeadkitError when it is absent (``{path} not found: {missing}``)
    or not valid JSON (``{path} is not valid JSON: ...``)."""
    path = Path(path)
    if not path.is_file():
        raise HeadkitError(f"{path} not found: {missing}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise HeadkitError(f"{path} is not valid JSON: {error}") from None


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
