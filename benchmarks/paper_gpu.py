"""The ``paper`` preset end to end on one GPU: train PosSym-2026's number and letter
models, then write the R1-R3 tables with the paper's values side by side.

1. Train (or reuse, or resume) ``OUT/runs/number`` and ``OUT/runs/letter`` with
   `headkit.training.config.default_config(task, preset="paper")` (12 layers, 1 head,
   d_model 128, dropout 0.1, batch 64, 6,750 updates, bf16 autocast on CUDA), a
   checkpoint every ``--checkpoint-every`` updates.
2. R1: accuracy at the trained length plus 0, 46, 96, 296, 996 tokens added
   *before* the prompt (`headkit.evaluation.evaluate`, ``extend="prefix"``: the
   paper's protocol) vs Fig. 5B (`headkit.report.paper.r1_comparison`).
3. R2: the paper's pure heads of the final model (`classify_heads`: residual swap,
   tau 1e-4; pure when s_pos >= 1 - gamma and s_sym <= gamma, or mirrored) vs the
   paper's counts at gamma = 0.1 and 0.05 (`headkit.report.paper.R2_PURE`).
4. R3: first step at which each hop reaches 0.9 held-out accuracy (from
   ``metrics.csv``) vs the paper's steps.

Writes ``OUT/r1_length.csv``, ``OUT/r2_heads.csv``, ``OUT/r3_emergence.csv`` and
prints them. ``--tiny`` runs the same pipeline on a 2-layer model for a few steps
(a smoke test that runs on a CPU in about a minute)::

    python benchmarks/paper_gpu.py --out paper-gpu            # on a GPU: the real thing
    python benchmarks/paper_gpu.py --out /tmp/pg --tiny       # anywhere: smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

import pandas as pd
import torch

from headkit.evaluation import evaluate
from headkit.io import write_csv
from headkit.report.paper import R1_ADDED, R2_PURE, R3_STEP_AT_90, count_verdict, layer_span, r1_comparison
from headkit.scores.positional_symbolic import PAPER_GAMMAS, classify_heads, paper_column
from headkit.training.config import TrainConfig, default_config, read_metrics
from headkit.training.loop import train_or_reuse
from headkit.training.runs import open_checkpoint

TASKS = ("number", "letter")
ADDED = R1_ADDED  # tokens added before the trained 17 (Fig. 5B)
PAPER_R3 = {"number": {str(h): s for h, s in R3_STEP_AT_90["number"].items()}, "letter": {"all": 2675}}  # 2650-2700


def run_config(task: str, *, tiny: bool, checkpoint_every: int, device: str) -> TrainConfig:
    cfg = default_config(task, preset="paper", device=device)
    if tiny:
        model = dataclasses.replace(cfg.model, n_layers=2, d_model=16)
        cfg = dataclasses.replace(cfg, model=model, steps=6, warmup_steps=2, eval_every=2, eval_n=32, batch_size=8)
        checkpoint_every = 3
    steps = tuple(range(checkpoint_every, cfg.steps, checkpoint_every))
    return dataclasses.replace(cfg, checkpoint_steps=steps)


def r1_table(runs: dict[str, Path], *, n: int, device: str) -> pd.DataFrame:
    frames = []
    for task, run in runs.items():
        ckpt = open_checkpoint(run, device=device)
        for extend in ("prefix", "window"):  # the paper's protocol; headkit's harder one beside it
            frames.append(evaluate(ckpt.model, ckpt.task, added=list(ADDED), extend=extend, n_prompts=n, seed=12345))
    return r1_comparison(pd.concat(frames, ignore_index=True))


def r2_table(runs: dict[str, Path], *, n: int, device: str) -> pd.DataFrame:
    rows = []
    for task, run in runs.items():
        ckpt = open_checkpoint(run, device=device)
        heads = classify_heads(ckpt.model, ckpt.task.build(n, seed=0).tokens.to(ckpt.model.cfg.device))
        for gamma in PAPER_GAMMAS:
            for label in ("positional", "symbolic"):
                layers = heads.loc[heads[paper_column(gamma)] == label, "layer"].tolist()
                paper = R2_PURE[gamma][task][label]
                rows.append(dict(task=task, gamma=gamma, label=label, paper=paper, headkit=len(layers),
                                 layers=layer_span(layers), verdict=count_verdict(len(layers), paper)))  # fmt: skip
    return pd.DataFrame(rows)


def r3_table(runs: dict[str, Path], *, threshold: float = 0.9) -> pd.DataFrame:
    rows = []
    for task, run in runs.items():
        metrics = read_metrics(run)
        hops = sorted(c for c in metrics if c.startswith("accuracy_hop"))
        columns = {"all": hops} if "all" in PAPER_R3[task] else {c[len("accuracy_hop"):]: [c] for c in hops}
        for hop, cols in columns.items():
            reached = metrics.loc[(metrics[cols] >= threshold).all(axis=1), "step"]
            ours = int(reached.min()) if len(reached) else None
            paper = PAPER_R3[task].get(hop)
            rows.append(dict(task=task, hop=hop, paper=paper, headkit=ours))
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model for 6 steps (smoke test)")
    parser.add_argument("--device", default="auto", help="auto (default), cuda or cpu")
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--n", type=int, default=512, help="prompts per length (R1) and per task (R2)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    n = 16 if args.tiny else args.n

    started = time.perf_counter()
    runs = {}
    for task in TASKS:
        cfg = run_config(task, tiny=args.tiny, checkpoint_every=args.checkpoint_every, device=args.device)
        runs[task] = args.out / "runs" / task
        result = train_or_reuse(cfg, runs[task], progress=True)
        print(f"{task}: step {result.step}, accuracy {result.metrics['accuracy'].iloc[-1]:.3f}, "
              f"{result.metrics['elapsed_s'].iloc[-1]:.0f} s of training")  # fmt: skip
    device = "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    tables = {
        "r1_length": r1_table(runs, n=n, device=device),
        "r2_heads": r2_table(runs, n=min(n, 128), device=device),
        "r3_emergence": r3_table(runs),
    }
    for name, table in tables.items():
        write_csv(args.out / f"{name}.csv", table)
        print(f"\n{name} (paper vs headkit):")
        print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"\nfinished in {time.perf_counter() - started:.0f} s; tables in {args.out}")


if __name__ == "__main__":
    main()
