"""Start-up time of the command line beside bare Python (issue 10's target, measured, not tested).

Best of ``--repeat`` runs each, side by side in one run: ``python -c pass``, ``headkit
--help``, ``headkit ablate --help``, an argument error and ``headkit info`` of a small
run directory written here. Prints seconds and the ratio to bare Python; issue 10 asked
for ``headkit`` within 4x bare Python plus 0.75 s (it took 13-18 s when the parser
imported torch). ``tests/cli/test_cli_startup.py`` pins the cause: nothing heavy is imported.

    python benchmarks/cli_startup.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCRIPT = Path(sys.executable).with_name("headkit")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def best_of(argv: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(argv, capture_output=True, env=ENV, timeout=120)
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from headkit.training.config import default_config

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        (run / "checkpoints" / "step_0000002").mkdir(parents=True)
        (run / "run.json").write_text(json.dumps(default_config("copy", steps=4).to_dict()))
        (run / "metrics.csv").write_text("step,train_loss,accuracy\n0,,0.1\n2,3.5,0.25\n4,3.1,0.5\n")
        cases = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "headkit --help": [str(SCRIPT), "--help"],
            "headkit ablate --help": [str(SCRIPT), "ablate", "--help"],
            "argument error": [str(SCRIPT), "census", "nowhere", "--seed", str(2**70), "--out", "x.csv"],
            "headkit info RUN": [str(SCRIPT), "info", str(run)],
        }
        seconds = {name: best_of(argv, args.repeat) for name, argv in cases.items()}
    bare = seconds["python -c pass"]
    print(f"best of {args.repeat}, load average {os.getloadavg()[0]:.2f}")
    for name, value in seconds.items():
        print(f"{name:24s} {value:6.2f} s   {value / bare:5.1f}x bare python   within 4x + 0.75 s: {value < 4 * bare + 0.75}")


if __name__ == "__main__":
    main()
