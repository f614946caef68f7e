"""headkit's GPT-J attention for TransformerLens's `TransformerBridge`.

TransformerLens's stock GPT-J adapter (also GPT-Neo and OPT) hands attention to
Hugging Face's module: its ``hook_attn_scores`` holds the *softmaxed* pattern,
``hook_rot_q``/``hook_rot_k`` never fire and edits to ``hook_pattern`` are
dropped. The positional-vs-symbolic analyses (PosSym-2025/2026) read exactly those
hooks, so headkit replaces that component with `GPTJAttention`: the same weights
(Hugging Face's ``q_proj``/``k_proj``/``v_proj``/``out_proj``, wrapped by the
bridge's ``q``/``k``/``v``/``o`` linears) and the same arithmetic as Hugging
Face's ``GPTJAttention`` (rotary on the first ``rotary_dim`` dimensions of each
head with adjacent pairs, ``rotate_every_two``; scores scaled by ``d_head ** -0.5``),
computed step by step so that every hook fires where HookedTransformer fires it:

- ``hook_q``/``hook_k``/``hook_v``: after the projections, ``[batch, pos, head, d_head]``;
- ``hook_rot_q``/``hook_rot_k``: after rotary, ``[batch, pos, head, d_head]``;
- ``hook_attn_scores``: scaled scores *before* softmax, masked with ``-inf``, ``[batch, head, query, key]``;
- ``hook_pattern``: after softmax; an edit here is what the values are mixed with;
- ``hook_z``: the mixed values, ``[batch, pos, head, d_head]``, then ``out_proj``.

The mask is causal whatever the caller passes (a padding mask is added on top), so a
block run alone cannot see the future. Rotary angles come from the positions alone
(GPT-J's sinusoid table, Hugging Face's ``create_sinusoidal_positions``), so the
component does not depend on how a given transformers release passes them down.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformer_lens.model_bridge.generalized_components import AttentionBridge
from transformers.models.gptj import modeling_gptj


def _sin_cos(positions: Tensor, rotary_dim: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """GPT-J's rotary sin and cos at ``positions`` ([batch, pos] or [1, pos]), each [., pos, rotary_dim / 2].

    Read from Hugging Face's own table (``create_sinusoidal_positions``: sin then cos per
    position), sized to the largest position asked for, so no context limit applies.
    """
    table = modeling_gptj.create_sinusoidal_positions(int(positions.max()) + 1, rotary_dim)  # [n, rotary_dim]
    sincos = table.to(positions.device)[positions].to(dtype)  # [., pos, rotary_dim]
    return sincos[..., : rotary_dim // 2], sincos[..., rotary_dim // 2 :]


def _rotate(x: Tensor, sin: Tensor, cos: Tensor, rotary_dim: int) -> Tensor:
    """Hugging Face's GPT-J rotary on the first ``rotary_dim`` dims of x [batch, pos, head, d_head]."""
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    return torch.cat([modeling_gptj.apply_rotary_pos_emb(rot, sin, cos), rest], dim=-1)


class GPTJAttention(AttentionBridge):
    """GPT-J attention that fires every hook in its place (see the module docstring)."""

    def forward(self, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        hf_attn: Any = self.original_component
        if hf_attn is None:
            raise RuntimeError(f"original component not set for {self.name}")
        hidden = kwargs.pop("hidden_states") if "hidden_states" in kwargs else args[0]
        hidden = self.hook_in(hidden)  # [batch, pos, d_model]
        batch, n_pos, _ = hidden.shape
        n_heads, d_head = hf_attn.num_attention_heads, hf_attn.head_dim
        rotary_dim = hf_attn.rotary_dim or d_head

        # [batch, pos, d_model] -> [batch, pos, head, d_head]
        q = self.q(hidden).reshape(batch, n_pos, n_heads, d_head)
        k = self.k(hidden).reshape(batch, n_pos, n_heads, d_head)
        v = self.v(hidden).reshape(batch, n_pos, n_heads, d_head)

        positions = kwargs.get("position_ids")
        if positions is None:
            positions = torch.arange(n_pos, device=hidden.device)[None]
        sin, cos = _sin_cos(positions, rotary_dim, q.dtype)
        # The bridge shows rotary hooks in HookedTransformer's [batch, pos, head, d_head]
        # but is handed them in Hugging Face's [batch, head, pos, d_head] layout.
        q = self.hook_rot_q(_rotate(q, sin, cos, rotary_dim).transpose(1, 2)).transpose(1, 2)
        k = self.hook_rot_k(_rotate(k, sin, cos, rotary_dim).transpose(1, 2)).transpose(1, 2)

        # [batch, head, query, key], half precisions computed in float32 as Hugging Face does
        # (float64 stays float64, as in a HookedTransformer)
        compute = torch.promote_types(q.dtype, torch.float32)
        scores = torch.einsum("bqnh,bknh->bnqk", q.to(compute), k.to(compute)) * hf_attn.scaling
        causal = torch.ones(n_pos, n_pos, dtype=torch.bool, device=hidden.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() == 4:  # a padding mask on top of causality
            if mask.dtype == torch.bool:
                scores = scores.masked_fill(~mask[..., -n_pos:, -n_pos:], float("-inf"))
            else:
                extra = mask[..., -n_pos:, -n_pos:].to(compute)
                scores = scores + extra.masked_fill(extra <= torch.finfo(mask.dtype).min, float("-inf"))
        scores = self.hook_attn_scores(scores)
        pattern = torch.softmax(scores, dim=-1)
        pattern = torch.where(torch.isnan(pattern), torch.zeros_like(pattern), pattern)
        if self.training:
            pattern = hf_attn.attn_dropout(pattern) if hasattr(hf_attn, "attn_dropout") else torch.nn.functional.dropout(
                pattern, p=hf_attn.attention_dropout, training=True
            )
        pattern = self.hook_pattern(pattern).to(v.dtype)

        z = torch.einsum("bnqk,bknh->bqnh", pattern, v)  # [batch, pos, head, d_head]
        out = self.o(z.reshape(batch, n_pos, n_heads * d_head))  # o.hook_in is hook_z
        out = hf_attn.resid_dropout(out)
        return self.hook_out(out), pattern
