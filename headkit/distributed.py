"""Sweeps on more than one process: independent cells split across torch.distributed ranks.

An exact sweep is a list of independent *cells* (a chunk of stacked patches, a
chunk of senders, a chunk of prompts), each a few forward passes of the same
model. Under a ``torch.distributed`` process group every rank holds a replica of
the model and the inputs, runs its `share` of the cells (dealt back and forth:
with two ranks, cells 0, 3, 4, 7, ... and 1, 2, 5, 6, ...), and `map_cells` gathers the results with
``all_gather_object`` back into cell order, so every rank returns the whole
sweep and the code after the sweep runs identically everywhere. A cell computes
exactly what it computes in one process (same chunk, same stacking), so the
results are bit-for-bit those of one process.

- **Launch.** ``torchrun --nproc_per_node N -m headkit patch RUN ...`` (or
  ``accelerate launch``): `init_from_env` joins the group those launchers
  describe in ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
  ``MASTER_PORT`` (NCCL when CUDA is available, each rank on ``cuda:LOCAL_RANK``;
  gloo otherwise). A script that initialised a group itself is used as it is.
  Without a group (``WORLD_SIZE`` unset or 1) nothing changes: `map_cells` is a
  plain loop, today's code path.
- **Every rank calls every sweep.** The sweeps are collective: a sweep called on
  some ranks only waits for the others until the group's timeout.
- **Failures.** A cell that raises on one rank does not leave the others waiting:
  the rank stops its share and reports the error in the same gather, and every
  rank raises one `RankFailed` naming the rank, the cell and the error. A rank
  that dies or never reaches the gather makes the collective fail (or time out
  after ``HEADKIT_DIST_TIMEOUT`` seconds, default 1800): each rank that notices
  raises `GroupFailed`. torchrun tears down the other ranks when one exits with
  an error.
- **Output.** `is_main` is rank 0: in the command line only rank 0 prints
  (`launch`) and writes files (`headkit.io`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, TypeVar

from tqdm.auto import tqdm

if TYPE_CHECKING:  # torch is imported on first use: the command line starts without it
    import torch

from headkit.errors import HeadkitError

log = logging.getLogger(__name__)

TIMEOUT_ENV = "HEADKIT_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0
C = TypeVar("C")
R = TypeVar("R")

_owned = False  # whether this module initialised the process group (and so destroys it)
_local_depth = 0  # > 0 inside `local()`: sweeps run every cell on this rank
_failed_together = False  # a RankFailed was raised on every rank by the same gather


class RankFailed(HeadkitError):
    """A rank of the process group failed: the same error is raised on every rank."""


class GroupFailed(HeadkitError):
    """The process group broke during a sweep (a rank died or never came): raised where noticed."""


@dataclass(frozen=True)
class World:
    """This process's place in the process group (rank 0 of 1 without one)."""

    rank: int
    size: int
    local_rank: int  # the GPU index on this node (torchrun's LOCAL_RANK)


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise HeadkitError(f"environment variable {name}={text!r} must be an integer") from None


def _timeout() -> timedelta:
    text = os.environ.get(TIMEOUT_ENV)
    if text is None or text == "":
        return timedelta(seconds=DEFAULT_TIMEOUT_S)
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise HeadkitError(f"{TIMEOUT_ENV}={text!r} must be a positive number of seconds")
    return timedelta(seconds=seconds)


def _torch_dist() -> Any:
    """``torch.distributed``, imported on first use (``headkit --help`` must not import torch)."""
    import torch.distributed

    return torch.distributed


def _initialised() -> bool:
    # no group can exist before torch.distributed was imported: don't import torch to learn that
    dist = sys.modules.get("torch.distributed")
    return dist is not None and dist.is_available() and dist.is_initialized()


def world() -> World:
    """Rank and size of the initialised process group; rank 0 of 1 without one."""
    if not _initialised():
        return World(0, 1, 0)
    dist = _torch_dist()
    return World(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))


def is_main() -> bool:
    """Whether this process is rank 0 (of the group, else of torchrun's ``RANK``); never joins a group."""
    return (_torch_dist().get_rank() if _initialised() else _env_int("RANK", 0)) == 0


def _backend() -> str:
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def init_from_env() -> World:
    """Join the process group a launcher describes (``WORLD_SIZE`` > 1), unless already in one.

    Backend NCCL when CUDA is available (the rank's device becomes
    ``cuda:LOCAL_RANK``), gloo otherwise; collectives time out after
    ``HEADKIT_DIST_TIMEOUT`` seconds. Returns `world()`.
    """
    global _owned
    if _initialised() or _env_int("WORLD_SIZE", 1) <= 1:
        return world()
    import torch

    dist = _torch_dist()
    if not dist.is_available():
        raise HeadkitError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise HeadkitError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} unset: launch with "
            "torchrun (or accelerate launch), which sets them"
        )
    backend, timeout = _backend(), _timeout()
    if backend == "nccl":
        torch.cuda.set_device(_env_int("LOCAL_RANK", 0))
    dist.init_process_group(backend, timeout=timeout)
    _owned = True
    log.info("joined a %s process group: rank %d of %d", backend, dist.get_rank(), dist.get_world_size())
    return world()


def shutdown() -> None:
    """Leave the process group if `init_from_env` created it."""
    global _owned
    if _owned and _initialised():
        _torch_dist().destroy_process_group()
    _owned = False


def rank_device(device: str | None) -> str | None:
    """The device this rank should use for ``device``: under NCCL, ``cuda`` (or None) means
    ``cuda:LOCAL_RANK``; anything else (and everything without NCCL) is kept."""
    if not _initialised() or _torch_dist().get_backend() != "nccl" or device not in (None, "cuda"):
        return device
    return f"cuda:{world().local_rank}"


@contextlib.contextmanager
def launch() -> Iterator[World]:
    """The command line's process-group session: join (`init_from_env`), silence ranks > 0, leave.

    Ranks other than 0 print nothing to stdout and log only errors. After a
    `RankFailed` that every rank raised together (and the caller handled), the
    ranks meet once more before leaving, so that no rank exits, and has the
    launcher tear the job down, before rank 0 has printed the error. The group is
    destroyed on the way out if this call created it.
    """
    global _failed_together
    current = init_from_env()
    root = logging.getLogger()
    level = root.level
    _failed_together = False
    try:
        if current.rank == 0:
            yield current
        else:
            root.setLevel(logging.ERROR)
            with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
                yield current
        if _failed_together and _initialised():
            _torch_dist().barrier()
    finally:
        _failed_together = False
        root.setLevel(level)
        shutdown()


@contextlib.contextmanager
def local() -> Iterator[None]:
    """Inside, `map_cells` runs every cell on this rank, as without a process group
    (for work done on some ranks only, e.g. a one-process reference on rank 0)."""
    global _local_depth
    _local_depth += 1
    try:
        yield
    finally:
        _local_depth -= 1


def reports(exc: BaseException) -> bool:
    """Whether this rank should print ``exc``: a `RankFailed` (raised on every rank) only on rank 0."""
    return not isinstance(exc, RankFailed) or is_main()


# --- the sweep loop -------------------------------------------------------------------


def _portable(obj: Any) -> Any:
    """``obj`` with every tensor detached, on the CPU and compact (a view pickles its whole storage)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if type(obj) in (list, tuple):
        return type(obj)(_portable(o) for o in obj)
    return obj  # anything else is pickled as it is


def _placed(obj: Any, device: torch.device | str | None) -> Any:
    if device is None:
        return obj
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if type(obj) in (list, tuple):
        return type(obj)(_placed(o, device) for o in obj)
    return obj


@dataclass(frozen=True)
class _Failure:
    cell: int  # index in the full list of cells
    error: str  # what the rank raised, as it would print


def share(rank: int, size: int, n_cells: int) -> list[int]:
    """The cells of ``rank``: dealt in a snake order (0, 1, ..., size-1, size-1, ..., 0, 0, 1, ...).

    A sweep's cells come ordered by layer, and a later layer's cell costs less
    (the forward starts there): dealing back and forth evens the ranks' loads
    better than round-robin.
    """
    return [i for i in range(n_cells) if (i % size if (i // size) % 2 == 0 else size - 1 - i % size) == rank]


def _run_share(
    fn: Callable[[C], R], cells: Sequence[C], ids: list[int], bar: dict[str, Any]
) -> tuple[list[R], _Failure | None]:
    """This rank's results, stopping at its first failing cell."""
    done: list[R] = []
    for i in tqdm(ids, **bar):
        try:
            done.append(fn(cells[i]))
        except Exception as exc:  # reported to every rank through the gather
            if not isinstance(exc, HeadkitError):
                log.exception("rank %d: cell %d raised", world().rank, i)
            message = str(exc) if isinstance(exc, HeadkitError) else f"{type(exc).__name__}: {exc}"
            return done, _Failure(i, message)
    return done, None


def map_cells(
    fn: Callable[[C], R],
    cells: Sequence[C],
    *,
    desc: str,
    progress: bool | None = False,
    leave: bool = True,
    device: torch.device | str | None = None,
) -> list[R]:
    """``[fn(cell) for cell in cells]``, the cells split across the ranks of the process group.

    Without a group (or a group of one, or inside `local`) this is exactly that loop, behind a tqdm
    bar (``progress``: True shows it, False hides it, None lets tqdm decide).
    Under a group, each rank runs its `share` of the cells and the results are
    gathered onto every rank in cell order; tensors travel through the CPU and
    land on ``device`` (None: they stay on the CPU). A cell that raises on any
    rank makes every rank raise one `RankFailed`; a rank that died, `GroupFailed`.
    """
    current = init_from_env()
    bar: dict[str, Any] = dict(desc=desc, disable=None if progress is None else not progress, leave=leave)
    if current.size == 1 or _local_depth > 0:
        return [fn(cell) for cell in tqdm(cells, **bar)]
    if current.rank != 0:
        bar["disable"] = True
    done, failure = _run_share(fn, cells, share(current.rank, current.size, len(cells)), bar)
    shares: list[Any] = [None] * current.size
    try:
        _torch_dist().all_gather_object(shares, (_portable(done), failure))
    except RuntimeError as exc:  # a rank died, left, or never came: no answer to wait for
        raise GroupFailed(
            f"rank {current.rank} of {current.size}: the process group failed during {desc} "
            f"(a rank died or did not reach the sweep within {TIMEOUT_ENV}="
            f"{_timeout().total_seconds():g} s): {exc}"
        ) from exc
    failures = [(r, f) for r, (_, f) in enumerate(shares) if f is not None]
    if failures:
        global _failed_together
        _failed_together = True
        rank, first = failures[0]
        raise RankFailed(
            f"rank {rank} of {current.size} failed ({desc}, cell {first.cell + 1} of {len(cells)}): {first.error}"
        )
    results: list[Any] = [None] * len(cells)
    for rank, (done_there, _) in enumerate(shares):
        for i, result in zip(share(rank, current.size, len(cells)), done_there):
            results[i] = _placed(result, device)
    return results
