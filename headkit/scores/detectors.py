"""Classic head detectors: previous-token, duplicate-token and induction heads.

A *detection pattern* ``D[q, k]`` (0 or 1, lower-triangular) marks the query→key
pairs where a head of a given kind should attend. The score of a head on one
prompt is the fraction of its attention that lands on those pairs,

    score = Σ_{q,k} A[q, k] · D[q, k]  /  Σ_{q,k} A[q, k],

TransformerLens's ``detect_head(..., error_measure="mul")``. The patterns are built
from the token ids alone, exactly as ``transformer_lens.head_detector`` builds them:

- previous-token: ``D[q, q-1] = 1``;
- duplicate-token: ``D[q, k] = 1`` when ``k < q`` and ``tokens[k] == tokens[q]``
  (an earlier copy of the current token);
- induction: ``D[q, k] = 1`` when ``1 <= k <= q`` and ``tokens[k-1] == tokens[q]``
  with ``k - 1 < q`` (the token right after an earlier copy of the current token).

``exclude_bos`` zeroes the attention to key 0 and ``exclude_current_token`` the
attention to ``k == q`` *before* both sums, so the score becomes a fraction of the
remaining attention. Scores are averaged over prompts with equal weight (each prompt
is normalised by its own attention sum, as ``detect_head`` does for a list of
prompts). Here all prompts of a batch are scored in one forward pass per
``batch_size`` prompts (`headkit.scores.capture.capture`), reducing each layer's
pattern in a temporary hook, so no attention pattern is kept in memory after its
layer.

`induction_scores` is the other classic induction test (Olsson et al. 2022): on
``[BOS?, r_1 … r_L, r_1 … r_L]`` the second copy of ``r_j`` can only be predicted by
looking at the token after the first copy, ``r_{j+1}``. The score is the mean
attention from each second-half position to the position right after the first
occurrence of its token (query offset ``L + j`` → key offset ``j + 1``); heads above
``threshold`` (0.4, a common cut-off) are flagged ``is_induction``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from headkit.checks import check_bool, check_int, check_model, check_tokens, options_of
from headkit.errors import HeadkitError
from headkit.model_types import Model
from headkit.scores.capture import capture, resolve_heads
from headkit.tasks import repeated_tokens_task

DETECTOR_COLUMNS = ["layer", "head", "detector", "score"]
INDUCTION_COLUMNS = ["layer", "head", "induction_score", "is_induction"]


def previous_token_pattern(tokens: Int[Tensor, "batch pos"]) -> Bool[Tensor, "batch pos pos"]:
    """``D[b, q, k]`` true where ``k == q - 1``."""
    batch, pos = tokens.shape
    eye = torch.ones(pos, pos, dtype=torch.bool, device=tokens.device).tril(-1).triu(-1)
    return eye.expand(batch, pos, pos)


def duplicate_token_pattern(tokens: Int[Tensor, "batch pos"]) -> Bool[Tensor, "batch pos pos"]:
    """``D[b, q, k]`` true where ``k < q`` and ``tokens[b, k] == tokens[b, q]``."""
    same = tokens[:, :, None] == tokens[:, None, :]  # [batch, q, k]
    return same.tril(-1)


def induction_pattern(tokens: Int[Tensor, "batch pos"]) -> Bool[Tensor, "batch pos pos"]:
    """``D[b, q, k]`` true where ``tokens[b, k-1]`` is an earlier copy of ``tokens[b, q]``."""
    dup = duplicate_token_pattern(tokens)  # [batch, q, k]
    out = torch.zeros_like(dup)
    out[:, :, 1:] = dup[:, :, :-1]  # shift keys right by one: key k looks at key k-1
    return out


# detector name -> builder of its detection pattern from token ids
DETECTION_PATTERNS: dict[str, Callable[[Tensor], Tensor]] = {
    "previous_token": previous_token_pattern,
    "duplicate_token": duplicate_token_pattern,
    "induction_pattern": induction_pattern,
}


def detector_fractions(
    pattern: Float[Tensor, "batch head_index query_pos key_pos"],
    tokens: Int[Tensor, "batch query_pos"],
    *,
    detectors: Sequence[str],
    exclude_bos: bool,
    exclude_current_token: bool,
) -> Float[Tensor, "batch head_index detector"]:
    """Per-prompt fraction of each head's attention on each detector's pattern."""
    attn = pattern.float()
    if exclude_bos or exclude_current_token:
        attn = attn.clone()
    if exclude_bos:
        attn[..., 0] = 0.0
    if exclude_current_token:
        attn.diagonal(dim1=-2, dim2=-1).zero_()
    total = attn.sum(dim=(-2, -1))  # [batch, head_index]
    hits = []
    for name in detectors:
        mask = DETECTION_PATTERNS[name](tokens.to(attn.device))  # [batch, q, k]
        hits.append(torch.einsum("bhqk,bqk->bh", attn, mask.to(attn.dtype)) / total)
    return torch.stack(hits, -1)


@dataclass(frozen=True)
class DetectorOptions:
    """Options of the attention detectors (module docstring), checked on creation.

    Pass one to `detector_scores` or a one-detector function
    (``previous_token_scores(model, tokens, DetectorOptions(exclude_bos=True))``) or give
    its fields as keywords (``previous_token_scores(model, tokens, exclude_bos=True)``), not both.
    """

    exclude_bos: bool = False  # zero the attention to key 0 before both sums
    exclude_current_token: bool = False  # zero the attention to the query's own position before both sums
    batch_size: int = 64  # prompts per forward pass

    def __post_init__(self) -> None:
        check_bool("exclude_bos", self.exclude_bos)
        check_bool("exclude_current_token", self.exclude_current_token)
        check_int("batch_size", self.batch_size)

    @classmethod
    def of(cls, options: Mapping[str, Any], *, what: str) -> DetectorOptions:
        """``cls(**options)``; an unknown name is a HeadkitError naming ``what`` and listing the known ones."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise HeadkitError(f"{what}: unknown detector option(s) {', '.join(unknown)}: allowed {', '.join(known)}")
        return cls(**options)


def detector_scores(
    model: Model,
    tokens: Int[Tensor, "batch pos"],
    options: DetectorOptions | None = None,
    *,
    detectors: Sequence[str] = tuple(DETECTION_PATTERNS),
    **fields: Any,
) -> pd.DataFrame:
    """Scores of several detectors from one forward pass per batch of prompts.

    ``options``: a `DetectorOptions` (``exclude_bos``, ``exclude_current_token``,
    ``batch_size``), or its fields as keywords (``fields``; not both). Returns a tidy
    DataFrame with columns ``layer, head, detector, score`` (``detector`` one of
    ``previous_token``, ``duplicate_token``, ``induction_pattern``), one row per
    (detector, layer, head), the score averaged over the prompts of ``tokens``.
    """
    unknown = [d for d in detectors if d not in DETECTION_PATTERNS]
    if unknown or not detectors:
        raise HeadkitError(
            f"unknown detector(s) {unknown or list(detectors)}: allowed {', '.join(DETECTION_PATTERNS)}"
        )
    opts = options_of(DetectorOptions, options, fields, what="detector_scores")
    check_tokens(model, tokens)
    if tokens.shape[1] < 2:
        raise HeadkitError(
            f"tokens have length {tokens.shape[1]}: detectors need prompts of 2..{model.cfg.n_ctx} tokens"
        )
    heads = resolve_heads(model, None)
    fractions = capture(
        model, tokens, heads, query_pos=None, batch_size=opts.batch_size, desc="detectors",
        reduce=partial(detector_fractions, detectors=list(detectors), exclude_bos=opts.exclude_bos,
                       exclude_current_token=opts.exclude_current_token),
    )  # fmt: skip  [batch, unit, detector]
    rows = []
    for k, name in enumerate(detectors):
        scores = mean_over_prompts(fractions[:, :, k], n_heads=model.cfg.n_heads)  # heads in (layer, head) order
        rows += [(layer, head, name, score) for (layer, head), score in zip(heads, scores)]
    return pd.DataFrame(rows, columns=DETECTOR_COLUMNS)


def mean_over_prompts(values: Float[Tensor, "batch unit"], *, n_heads: int) -> list[float]:
    """Mean over prompts of every unit (all heads, layer by layer), one layer's block at a time.

    A float32 mean depends on the memory layout it reduces; averaging each layer's
    contiguous ``[batch, head]`` block keeps the scores bit for bit those of a
    per-layer reduction (headkit's detectors before `headkit.scores.capture`).
    """
    blocks = values.split(n_heads, dim=1)  # per layer: [batch, head]
    return [score for block in blocks for score in block.contiguous().mean(0).tolist()]


def previous_token_scores(
    model: Model, tokens: Int[Tensor, "batch pos"], options: DetectorOptions | None = None, **fields: Any
) -> pd.DataFrame:
    """Fraction of each head's attention on the previous token (``layer, head, detector, score``).

    ``options``: a `DetectorOptions` (``exclude_bos``, ``exclude_current_token``,
    ``batch_size``), or its fields as keywords (not both).
    """
    opts = options_of(DetectorOptions, options, fields, what="previous_token_scores")
    return detector_scores(model, tokens, opts, detectors=("previous_token",))


def duplicate_token_scores(
    model: Model, tokens: Int[Tensor, "batch pos"], options: DetectorOptions | None = None, **fields: Any
) -> pd.DataFrame:
    """Fraction of each head's attention on earlier copies of the current token (options as `previous_token_scores`)."""
    opts = options_of(DetectorOptions, options, fields, what="duplicate_token_scores")
    return detector_scores(model, tokens, opts, detectors=("duplicate_token",))


def induction_pattern_scores(
    model: Model, tokens: Int[Tensor, "batch pos"], options: DetectorOptions | None = None, **fields: Any
) -> pd.DataFrame:
    """Fraction of each head's attention on tokens right after earlier copies of the current one
    (options as `previous_token_scores`)."""
    opts = options_of(DetectorOptions, options, fields, what="induction_pattern_scores")
    return detector_scores(model, tokens, opts, detectors=("induction_pattern",))


DEFAULT_HALF_LENGTH = 20  # Olsson et al.-style repeated sequences; shortened when they do not fit


def resolve_vocab_range(model: Model, vocab_range: tuple[int, int] | None) -> tuple[int, int]:
    """``vocab_range`` checked against the model (None = the whole vocabulary)."""
    d_vocab = model.cfg.d_vocab
    low, high = vocab_range if vocab_range is not None else (0, d_vocab)
    if not 0 <= low < high <= d_vocab:
        raise HeadkitError(
            f"vocab_range ({low}, {high}) must satisfy 0 <= low < high <= d_vocab={d_vocab}"
        )
    return low, high


def default_half_length(model: Model, *, vocab_range: tuple[int, int], bos: bool) -> int:
    """20, or less when the vocabulary range (``L`` distinct ids plus one) or the
    context (``bos + 2L`` tokens) is too small; at least 2."""
    low, high = vocab_range
    fit = min(DEFAULT_HALF_LENGTH, high - low - 1, (model.cfg.n_ctx - int(bos)) // 2)
    if fit < 2:
        raise HeadkitError(
            f"repeated random tokens need half_length >= 2: vocab_range {low}..{high - 1} and "
            f"n_ctx={model.cfg.n_ctx} leave at most {fit}"
        )
    return fit


def repeated_random_tokens(
    n_prompts: int,
    *,
    half_length: int,
    vocab_range: tuple[int, int],
    seed: int,
    bos_id: int | None = None,
) -> Int[Tensor, "n pos"]:
    """``[bos_id?, r_1 … r_L, r_1 … r_L]``, the ``r_j`` distinct ids drawn from ``vocab_range``.

    The prompts of `headkit.tasks.repeated_tokens_task` (a random permutation of
    its ``V = high - low`` symbols per prompt, first ``L`` kept: every second-half
    token has exactly one earlier occurrence), with its symbol ids ``1..V`` moved
    to ``low..high-1`` and its BOS (id 0) to ``bos_id``. For a model trained on
    that task (``vocab_range=(1, V + 1)``, ``bos_id=0``) the ids are unchanged.
    """
    low, high = vocab_range
    check_int("n_prompts", n_prompts)
    check_int("half_length", half_length, low=2)
    if high - low <= half_length:
        raise HeadkitError(
            f"vocab_range {low}..{high - 1} has {high - low} ids: need more than "
            f"half_length={half_length} (distinct tokens per half, plus one)"
        )
    batch = repeated_tokens_task(
        n_prompts, seed=seed, half_length=half_length, vocab_size=high - low, bos=bos_id is not None
    )
    tokens = batch.tokens + (low - 1)  # symbol ids 1..V -> low..high-1
    if bos_id is not None:
        tokens[:, 0] = bos_id
    return tokens


def induction_prompts(
    model: Model,
    *,
    n_prompts: int = 64,
    seed: int = 0,
    half_length: int | None = None,
    vocab_range: tuple[int, int] | None = None,
    bos_id: int | None = None,
) -> tuple[Int[Tensor, "n pos"], int]:
    """`repeated_random_tokens` for ``model`` (on its device) and their ``half_length``, checked.

    ``vocab_range=None``: the whole vocabulary; ``half_length=None``: `default_half_length`.
    The prompts of `induction_scores` and `headkit.scores.census.head_census`.
    """
    low, high = resolve_vocab_range(model, vocab_range)
    d_vocab = model.cfg.d_vocab
    if bos_id is not None and not 0 <= bos_id < d_vocab:
        raise HeadkitError(f"bos_id={bos_id} is out of range: allowed 0..{d_vocab - 1}")
    offset = 0 if bos_id is None else 1
    if half_length is None:
        half_length = default_half_length(model, vocab_range=(low, high), bos=bos_id is not None)
    if offset + 2 * half_length > model.cfg.n_ctx:
        raise HeadkitError(
            f"half_length={half_length} makes prompts of {offset + 2 * half_length} tokens, beyond "
            f"n_ctx={model.cfg.n_ctx}: allowed half_length 2..{(model.cfg.n_ctx - offset) // 2}"
        )
    tokens = repeated_random_tokens(n_prompts, half_length=half_length, vocab_range=(low, high), seed=seed, bos_id=bos_id)
    return tokens.to(model.cfg.device), half_length


def induction_scores(
    model: Model,
    *,
    threshold: float = 0.4,
    batch_size: int = 64,
    **prompts: Any,
) -> pd.DataFrame:
    """Induction score of every head on repeated random tokens.

    ``prompts`` are `induction_prompts`' options: ``n_prompts=64``, ``seed=0``,
    ids in ``vocab_range`` (``(low, high)``, high exclusive; default the whole model
    vocabulary), an optional leading ``bos_id``, ``half_length=None`` (20, shortened
    to fit a small vocabulary or context: `default_half_length`). Returns ``layer,
    head, induction_score, is_induction`` with ``is_induction = induction_score > threshold``.
    """
    check_model(model)
    if not 0.0 <= threshold <= 1.0:
        raise HeadkitError(f"threshold={threshold} is out of range: allowed 0..1")
    check_int("batch_size", batch_size)
    tokens, half_length = induction_prompts(model, **prompts)
    return induction_scores_from_tokens(
        model, tokens, half_length=half_length, threshold=threshold, batch_size=batch_size
    )


def induction_stripe(
    pattern: Float[Tensor, "batch head_index query_pos key_pos"],
    tokens: Int[Tensor, "batch query_pos"],
    *,
    offset: int,
    half_length: int,
) -> Float[Tensor, "batch head_index"]:
    """Mean attention from query ``offset+L+j`` to key ``offset+j+1`` for j in 0..L-1."""
    stripe = pattern.float().diagonal(offset=-(half_length - 1), dim1=-2, dim2=-1)
    # stripe[..., i] is pattern[q=i+L-1, k=i]; keep keys offset+1 .. offset+L
    return stripe[..., offset + 1 : offset + 1 + half_length].mean(-1)  # [batch, head_index]


def induction_scores_from_tokens(
    model: Model,
    tokens: Int[Tensor, "batch pos"],
    *,
    half_length: int,
    threshold: float = 0.4,
    batch_size: int = 64,
) -> pd.DataFrame:
    """`induction_scores` on given repeated-token prompts whose last ``2*half_length``
    tokens are two copies of the same sequence (a prefix such as BOS may come first)."""
    check_tokens(model, tokens)
    check_int("batch_size", batch_size)
    pos = tokens.shape[1]
    offset = pos - 2 * half_length
    if half_length < 2 or offset < 0:
        raise HeadkitError(
            f"half_length={half_length} does not fit prompts of {pos} tokens: allowed 2..{pos // 2}"
        )
    first, second = tokens[:, offset : offset + half_length], tokens[:, offset + half_length :]
    if not torch.equal(first, second):
        bad = int((first != second).any(-1).nonzero()[0])
        raise HeadkitError(
            f"prompt {bad}: the last {2 * half_length} tokens are not two copies of one sequence"
        )
    heads = resolve_heads(model, None)
    stripes = capture(
        model, tokens, heads, query_pos=None, batch_size=batch_size, desc="induction",
        reduce=partial(induction_stripe, offset=offset, half_length=half_length),
    )  # fmt: skip  [batch, unit]
    scores = mean_over_prompts(stripes, n_heads=model.cfg.n_heads)  # heads in (layer, head) order
    return pd.DataFrame(
        [(layer, head, score, score > threshold) for (layer, head), score in zip(heads, scores)],
        columns=INDUCTION_COLUMNS,
    )
