"""Pretrained heads: the report page of `headkit report --model`, plus one-hop tasks by length, for any model.

``python analyses/pretrained_heads.py --model DIR [--quick] [--out FOLDER]``
loads a pretrained model of any architecture `headkit.loading.pretrained.load_pretrained`
knows, with its own tokenizer (saved in DIR), and runs on it:

1. `headkit.report.model.model_report`, the code of ``headkit report --model DIR
   --suite ioi --suite induction`` (find: head census; confirm: ablation,
   activation patching, path patching to the logits and to the name movers'
   queries; roles; look: attention views), written as ``report.html``;
2. the one-hop number and letter tasks in text (`headkit.tasks.natural`) at
   each length of ``lengths``: exact-match accuracy at the last position
   (PosSym-2026, Table 3 reports frontier models below 0.5 on the number task
   at length 32 and above 0.88 / 0.65 on the letter task at 32 / 100).

Outputs: ``report.html``, ``results.csv`` (the IOI roles table: one row per
head, sorted by effect), ``summary.json`` (the one-hop accuracy by task and
length, the IOI clean and corrupted logit differences, the confirmed heads) and
``config.json``.
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
import torch

from analyses.common import Timer, output_dir, run_script
from headkit.bridge.probe import architecture_of
from headkit.errors import HeadkitError

# TransformerLens and transformers are imported in main, so that a bad command
# line is refused in a second.

log = logging.getLogger(__name__)

NAME = "pretrained_heads"
ONE_HOP = ("number", "letter")
SUITES = ("ioi", "induction")  # the report's prompt suites


@dataclass(frozen=True)
class PretrainedConfig:
    """Settings of the pretrained-heads analysis."""

    model: str = ""  # model directory (or cached hub id) with its tokenizer
    n_prompts: int = 64  # prompts per report suite (census, ablation, patching, path patching)
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
    """The report page and the one-hop accuracies of ``cfg.model``; returns the IOI roles table.

    ``png`` is accepted for the analyses' common signature; the page holds every figure.
    """
    from analyses.common import config_dict
    from headkit.io import write_csv, write_json, write_text
    from headkit.loading.pretrained import load_pretrained, require_tokenizer
    from headkit.plots import model_description
    from headkit.report.model import ModelReportOptions, model_report
    from headkit.report.page import report_html

    timer = Timer()
    options = ModelReportOptions(suites=SUITES, n_prompts=cfg.n_prompts, seed=cfg.seed, progress=False)
    tokenizer = require_tokenizer(cfg.model)  # before any weight is read
    model = load_pretrained(cfg.model, dtype=cfg.dtype, device=cfg.device)
    about = f"{cfg.model}: {model_description(model)}"
    tables, sections = model_report(model, tokenizer, options, about=about)
    hops = one_hop_accuracy(model, tokenizer, cfg)
    roles, ablation = tables["ioi_roles"], tables["ioi_ablation"]
    clean = float(ablation["baseline"].iloc[0])
    summary = {
        "model": cfg.model,
        "architecture": architecture_of(model),
        "one_hop_accuracy": {
            task: {int(r.length): round(float(r.accuracy), 4) for r in group.itertuples()}
            for task, group in hops.groupby("task")
        },
        "ioi_logit_diff": {"clean": clean, "corrupted": tables["ioi_paths"].attrs.get("corrupted")},
        "ioi_confirmed_heads": [f"L{r.layer}H{r.head} {r.role}" for r in roles[roles["confirmed"]].itertuples()],
        "elapsed_s": timer(),
    }
    folder = output_dir(NAME, out)
    for path in (
        write_json(folder / "config.json", config_dict(cfg)),
        write_csv(folder / "results.csv", roles),
        write_json(folder / "summary.json", summary),
        write_text(folder / "report.html", report_html(f"pretrained heads: {about}", sections, root=folder)),
    ):
        log.info("wrote %s", path)
    return roles


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
