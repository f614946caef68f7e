"""R1-R3 of PosSym-2026 at the paper's scale, over several trained seeds, beside the paper.

The runs are ``headkit train --preset paper`` runs (12 layers, d_model 128, 6,750
updates; ~25 min per task on one CPU core), one per task and seed, in
``RUNS/{task}_s{seed}`` (``--resume`` continues a stopped one). For each finished run
this script measures, on its final checkpoint:

- **R1** (Fig. 5B, the prefix protocol): exact-match accuracy with 0, 46, 96, 296 and
  996 tokens added before the 17-token prompt, ``n`` prompts per length
  (`headkit.evaluation.evaluate`, the rotary tables extended: no parameter changes);
- **R2**: the pure heads at gamma 0.1 and 0.05 (`classify_heads`'s
  ``pure_paper_<gamma>``: residual swap, PosSym-2026's definition) on ``n_prompts``
  prompts, counted per kind with their layers (`headkit.report.paper.r2_comparison`);
- **R3**: the first step at which each hop's held-out accuracy (the run's
  ``metrics.csv``, a row every ``eval_every`` updates) reaches 0.9;
- **R4**: each head's discrepancy Δ(n) at R1's lengths (`analyses.r4_discrepancy`: the
  log-log slope of the maximum Δ over ``n_r4`` prompts per length), the heads labelled as
  in R2, and per label the paper's bound beside the median slope with R4's verdict
  (`analyses.r4_discrepancy.paper_comparison`; the paper proves bounds, measuring is
  headkit's own test).

Then, per row of the paper's tables, the mean and the spread (sample standard
deviation, and min..max) over the seeds found, beside the paper's number, and a
verdict computed from the per-seed numbers: R1 "k of n seeds reproduce" (each by
`headkit.report.paper.verdict`), R2 "k of n seeds reproduce in kind" (`r2_verdict`), R3 the
mean step beside the paper's and, for the number task, in how many seeds the hops
reach 0.9 in hop order, R4 "k of n seeds consistent" per task and label. No seed is chosen or dropped: every run present is used,
and a run that is not finished is listed as missing.

Outputs (``figures/paper_preset`` by default): ``per_seed.csv`` (every measurement),
``r1.csv``, ``r2.csv``, ``r3.csv``, ``r4.csv`` (the aggregates), ``config.json`` (this config
and the code commit that made them) and ``summary.json``.

    python analyses/paper_preset.py --runs /path/to/paper_runs
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make `analyses` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd

from analyses.common import REPO_ROOT, Timer, config_dict, output_dir, run_script
from headkit.checks import check_int
from headkit.errors import HeadkitError
from headkit.io import write_csv, write_json
from headkit.report import paper

TASKS = ("number", "letter")
EMERGE_AT = 0.9  # R3: a hop has emerged once its held-out accuracy reaches this (the paper's)


@dataclasses.dataclass(frozen=True)
class PaperPresetConfig:
    runs: str = "paper_runs"  # folder holding {task}_s{seed} run directories
    seeds: tuple[int, ...] = (0, 1, 2)
    n: int = 512  # R1 prompts per length (the paper's 512)
    n_prompts: int = 128  # R2 prompts classified per model
    seed: int = 12345  # prompts' seed (R1 evaluation; R2 uses seed + 1, R4 seed + 2)
    n_r4: int = 128  # R4 prompts per length (as analyses/r4_discrepancy.py)
    added: tuple[int, ...] = paper.R1_ADDED


def quick_config() -> PaperPresetConfig:
    return dataclasses.replace(PaperPresetConfig(), n=32, n_prompts=8, added=(0, 46), n_r4=8)


def _commit() -> str:
    try:
        done = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
        return done.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def finished_runs(cfg: PaperPresetConfig) -> tuple[dict[tuple[str, int], Path], list[str]]:
    """(task, seed) -> run directory of every complete run; and the missing or unfinished ones, named."""
    from headkit.training.layout import run_status

    found, missing = {}, []
    for task in TASKS:
        for seed in cfg.seeds:
            run = Path(cfg.runs) / f"{task}_s{seed}"
            if not run.is_dir():
                missing.append(f"{run} (absent)")
            elif not run_status(run).complete:
                missing.append(f"{run} ({run_status(run).describe()})")
            else:
                found[task, seed] = run
    return found, missing


def step_at(metrics: pd.DataFrame, hop: int, threshold: float = EMERGE_AT) -> float:
    """First step whose ``accuracy_hop{hop}`` reaches ``threshold`` (NaN if none does)."""
    column = f"accuracy_hop{hop}"
    if column not in metrics:
        return float("nan")
    reached = metrics.loc[metrics[column] >= threshold, "step"]
    return float(reached.iloc[0]) if len(reached) else float("nan")


def measure(run: Path, cfg: PaperPresetConfig) -> dict[str, pd.DataFrame]:
    """R1, R2, R3 and R4 of one finished run (its final checkpoint and metrics.csv)."""
    from analyses.r4_discrepancy import paper_comparison, trends
    from headkit.evaluation import evaluate
    from headkit.models import extend_context
    from headkit.scores.discrepancy import discrepancy
    from headkit.scores.positional_symbolic import classify_heads
    from headkit.training.checkpoints import load_checkpoint
    from headkit.training.config import read_metrics
    from headkit.training.layout import latest_checkpoint

    ckpt = load_checkpoint(latest_checkpoint(run), device="cpu")
    task = ckpt.task
    extend_context(ckpt.model, task.length + max(cfg.added))
    r1 = evaluate(ckpt.model, task, added=cfg.added, extend="prefix", n_prompts=cfg.n, seed=cfg.seed)
    heads = classify_heads(ckpt.model, task.build(cfg.n_prompts, seed=cfg.seed + 1).tokens)
    r2 = pd.concat([paper.r2_comparison({task.name: heads}, gamma=g).assign(gamma=g) for g in (0.1, 0.05)])
    r2["verdict_kind"] = r2["task"].map(paper.r2_verdict(paper.r2_comparison({task.name: heads}), {task.name: heads}))
    metrics = read_metrics(run)
    hops = sorted(int(c.removeprefix("accuracy_hop")) for c in metrics.columns if c.startswith("accuracy_hop"))
    r3 = pd.DataFrame({"task": task.name, "hop": hops, "step": [step_at(metrics, h) for h in hops]})
    lengths = [task.length + a for a in cfg.added]
    delta = discrepancy(ckpt.model, task, lengths=lengths, n_prompts=cfg.n_r4, seed=cfg.seed + 2)
    delta = delta.merge(heads[["layer", "head", "label", "purity"]], on=["layer", "head"]).assign(task=task.name)
    r4 = paper_comparison(trends(delta))
    return {"r1": r1[r1["hop"].astype(str) == "all"], "r2": r2, "r3": r3, "r4": r4}


def _spread(values: pd.Series) -> dict[str, float]:
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
            "min": float(values.min()), "max": float(values.max()), "n_seeds": int(values.count())}  # fmt: skip


def aggregate(per_seed: dict[str, pd.DataFrame], *, n: int) -> dict[str, pd.DataFrame]:
    """Mean and spread over seeds beside the paper, verdicts computed from the per-seed numbers."""
    r1_rows = []
    for (task, added), part in per_seed["r1"].groupby(["task", "added"]):
        if added not in paper.R1_ACCURACY[task]:
            continue
        ref = paper.R1_ACCURACY[task][added]
        ok = sum(paper.verdict(a, ref, n=n) == "reproduces" for a in part["accuracy"])
        r1_rows.append({"task": task, "added": int(added), "paper": ref, **_spread(part["accuracy"]),
                        "verdict": f"{ok} of {len(part)} seeds reproduce"})  # fmt: skip
    r2_rows = []
    for (task, gamma, kind), part in per_seed["r2"].groupby(["task", "gamma", "kind"], sort=False):
        row = {"task": task, "gamma": gamma, "kind": kind, "paper": int(part["paper"].iloc[0]),
               "paper_layers": part["paper_layers"].iloc[0], **_spread(part["headkit"].astype(float)),
               "layers_per_seed": " | ".join(part["headkit_layers"])}  # fmt: skip
        kind_ok = sum(str(v).startswith(("reproduced", "kinds reproduced")) for v in part["verdict_kind"])
        row["verdict"] = f"{kind_ok} of {len(part)} seeds reproduce the kinds (gamma 0.1)"
        r2_rows.append(row)
    r3_rows = []
    for (task, hop), part in per_seed["r3"].groupby(["task", "hop"]):
        ref = paper.R3_STEP_AT_90.get(task, {}).get(int(hop))
        r3_rows.append({"task": task, "hop": int(hop), "paper": ref, **_spread(part["step"])})
    r3 = pd.DataFrame(r3_rows)
    order = per_seed["r3"][per_seed["r3"]["task"] == "number"].groupby("seed")["step"].apply(
        lambda s: bool(s.notna().all() and s.is_monotonic_increasing)
    )
    r3.attrs["number_hop_order"] = f"{int(order.sum())} of {len(order)} seeds reach 0.9 in hop order"
    r4_rows = []
    for (task, label), part in per_seed["r4"].groupby(["task", "label"], sort=False):
        measured = part[part["heads"] > 0]
        ok = int((part["verdict"] == "consistent").sum())
        r4_rows.append({"task": task, "label": label, "paper": part["paper"].iloc[0],
                        "heads_per_seed": " | ".join(str(h) for h in part["heads"]),
                        **{f"slope_max_{k}": v for k, v in _spread(measured["slope_max"].astype(float)).items()},
                        "verdict": f"{ok} of {len(part)} seeds consistent ({len(part) - len(measured)} without such a head)"})  # fmt: skip
    return {"r1": pd.DataFrame(r1_rows), "r2": pd.DataFrame(r2_rows), "r3": r3, "r4": pd.DataFrame(r4_rows)}


def main(cfg: PaperPresetConfig, *, out: str | Path | None = None, png: bool = True) -> pd.DataFrame:
    """Measure every finished run, aggregate over seeds, write the tables; return the R1 table."""
    check_int("n", cfg.n)
    check_int("n_prompts", cfg.n_prompts)
    check_int("n_r4", cfg.n_r4)
    timer = Timer()
    commit = _commit()  # the code that measures, read before it runs (not when the files are written)
    found, missing = finished_runs(cfg)
    if not found:
        raise HeadkitError(f"no finished paper-preset run under {cfg.runs}: missing {', '.join(missing)}")
    parts: dict[str, list[pd.DataFrame]] = {"r1": [], "r2": [], "r3": [], "r4": []}
    for (task, seed), run in sorted(found.items()):
        for name, table in measure(run, cfg).items():
            parts[name].append(table.assign(seed=seed))
    per_seed = {name: pd.concat(tables, ignore_index=True) for name, tables in parts.items()}
    tables = aggregate(per_seed, n=cfg.n)
    folder = output_dir("paper_preset", out)
    long = pd.concat([t.assign(result=name) for name, t in per_seed.items()], ignore_index=True)
    write_csv(folder / "per_seed.csv", long)
    for name, table in tables.items():
        write_csv(folder / f"{name}.csv", table)
    write_json(folder / "config.json", {**config_dict(cfg), "commit": commit})
    write_json(folder / "summary.json", {
        "runs": {f"{t}_s{s}": str(p) for (t, s), p in sorted(found.items())}, "missing": missing,
        "r3_number_hop_order": tables["r3"].attrs["number_hop_order"], "elapsed_s": timer(),
    })  # fmt: skip
    return tables["r1"]


if __name__ == "__main__":
    run_script(main, description=__doc__.splitlines()[0], default=PaperPresetConfig, quick=quick_config, runs=True)
