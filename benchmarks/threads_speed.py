"""Seconds per training step of the demo's number model with 1 and 2 torch threads.

Alternates the two settings (best of ``--repeats`` blocks of ``--steps`` updates
each) so that both see the same machine load; prints the load average too, since
the answer depends on it (headkit.cli.threads). Run:
``.venv/bin/python benchmarks/threads_speed.py [--steps 5] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import torch

from headkit.models import model_from_config
from headkit.training.config import default_config


def _block(model, opt, tokens, steps: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) per update."""
    cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        loss = model(tokens, return_type="loss")
        opt.zero_grad()
        loss.backward()
        opt.step()
    cpu1, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - wall0
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return wall / steps, cpu / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cfg = default_config("number")
    model = model_from_config(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = cfg.task.build(cfg.batch_size, seed=0).tokens
    print(f"load average before: {os.getloadavg()}, cores: {os.cpu_count()}")
    best: dict[int, tuple[float, float]] = {}
    for _ in range(args.repeats):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            wall, cpu = _block(model, opt, tokens, args.steps)
            if threads not in best or wall < best[threads][0]:
                best[threads] = (wall, cpu)
    for threads, (wall, cpu) in best.items():
        print(f"{threads} thread(s): {wall:.3f} s/step wall, {cpu:.3f} s/step CPU")
    print(f"speed-up of 2 threads: {best[1][0] / best[2][0]:.2f}x for {best[2][1] / best[1][1]:.2f}x CPU")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
