"""``headkit --help``, ``headkit CMD --help``, argument errors and ``headkit info`` answer at once (issue 10).

They used to take 13-18 s because building the parser imported torch. The pin here is
deterministic: the parser, an argument error and ``info`` import none of torch,
TransformerLens, pandas, numpy or transformers (``python -c "import torch"`` alone
took 6.5 s on this machine under load). How long they take beside bare Python is
measured by ``benchmarks/cli_startup.py``, not asserted here (no timed tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformer_lens", "pandas", "numpy", "transformers")
COMMANDS = ("train", "eval", "info", "demo", "ablate", "patch", "path-patch", "census", "dynamics", "discrepancy")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


PROBE = """
import sys
from headkit.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("HEAVY:" + ",".join(m for m in {heavy!r} if m in sys.modules))
"""


@pytest.mark.parametrize(
    "argv",
    [["--help"]]
    + [[command, "--help"] for command in COMMANDS]
    + [
        ["ablate", "run", "--seed", str(2**70)],
        ["ablate", "run", "--heads", "\u00b2.0"],
        ["path-patch", "run", "--receivers", "1.0.x"],
        ["eval", "run", "--out", "/proc/x.csv"],
        ["census", "run", "--n-prompts", "0", "--out", "x.csv"],
    ],
)
def test_parser_and_argument_errors_import_nothing_heavy(argv, tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv],
        capture_output=True, text=True, env=ENV, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    loaded = done.stdout.splitlines()[-1]
    assert loaded.startswith("HEAVY:"), done.stdout
    assert loaded == "HEAVY:", f"headkit {' '.join(argv)} imported {loaded[6:]}"


@pytest.fixture
def run_files(tmp_path):
    """A run directory's files as training writes them (run.json, metrics.csv, checkpoint folders)."""
    from headkit.training.config import default_config

    run = tmp_path / "run"
    (run / "checkpoints" / "step_0000002").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps(default_config("copy", steps=4).to_dict()))
    (run / "metrics.csv").write_text("step,train_loss,accuracy\n0,,0.1\n2,3.5,0.25\n4,3.1,0.5\n")
    return run


def test_info_reads_a_run_without_heavy_imports(run_files):
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), "info", str(run_files)],
        capture_output=True, text=True, env=ENV, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "task copy, 4 steps planned" in done.stdout and "last metrics (step 4)" in done.stdout
    assert "incomplete: last checkpoint at step 2 of 4, metrics reach step 4" in done.stdout
    assert done.stdout.splitlines()[-1] == "HEAVY:", done.stdout
