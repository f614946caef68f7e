"""Benchmark: the swap metric's residual mode, tokens mode and a plain loop, side by side.

Scores every head of a 6-layer GPT-J-style model over number-task prompts three
ways, on the same prompts and pairs, with the paper's settings (all pairs, tau 1e-4):

- ``residual``: `headkit.scores.positional_symbolic_scores(swap="residual")`, the
  paper's layer-local swap: one forward per chunk of prompts keeps every
  ``hook_resid_pre``, then all swapped pairs of the chunk run through one block
  (stopped after its attention pattern), layer by layer;
- ``tokens``: the same function with ``swap="tokens"`` (swapped prompts in batches,
  a hook keeps only the query rows, forward stopped after the last layer);
- ``loop``: one `run_with_cache` per swapped prompt (the full activation cache, as
  one would write it by hand), rows read from the cached patterns, then the same
  pair weighting (`pair_scores`): the reference for ``tokens``.

Each mode runs in its own subprocess so that its peak resident memory (RSS
high-water, ``ru_maxrss``) is its own; the parent prints the three times, the
ratios, the largest difference between ``tokens`` and ``loop`` scores, and each
mode's peak RSS and its rise over the subprocess's RSS before scoring. Usage::

    python benchmarks/classify_speed.py [--prompts 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

MODES = ("residual", "tokens", "loop")


def build(args: argparse.Namespace):
    from headkit.models import gptj_model
    from headkit.tasks.number import number_task

    batch = number_task(args.prompts, seed=args.seed)
    model = gptj_model(
        args.layers, args.d_model, args.heads, len(batch.vocab), 64, seed=args.seed
    )
    return model, batch.tokens


def loop_scores(model, tokens: torch.Tensor) -> pd.DataFrame:
    """The plain reference: one full forward per (original or swapped) prompt."""
    from headkit.scores.positional_symbolic import SCORE_COLUMNS
    from headkit.scores.swap_engine import block_means, pair_scores, swapped_tokens
    from headkit.scores.swap_plan import make_plan

    plan = make_plan(tokens)  # every single key before the query, all pairs
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    q = plan.query_pos

    def rows(toks: torch.Tensor) -> torch.Tensor:  # [unit, key_pos], unit = layer * n_heads + head
        with torch.no_grad():
            _, cache = model.run_with_cache(toks[None])
        return torch.cat([cache["pattern", l][0, :, q, :] for l in range(n_layers)])

    swapped = swapped_tokens(tokens, plan)  # [batch, n_pairs, pos]
    batch, n_pairs, _ = swapped.shape
    d = block_means(torch.stack([rows(t) for t in tokens]), plan.blocks)  # [batch, unit, n_blocks]
    d_swapped = block_means(
        torch.stack([torch.stack([rows(swapped[p, k]) for k in range(n_pairs)]) for p in range(batch)]),
        plan.blocks,
    )  # [batch, n_pairs, unit, n_blocks]
    units = n_layers * n_heads
    informative = torch.ones(batch, n_pairs, units, dtype=torch.bool)  # the paper counts every pair
    scores = pair_scores(d, d_swapped, plan.pairs, informative, tau=1e-4)
    table = {
        "prompt": torch.arange(batch)[:, None].expand(batch, units),
        "layer": (torch.arange(units) // n_heads).expand(batch, units),
        "head": (torch.arange(units) % n_heads).expand(batch, units),
        **scores,
    }
    return pd.DataFrame({c: table[c].reshape(-1).numpy() for c in SCORE_COLUMNS if c in table})


def run_mode(args: argparse.Namespace) -> None:
    """Child process: score in one mode, write the table and the measurements."""
    from headkit.scores.positional_symbolic import positional_symbolic_scores

    torch.set_num_threads(args.threads)
    model, tokens = build(args)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if args.mode in ("residual", "tokens"):
        table = positional_symbolic_scores(model, tokens, swap=args.mode, batch_size=args.batch_size)
    else:
        table = loop_scores(model, tokens)
    seconds = time.perf_counter() - start
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    table.to_csv(args.out, index=False)
    Path(args.out + ".json").write_text(
        json.dumps({"seconds": seconds, "rss_before_kb": rss_before, "rss_peak_kb": rss_peak})
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        run_mode(args)
        return

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in MODES:
            out = str(Path(tmp) / f"{mode}.csv")
            child = [sys.executable, __file__, "--mode", mode, "--out", out]
            for flag in ("prompts", "layers", "d_model", "heads", "batch_size", "threads", "seed"):
                child += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
            subprocess.run(child, check=True)
            results[mode] = (pd.read_csv(out), json.loads(Path(out + ".json").read_text()))
    cols = ["positional_score", "symbolic_score", "signal"]
    tokens_table, loop_table = results["tokens"][0], results["loop"][0]
    max_diff = (tokens_table[cols] - loop_table[cols]).abs().max().max()
    counts_equal = tokens_table["n_pairs"].equals(loop_table["n_pairs"])
    n_pairs = int(tokens_table["n_pairs"].max())
    print(
        f"model: {args.layers} layers, d_model {args.d_model}, {args.heads} heads/layer; "
        f"{args.prompts} number-task prompts of length 17, {n_pairs} pairs each; "
        f"{args.threads} thread(s); batch_size {args.batch_size}"
    )
    seconds = {mode: m["seconds"] for mode, (_, m) in results.items()}
    for mode, (_, m) in results.items():
        rise = (m["rss_peak_kb"] - m["rss_before_kb"]) / 1024
        print(
            f"{mode:8s} {m['seconds']:8.2f} s   peak RSS {m['rss_peak_kb'] / 1024:7.1f} MiB "
            f"(+{rise:.1f} MiB while scoring)"
        )
    print(
        f"ratios: loop / residual {seconds['loop'] / seconds['residual']:.1f}x, "
        f"loop / tokens {seconds['loop'] / seconds['tokens']:.1f}x, "
        f"tokens / residual {seconds['tokens'] / seconds['residual']:.2f}x"
    )
    print(f"tokens vs loop: max |difference| of scores {max_diff:.2e}; pair counts equal: {counts_equal}")


if __name__ == "__main__":
    main()
