"""R7 (Copy-phase; Lavie et al. 2026): softmax attention switches to copying abruptly as data grows.

Task: shift-by-one copy (SPEC 2.5, `headkit.tasks.copy_task`): i.i.d. tokens,
the target at position ``t`` is the token at ``t - 1``. A single attention layer
with a single head and no MLP solves it by attending from ``t`` to ``t - 1``.

For each training-set size ``N`` (a fixed finite set of ``N`` sequences, redrawn
per seed), each seed and each attention type, a fresh one-layer, one-head,
attention-only GPT-J-style model (rotary) is trained full-batch for a fixed
number of AdamW updates, then measured on fresh test sequences:

- ``copy_score``: the share of the head's attention on the previous position,
  ``|A[t, t-1]| / Σ_k |A[t, k]|``, averaged over query positions ``t >= 1`` and
  test sequences (for softmax attention this is the plain attention mass, since
  the weights are positive and sum to 1);
- ``test_accuracy``: argmax prediction equals the previous token, over the same
  positions; ``train_loss`` / ``test_loss``: cross-entropy on them.

Attention types (dispatch table `ATTENTIONS`):

- ``softmax``: the model as built (TransformerLens attention).
- ``linear``: TransformerLens has no linear attention, so the same model runs
  with two temporary hooks (ours): ``hook_attn_scores`` stores the causally
  masked, ``1/sqrt(d_head)``-scaled scores ``q·k`` (masked entries are -inf) and
  ``hook_pattern`` replaces the softmax pattern by those scores with the masked
  entries set to 0 -- no softmax, no normalisation. Gradients flow through the
  stored scores; the discarded softmax gets none.

The claim to reproduce: as ``N`` grows, the softmax copy score jumps from low to
near 1 over a narrow range of ``N`` while the linear one rises gradually. The
summary reports, per attention type, the largest rise of the mean copy score
between neighbouring sizes and its share of the total rise.

Table columns (one row per attention, size, seed): ``attention, n_train, seed,
train_loss, test_loss, test_accuracy, copy_score``.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a file: make `analyses` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from plotly.subplots import make_subplots
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.hook_points import HookPoint

from analyses.common import Timer, output_dir, run_script, write_outputs
from headkit.errors import HeadkitError
from headkit.model_types import Model
from headkit.models import gptj_model
from headkit.tasks import copy_task
from headkit.tasks.base import IGNORE

log = logging.getLogger(__name__)

NAME = "r7_copy"
COLUMNS = ["attention", "n_train", "seed", "train_loss", "test_loss", "test_accuracy", "copy_score"]
SCORES = "blocks.0.attn.hook_attn_scores"
PATTERN = "blocks.0.attn.hook_pattern"


@dataclass(frozen=True)
class R7Config:
    """Settings of the copy-phase sweep (defaults: ~3 min on 2 busy cores)."""

    sizes: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)  # training-set sizes N (sequences)
    seeds: tuple[int, ...] = (0, 1)  # model initialisation and training set
    attentions: tuple[str, ...] = ("softmax", "linear")  # keys of ATTENTIONS
    length: int = 16  # tokens per sequence
    vocab_size: int = 16  # i.i.d. symbols
    d_model: int = 32  # residual width (one head of this width)
    steps: int = 300  # full-batch AdamW updates per model
    lr: float = 3e-3  # AdamW learning rate (constant)
    weight_decay: float = 0.01  # AdamW weight decay (all parameters)
    test_n: int = 512  # fresh test sequences

    def __post_init__(self) -> None:
        unknown = [a for a in self.attentions if a not in ATTENTIONS]
        if unknown or not self.attentions:
            raise HeadkitError(f"unknown attention(s) {unknown or list(self.attentions)}: allowed {', '.join(ATTENTIONS)}")
        if not self.sizes or any(not isinstance(n, int) or n < 1 for n in self.sizes):
            raise HeadkitError(f"sizes={self.sizes} must be positive integers")
        if not self.seeds:
            raise HeadkitError("seeds is empty: give at least one seed")


def quick_config() -> R7Config:
    """A seconds-long smoke run."""
    return R7Config(sizes=(2, 8), seeds=(0,), length=6, vocab_size=5, d_model=8, steps=5, test_n=8)


# --- attention types: model -> context manager that makes its layer use that attention ---


def _softmax(model: Model) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def _linear(model: Model) -> contextlib.AbstractContextManager:
    stash: dict[str, Tensor] = {}

    def keep_scores(scores: Float[Tensor, "batch head_index query_pos key_pos"], hook: HookPoint) -> None:
        stash["scores"] = scores

    def use_scores(pattern: Float[Tensor, "batch head_index query_pos key_pos"], hook: HookPoint) -> Tensor:
        scores = stash.pop("scores")
        return torch.where(torch.isfinite(scores), scores, torch.zeros_like(scores))

    return model.hooks(fwd_hooks=[(SCORES, keep_scores), (PATTERN, use_scores)])


ATTENTIONS: dict[str, Callable[[Model], contextlib.AbstractContextManager]] = {
    "softmax": _softmax,
    "linear": _linear,
}


def copy_score(pattern: Float[Tensor, "batch head_index query_pos key_pos"]) -> float:
    """Mean share of absolute attention on ``t - 1`` over queries ``t >= 1`` (head 0)."""
    weights = pattern[:, 0].abs()  # [batch, query_pos, key_pos]
    previous = weights.diagonal(offset=-1, dim1=-2, dim2=-1)  # [batch, query_pos - 1]: A[t, t-1]
    total = weights.sum(-1)[:, 1:]  # [batch, query_pos - 1]
    return float((previous / total.clamp_min(1e-12)).mean())


def _loss(logits: Float[Tensor, "batch pos d_vocab"], targets: Int[Tensor, "batch pos"]) -> Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)  # [batch*pos]


def train_one(cfg: R7Config, *, attention: str, n_train: int, seed: int) -> dict[str, Any]:
    """Train one model on ``n_train`` fixed sequences and measure it (one table row)."""
    data = copy_task(n_train, seed=1000 * seed + 1, length=cfg.length, vocab_size=cfg.vocab_size)
    test = copy_task(cfg.test_n, seed=999_999, length=cfg.length, vocab_size=cfg.vocab_size)
    model = gptj_model(n_layers=1, d_model=cfg.d_model, n_heads=1, d_vocab=cfg.vocab_size,
                       n_ctx=cfg.length, attn_only=True, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    with ATTENTIONS[attention](model):
        for _ in range(cfg.steps):
            loss = _loss(model(data.tokens), data.targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            train_loss = float(_loss(model(data.tokens), data.targets))
            logits, cache = model.run_with_cache(test.tokens, names_filter=PATTERN)
    scored = test.targets != IGNORE  # [batch, pos]
    correct = logits.argmax(-1)[scored] == test.targets[scored]
    return {
        "attention": attention,
        "n_train": n_train,
        "seed": seed,
        "train_loss": train_loss,
        "test_loss": float(_loss(logits, test.targets)),
        "test_accuracy": float(correct.float().mean()),
        "copy_score": copy_score(cache[PATTERN]),
    }


def jumps(table: pd.DataFrame) -> dict[str, Any]:
    """Per attention: the largest rise of the mean copy score between neighbouring sizes."""
    out: dict[str, Any] = {}
    for attention, group in table.groupby("attention"):
        mean = group.groupby("n_train").copy_score.mean().sort_index()  # [sizes]
        rises = np.diff(mean.to_numpy())
        i = int(np.argmax(rises)) if len(rises) else 0
        total = float(mean.iloc[-1] - mean.iloc[0])
        out[attention] = {
            "copy_score_by_size": {int(k): float(v) for k, v in mean.items()},
            "largest_rise": float(rises[i]) if len(rises) else 0.0,
            "largest_rise_between": [int(mean.index[i]), int(mean.index[min(i + 1, len(mean) - 1)])],
            "largest_rise_share_of_total": float(rises[i] / total) if len(rises) and total > 0 else float("nan"),
        }
    return out


def main(cfg: R7Config, *, out: str | Path | None = None, png: bool = True) -> pd.DataFrame:
    """Run the sweep, write figures/r7_copy/; return one row per (attention, size, seed)."""
    timer = Timer()
    jobs = [(a, n, s) for a in cfg.attentions for n in cfg.sizes for s in cfg.seeds]
    rows = [train_one(cfg, attention=a, n_train=n, seed=s) for a, n, s in tqdm(jobs, desc="r7 sweep", leave=False)]
    table = pd.DataFrame(rows, columns=COLUMNS)
    summary = {"jumps": jumps(table), "elapsed_s": timer()}
    write_outputs(out_dir=output_dir(NAME, out), cfg=cfg, table=table, summary=summary,
                  figure=copy_figure(table), figure_name="copy_vs_size", png=png)
    return table


COLOURS = {"softmax": "#d62728", "linear": "#1f77b4"}


def copy_figure(table: pd.DataFrame) -> go.Figure:
    """Copy score and test accuracy against training-set size (log x), mean and seeds."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("copy score (attention share on t−1)", "test accuracy"))
    for col, metric in enumerate(("copy_score", "test_accuracy"), start=1):
        for attention, group in table.groupby("attention"):
            colour = COLOURS.get(attention, "black")
            mean = group.groupby("n_train")[metric].mean()
            fig.add_trace(go.Scatter(x=group.n_train, y=group[metric], mode="markers", opacity=0.4,
                                     marker={"color": colour, "size": 6}, showlegend=False), row=1, col=col)
            fig.add_trace(go.Scatter(x=mean.index, y=mean.values, mode="lines+markers", name=f"{attention} (mean)",
                                     line={"color": colour, "width": 3}, showlegend=col == 1), row=1, col=col)
        fig.update_xaxes(type="log", title_text="training sequences N", row=1, col=col)
        fig.update_yaxes(range=[0, 1.02], row=1, col=col)
    fig.update_layout(title="R7: copy head vs training-set size (dots: seeds)")
    return fig


if __name__ == "__main__":
    run_script(main, description=__doc__.splitlines()[0], default=R7Config, quick=quick_config)
