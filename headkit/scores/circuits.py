"""Weight-based head scores: copying score and Q/K/V-composition (Elhage et al. 2021).

Conventions. TransformerLens multiplies row vectors from the left, so a head's
OV circuit is the ``d_model × d_model`` matrix ``W_OV = W_V W_O`` (``x ↦ x W_V W_O``)
and its QK circuit ``W_QK = W_Q W_Kᵀ`` (logit ``x_q W_QK x_kᵀ``). The paper writes
the same maps for column vectors, i.e. transposed. Scores use the weights as
stored: no LayerNorm scales, no biases, no rotary rotation (for a rotary model the
QK circuit here is the content part at zero relative offset).

**Copying score.** The full OV circuit from input token to output logit is, in the
paper's column convention, the ``d_vocab × d_vocab`` matrix ``W_U W_O W_V W_E``;
in TransformerLens's row convention it is its transpose ``W_E W_V W_O W_U``, which
has the same eigenvalues. A copying head maps a token onto itself with a positive
gain, so its eigenvalues are mostly positive; the score is ``Σλ / Σ|λ|`` in
``[-1, 1]``. Only ``d_head`` eigenvalues can be nonzero (the rank is at most
``d_head``), and for ``A = W_E W_V`` (``d_vocab × d_head``) and ``B = W_O W_U``
(``d_head × d_vocab``), ``AB`` and ``BA`` have the same nonzero eigenvalues (if
``BAv = λv`` then ``AB(Av) = λ(Av)``). So we take the eigenvalues of the small
``d_head × d_head`` matrix ``BA = W_O W_U W_E W_V``; the extra zero eigenvalues of
the big matrix add nothing to either sum. ``W_U W_E`` (``d_model × d_model``) is
formed once, so GPT-J's 50k vocabulary costs one product, not one per head.

**Composition score.** ``‖W_A W_B‖_F / (‖W_A‖_F ‖W_B‖_F)`` with ``W_A`` the OV
circuit of a head in an earlier layer and ``W_B`` of a later head: its QK circuit
(Q-composition: the earlier head writes what the query reads), ``W_QKᵀ =
W_K W_Qᵀ`` (K-composition: it writes what the key reads) or its OV circuit
(V-composition) -- the orientation of TransformerLens's
``all_composition_scores``. Every circuit is a low-rank product ``L R`` with
``L`` ``d_model × d_head``; with ``L = Q_L R_L`` (QR) and ``Rᵀ = Q_R R_R``, the
norm ``‖L_A R_A L_B R_B‖_F = ‖R_{L_A} (R_A L_B) R_{R_B}ᵀ‖_F`` involves only
``d_head × d_head`` matrices, because multiplying by a matrix with orthonormal
columns keeps Frobenius norms.
"""

from __future__ import annotations

from typing import Callable

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from headkit.checks import check_model
from headkit.errors import HeadkitError
from headkit.model_types import Model

COPYING_COLUMNS = ["layer", "head", "copying_score"]
COMPOSITION_COLUMNS = ["source_layer", "source_head", "target_layer", "target_head", "kind", "score"]

Factors = tuple[
    Float[Tensor, "n_layers n_heads d_model d_head"], Float[Tensor, "n_layers n_heads d_head d_model"]
]


def _stacked(model: Model, name: str, dtype: torch.dtype) -> Tensor:
    """``model.W_Q`` … ``W_O`` [n_layers, n_heads, …] in ``dtype``, a grouped-query model's shared
    key/value heads repeated per query head (query head ``h`` reads key/value head
    ``h // (n_heads / n_kv)``, as HookedTransformer's ``W_K``/``W_V`` give them; a bridge gives
    the ``n_kv`` stored heads)."""
    weight = getattr(model, name).to(dtype)
    n_heads = model.cfg.n_heads
    if weight.shape[1] != n_heads:
        weight = weight.repeat_interleave(n_heads // weight.shape[1], dim=1)
    return weight


def _weights_dtype(model: Model) -> torch.dtype:
    """Compute in float32 at least (bf16/fp16 weights are upcast), float64 stays."""
    check_model(model)  # the weights scores read: a model with real ones
    return torch.promote_types(model.cfg.dtype, torch.float32)


def copying_scores(model: Model) -> pd.DataFrame:
    """``Σλ/Σ|λ|`` over the eigenvalues of each head's full OV circuit (``layer, head, copying_score``)."""
    dtype = _weights_dtype(model)
    with torch.no_grad():
        W_E = model.W_E.to(dtype)  # [d_vocab, d_model]
        W_U = model.W_U.to(dtype)  # [d_model, d_vocab]
        unembed_embed = W_U @ W_E  # [d_model, d_model]
        W_V = _stacked(model, "W_V", dtype)  # [n_layers, n_heads, d_model, d_head]
        W_O = _stacked(model, "W_O", dtype)  # [n_layers, n_heads, d_head, d_model]
        small = W_O @ unembed_embed @ W_V  # [n_layers, n_heads, d_head, d_head] = W_O W_U W_E W_V
        eig = torch.linalg.eigvals(small.double())  # [n_layers, n_heads, d_head], complex
        score = eig.sum(-1).real / eig.abs().sum(-1)  # Σλ is real: complex λ come in conjugate pairs
    rows = [
        (layer, head, float(score[layer, head]))
        for layer in range(model.cfg.n_layers)
        for head in range(model.cfg.n_heads)
    ]
    return pd.DataFrame(rows, columns=COPYING_COLUMNS)


def _qk(model: Model, dtype: torch.dtype) -> Factors:
    """W_QK = W_Q @ W_Kᵀ as (left, right) factors."""
    return _stacked(model, "W_Q", dtype), _stacked(model, "W_K", dtype).transpose(-2, -1)


def _qk_transposed(model: Model, dtype: torch.dtype) -> Factors:
    """W_QKᵀ = W_K @ W_Qᵀ as (left, right) factors."""
    return _stacked(model, "W_K", dtype), _stacked(model, "W_Q", dtype).transpose(-2, -1)


def _ov(model: Model, dtype: torch.dtype) -> Factors:
    """W_OV = W_V @ W_O as (left, right) factors."""
    return _stacked(model, "W_V", dtype), _stacked(model, "W_O", dtype)


# composition kind -> factors of the later (target) head's circuit
TARGET_CIRCUITS: dict[str, Callable[[Model, torch.dtype], Factors]] = {
    "q": _qk,
    "k": _qk_transposed,
    "v": _ov,
}


def _r_factor(x: Float[Tensor, "... rows cols"]) -> Float[Tensor, "... k cols"]:
    """R of the reduced QR decomposition: ``‖x M‖_F == ‖R M‖_F`` for any M."""
    return torch.linalg.qr(x, mode="r").R


def composition_scores(model: Model, *, kind: str = "k") -> pd.DataFrame:
    """Composition score of every (earlier head, later head) pair.

    Returns ``source_layer, source_head, target_layer, target_head, kind, score``
    with one row per pair with ``source_layer < target_layer`` (heads in the same
    or a later layer cannot compose; TransformerLens reports 0 for them).
    """
    check_model(model)
    if kind not in TARGET_CIRCUITS:
        raise HeadkitError(f"composition kind {kind!r} is not known: allowed {', '.join(TARGET_CIRCUITS)}")
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    dtype = _weights_dtype(model)
    with torch.no_grad():
        src_left, src_right = _ov(model, dtype)  # [L, H, d_model, d_head], [L, H, d_head, d_model]
        tgt_left, tgt_right = TARGET_CIRCUITS[kind](model, dtype)
        r_src = _r_factor(src_left)  # [L, H, k, d_head]
        r_tgt = _r_factor(tgt_right.transpose(-2, -1))  # [L, H, k, d_head]
        src_norm = (r_src @ src_right).flatten(-2).norm(dim=-1)  # [L, H] = ‖W_OV‖_F
        tgt_norm = (_r_factor(tgt_left) @ r_tgt.transpose(-2, -1)).flatten(-2).norm(dim=-1)  # [L, H]
        rows = []
        for target_layer in range(1, n_layers):
            # middle[s, h, i, g, j] = (R_A L_B)[i, j] for source (s, h), target head g
            middle = torch.einsum("shim,gmj->shigj", src_right[:target_layer], tgt_left[target_layer])
            prod = torch.einsum("shai,shigj,gbj->shgab", r_src[:target_layer], middle, r_tgt[target_layer])
            norm = prod.flatten(-2).norm(dim=-1)  # [source_layer, source_head, target_head]
            score = norm / src_norm[:target_layer, :, None] / tgt_norm[target_layer][None, None, :]
            for s in range(target_layer):
                for h in range(n_heads):
                    for g in range(n_heads):
                        rows.append((s, h, target_layer, g, kind, float(score[s, h, g])))
    return pd.DataFrame(rows, columns=COMPOSITION_COLUMNS)
