"""Pretrained heads: census, one-hop tasks by length, IOI path patching and an attention view of any model.

``python analyses/pretrained_heads.py --model DIR [--quick] [--out FOLDER]``
loads a pretrained model of any architecture `headkit.pretrained.load_pretrained`
knows, with its own tokenizer (saved in DIR), and runs on it:

1. the head census (`headkit.scores.census.head_census`, composition off) on
   IOI prompts (`headkit.tasks.ioi.ioi_task`), which also classifies every head
   positional/symbolic (PosSym-2025);
2. the one-hop number and letter tasks in text (`headkit.tasks.natural`) at
   each length of ``lengths``: exact-match accuracy at the last position
   (PosSym-2026, Table 3 reports frontier models below 0.5 on the number task
   at length 32 and above 0.88 / 0.65 on the letter task at 32 / 100);
3. IOI path patching from every head to the logits (`path_patching_sweep`,
   receiver ``final``; Wang et al. 2022), metric logit difference IO - S, ABC
   twin, normalised as in `headkit.interventions.path_patching`;
4. an attention view: the attention pattern, on the first IOI prompt, of the
   head whose path-patching effect is largest in size.

Outputs (analyses/common.py): ``results.csv`` (one row per head: the census
columns and ``ioi_path_patching`` / ``ioi_path_patching_normalised``),
``summary.json`` (the one-hop accuracy by task and length, the IOI clean and
corrupted logit differences, the top heads), ``config.json`` and the figure
``pretrained_heads`` (four panels).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a file: make `analyses` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from analyses.common import Timer, output_dir, run_script, write_outputs
from headkit.bridge.probe import architecture_of
from headkit.errors import HeadkitError

# TransformerLens and transformers are imported in main, so that a bad command
# line is refused in a second.

log = logging.getLogger(__name__)

NAME = "pretrained_heads"
ONE_HOP = ("number", "letter")


@dataclass(frozen=True)
class PretrainedConfig:
    """Settings of the pretrained-heads analysis."""

    model: str = ""  # model directory (or cached hub id) with its tokenizer
    n_prompts: int = 64  # IOI prompts (census and path patching)
    n_one_hop: int = 64  # one-hop prompts per task and length
    lengths: tuple[int, ...] = (16, 32, 64, 100)  # one-hop list lengths (letters/pairs + query)
    seed: int = 0
    dtype: str = "float32"
    device: str | None = None  # None: TransformerLens's choice

    def __post_init__(self) -> None:
        if not self.model:
            raise HeadkitError("no model: pass --model DIR (a pretrained model directory with its tokenizer)")
        if not self.lengths or any(not isinstance(n, int) or n < 4 for n in self.lengths):
            raise HeadkitError(f"lengths={self.lengths} must be integers of 4 or more")
        for name in ("n_prompts", "n_one_hop"):
            if getattr(self, name) < 1:
                raise HeadkitError(f"{name}={getattr(self, name)} must be 1 or more")


def quick_config(model: str = "") -> PretrainedConfig:
    """A seconds-long smoke run."""
    return PretrainedConfig(model=model, n_prompts=4, n_one_hop=4, lengths=(9, 17))


def one_hop_accuracy(model, tokenizer, cfg: PretrainedConfig) -> pd.DataFrame:
    """Accuracy of the one-hop number and letter tasks in text, per length: ``task, length, n, accuracy``."""
    from headkit.interventions.metrics import accuracy
    from headkit.tasks.natural import build_suite

    rows = []
    for task in ONE_HOP:
        for length in cfg.lengths:
            batch = build_suite(task, cfg.n_one_hop, seed=cfg.seed, tokenizer=tokenizer, length=length)
            with torch.no_grad():
                value = accuracy(batch.to(model.cfg.device))(model(batch.tokens.to(model.cfg.device))).item()
            rows.append({"task": task, "length": length, "n": batch.n, "accuracy": value})
    return pd.DataFrame(rows, columns=["task", "length", "n", "accuracy"])


def main(cfg: PretrainedConfig, *, out: str | Path | None = None, png: bool = True) -> pd.DataFrame:
    """Run the four parts on ``cfg.model``; write the outputs; return one row per head."""
    from headkit.interventions.metrics import logit_diff
    from headkit.interventions.path_patching import path_patching_sweep
    from headkit.pretrained import load_pretrained, require_tokenizer
    from headkit.scores.census import head_census
    from headkit.tasks.ioi import ioi_task

    timer = Timer()
    tokenizer = require_tokenizer(cfg.model)  # before any weight is read
    ioi = ioi_task(cfg.n_prompts, seed=cfg.seed, tokenizer=tokenizer)
    model = load_pretrained(cfg.model, dtype=cfg.dtype, device=cfg.device)
    device = model.cfg.device
    ioi = ioi.to(device)

    census = head_census(
        model, ioi.tokens, n_random=cfg.n_prompts, seed=cfg.seed, composition_kinds=(),
        vocab_range=(0, min(len(tokenizer), model.cfg.d_vocab)), bos_id=tokenizer.bos_token_id,
    )  # fmt: skip
    patched = path_patching_sweep(model, ioi.tokens, ioi.corrupted.tokens, "final", logit_diff(ioi))
    effects = patched.rename(columns={"value": "ioi_path_patching", "normalised": "ioi_path_patching_normalised"})
    table = census.merge(effects[["layer", "head", "ioi_path_patching", "ioi_path_patching_normalised"]],
                         on=["layer", "head"], how="left")  # fmt: skip
    hops = one_hop_accuracy(model, tokenizer, cfg)

    top = table.iloc[(table["ioi_path_patching"] - patched.attrs["clean"]).abs().argsort()[::-1].values[:1]]
    layer, head = int(top["layer"].iloc[0]), int(top["head"].iloc[0])
    with torch.no_grad():
        _, cache = model.run_with_cache(ioi.tokens[:1], names_filter=f"blocks.{layer}.attn.hook_pattern")
    pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0, head].float().cpu()
    labels = [f"{i}:{s}" for i, s in enumerate(ioi.decode(0))]

    summary = {
        "model": cfg.model,
        "architecture": architecture_of(model),
        "one_hop_accuracy": {
            task: {int(r.length): round(float(r.accuracy), 4) for r in group.itertuples()}
            for task, group in hops.groupby("task")
        },
        "ioi_logit_diff": {"clean": patched.attrs["clean"], "corrupted": patched.attrs["corrupted"]},
        "ioi_top_head": f"{layer}.{head}",
        "labels": table["label"].value_counts().to_dict() if "label" in table else {},
        "elapsed_s": timer(),
    }
    write_outputs(output_dir(NAME, out), cfg=cfg, table=table, summary=summary,
                  figure=figure(table, hops, pattern, labels, f"L{layer}H{head}"), figure_name=NAME, png=png)  # fmt: skip
    return table


def figure(table: pd.DataFrame, hops: pd.DataFrame, pattern: torch.Tensor, labels: list[str], head: str) -> go.Figure:
    """One-hop accuracy by length; positional vs symbolic score; IOI path patching; one attention pattern."""
    fig = make_subplots(rows=2, cols=2, subplot_titles=(
        "one-hop accuracy by length", "heads: positional vs symbolic score",
        "IOI path patching to the logits (normalised)", f"attention of {head} on an IOI prompt",
    ))  # fmt: skip
    for task, group in hops.groupby("task"):
        fig.add_trace(go.Scatter(x=group.length, y=group.accuracy, mode="lines+markers", name=f"{task} (text)"), 1, 1)
    fig.update_yaxes(range=[0, 1.02], row=1, col=1)
    fig.update_xaxes(title_text="list length", row=1, col=1)
    if "positional_score" in table:
        fig.add_trace(go.Scatter(
            x=table.positional_score, y=table.symbolic_score, mode="markers", name="heads",
            text=[f"L{l}H{h} {lab}" for l, h, lab in zip(table.layer, table["head"], table.get("label", ""))],
        ), 1, 2)  # fmt: skip
    grid = table.pivot(index="layer", columns="head", values="ioi_path_patching_normalised")
    fig.add_trace(go.Heatmap(z=grid.values, x=list(grid.columns), y=list(grid.index), colorscale="RdBu",
                             zmid=0, showscale=False), 2, 1)  # fmt: skip
    fig.add_trace(go.Heatmap(z=pattern.numpy(), x=labels, y=labels, colorscale="Blues", showscale=False), 2, 2)
    fig.update_yaxes(autorange="reversed", row=2, col=2)
    fig.update_layout(title="Pretrained heads", height=900)
    return fig


def _cli(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--model", default="")
    known, rest = parser.parse_known_args(argv)
    run_script(
        main, description=__doc__.splitlines()[0] + " (--model DIR required)",
        default=lambda: PretrainedConfig(model=known.model), quick=lambda: quick_config(known.model), argv=rest,
    )  # fmt: skip


if __name__ == "__main__":
    _cli()
