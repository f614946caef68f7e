"""Head census: every head score of headkit in one table, one row per head.

`head_census` runs each analysis once over the whole model and joins the results
on ``(layer, head)``:

- attention detectors (`headkit.scores.detectors`): ``previous_token``,
  ``duplicate_token``, ``induction_pattern`` -- fractions of attention on the
  expected positions, measured on ``tokens`` when given, otherwise on the repeated
  random-token prompts of the induction score (which contain previous tokens,
  duplicates and induction targets, so all three are defined there too);
- ``induction_score`` / ``is_induction`` on repeated random tokens;
- ``copying_score`` (eigenvalues of the full OV circuit, `headkit.scores.circuits`);
- the strongest composition with any other head, per kind: ``max_q_in`` (the
  largest Q-composition score of this head as the *later* head, over every head
  in an earlier layer) and ``max_q_out`` (as the *earlier* head, over every
  later-layer head), likewise ``max_k_*`` and ``max_v_*``. NaN where no pair
  exists (nothing composes into layer 0 or out of the last layer) or when the
  kind is not in ``composition_kinds``;
- when ``tokens`` are given, the positional/symbolic classification of
  `headkit.scores.positional_symbolic.classify_heads` on them (the paper's layer-local
  residual swap unless ``classify_options`` is ``ClassifyOptions(swap="tokens")``): ``positional_score,
  symbolic_score, signal``, headkit's ``label, purity, pure``, PosSym-2026's pure
  heads ``pure_paper_0.1, pure_paper_0.05`` (positional / symbolic / neither), then
  ``n_prompts, finite, swap`` (NaN / None without tokens, since the swap metric needs
  task prompts with a query at the end). ``finite`` is False where a head's attention
  was not finite on some prompt (a `RuntimeWarning` says which).

The columns are always ``CENSUS_COLUMNS``, in that order, whatever is computed.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from jaxtyping import Int
from torch import Tensor

from headkit.checks import check_tokens, options_of
from headkit.errors import HeadkitError
from headkit.model_types import Model
from headkit.scores.circuits import TARGET_CIRCUITS, composition_scores, copying_scores
from headkit.scores.detectors import (
    DETECTION_PATTERNS,
    detector_scores,
    induction_prompts,
    induction_scores_from_tokens,
)
from headkit.scores.positional_symbolic import CLASSIFY_COLUMNS as HEAD_CLASSIFY_COLUMNS
from headkit.scores.positional_symbolic import ClassifyOptions, classify_heads

# the per-head columns of the positional/symbolic classification
CLASSIFY_COLUMNS = [c for c in HEAD_CLASSIFY_COLUMNS if c not in ("layer", "head")]
TEXT_COLUMNS = ("label", "swap", *(c for c in CLASSIFY_COLUMNS if c.startswith("pure_paper")))
COMPOSITION_COLUMNS = [f"max_{kind}_{way}" for kind in TARGET_CIRCUITS for way in ("in", "out")]
CENSUS_COLUMNS = [
    "layer",
    "head",
    *DETECTION_PATTERNS,  # previous_token, duplicate_token, induction_pattern
    "induction_score",
    "is_induction",
    "copying_score",
    *COMPOSITION_COLUMNS,
    *CLASSIFY_COLUMNS,
]


def _max_composition(model: Model, kind: str) -> pd.DataFrame:
    """``layer, head, max_{kind}_in, max_{kind}_out`` for every head."""
    pairs = composition_scores(model, kind=kind)
    incoming = (
        pairs.groupby(["target_layer", "target_head"])["score"].max()
        .rename_axis(["layer", "head"]).rename(f"max_{kind}_in")
    )
    outgoing = (
        pairs.groupby(["source_layer", "source_head"])["score"].max()
        .rename_axis(["layer", "head"]).rename(f"max_{kind}_out")
    )
    return pd.concat([incoming, outgoing], axis=1).reset_index()


def head_census(
    model: Model,
    tokens: Int[Tensor, "batch pos"] | None = None,
    *,
    half_length: int | None = None,
    n_prompts: int = 64,
    seed: int = 0,
    vocab_range: tuple[int, int] | None = None,
    bos_id: int | None = None,
    induction_threshold: float = 0.4,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    composition_kinds: Sequence[str] = ("q", "k", "v"),
    classify_options: ClassifyOptions | None = None,
    batch_size: int = 64,
) -> pd.DataFrame:  # long for its 13 documented options; the body is ~30 lines
    """One row per (layer, head) with every score as a column (``CENSUS_COLUMNS``).

    Args:
        tokens: task prompts [batch, pos] for the detectors and the
            positional/symbolic classification; None = detectors on the random
            repeated-token prompts and no classification.
        half_length, n_prompts, seed, vocab_range, bos_id, induction_threshold:
            the repeated random-token prompts of `induction_scores` (``n_prompts``
            of them; ``half_length=None``: 20, shortened to fit the vocabulary/context).
        exclude_bos, exclude_current_token: detector options (TransformerLens's).
        composition_kinds: subset of ``("q", "k", "v")``; the others stay NaN
            (composition is the costly part on a large model).
        classify_options: the options of ``classify_heads``, a `ClassifyOptions`
            (margin, min_signal, purity_threshold, swap, tau, max_pairs, ...);
            None = its defaults.
        batch_size: prompts per forward pass of the detectors.
    """
    classify = options_of(ClassifyOptions, classify_options, {}, what="head_census", name="classify_options")
    kinds = list(dict.fromkeys(composition_kinds))
    bad = [k for k in kinds if k not in TARGET_CIRCUITS]
    if bad:
        raise HeadkitError(
            f"composition kind(s) {bad} are not known: allowed {', '.join(TARGET_CIRCUITS)}"
        )
    if tokens is not None:
        check_tokens(model, tokens)
    random_tokens, half_length = induction_prompts(
        model, n_prompts=n_prompts, seed=seed, half_length=half_length, vocab_range=vocab_range, bos_id=bos_id
    )
    induction = induction_scores_from_tokens(
        model, random_tokens, half_length=half_length, threshold=induction_threshold, batch_size=batch_size
    )
    detector_tokens = tokens if tokens is not None else random_tokens
    detectors = detector_scores(
        model,
        detector_tokens,
        exclude_bos=exclude_bos,
        exclude_current_token=exclude_current_token,
        batch_size=batch_size,
    ).pivot(index=["layer", "head"], columns="detector", values="score").reset_index()

    table = induction.merge(detectors, on=["layer", "head"]).merge(
        copying_scores(model), on=["layer", "head"]
    )
    for kind in kinds:
        table = table.merge(_max_composition(model, kind), on=["layer", "head"], how="left")

    if tokens is not None:
        classes = classify_heads(model, tokens, classify)
        table = table.merge(classes, on=["layer", "head"], how="left")
    for column in CENSUS_COLUMNS:
        if column not in table:
            table[column] = None if column in TEXT_COLUMNS else np.nan
    return table[CENSUS_COLUMNS].sort_values(["layer", "head"]).reset_index(drop=True)
