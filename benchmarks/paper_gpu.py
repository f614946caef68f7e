"""The ``paper`` preset end to end on one GPU: train PosSym-2026's number and letter
models, then write the R1-R3 tables with the paper's values side by side.

1. Train (or reuse, or resume) ``OUT/runs/number`` and ``OUT/runs/letter`` with
   `headkit.training.default_config(task, preset="paper")` (12 layers, 1 head,
   d_model 128, dropout 0.1, batch 64, 6,750 updates, bf16 autocast on CUDA), a
   checkpoint every ``--checkpoint-every`` updates.
2. R1: accuracy at the trained length plus 0, 46, 96, 296, 996 tokens
   (`headkit.evaluation.evaluate`, the task's own length extension) vs Fig. 5B.
3. R2: heads per label of the final model (`headkit.scores.positional_symbolic.classify_heads`,
   headkit's defaults) vs the paper's pure-head counts at gamma = 0.1.
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
from headkit.runs import open_checkpoint, train_or_reuse
from headkit.scores.positional_symbolic import classify_heads
from headkit.training import TrainConfig, default_config, read_metrics

TASKS = ("number", "letter")
TRAINED_LENGTH = 17
ADDED = (0, 46, 96, 296, 996)  # tokens added to the trained length (Fig. 5B)
# PosSym-2026, read from Fig. 5B and the text (+-0.02)
PAPER_R1 = {"number": (1.0, 0.88, 0.74, 0.47, 0.20), "letter": (1.0, 1.0, 1.0, 0.99, 0.87)}
PAPER_R2 = {"number": {"positional": 4, "symbolic": 8}, "letter": {"positional": 0, "symbolic": 11}}  # gamma 0.1
PAPER_R3 = {"number": {"1": 1950, "2": 2700, "3": 3200, "4": 3350}, "letter": {"all": 2675}}  # letter: 2650-2700


def run_config(task: str, *, tiny: bool, checkpoint_every: int, device: str) -> TrainConfig:
    cfg = default_config(task, preset="paper", device=device)
    if tiny:
        model = dataclasses.replace(cfg.model, n_layers=2, d_model=16)
        cfg = dataclasses.replace(cfg, model=model, steps=6, warmup_steps=2, eval_every=2, eval_n=32, batch_size=8)
        checkpoint_every = 3
    steps = tuple(range(checkpoint_every, cfg.steps, checkpoint_every))
    return dataclasses.replace(cfg, checkpoint_steps=steps)


def r1_table(runs: dict[str, Path], *, n: int, device: str) -> pd.DataFrame:
    rows = []
    for task, run in runs.items():
        ckpt = open_checkpoint(run, device=device)
        lengths = [TRAINED_LENGTH + a for a in ADDED if TRAINED_LENGTH + a <= ckpt.model.cfg.n_ctx]
        table = evaluate(ckpt.model, ckpt.task, lengths=lengths, n=n, seed=12345, progress=False)
        pooled = table[table["hop"] == "all"].set_index("length")["accuracy"]
        for added, paper in zip(ADDED, PAPER_R1[task]):
            length = TRAINED_LENGTH + added
            ours = float(pooled[length]) if length in pooled.index else float("nan")
            rows.append(dict(task=task, added=added, length=length, paper=paper, headkit=ours,
                             verdict="matches" if abs(ours - paper) <= 0.05 else "differs"))  # fmt: skip
    return pd.DataFrame(rows)


def r2_table(runs: dict[str, Path], *, n: int, device: str) -> pd.DataFrame:
    rows = []
    for task, run in runs.items():
        ckpt = open_checkpoint(run, device=device)
        heads = classify_heads(ckpt.model, ckpt.task.build(n, seed=0).tokens.to(ckpt.model.cfg.device))
        pure = heads[heads["pure"]]
        for label in ("positional", "symbolic"):
            ours = int((pure["label"] == label).sum())
            layers = ",".join(f"L{layer}" for layer in sorted(pure.loc[pure["label"] == label, "layer"]))
            paper = PAPER_R2[task][label]
            rows.append(dict(task=task, label=label, paper=paper, headkit=ours, layers=layers,
                             verdict="matches" if ours == paper else "differs"))  # fmt: skip
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
