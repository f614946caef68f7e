"""Positional versus symbolic attention heads: the swap metric (PosSym-2025, as PosSym-2026 computes it).

A head that attends *positionally* keeps looking at the same slot whatever sits
there; a head that attends *symbolically* follows a token's content wherever it
moves. The swap metric tells them apart on one prompt, for each layer ``l``
(PosSym-2026's code: ``cmds/get_attention_weights.py`` and ``lib/metrics.py``):

1. ``d`` = the head's post-softmax attention row at the query position (keys in
   blocks; default: every single key before the query, as in the paper).
2. For each pair ``i < j`` of keys before the query (the query is never swapped),
   take the hidden state entering block ``l`` (``blocks.{l}.hook_resid_pre``),
   exchange its rows ``i`` and ``j``, run block ``l`` alone with the original
   positions, and read the same row: ``d'`` (``swap="residual"``, the default).
   Only at layer 0 is that the same as swapping tokens and rerunning the model
   (``swap="tokens"``, headkit's end-to-end variant).
3. With ``v = (d_i, d_j)`` and ``v' = (d'_i, d'_j)``: ``s_pos = cos(v', v)``
   (attention stayed at the slot) and ``s_sym = cos(v', (d_j, d_i))`` (attention
   moved with the content); ``torch.nn.functional.cosine_similarity``, each norm
   clamped at 1e-8, so a pair whose attention vanishes adds ~0 to both.
4. Average over all pairs with weights ``softmax_pairs(|d_i - d_j| / tau)``,
   ``tau = 1e-4`` as in the paper's code (about "the pair with the largest gap decides").

Options of headkit's own (not the paper's): ``skip_identical=True`` drops pairs whose
swap leaves the swapped input unchanged (identical tokens; identical residual
rows); ``block_size``/``blocks`` average keys in blocks; ``max_pairs`` samples pairs.
The paper also scores intermediate queries (``compute_metrics_multiple_queries.py``):
``query_pos`` takes a [batch] tensor, e.g. each prompt's landing of one hop
(`classify_heads_by_hop`).

**Signal.** If the two keys get similar attention, ``v`` and its mirror image
``(d_j, d_i)`` are nearly parallel and both cosines are close to 1 whatever the head
does: a near-uniform head looks "both" (PosSym-2025's exclusion theorem). ``signal``
is the weighted mean of ``|d_i - d_j|`` under the same pair weights; `classify_heads`
labels a head ``inactive`` on a prompt whose signal is below ``min_signal``.

**Pure heads** (PosSym-2026): positional when the mean scores over prompts satisfy
``s_pos >= 1 - gamma`` and ``s_sym <= gamma``, symbolic mirrored; reported for
gamma = 0.1 and 0.05 (columns ``pure_paper_0.1``, ``pure_paper_0.05``). headkit's
per-prompt labels, ``purity`` share and ``pure`` flag are its own, kept beside them.

**Non-finite attention.** NaN weights make TransformerLens zero the pattern quietly;
rows that are not finite distributions give ``finite = False``, NaN scores and a
`RuntimeWarning` (see `headkit.scores.swap_engine`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor

from headkit.checks import options_of
from headkit.errors import HeadkitError
from headkit.model_types import Model
from headkit.scores.capture import head_reader
from headkit.scores.swap_engine import METRIC_COLUMNS, run_swaps
from headkit.scores.swap_plan import SwapOptions, prepare_swaps

SCORE_COLUMNS = ["prompt", "layer", "head", "query_pos", *METRIC_COLUMNS]
PAPER_GAMMAS = (0.1, 0.05)  # PosSym-2026 reports pure heads at these gammas


def paper_column(gamma: float) -> str:
    """Name of the paper's pure-head column at ``gamma``: ``pure_paper_0.1``."""
    return f"pure_paper_{gamma:g}"


CLASSIFY_COLUMNS = [
    "layer",
    "head",
    "positional_score",
    "symbolic_score",
    "signal",
    "label",
    "purity",
    "pure",
    *(paper_column(g) for g in PAPER_GAMMAS),
    "n_prompts",
    "finite",
    "swap",
]
LABELS = ("inactive", "mixed", "positional", "symbolic")
PAPER_LABELS = ("positional", "symbolic", "neither")

DEFAULT_MARGIN = 0.2
DEFAULT_MIN_SIGNAL = 0.1
DEFAULT_PURITY = 0.8


# ---------------------------------------------------------------------------
# public API


def positional_symbolic_scores(
    model: Model, tokens: Int[Tensor, "batch pos"], options: SwapOptions | None = None, **fields: Any
) -> pd.DataFrame:
    """Swap-metric scores of each head on each prompt (module docstring).

    Args:
        tokens: prompts [batch, pos], all of one length.
        options: the swap metric's options, a `headkit.scores.swap_plan.SwapOptions`,
            or its fields as keywords (``fields``; not both), all checked before any
            forward pass:

            - ``swap="residual"`` (the paper's: swap rows of ``blocks.{l}.hook_resid_pre``
              and rerun block ``l``; refused for models with absolute position
              embeddings) or ``"tokens"`` (swap input tokens, rerun the model);
            - ``query_pos=-1``: the query position scored, or one per prompt [batch];
            - ``tau=1e-4``: temperature of the pair weights ``softmax(|d_i - d_j| / tau)``;
            - ``skip_identical=False``: headkit's variant, drop pairs whose swap changes nothing;
            - ``block_size=1``: size of the default key blocks, which tile ``0..query_pos-1``;
            - ``blocks=None``: explicit key blocks (lists of positions before the query, equal size);
            - ``max_pairs=None``: sample at most this many pairs per prompt (seeded); None = all;
            - ``seed=0``: seed of the pair sampling;
            - ``batch_size=512``: swapped inputs per forward pass;
            - ``heads=None``: (layer, head) pairs; None = every head.

    Returns:
        One row per (prompt, layer, head) with columns ``SCORE_COLUMNS``: ``prompt,
        layer, head, query_pos, positional_score, symbolic_score, signal, n_pairs,
        n_signal_pairs, finite, swap``.
    """
    run = prepare_swaps(model, tokens, options_of(SwapOptions, options, fields, what="positional_symbolic_scores"))
    head_list, swap = run.heads, run.options.swap
    scores = run_swaps(model, run, head_reader(head_list), unit_names=[f"{l}.{h}" for l, h in head_list])
    batch, n_units = run.tokens.shape[0], len(head_list)
    table = {
        "prompt": torch.arange(batch)[:, None].expand(batch, n_units),
        "layer": torch.tensor([l for l, _ in head_list]).expand(batch, -1),
        "head": torch.tensor([h for _, h in head_list]).expand(batch, -1),
        "query_pos": run.queries[:, None].expand(batch, n_units),
        **scores,
    }
    frame = {c: table[c].reshape(-1).numpy() for c in SCORE_COLUMNS if c != "swap"}
    return pd.DataFrame({**frame, "swap": swap})[SCORE_COLUMNS]


def _check_label_options(*, margin: float, min_signal: float) -> None:
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 2:
        raise HeadkitError(f"margin={margin!r} is out of range: allowed 0 <= margin < 2")
    if isinstance(min_signal, bool) or not isinstance(min_signal, (int, float)) or not min_signal >= 0:
        raise HeadkitError(f"min_signal={min_signal!r} is out of range: allowed 0 or more")


def check_gamma(gamma: Any) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 < gamma < 0.5:
        raise HeadkitError(f"gamma={gamma!r} is out of range: allowed 0 < gamma < 0.5")
    return float(gamma)


def paper_pure_labels(
    positional: pd.Series | np.ndarray, symbolic: pd.Series | np.ndarray, *, gamma: float
) -> np.ndarray:
    """PosSym-2026's pure heads from mean scores: ``positional`` where ``s_pos >= 1 - gamma``
    and ``s_sym <= gamma``, ``symbolic`` mirrored, else ``neither`` (NaN scores: ``neither``)."""
    gamma = check_gamma(gamma)
    pos = np.asarray(positional, dtype=float)
    sym = np.asarray(symbolic, dtype=float)
    is_pos = (pos >= 1 - gamma) & (sym <= gamma)
    is_sym = (sym >= 1 - gamma) & (pos <= gamma)
    return np.select([is_pos, is_sym], ["positional", "symbolic"], default="neither").astype(object)


def prompt_labels(
    scores: pd.DataFrame,
    *,
    margin: float = DEFAULT_MARGIN,
    min_signal: float = DEFAULT_MIN_SIGNAL,
) -> pd.Series:
    """Per-row label of a `positional_symbolic_scores` table (headkit's own).

    ``inactive`` if no pair was usable or ``signal < min_signal``; else
    ``positional`` if ``s_pos - s_sym > margin``, ``symbolic`` if
    ``s_sym - s_pos > margin``, ``mixed`` otherwise.
    """
    _check_label_options(margin=margin, min_signal=min_signal)
    diff = scores["positional_score"] - scores["symbolic_score"]
    label = pd.Series("mixed", index=scores.index, dtype=object)
    label[diff > margin] = "positional"
    label[-diff > margin] = "symbolic"
    inactive = (scores["n_pairs"] == 0) | ~(scores["signal"] >= min_signal)
    label[inactive] = "inactive"
    return label


def _dominant(labels: pd.Series) -> tuple[str, float]:
    """The most common label and its share; a tie is ``inactive`` if that is among
    the tied labels, else ``mixed``."""
    counts = labels.value_counts()
    best = counts.max()
    tied = [l for l in LABELS if counts.get(l, 0) == best]
    label = tied[0] if len(tied) == 1 else ("inactive" if "inactive" in tied else "mixed")
    return label, best / len(labels)


def classify_scores(
    scores: pd.DataFrame,
    *,
    margin: float = DEFAULT_MARGIN,
    min_signal: float = DEFAULT_MIN_SIGNAL,
    purity_threshold: float = DEFAULT_PURITY,
) -> pd.DataFrame:
    """Per-head labels from a `positional_symbolic_scores` table; see `classify_heads`."""
    _check_classify_options(margin=margin, min_signal=min_signal, purity_threshold=purity_threshold)
    scores = scores.assign(label=prompt_labels(scores, margin=margin, min_signal=min_signal))
    out = []
    for (layer, head), group in scores.groupby(["layer", "head"], sort=True):
        label, purity = _dominant(group["label"])
        out.append(
            {
                "layer": int(layer),  # pyright: ignore[reportArgumentType]  (groupby keys)
                "head": int(head),  # pyright: ignore[reportArgumentType]
                "positional_score": group["positional_score"].mean(),
                "symbolic_score": group["symbolic_score"].mean(),
                "signal": group["signal"].mean(),
                "label": label,
                "purity": purity,
                "pure": bool(purity >= purity_threshold and label in ("positional", "symbolic")),
                "n_prompts": len(group),
                "finite": bool(group["finite"].all()) if "finite" in group else True,
                "swap": group["swap"].iloc[0] if "swap" in group else None,
            }
        )
    table = pd.DataFrame(out, columns=[c for c in CLASSIFY_COLUMNS if not c.startswith("pure_paper")])
    for gamma in PAPER_GAMMAS:
        table[paper_column(gamma)] = paper_pure_labels(
            table["positional_score"], table["symbolic_score"], gamma=gamma
        )
    return table[CLASSIFY_COLUMNS]


def _check_classify_options(*, margin: float, min_signal: float, purity_threshold: float) -> None:
    _check_label_options(margin=margin, min_signal=min_signal)
    if (
        isinstance(purity_threshold, bool)
        or not isinstance(purity_threshold, (int, float))
        or not 0.5 < purity_threshold <= 1
    ):
        raise HeadkitError(
            f"purity_threshold={purity_threshold!r} is out of range: allowed 0.5 < value <= 1"
        )


@dataclass(frozen=True)
class ClassifyOptions(SwapOptions):
    """Options of `classify_heads`: the swap metric's (`SwapOptions`, every field) and the labels' thresholds.

    Checked on creation: the thresholds, then the swap metric's options. Pass one to
    `classify_heads`, `classify_heads_by_hop`, `head_census` (``classify_options``) or
    `track_heads`, or give its fields to the first two as keywords, not both.
    """

    KIND: ClassVar[str] = "classification"

    margin: float = DEFAULT_MARGIN  # a prompt's label: |s_pos - s_sym| above this (`prompt_labels`)
    min_signal: float = DEFAULT_MIN_SIGNAL  # a prompt with less signal is inactive
    purity_threshold: float = DEFAULT_PURITY  # share of prompts with the dominant label for ``pure``

    def __post_init__(self) -> None:
        _check_classify_options(margin=self.margin, min_signal=self.min_signal, purity_threshold=self.purity_threshold)
        super().__post_init__()


def classify_heads(
    model: Model,
    tokens: Int[Tensor, "batch pos"],
    options: ClassifyOptions | None = None,
    **fields: Any,
) -> pd.DataFrame:
    """Label each head over a prompt set: the paper's pure heads and headkit's labels.

    ``options``: a `ClassifyOptions`, or its fields as keywords (``fields``: ``margin``,
    ``min_signal``, ``purity_threshold``, and the swap metric's ``swap``, ``tau``,
    ``query_pos``, ...; not both), all checked before any forward pass.
    Scores each prompt with `positional_symbolic_scores`. Per head: the mean scores and
    signal over prompts (NaN-aware); PosSym-2026's pure-head label at gamma 0.1 and
    0.05 from those means (``pure_paper_0.1``, ``pure_paper_0.05``: positional /
    symbolic / neither); and headkit's own: each prompt labelled with
    `prompt_labels`, the dominant label (a tie gives ``inactive`` if that is among
    the tied labels, else ``mixed``), its share of prompts (``purity``) and ``pure``
    = purity >= ``purity_threshold`` and the label is positional or symbolic.
    ``finite`` is False if any prompt's attention was not finite.

    Returns:
        One row per (layer, head), columns ``CLASSIFY_COLUMNS``.
    """
    opts = options_of(ClassifyOptions, options, fields, what="classify_heads")
    scores = positional_symbolic_scores(model, tokens, opts)  # a ClassifyOptions is a SwapOptions
    return classify_scores(scores, margin=opts.margin, min_signal=opts.min_signal, purity_threshold=opts.purity_threshold)


def hop_queries(chain: Int[Tensor, "batch k"], hops: Int[Tensor, " batch"], hop: int) -> Int[Tensor, " batch"]:
    """The query position of hop ``hop`` (1-based) per prompt: where its pointer is read.

    Hop 1 reads the query (``chain[:, 0]``), hop ``k`` the landing of hop ``k-1``
    (``chain[:, k-1]``); -1 for prompts with fewer than ``hop`` hops.
    """
    if not 1 <= hop < chain.shape[1]:
        raise HeadkitError(f"hop {hop} is out of range: these chains have hops 1..{chain.shape[1] - 1}")
    return torch.where(hops >= hop, chain[:, hop - 1], torch.full_like(hops, -1))


def classify_heads_by_hop(
    model: Model, batch: Any, options: ClassifyOptions | None = None, **fields: Any
) -> pd.DataFrame:
    """`classify_heads` once per hop, with each prompt's query at that hop's pointer.

    PosSym-2026 scores the heads at every pointer of the chain (its
    ``compute_metrics_multiple_queries.py``); hop ``k``'s query is the position of the
    pointer read at hop ``k`` (`hop_queries`), over the prompts with at least ``k`` hops.
    ``batch`` is a pointer-chain `TaskBatch` (``positions["chain"]`` and ``hops``);
    ``options`` as in `classify_heads`, except ``query_pos``, which is set per hop.

    Returns:
        ``hop`` then ``CLASSIFY_COLUMNS``, one row per (hop, layer, head).
    """
    opts = options_of(ClassifyOptions, options, fields, what="classify_heads_by_hop")
    if "query_pos" in fields or not (isinstance(opts.query_pos, int) and opts.query_pos == -1):
        raise HeadkitError("classify_heads_by_hop sets query_pos itself (each hop's pointer)")
    chain = getattr(batch, "positions", {}).get("chain")
    if chain is None or getattr(batch, "hops", None) is None:
        raise HeadkitError("classify_heads_by_hop needs a pointer-chain batch (positions['chain'] and hops)")
    frames = []
    for hop in range(1, int(batch.hops.max()) + 1):
        queries = hop_queries(chain.cpu(), batch.hops.cpu(), hop)
        keep = queries >= 0
        tokens = batch.tokens[keep.to(batch.tokens.device)]
        table = classify_heads(model, tokens, dataclasses.replace(opts, query_pos=queries[keep]))
        frames.append(table.assign(hop=hop))
    out = pd.concat(frames, ignore_index=True)
    return out[["hop", *CLASSIFY_COLUMNS]]


__all__ = [
    "CLASSIFY_COLUMNS",
    "ClassifyOptions",
    "PAPER_GAMMAS",
    "SCORE_COLUMNS",
    "classify_heads",
    "classify_heads_by_hop",
    "classify_scores",
    "paper_pure_labels",
    "positional_symbolic_scores",
    "prompt_labels",
]

