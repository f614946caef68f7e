"""R5 (Framework; Olsson et al. 2022): induction heads form in a sudden phase change.

A two-layer attention-only GPT-J-style model (a few heads per layer, no MLP) is
trained on repeated random tokens ``[BOS, r_1 .. r_L, r_1 .. r_L]`` (SPEC 2.6),
with the loss on the second half only, where the next token is predictable only
by induction. Before induction, the best a model can do is to guess among the
context tokens not yet repeated (loss about ``log(L - i)`` at step ``i``); an
induction circuit drives the loss to near 0.

The circuit (Elhage et al. 2021): a layer-0 *previous-token head* writes "the
token before me was A" into each position; a layer-1 *induction head* at a later
``A`` finds the key whose previous token was ``A`` -- its keys read the layer-0
head's output, which is *K-composition* -- and copies the token there.

Why the half length varies (ours). With rotary positions and one fixed ``L``,
the token to copy always sits at relative offset ``L - 1`` behind the query, so
a single layer-1 head can score ~1 on induction *positionally*, with no
previous-token head (a first run at fixed ``L = 20`` did exactly that: induction
score 0.97, best layer-0 previous-token score 0.04). Each update therefore draws
its own ``L`` from ``min_half_length..half_length``; held-out prompts use
``L = half_length``.

Steps:

1. Train with a small explicit loop (fresh online batches, AdamW with weight
   decay on matrices, linear warm-up then constant lr, gradient clipping at 1):
   `headkit.training.loop.train` takes one fixed task spec, so it cannot vary ``L``
   per update.
2. Every ``eval_every`` updates, on a fixed held-out set of repeated-token prompts:
   the held-out loss (second half), the induction score of every head
   (`headkit.scores.detectors.induction_scores_from_tokens`), the previous-token
   score of every head (`previous_token_scores` with ``exclude_bos=True``: the
   share of the attention *not on BOS* that lands on the previous token, since a
   layer-0 head may park attention on BOS, a sink) and the K-composition scores
   (`headkit.scores.circuits.composition_scores`).
3. The tracked pair is fixed once, at the final step: the layer-1 head with
   the largest induction score and the layer-0 head with the largest
   previous-token score; their K-composition is followed over training, next to
   the mean K-composition of all other (layer-0, layer-1) pairs as a baseline.
4. Phase change: the evaluation interval with the largest loss drop, and the
   share of the whole run's loss decrease that happens within ``window`` updates
   around it. We call the drop *sudden* when that share is at least
   ``sudden_share`` (ours: half of the decrease within 10% of the run).

Table columns (one row per evaluated step): ``step, train_loss, eval_loss,
accuracy, max_induction_l1, induction_head, max_prev_token_l0, prev_token_head,
tracked_induction, tracked_prev_token, k_composition, k_composition_others``.
``induction_head``/``prev_token_head`` are the per-step argmax heads,
``tracked_*`` the scores of the pair fixed at the end. ``summary.json`` adds the
final layer-0 heads' attention by key offset (self, 1-3 back, BOS, elsewhere)
and the K-composition of every layer-0 head into the induction head.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `analyses` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from jaxtyping import Int
from plotly.subplots import make_subplots
from torch import Tensor
from tqdm.auto import tqdm

from analyses.common import Timer, output_dir, run_script, write_outputs
from headkit.errors import HeadkitError
from headkit.evaluation import score_batch
from headkit.model_config import ModelConfig
from headkit.model_types import Model
from headkit.models import model_from_config
from headkit.scores.circuits import composition_scores
from headkit.scores.detectors import induction_scores_from_tokens, previous_token_scores
from headkit.tasks import repeated_tokens_task
from headkit.tasks.base import IGNORE, TaskBatch

log = logging.getLogger(__name__)

NAME = "r5_induction"
COLUMNS = [
    "step",
    "train_loss",
    "eval_loss",
    "accuracy",
    "max_induction_l1",
    "induction_head",
    "max_prev_token_l0",
    "prev_token_head",
    "tracked_induction",
    "tracked_prev_token",
    "k_composition",
    "k_composition_others",
]


@dataclass(frozen=True)
class R5Config:
    """Settings of the induction phase-change run (defaults: a few minutes on a busy 2-core CPU)."""

    half_length: int = 20  # L of the held-out prompts, and the longest L trained on
    min_half_length: int = 5  # shortest L trained on (each update draws L in min..max)
    vocab_size: int = 50  # random symbols (plus BOS)
    d_model: int = 64  # residual width
    n_heads: int = 4  # heads per layer (two layers, attention only)
    steps: int = 2000  # optimizer updates
    batch_size: int = 64  # prompts per update
    lr: float = 1e-3  # peak AdamW learning rate (3e-3: the drop comes early and less cleanly)
    weight_decay: float = 0.01  # AdamW decay on matrices
    warmup_steps: int = 50  # linear warm-up updates
    eval_every: int = 25  # updates between evaluations
    eval_n: int = 256  # held-out prompts for loss and head scores
    window_share: float = 0.1  # phase-change window, as a fraction of the run
    sudden_share: float = 0.5  # share of the loss decrease inside the window that counts as sudden
    seed: int = 0  # model initialisation and data

    def __post_init__(self) -> None:
        if not 2 <= self.min_half_length <= self.half_length:
            raise HeadkitError(
                f"min_half_length={self.min_half_length} is out of range: allowed 2..{self.half_length} (half_length)"
            )
        if self.eval_every > self.steps:
            raise HeadkitError(f"eval_every={self.eval_every} exceeds steps={self.steps}: allowed 1..{self.steps}")
        for name in ("window_share", "sudden_share"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise HeadkitError(f"{name}={value} is out of range: allowed (0, 1]")

    def model_config(self) -> ModelConfig:
        return ModelConfig(n_layers=2, d_model=self.d_model, n_heads=self.n_heads, d_vocab=self.vocab_size + 1,
                           n_ctx=2 * self.half_length + 1, attn_only=True)


def quick_config() -> R5Config:
    """A seconds-long smoke run (no phase change expected)."""
    return R5Config(half_length=5, min_half_length=3, vocab_size=8, d_model=16, n_heads=2, steps=4, batch_size=8,
                    warmup_steps=1, eval_every=2, eval_n=8)


def head_scores(model: Model, batch: TaskBatch, *, half_length: int) -> dict[str, np.ndarray]:
    """Induction [n_heads] (layer 1), previous-token [n_heads] (layer 0), K-composition [n_heads, n_heads] (L0 -> L1)."""
    n_heads = model.cfg.n_heads
    ind = induction_scores_from_tokens(model, batch.tokens, half_length=half_length, batch_size=batch.n)
    prev = previous_token_scores(model, batch.tokens, exclude_bos=True, batch_size=batch.n)
    comp = composition_scores(model, kind="k")
    comp = comp[(comp.source_layer == 0) & (comp.target_layer == 1)]
    k_comp = np.zeros((n_heads, n_heads))  # [source_head, target_head]
    k_comp[comp.source_head.to_numpy(), comp.target_head.to_numpy()] = comp.score.to_numpy()
    return {
        "induction": ind[ind.layer == 1].sort_values("head").induction_score.to_numpy(),
        "prev_token": prev[prev.layer == 0].sort_values("head").score.to_numpy(),
        "k_composition": k_comp,
    }


OFFSETS = {"self": 0, "previous": 1, "two_back": 2, "three_back": 3}  # name -> key offset q - k
FIRST_QUERY = 5  # offsets are read at queries >= this, so that no offset lands on BOS


def layer0_offsets(model: Model, tokens: Int[Tensor, "batch pos"]) -> dict[str, dict[str, float]]:
    """Mean attention of each layer-0 head by key offset (self, 1-3 back), on BOS, and elsewhere."""
    name = "blocks.0.attn.hook_pattern"
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=name)
    pattern = cache[name][:, :, FIRST_QUERY:]  # [batch, head_index, query_pos, key_pos]
    out = {}
    for head in range(model.cfg.n_heads):
        rows = pattern[:, head]  # [batch, query, key]
        shares = {key: float(rows.diagonal(offset=FIRST_QUERY - k, dim1=-2, dim2=-1).mean())
                  for key, k in OFFSETS.items()}
        shares["bos"] = float(rows[..., 0].mean())
        shares["elsewhere"] = 1.0 - sum(shares.values())
        out[f"L0H{head}"] = shares
    return out


def phase_change(table: pd.DataFrame, *, window: int, sudden_share: float) -> dict[str, Any]:
    """Where the held-out loss falls fastest, and whether the fall is sudden (module docstring, step 4)."""
    loss = table.eval_loss.to_numpy()
    steps = table.step.to_numpy()
    drops = loss[:-1] - loss[1:]  # [n_evals - 1]
    i = int(np.argmax(drops))
    mid = (steps[i] + steps[i + 1]) / 2
    total = float(loss[0] - loss.min())
    # the loss decrease within the window centred on the steepest interval
    inside = (steps >= mid - window / 2) & (steps <= mid + window / 2)
    within = float(loss[inside].max() - loss[inside].min()) if inside.sum() > 1 else float(drops[i])
    share = within / total if total > 0 else 0.0
    return {
        "steepest_drop_step": int(steps[i + 1]),
        "steepest_drop": float(drops[i]),
        "loss_start": float(loss[0]),
        "loss_end": float(loss[-1]),
        "window_steps": window,
        "share_of_decrease_in_window": share,
        "sudden": bool(share >= sudden_share),
    }


def training_batch(cfg: R5Config, step: int) -> TaskBatch:
    """The batch of update ``step``: a half length drawn from ``min_half_length..half_length``."""
    rng = np.random.default_rng([cfg.seed, step])
    half = int(rng.integers(cfg.min_half_length, cfg.half_length + 1))
    return repeated_tokens_task(cfg.batch_size, seed=int(rng.integers(2**62)), half_length=half,
                                vocab_size=cfg.vocab_size)


def main(cfg: R5Config, *, out: str | Path | None = None, png: bool = True) -> pd.DataFrame:
    """Train, score the model every ``eval_every`` updates, write figures/r5_induction/; return the table."""
    timer = Timer()
    out_dir = output_dir(NAME, out)
    eval_batch = repeated_tokens_task(
        cfg.eval_n, seed=10_000 + cfg.seed, half_length=cfg.half_length, vocab_size=cfg.vocab_size
    )
    model = model_from_config(cfg.model_config(), seed=cfg.seed)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    rows: list[dict[str, Any]] = []
    scores: list[dict[str, np.ndarray]] = []
    losses: list[float] = []

    def record(step: int) -> None:
        # 2. head scores and held-out loss at this step
        s = head_scores(model, eval_batch, half_length=cfg.half_length)
        scores.append(s)
        evaluation = score_batch(model, eval_batch)
        rows.append({
            "step": step,
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "eval_loss": evaluation.loss,
            "accuracy": evaluation.accuracy,
            "max_induction_l1": float(s["induction"].max()),
            "induction_head": int(s["induction"].argmax()),
            "max_prev_token_l0": float(s["prev_token"].max()),
            "prev_token_head": int(s["prev_token"].argmax()),
        })
        losses.clear()

    # 1. train (an explicit loop: each update draws its own half length)
    record(0)
    model.train()
    for step in tqdm(range(1, cfg.steps + 1), desc="r5 train", leave=False):
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * min(1.0, step / max(cfg.warmup_steps, 1))
        batch = training_batch(cfg, step)
        logits = model(batch.tokens)  # [batch, pos, d_vocab]
        loss = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE)  # [batch*pos]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % cfg.eval_every == 0:
            record(step)
    model.eval()
    # 3. the pair fixed at the end, followed over training
    ind_head, prev_head = rows[-1]["induction_head"], rows[-1]["prev_token_head"]
    others = np.ones((cfg.n_heads, cfg.n_heads), dtype=bool)
    others[prev_head, ind_head] = False
    for row, s in zip(rows, scores):
        row["tracked_induction"] = float(s["induction"][ind_head])
        row["tracked_prev_token"] = float(s["prev_token"][prev_head])
        row["k_composition"] = float(s["k_composition"][prev_head, ind_head])
        row["k_composition_others"] = float(s["k_composition"][others].mean()) if others.any() else float("nan")
    table = pd.DataFrame(rows, columns=COLUMNS)
    # what the final layer-0 heads attend to, and how each composes with the induction head
    final_offsets = layer0_offsets(model, eval_batch.tokens)
    k_into_induction = {f"L0H{h}": float(scores[-1]["k_composition"][h, ind_head]) for h in range(cfg.n_heads)}
    # 4. the phase change
    summary = phase_change(table, window=max(1, round(cfg.window_share * cfg.steps)), sudden_share=cfg.sudden_share)
    summary.update(
        induction_head=f"L1H{ind_head}",
        prev_token_head=f"L0H{prev_head}",
        final_induction_score=rows[-1]["tracked_induction"],
        final_prev_token_score=rows[-1]["tracked_prev_token"],
        final_k_composition=rows[-1]["k_composition"],
        final_k_composition_others=rows[-1]["k_composition_others"],
        final_layer0_attention_by_offset=final_offsets,
        final_k_composition_into_induction_head=k_into_induction,
        elapsed_s=timer(),
    )
    write_outputs(out_dir, cfg=cfg, table=table, summary=summary, figure=phase_figure(table, summary),
                  figure_name="phase_change", png=png)
    return table


def phase_figure(table: pd.DataFrame, summary: dict[str, Any]) -> go.Figure:
    """Held-out loss (left axis) and head scores (right axis) against training step."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=table.step, y=table.eval_loss, name="held-out loss (2nd half)",
                             line={"color": "black", "width": 3}), secondary_y=False)
    series = {
        "tracked_induction": (f"induction score {summary['induction_head']}", "#d62728"),
        "tracked_prev_token": (f"previous-token score {summary['prev_token_head']}", "#1f77b4"),
        "k_composition": (f"K-composition {summary['prev_token_head']}→{summary['induction_head']}", "#2ca02c"),
        "k_composition_others": ("K-composition, other L0→L1 pairs (mean)", "#98df8a"),
    }
    for column, (label, colour) in series.items():
        fig.add_trace(go.Scatter(x=table.step, y=table[column], name=label, line={"color": colour}),
                      secondary_y=True)
    fig.add_vline(x=summary["steepest_drop_step"], line_dash="dot", line_color="grey")
    verdict = "sudden" if summary["sudden"] else "not sudden"
    fig.update_layout(
        title=f"R5: induction phase change ({verdict}: {summary['share_of_decrease_in_window']:.0%} of the loss "
              f"decrease within {summary['window_steps']} steps of step {summary['steepest_drop_step']})",
        xaxis_title="training step",
        legend={"orientation": "h", "y": -0.18, "x": 0},
        title_font_size=13,
    )
    fig.update_yaxes(title_text="held-out loss (nats)", secondary_y=False, rangemode="tozero")
    fig.update_yaxes(title_text="score", range=[0, 1.02], dtick=0.2, showgrid=False, secondary_y=True)
    return fig


if __name__ == "__main__":
    run_script(main, description=__doc__.splitlines()[0], default=R5Config, quick=quick_config)
