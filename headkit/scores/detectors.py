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
``batch_size`` prompts, reading each layer's pattern in a temporary hook, so no
attention pattern is kept in memory after its layer.

`induction_scores` is the other classic induction test (Olsson et al. 2022): on
``[BOS?, r_1 … r_L, r_1 … r_L]`` the second copy of ``r_j`` can only be predicted by
looking at the token after the first copy, ``r_{j+1}``. The score is the mean
attention from each second-half position to the position right after the first
occurrence of its token (query offset ``L + j`` → key offset ``j + 1``); heads above
``threshold`` (0.4, a common cut-off) are flagged ``is_induction``.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Mapping, Sequence

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformer_lens.hook_points import HookPoint

from headkit.checks import check_tokens
from headkit.errors import HeadkitError

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


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise HeadkitError(f"batch_size={batch_size!r} must be a positive integer")


def _score_hook(
    pattern: Float[Tensor, "batch head_index query_pos key_pos"],
    hook: HookPoint,
    *,
    detections: Mapping[str, Bool[Tensor, "batch query_pos key_pos"]],
    exclude_bos: bool,
    exclude_current_token: bool,
    out: dict[str, list[Tensor]],
) -> None:
    """Per-prompt detector scores of every head of this layer, appended to ``out``."""
    attn = pattern.float()
    if exclude_bos or exclude_current_token:
        attn = attn.clone()
    if exclude_bos:
        attn[..., 0] = 0.0
    if exclude_current_token:
        attn.diagonal(dim1=-2, dim2=-1).zero_()
    total = attn.sum(dim=(-2, -1))  # [batch, head_index]
    for name, mask in detections.items():
        hit = torch.einsum("bhqk,bqk->bh", attn, mask.to(attn.dtype))
        out[name].append(hit / total)


def detector_scores(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    *,
    detectors: Sequence[str] = tuple(DETECTION_PATTERNS),
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    batch_size: int = 64,
) -> pd.DataFrame:
    """Scores of several detectors from one forward pass per batch of prompts.

    Returns a tidy DataFrame with columns ``layer, head, detector, score``
    (``detector`` one of ``previous_token``, ``duplicate_token``,
    ``induction_pattern``), one row per (detector, layer, head), the score averaged
    over the prompts of ``tokens``.
    """
    unknown = [d for d in detectors if d not in DETECTION_PATTERNS]
    if unknown or not detectors:
        raise HeadkitError(
            f"unknown detector(s) {unknown or list(detectors)}: allowed {', '.join(DETECTION_PATTERNS)}"
        )
    check_tokens(model, tokens)
    _check_batch_size(batch_size)
    if tokens.shape[1] < 2:
        raise HeadkitError(
            f"tokens have length {tokens.shape[1]}: detectors need prompts of 2..{model.cfg.n_ctx} tokens"
        )
    tokens = tokens.to(model.cfg.device)
    n_layers = model.cfg.n_layers
    per_layer: list[dict[str, list[Tensor]]] = [{d: [] for d in detectors} for _ in range(n_layers)]
    starts = range(0, tokens.shape[0], batch_size)
    with torch.no_grad():
        for start in tqdm(starts, desc="detectors", disable=len(starts) == 1, leave=False):
            chunk = tokens[start : start + batch_size]
            detections = {d: DETECTION_PATTERNS[d](chunk) for d in detectors}
            hooks = [
                (
                    f"blocks.{layer}.attn.hook_pattern",
                    partial(
                        _score_hook,
                        detections=detections,
                        exclude_bos=exclude_bos,
                        exclude_current_token=exclude_current_token,
                        out=per_layer[layer],
                    ),
                )
                for layer in range(n_layers)
            ]
            model.run_with_hooks(chunk, fwd_hooks=hooks, return_type=None)
    rows = []
    for name in detectors:
        for layer in range(n_layers):
            scores = torch.cat(per_layer[layer][name]).mean(0)  # [head_index]
            for head, score in enumerate(scores.tolist()):
                rows.append((layer, head, name, score))
    return pd.DataFrame(rows, columns=DETECTOR_COLUMNS)


def previous_token_scores(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    *,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    batch_size: int = 64,
) -> pd.DataFrame:
    """Fraction of each head's attention on the previous token (``layer, head, detector, score``)."""
    return detector_scores(
        model,
        tokens,
        detectors=("previous_token",),
        exclude_bos=exclude_bos,
        exclude_current_token=exclude_current_token,
        batch_size=batch_size,
    )


def duplicate_token_scores(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    *,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    batch_size: int = 64,
) -> pd.DataFrame:
    """Fraction of each head's attention on earlier copies of the current token."""
    return detector_scores(
        model,
        tokens,
        detectors=("duplicate_token",),
        exclude_bos=exclude_bos,
        exclude_current_token=exclude_current_token,
        batch_size=batch_size,
    )


def induction_pattern_scores(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    *,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    batch_size: int = 64,
) -> pd.DataFrame:
    """Fraction of each head's attention on tokens right after earlier copies of the current one."""
    return detector_scores(
        model,
        tokens,
        detectors=("induction_pattern",),
        exclude_bos=exclude_bos,
        exclude_current_token=exclude_current_token,
        batch_size=batch_size,
    )


DEFAULT_HALF_LENGTH = 20  # Olsson et al.-style repeated sequences; shortened when they do not fit


def resolve_vocab_range(model: HookedTransformer, vocab_range: tuple[int, int] | None) -> tuple[int, int]:
    """``vocab_range`` checked against the model (None = the whole vocabulary)."""
    d_vocab = model.cfg.d_vocab
    low, high = vocab_range if vocab_range is not None else (0, d_vocab)
    if not 0 <= low < high <= d_vocab:
        raise HeadkitError(
            f"vocab_range ({low}, {high}) must satisfy 0 <= low < high <= d_vocab={d_vocab}"
        )
    return low, high


def default_half_length(model: HookedTransformer, *, vocab_range: tuple[int, int], bos: bool) -> int:
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
    n: int,
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
    from headkit.tasks import repeated_tokens_task

    low, high = vocab_range
    if not isinstance(n, int) or n < 1:
        raise HeadkitError(f"n={n!r} prompts: must be a positive integer")
    if not isinstance(half_length, int) or half_length < 2:
        raise HeadkitError(f"half_length={half_length!r} must be an integer >= 2")
    if high - low <= half_length:
        raise HeadkitError(
            f"vocab_range {low}..{high - 1} has {high - low} ids: need more than "
            f"half_length={half_length} (distinct tokens per half, plus one)"
        )
    batch = repeated_tokens_task(
        n, seed=seed, half_length=half_length, vocab_size=high - low, bos=bos_id is not None
    )
    tokens = batch.tokens + (low - 1)  # symbol ids 1..V -> low..high-1
    if bos_id is not None:
        tokens[:, 0] = bos_id
    return tokens


def _induction_stripe_hook(
    pattern: Float[Tensor, "batch head_index query_pos key_pos"],
    hook: HookPoint,
    *,
    offset: int,
    half_length: int,
    out: list[Tensor],
) -> None:
    """Mean attention from query ``offset+L+j`` to key ``offset+j+1`` for j in 0..L-1."""
    stripe = pattern.float().diagonal(offset=-(half_length - 1), dim1=-2, dim2=-1)
    # stripe[..., i] is pattern[q=i+L-1, k=i]; keep keys offset+1 .. offset+L
    out.append(stripe[..., offset + 1 : offset + 1 + half_length].mean(-1))  # [batch, head_index]


def induction_scores(
    model: HookedTransformer,
    *,
    half_length: int | None = None,
    n: int = 64,
    seed: int = 0,
    vocab_range: tuple[int, int] | None = None,
    bos_id: int | None = None,
    threshold: float = 0.4,
    batch_size: int = 64,
) -> pd.DataFrame:
    """Induction score of every head on repeated random tokens.

    Prompts come from `repeated_random_tokens` with ids in ``vocab_range``
    (``(low, high)``, high exclusive; default the whole model vocabulary) and an
    optional leading ``bos_id``. ``half_length=None`` means `default_half_length`
    (20, shortened to fit a small vocabulary or context). Returns ``layer, head,
    induction_score, is_induction`` with ``is_induction = induction_score > threshold``.
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
    if not 0.0 <= threshold <= 1.0:
        raise HeadkitError(f"threshold={threshold} is out of range: allowed 0..1")
    _check_batch_size(batch_size)
    tokens = repeated_random_tokens(
        n, half_length=half_length, vocab_range=(low, high), seed=seed, bos_id=bos_id
    ).to(model.cfg.device)
    return induction_scores_from_tokens(
        model, tokens, half_length=half_length, threshold=threshold, batch_size=batch_size
    )


def induction_scores_from_tokens(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    *,
    half_length: int,
    threshold: float = 0.4,
    batch_size: int = 64,
) -> pd.DataFrame:
    """`induction_scores` on given repeated-token prompts whose last ``2*half_length``
    tokens are two copies of the same sequence (a prefix such as BOS may come first)."""
    check_tokens(model, tokens)
    _check_batch_size(batch_size)
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
    n_layers = model.cfg.n_layers
    per_layer: list[list[Tensor]] = [[] for _ in range(n_layers)]
    starts = range(0, tokens.shape[0], batch_size)
    with torch.no_grad():
        for start in tqdm(starts, desc="induction", disable=len(starts) == 1, leave=False):
            hooks = [
                (
                    f"blocks.{layer}.attn.hook_pattern",
                    partial(
                        _induction_stripe_hook,
                        offset=offset,
                        half_length=half_length,
                        out=per_layer[layer],
                    ),
                )
                for layer in range(n_layers)
            ]
            model.run_with_hooks(tokens[start : start + batch_size], fwd_hooks=hooks, return_type=None)
    rows = []
    for layer in range(n_layers):
        scores = torch.cat(per_layer[layer]).mean(0)  # [head_index]
        for head, score in enumerate(scores.tolist()):
            rows.append((layer, head, score, score > threshold))
    return pd.DataFrame(rows, columns=INDUCTION_COLUMNS)
