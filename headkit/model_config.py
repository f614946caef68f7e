"""`ModelConfig`: the sizes of a GPT-J-style model, and the dtypes headkit builds in.

The bottom of the model layer: `headkit.gptj_hf` (Hugging Face's GPT-J of these
sizes), `headkit.loading` and `headkit.models` (the wrapped model) build on it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from headkit.checks import check_int, check_optional_int
from headkit.errors import HeadkitError
from headkit.io import stored_fields

# Default context (GPT-J's n_positions): the rotary tables of a default model cover
# PosSym-2026's longest usual test (17 + 996 added tokens) and more. They hold no
# parameters; TransformerLens ignores a saved table of another size on loading.
DEFAULT_N_CTX = 2048


DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Turn "float32"/"float16"/"bfloat16" (or a torch dtype) into a torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise HeadkitError(f"dtype {dtype} is not supported: allowed {', '.join(DTYPES)}")
        return dtype
    if dtype not in DTYPES:
        raise HeadkitError(f"dtype {dtype!r} is not supported: allowed {', '.join(DTYPES)}")
    return DTYPES[dtype]


ACT_FNS = ("gelu_new", "gelu")  # MLP activations a ModelConfig may name (same name in HF and TL)


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of a GPT-J-style model; everything else is fixed by the architecture."""

    n_layers: int = 6  # transformer blocks
    d_model: int = 64  # residual stream width
    n_heads: int = 1  # attention heads per layer (the papers use one)
    d_vocab: int = 128  # vocabulary size (a task's `len(batch.vocab)`)
    n_ctx: int = DEFAULT_N_CTX  # longest sequence the rotary tables cover
    rotary_dim: int | None = None  # dims per head that rotate; None = the whole head
    d_mlp: int | None = None  # MLP width; None = 4 * d_model as in GPT-J
    attn_only: bool = False  # drop the MLPs (copy and induction experiments)
    d_head: int | None = None  # None = d_model // n_heads
    act_fn: str = "gelu_new"  # MLP activation: GPT-J's gelu_new, or "gelu" (PosSym-2026's code)

    def __post_init__(self) -> None:
        for name in ("n_layers", "d_model", "n_heads", "d_vocab", "n_ctx"):
            check_int(name, getattr(self, name))
        for name in ("rotary_dim", "d_mlp", "d_head"):
            check_optional_int(name, getattr(self, name))
        head = self.head_dim
        if self.d_head is None and self.d_model % self.n_heads:
            raise HeadkitError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; pass d_head"
            )
        if self.rotary_dim is not None and not (
            2 <= self.rotary_dim <= head and self.rotary_dim % 2 == 0
        ):
            raise HeadkitError(
                f"rotary_dim={self.rotary_dim} must be even and in 2..{head} (the head dimension)"
            )
        if self.act_fn not in ACT_FNS:
            raise HeadkitError(f"act_fn={self.act_fn!r} is not supported: allowed {', '.join(ACT_FNS)}")

    @property
    def head_dim(self) -> int:
        return self.d_head if self.d_head is not None else self.d_model // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        return cls(**stored_fields(cls, data, what="model config"))
