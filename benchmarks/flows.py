"""How many headkit modules a command passes through, and how often a call climbs to a higher layer.

Issue 20 measured the flows of ``headkit train`` and ``headkit census`` by hand; this
counts them. It runs one command in this process under ``sys.setprofile`` and reports:

- modules imported: headkit modules in ``sys.modules`` afterwards;
- modules run: headkit modules whose code ran;
- climbs: calls from a function of one module into a module of a higher layer
  (`LAYERS`, bottom to top, as in docs/architecture.md; a module of headkit before
  issue 20 is placed where its code went), counted once per (caller, callee) pair.

Usage (a tiny run is written to a temporary folder; nothing else is touched)::

    python benchmarks/flows.py            # the code on PYTHONPATH (or the installed headkit)

Run it with ``PYTHONPATH`` at another checkout to compare two versions of the code.
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from pathlib import Path

LAYERS = [
    ["errors"], ["checks", "distributed"], ["io"], ["tasks", "model_types", "model_config"],
    ["gptj_hf", "bridge"], ["models", "loading", "pretrained"], ["evaluation"],
    ["training.layout", "runs"], ["training.config", "train_config"], ["training.checkpoints", "checkpoints"],
    ["training.runs"], ["training.loop", "training"], ["interventions"], ["scores", "plots"],
    ["report", "report_sections", "model_report", "demo", "paper"], ["cli", "threads"], ["__main__"],
]  # fmt: skip


def layer(module: str) -> int | None:
    parts = module.split(".")[1:]
    for index in range(len(LAYERS) - 1, -1, -1):
        for name in LAYERS[index]:
            if ".".join(parts[: name.count(".") + 1]) == name:
                return index
    return None


def measure(argv: list[str]) -> dict:
    ran: set[str] = set()
    climbs: set[tuple[str, str]] = set()

    def profile(frame, event, arg):
        if event != "call":
            return
        callee = frame.f_globals.get("__name__", "")
        if not callee.startswith("headkit"):
            return
        ran.add(callee)
        caller_frame = frame.f_back
        caller = caller_frame.f_globals.get("__name__", "") if caller_frame else ""
        if caller.startswith("headkit") and caller != callee:
            low, high = layer(caller), layer(callee)
            if low is not None and high is not None and high > low:
                climbs.add((caller, callee))

    from headkit.cli import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        sys.setprofile(profile)
        try:
            code = main(argv)
        finally:
            sys.setprofile(None)
    imported = sorted(m for m in sys.modules if m.startswith("headkit"))
    return {"code": code, "imported": imported, "ran": sorted(ran), "climbs": sorted(climbs)}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = str(Path(tmp) / "run")
        train = ["train", "--task", "number", "--steps", "4", "--eval-every", "2", "--out", run, "--no-progress",
                 "--threads", "1"]  # fmt: skip
        import headkit.cli

        census = "census" if hasattr(headkit.cli, "RENAMED") else "classify"  # its name before issue 20
        flows = {"train": train, census: [census, run, "--n-prompts", "8", "--no-progress", "--threads", "1"]}
        for name, argv in flows.items():
            before = {m for m in sys.modules if m.startswith("headkit")}
            result = measure(argv)
            assert result["code"] == 0, f"headkit {' '.join(argv)} failed"
            new = [m for m in result["imported"] if m not in before]
            print(f"headkit {name}: {len(result['ran'])} modules ran ({len(new)} newly imported), "
                  f"{len(result['climbs'])} climbs to a higher layer")  # fmt: skip
            for caller, callee in result["climbs"]:
                print(f"    {caller} -> {callee}")


if __name__ == "__main__":
    main()
