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
machine that is one thread. ``--threads N`` (or ``OMP_NUM_THREADS``) overrides (the option: `headkit.cli.args.add_compute`),
1..4 per CPU this process may use; another value is refused naming it (`check_threads`,
`env_threads`), by the CLI before torch is imported.
The library itself never changes torch's setting; only the CLI does.
"""

from __future__ import annotations

import logging
import os

from headkit.checks import check_optional_int, is_number
from headkit.errors import HeadkitError

log = logging.getLogger(__name__)

THREADS_HELP = (
    "torch CPU threads (default: one per idle core by the 1-minute load average, "
    "at least 1; small models lose speed to busy threads)"
)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), at least 1."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


OVERSUBSCRIPTION = 4  # threads per usable CPU headkit still accepts


def max_threads() -> int:
    """The largest thread count accepted: `OVERSUBSCRIPTION` per usable CPU.

    A modest oversubscription is legal and common (an ``OMP_NUM_THREADS`` exported for
    a larger machine, CPU quotas that the affinity mask does not show), so it is
    allowed, only slower; a count far beyond the machine (10**6 threads, an integer
    that overflows ``set_num_threads``) is refused.
    """
    return OVERSUBSCRIPTION * usable_cpus()


def auto_threads(*, cores: int | None = None, load: float | None = None, ceiling: int | None = None) -> int:
    """Threads for a small model: ``round(cores - load)`` clamped to ``1..ceiling``.

    ``cores`` defaults to the CPUs this process may use, ``load`` to the 1-minute
    load average, ``ceiling`` to torch's default thread count.
    """
    import torch

    if cores is None:
        cores = usable_cpus()
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if ceiling is None:
        ceiling = torch.get_num_threads()
    return max(1, min(ceiling, round(cores - load)))


def check_threads(value: int | None) -> int | None:
    """``--threads``: None (automatic) or an integer 1..`max_threads`.

    A huge count makes torch start that many threads (or overflow inside
    ``set_num_threads``).
    """
    check_optional_int("--threads", value)
    limit = max_threads()
    if value is not None and value > limit:
        raise HeadkitError(
            f"--threads={value} is out of range: allowed 1..{limit} ({OVERSUBSCRIPTION} per CPU this process may use)"
        )
    return value


def env_threads() -> int | None:
    """``OMP_NUM_THREADS`` as a thread count (None when unset or empty), checked like `check_threads`.

    A value torch cannot use is an error naming it, not silently ignored or a
    traceback: non-ASCII digits (``²``, which ``str.isdigit`` accepts and ``int``
    reads), lists (``4,2``), 0, or more than `max_threads`. Torch-free, so the command
    line checks it before torch (whose OpenMP runtime also reads it) is imported.
    """
    text = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not text:
        return None
    limit = max_threads()
    if not is_number(text) or not 1 <= int(text) <= limit:
        raise HeadkitError(
            f"OMP_NUM_THREADS={text!r} is not a thread count: allowed 1..{limit} "
            f"({OVERSUBSCRIPTION} per CPU this process may use), in ASCII digits; or unset it"
        )
    return int(text)


def use_threads(requested: int | None = None) -> int:
    """Set torch's intra-op threads: ``requested``, else ``OMP_NUM_THREADS``, else `auto_threads`.

    Returns the count set. Called at the start of every command that computes.
    Both counts are checked (`check_threads`, `env_threads`) before torch is touched.
    """
    check_threads(requested)
    if requested is None:
        requested = env_threads()
    import torch

    threads = auto_threads() if requested is None else requested
    torch.set_num_threads(threads)
    log.info("torch uses %d CPU thread(s)", threads)
    return threads
