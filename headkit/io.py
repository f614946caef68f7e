"""Atomic file writing: a reader never sees a half-written file.

Every file headkit writes goes through `atomic_path`: the content is written to a
temporary file in the same directory, flushed, and renamed over the target, so a
crash or an error leaves either the old file or nothing, never a truncated one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:  # pandas is imported by write_csv's caller anyway; not at import (CLI start-up)
    import pandas as pd

from headkit.distributed import is_main


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
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


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
