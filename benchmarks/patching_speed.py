"""Benchmark: headkit's all-heads head-output patching sweep against TransformerLens's.

Both sweeps patch every head's output (site ``z``, all positions, denoising) of a
6-layer, 8-head GPT-J-style model, on the same clean/corrupted tokens with the
same metric. TransformerLens (``get_act_patch_attn_head_out_all_pos``) runs one
full forward pass per head; headkit (`activation_patching`) caches each layer's
input once and runs the heads of a layer as one stacked pass from that layer on.
Prints both times, the speed-up and the largest difference between the results.

    .venv/bin/python benchmarks/patching_speed.py [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformer_lens import patching

from headkit.interventions.activation_patching import activation_patching
from headkit.models import gptj_model


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _fmt(times: list[float]) -> str:
    return ", ".join(f"{t:.2f}" for t in times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3, help="runs per method; the fastest counts")
    parser.add_argument("--batch", type=int, default=32, help="prompts")
    parser.add_argument("--length", type=int, default=17, help="tokens per prompt")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = gptj_model(n_layers=6, d_model=256, n_heads=8, d_vocab=128, n_ctx=64, seed=0, device=args.device)
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 128, (args.batch, args.length), generator=gen).to(args.device)
    corrupted = clean.clone()
    corrupted[:, -1] = torch.randint(0, 128, (args.batch,), generator=gen).to(args.device)
    answers = torch.randint(0, 128, (args.batch,), generator=gen).to(args.device)
    wrong = (answers + 1) % 128
    rows = torch.arange(args.batch, device=args.device)

    def metric(logits: torch.Tensor) -> torch.Tensor:  # mean logit difference at the last position
        last = logits[:, -1]  # [batch, d_vocab]
        return (last[rows, answers] - last[rows, wrong]).mean()

    def transformer_lens() -> torch.Tensor:
        with torch.no_grad():
            _, clean_cache = model.run_with_cache(clean)
            return patching.get_act_patch_attn_head_out_all_pos(model, corrupted, clean_cache, metric)

    def headkit() -> torch.Tensor:
        df = activation_patching(model, clean, corrupted, metric, site="z")
        return torch.tensor(df["value"].to_numpy()).reshape(model.cfg.n_layers, model.cfg.n_heads)

    timed(headkit)  # warm-up
    tl_times, hk_times = [], []
    for _ in range(args.repeats):  # alternate the two, so load changes hit both alike
        tl_s, tl = timed(transformer_lens)
        hk_s, hk = timed(headkit)
        tl_times.append(tl_s)
        hk_times.append(hk_s)
    tl_s, hk_s = min(tl_times), min(hk_times)
    diff = (tl.double().cpu() - hk.double().cpu()).abs().max().item()
    print(
        f"model 6 layers x 8 heads, d_model 256; batch {args.batch}, length {args.length}; "
        f"{args.threads} thread(s), {args.device}"
    )
    print(f"TransformerLens get_act_patch_attn_head_out_all_pos: {tl_s:.3f} s  (all runs: {_fmt(tl_times)})")
    print(f"headkit activation_patching(site='z'):              {hk_s:.3f} s  (all runs: {_fmt(hk_times)})")
    print(f"speed-up: {tl_s / hk_s:.2f}x   max abs difference: {diff:.2e}")


if __name__ == "__main__":
    main()
