"""R6 (Backward-chaining; Brinkmann et al. 2024): attention climbs the tree one level per layer.

Task: tree path-finding (SPEC 2.4, `headkit.tasks.tree_task`): a shuffled edge
list ``A >B ,`` of a random binary tree, ``|``, the goal, ``:``, the root, then the
path ``>X >Y ... >goal``. The first step (predicted at the root position, the
batch's ``answer_pos``) is the hardest: the model must chain from the goal back
up to the root's child. Brinkmann et al. found *backward chaining*: successive
layers attend to edges one level further up the tree from the goal.

Steps:

1. Train a small GPT-J-style model (one head per layer) with
   `headkit.training.loop.train` (online batches) and report its held-out accuracy at
   the answer position, overall and per goal depth, and the whole-path accuracy
   (every scored path token right, teacher-forced).
2. On held-out prompts whose goal is at depth ``>= min_depth``, read every
   layer's attention row at the answer (root) position and add it up by the
   region each key lies in:

   - ``level_j`` (``j = 0 .. min_depth - 1``): the edge whose child is the node
     ``j`` levels above the goal (``level_0`` = the edge into the goal, ``A >goal
     ,``). An edge is its three tokens ``[A][>B][,]``; ``child_token_share``
     also gives the share on its ``>B`` token alone (the token naming the node
     that edge leads to), since that is where the edge's identity sits;
   - ``level_deeper``: edges further up the path (levels ``>= min_depth``, present
     only for deeper goals);
   - ``off_path``: every edge not on the root-goal path;
   - ``goal``: the ``| goal :`` tokens; ``root``: the query position itself.

   The shares of one layer sum to 1. Backward chaining shows as a diagonal:
   layer ``ℓ`` puts its attention on ``level_{ℓ-c}`` for some offset ``c``.

Table columns (one row per layer and region): ``layer, region, share,
child_token_share, n_prompts``; ``child_token_share`` is NaN for regions that are
not edges on the path.
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
from jaxtyping import Float, Int
from torch import Tensor

from analyses.common import Timer, output_dir, run_script, write_outputs
from headkit.errors import HeadkitError
from headkit.evaluation import score_batch
from headkit.model_config import ModelConfig
from headkit.model_types import Model
from headkit.tasks import tree_task
from headkit.tasks.base import IGNORE, TaskBatch
from headkit.tasks.registry import TaskSpec
from headkit.training.config import TrainConfig
from headkit.training.loop import train

log = logging.getLogger(__name__)

NAME = "r6_tree"
COLUMNS = ["layer", "region", "share", "child_token_share", "n_prompts"]


@dataclass(frozen=True)
class R6Config:
    """Settings of the backward-chaining run (defaults sized for a busy 2-core CPU)."""

    n_nodes: int = 7  # tree size (paper: 16); prompts are 4 * n_nodes - 1 tokens
    n_layers: int = 4  # transformer blocks, one head each
    d_model: int = 64  # residual width
    steps: int = 1500  # optimizer updates
    batch_size: int = 64  # prompts per update
    lr: float = 2e-3  # peak AdamW learning rate
    warmup_steps: int = 100  # linear warm-up updates
    eval_every: int = 250  # updates between held-out evaluations (train's metrics)
    eval_n: int = 1024  # held-out prompts for accuracy and attention
    min_depth: int = 3  # attention is read on prompts whose goal is at least this deep
    seed: int = 0  # model initialisation and data

    def __post_init__(self) -> None:
        if not 1 <= self.min_depth <= self.n_nodes - 2:
            raise HeadkitError(
                f"min_depth={self.min_depth} is out of range: allowed 1..{self.n_nodes - 2} (n_nodes - 2)"
            )

    def train_config(self) -> TrainConfig:
        model = ModelConfig(n_layers=self.n_layers, d_model=self.d_model, n_heads=1,
                            d_vocab=2 * self.n_nodes + 4, n_ctx=4 * self.n_nodes - 1)
        return TrainConfig(task=TaskSpec("tree", {"n_nodes": self.n_nodes, "generator": "random"}), model=model, steps=self.steps,
                           batch_size=self.batch_size, lr=self.lr, warmup_steps=self.warmup_steps,
                           eval_every=self.eval_every, eval_n=self.eval_n, seed=self.seed)


def quick_config() -> R6Config:
    """A seconds-long smoke run (no learning expected)."""
    return R6Config(n_nodes=5, n_layers=2, d_model=16, steps=4, batch_size=8, warmup_steps=1, eval_every=4,
                    eval_n=32, min_depth=2)


def key_regions(batch: TaskBatch, *, min_depth: int) -> tuple[Int[Tensor, "batch pos"], list[str]]:
    """Region id of every key position (see the module docstring) and the region names.

    The tree is read back from the prompt's own tokens: edge ``e`` is tokens
    ``3e, 3e+1, 3e+2`` = ``[A][>B][,]``; walking from the goal to the root via the
    child -> parent map gives each path edge's level.
    """
    n_nodes = batch.params["n_nodes"]
    n_edges = n_nodes - 1
    names = [f"level_{j}" for j in range(min_depth)] + ["level_deeper", "off_path", "goal", "root", "after_root"]
    index = {name: i for i, name in enumerate(names)}
    regions = torch.full(batch.tokens.shape, index["after_root"], dtype=torch.long)  # [batch, pos]
    edges = batch.tokens[:, : 3 * n_edges].reshape(batch.n, n_edges, 3)  # [batch, edge, 3]
    parents, children = edges[..., 0], edges[..., 1] - n_nodes  # labels; ">B" ids start at n_nodes
    goal_pos = int(batch.positions["goal"][0])
    for b in range(batch.n):
        edge_of_child = {int(c): e for e, c in enumerate(children[b].tolist())}
        parent_of = {int(c): int(p) for p, c in zip(parents[b].tolist(), children[b].tolist())}
        level = np.full(n_edges, -1)
        node, j = int(batch.tokens[b, goal_pos]), 0
        while node in parent_of:
            level[edge_of_child[node]] = j
            node, j = parent_of[node], j + 1
        for e in range(n_edges):
            name = "off_path" if level[e] < 0 else (f"level_{level[e]}" if level[e] < min_depth else "level_deeper")
            regions[b, 3 * e : 3 * e + 3] = index[name]
    regions[:, goal_pos - 1 : goal_pos + 2] = index["goal"]  # | goal :
    regions[:, batch.positions["root"][0]] = index["root"]
    return regions, names


def attention_by_region(
    model: Model, batch: TaskBatch, *, min_depth: int
) -> pd.DataFrame:
    """Per layer and region: the answer position's mean attention share (module docstring, step 2)."""
    regions, names = key_regions(batch, min_depth=min_depth)
    root = int(batch.positions["root"][0])
    n_layers = model.cfg.n_layers
    hooks = {f"blocks.{layer}.attn.hook_pattern" for layer in range(n_layers)}
    with torch.no_grad():
        _, cache = model.run_with_cache(batch.tokens, names_filter=lambda name: name in hooks)
    one_hot = torch.nn.functional.one_hot(regions, len(names)).float()  # [batch, pos, region]
    child = torch.zeros_like(one_hot)  # [batch, pos, region]: the ">B" token of each edge only
    n_edge_tokens = 3 * (batch.params["n_nodes"] - 1)
    child[:, 1:n_edge_tokens:3] = one_hot[:, 1:n_edge_tokens:3]
    path_edge = torch.tensor([name.startswith("level_") for name in names])
    rows = []
    for layer in range(n_layers):
        row: Float[Tensor, "batch pos"] = cache[f"blocks.{layer}.attn.hook_pattern"][:, 0, root]
        share = torch.einsum("bk,bkr->r", row, one_hot) / batch.n  # [region]
        child_share = torch.einsum("bk,bkr->r", row, child) / batch.n  # [region]
        for r, name in enumerate(names[:-1]):  # after_root: never attended from the root (causal)
            rows.append((layer, name, float(share[r]),
                         float(child_share[r]) if path_edge[r] else float("nan"), batch.n))
    return pd.DataFrame(rows, columns=COLUMNS)


def path_accuracy(model: Model, batch: TaskBatch) -> float:
    """Share of prompts whose every scored path token is predicted right (teacher-forced)."""
    with torch.no_grad():
        predicted = model(batch.tokens).argmax(-1)  # [batch, pos]
    scored = batch.targets != IGNORE
    right = (predicted == batch.targets) | ~scored
    return float(right.all(-1).float().mean())


def main(cfg: R6Config, *, out: str | Path | None = None, png: bool = True) -> pd.DataFrame:
    """Train, measure accuracy and attention by tree level, write figures/r6_tree/; return the table."""
    timer = Timer()
    test = tree_task(cfg.eval_n, seed=10_000 + cfg.seed, n_nodes=cfg.n_nodes, generator="random")
    deep = test.select(test.hops >= cfg.min_depth)
    if deep.n == 0:  # checked before any training
        raise HeadkitError(
            f"none of the eval_n={cfg.eval_n} held-out prompts has a goal at depth >= min_depth={cfg.min_depth}: "
            "lower min_depth or raise eval_n"
        )
    # 1. train and measure accuracy on fresh prompts
    result = train(cfg.train_config(), progress=False)
    model = result.model
    score = score_batch(model, test)
    # 2. attention of the answer position by tree level
    table = attention_by_region(model, deep, min_depth=cfg.min_depth)
    grid = table.pivot(index="layer", columns="region", values="share")
    summary: dict[str, Any] = {
        "accuracy": score.accuracy,
        "accuracy_by_depth": {str(k): v for k, v in score.accuracy_by_hop().items()},
        "path_accuracy": path_accuracy(model, test),
        "accuracy_deep_prompts": score_batch(model, deep).accuracy,
        "n_deep_prompts": deep.n,
        "min_depth": cfg.min_depth,
        "top_region_by_layer": {str(layer): str(grid.loc[layer].idxmax()) for layer in grid.index},
        "training_metrics": result.metrics[["step", "eval_loss", "accuracy"]].to_dict("records"),
        "elapsed_s": timer(),
    }
    write_outputs(output_dir(NAME, out), cfg=cfg, table=table, summary=summary,
                  figure=level_figure(table, summary), figure_name="attention_by_level", png=png)
    return table


def level_figure(table: pd.DataFrame, summary: dict[str, Any]) -> go.Figure:
    """Heat map: layer (rows) x key region (columns), the answer position's attention share."""
    order = list(dict.fromkeys(table.region))  # regions in table order
    grid = table.pivot(index="layer", columns="region", values="share")[order]
    fig = go.Figure(go.Heatmap(
        z=grid.values, x=order, y=[f"L{layer}" for layer in grid.index], zmin=0, zmax=1,
        colorscale="Viridis", text=np.round(grid.values, 2), texttemplate="%{text}",
        colorbar={"title": "attention share"},
    ))
    fig.update_layout(
        title=(f"R6: attention of the root position by tree level (goal depth ≥ {summary['min_depth']}, "
               f"{summary['n_deep_prompts']} prompts; accuracy {summary['accuracy']:.1%})"),
        xaxis_title="key region (level_j: edge into the node j levels above the goal)",
        yaxis={"title": "layer", "autorange": "reversed"},
        title_font_size=13,
    )
    return fig


if __name__ == "__main__":
    run_script(main, description=__doc__.splitlines()[0], default=R6Config, quick=quick_config)
