"""How many CPU threads torch uses for headkit's commands.

headkit's models are small (the demo's have ~0.3 M parameters), so torch's
intra-op threads gain little even on an idle machine and lose a lot when other
processes compete for the cores: each operation waits for its slowest thread.
Measured with ``benchmarks/threads_speed.py`` (training steps of the demo's
number model, 2-core machine): on a quiet machine two threads ran 1.27x faster
than one for 1.37x the CPU time; under a load average of ~3-4 they ran 2.5x
*slower* (0.77 vs 0.31 s/step), and ~10x slower at load 8+.

So the command line picks the count itself (`auto_threads`): as many threads as
there are idle cores, judged from the 1-minute load average
(``round(cores - load)``), at least 1 and at most torch's own default. On a busy
machine that is one thread. ``--threads N`` (or ``OMP_NUM_THREADS``) overrides (the option: `headkit.cli.args.add_compute`).
The library itself never changes torch's setting; only the CLI does.
"""

from __future__ import annotations

import logging
import os

from headkit.checks import check_optional_int

log = logging.getLogger(__name__)

THREADS_HELP = (
    "torch CPU threads (default: one per idle core by the 1-minute load average, "
    "at least 1; small models lose speed to busy threads)"
)


def auto_threads(*, cores: int | None = None, load: float | None = None, ceiling: int | None = None) -> int:
    """Threads for a small model: ``round(cores - load)`` clamped to ``1..ceiling``.

    ``cores`` defaults to the CPUs this process may use, ``load`` to the 1-minute
    load average, ``ceiling`` to torch's default thread count.
    """
    import torch

    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if ceiling is None:
        ceiling = torch.get_num_threads()
    return max(1, min(ceiling, round(cores - load)))


def check_threads(value: int | None) -> int | None:
    """``--threads``: None (automatic) or a positive integer (`headkit.checks.check_optional_int`)."""
    return check_optional_int("--threads", value)


def use_threads(requested: int | None = None) -> int:
    """Set torch's intra-op threads: ``requested``, else ``OMP_NUM_THREADS``, else `auto_threads`.

    Returns the count set. Called at the start of every command that computes.
    """
    import torch

    check_threads(requested)
    if requested is None and os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        requested = max(1, int(os.environ["OMP_NUM_THREADS"]))
    threads = auto_threads() if requested is None else requested
    torch.set_num_threads(threads)
    log.info("torch uses %d CPU thread(s)", threads)
    return threads

