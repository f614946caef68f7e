"""TransformerLens's weight processing, applied to one GPT-J component at a time, in place.

``fold_ln``, ``center_writing_weights``, ``center_unembed`` and
``fold_value_biases`` mean what they mean in TransformerLens's
``load_and_process_state_dict`` and run in its order (`PROCESSING_STEPS`), but on
one component (the embedding, one block, or the unembedding) at a time, so that
`headkit.loading.gptj.load_gptj` never holds a float32 copy of the whole model.
The functions know GPT-J's layout in TransformerLens names: one LayerNorm per block,
whose copy in ``ln2`` is dropped when folding. Every step leaves log-probabilities
unchanged. (`headkit.pretrained` processes other architectures with
TransformerLens's own ``ProcessWeights``.)
"""

from __future__ import annotations

from typing import Callable

import einops
from jaxtyping import Float
from torch import Tensor

from headkit.loading.build import Processing, Weights


def _fold_ln_block(w: Weights, opts: Processing) -> None:
    """LN scale and bias into Q/K/V and W_in; inputs are then only centred and normalised."""
    ln_w, ln_b = w.pop("ln1.w"), w.pop("ln1.b")
    del w["ln2.w"], w["ln2.b"]  # the tied copy of ln1
    for x in "QKV":
        W: Float[Tensor, "n_heads d_model d_head"] = w[f"attn.W_{x}"]
        w[f"attn.b_{x}"].add_(einops.einsum(W, ln_b, "n m h, m -> n h"))
        W.mul_(ln_w[None, :, None])
        W.sub_(W.mean(dim=1, keepdim=True))  # LNPre centres its input
    W_in: Float[Tensor, "d_model d_mlp"] = w["mlp.W_in"]
    w["mlp.b_in"].add_(ln_b @ W_in)
    W_in.mul_(ln_w[:, None])
    W_in.sub_(W_in.mean(dim=0, keepdim=True))


def _fold_ln_final(w: Weights, opts: Processing) -> None:
    ln_w, ln_b = w.pop("ln_final.w"), w.pop("ln_final.b")
    W_U: Float[Tensor, "d_model d_vocab"] = w["unembed.W_U"]
    w["unembed.b_U"].add_(ln_b @ W_U)
    W_U.mul_(ln_w[:, None])
    W_U.sub_(W_U.mean(dim=0, keepdim=True))


def _center_embed(w: Weights, opts: Processing) -> None:
    """What is written to the residual stream loses its mean over d_model (LN removes it anyway)."""
    w["embed.W_E"].sub_(w["embed.W_E"].mean(dim=-1, keepdim=True))


def _center_block(w: Weights, opts: Processing) -> None:
    for name in ("attn.W_O", "attn.b_O", "mlp.W_out", "mlp.b_out"):
        w[name].sub_(w[name].mean(dim=-1, keepdim=True))


def _center_unembed(w: Weights, opts: Processing) -> None:
    """Softmax ignores a constant added to every logit."""
    w["unembed.W_U"].sub_(w["unembed.W_U"].mean(dim=-1, keepdim=True))
    w["unembed.b_U"].sub_(w["unembed.b_U"].mean())


def _fold_value_biases(w: Weights, opts: Processing) -> None:
    """Attention rows sum to one, so b_V's effect is the constant sum_h b_V[h] @ W_O[h]."""
    b_O: Float[Tensor, " d_model"] = w["attn.b_O"]
    b_O.add_(einops.einsum(w["attn.b_V"], w["attn.W_O"], "n h, n h m -> m"))
    if opts.center_writing_weights:
        b_O.sub_(b_O.mean())
    w["attn.b_V"].zero_()


# step -> component kind -> function, applied in this order (TransformerLens's order)
PROCESSING_STEPS: dict[str, dict[str, Callable[[Weights, Processing], None]]] = {
    "fold_ln": {"block": _fold_ln_block, "unembed": _fold_ln_final},
    "center_writing_weights": {"embed": _center_embed, "block": _center_block},
    "center_unembed": {"unembed": _center_unembed},
    "fold_value_biases": {"block": _fold_value_biases},
}


def process(w: Weights, kind: str, opts: Processing) -> Weights:
    """The steps ``opts`` asks for, in place, on one ``embed``, ``block`` or ``unembed`` component; returns ``w``."""
    for step, by_kind in PROCESSING_STEPS.items():
        if getattr(opts, step) and kind in by_kind:
            by_kind[kind](w, opts)
    return w
