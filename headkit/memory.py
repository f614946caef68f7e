"""Memory: how much a device has left, the one check that refuses what cannot fit, the one batcher.

- `available_memory(device)`: bytes this process may still allocate on ``device``.
  On the host (``cpu``, and any device that is not CUDA): Linux's ``MemAvailable``,
  else the physical memory, else unknown (never refused). On CUDA: what the driver
  reports free plus what torch's caching allocator holds reserved but unused (this
  process can reuse it: a second run in the same process is not refused because of
  the first one's cache).
- `check_memory(nbytes, what=..., advice=..., device=...)`: refuse, before any work,
  a request estimated to need more than that, in one `HeadkitError` naming what does
  not fit, the device, the bytes it needs and those available, and what to do.
  The estimates stay with what they estimate (`headkit.tasks.base.check_prompt_memory`:
  a task's prompts; `headkit.evaluation.estimate_bytes`: an evaluation;
  `headkit.training.loop.estimate_memory`: one training update).
- `batches(items, size)` / `grouped_batches(groups, size)`: work cut into runs of at
  most ``size`` items, so that one forward pass holds at most ``size`` rows. Every
  loop over chunks of prompts or stacked copies takes its runs from here
  (`headkit.evaluation.score_batch`, `headkit.scores.capture.query_chunks`, the swap
  metric's `collect_rows` and `residual_swaps`, the interventions engine's passes).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Protocol, TypeVar

import torch

from headkit.checks import check_int
from headkit.errors import HeadkitError


class _Sliceable(Protocol):
    """What `batches` cuts: a list, a range, a tuple or a tensor (its first axis)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: Any, /) -> Any: ...


class _Ordered(Protocol):
    def __lt__(self, other: Any, /) -> bool: ...


K = TypeVar("K", bound=_Ordered)
S = TypeVar("S", bound=_Sliceable)

UNKNOWN = 2**62  # bytes reported when the host's memory cannot be read: nothing is refused

_GIB = 2**30


def _host_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return UNKNOWN


def available_memory(device: str | torch.device = "cpu") -> int:
    """Bytes this process may still allocate on ``device`` (module docstring)."""
    device = torch.device(device)
    if device.type != "cuda":
        return _host_memory()
    free = int(torch.cuda.mem_get_info(device)[0])
    return free + int(torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def check_memory(nbytes: int, *, what: str, advice: str, device: str | torch.device = "cpu") -> None:
    """Refuse, before any work, ``what`` if its estimated ``nbytes`` exceed `available_memory` of ``device``.

    The message: ``{what} needs about X GiB of memory on {device} but only Y GiB is
    available: {advice}``.
    """
    have = available_memory(device)
    if nbytes > have:
        raise HeadkitError(
            f"{what} needs about {nbytes / _GIB:.1f} GiB of memory on {device} but only {have / _GIB:.1f} GiB "
            f"is available: {advice}"
        )


def batches(items: S, size: int) -> list[S]:
    """``items`` (a list, a range, a tensor's first axis) cut into consecutive runs of at most ``size``, in order.

    The one batcher: each run is a slice of ``items`` (a view of a tensor, no copy).
    """
    check_int("batch size", size)
    return [items[start : start + size] for start in range(0, len(items), size)]


def grouped_batches(groups: Mapping[K, S], size: int) -> list[tuple[K, S]]:
    """``(key, run)`` pairs: each group's items cut by `batches`, the groups in sorted key order.

    For work whose items cannot share a pass across groups (patches of different
    layers, prompts of different query positions).
    """
    return [(key, run) for key in sorted(groups) for run in batches(groups[key], size)]
