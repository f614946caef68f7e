"""One stacked forward: many interventions, few forward passes.

Every sweep of headkit's interventions (activation patching, ablation sweeps,
path patching) runs the same way:

1. The unpatched run is cached once at the input of every layer it patches
   (``hook_resid_pre``), with what the embedding step passes on besides the
   residual (`Restart`: the shortformer position embedding, the attention mask).
2. A patch in layer ``l`` starts from that cache (`run_from`, ``start_at_layer=l``),
   so the layers below are never recomputed, and ``k`` patches run as one forward
   pass: the batch is stacked ``k`` times along the batch axis, copy ``i``
   carrying patch ``i`` (`stack`).
3. ``batch_size`` caps the rows (prompts x copies) of one pass to bound memory;
   its one default is `auto_batch_size`. The passes (each layer's patches cut by
   `headkit.memory.grouped_batches`, the one batcher) are split across
   the ranks of a torch.distributed group, if any (`run_chunks`, through
   `headkit.distributed.map_cells`).
4. The logits are split back into copies; each copy's logits must be finite
   before its metric is taken (`evaluate_copies`).

`sweep_patches` is this engine for patches (`headkit.interventions.sites.Patch`) at one
site (activation patching; ablation sweeps, whose patches write the
replacement). Path patching builds its own hooks (frozen heads, recorded
receivers) on the same `run_from`, `grouped_batches`, `run_chunks` and `evaluate_copies`.

Not through the engine: `ablate`, `attention_knockout` (one intervention, one
plain forward from the tokens: caching the residual first would add a pass and
save none) and attribution patching (one forward with gradients for every head at
once, nothing to stack).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable, Iterable, Mapping, Sequence, TypeVar

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from headkit.bridge.blocks import BlockInputs, recorded_inputs, run_blocks, unembed
from headkit.bridge.probe import require
from headkit.checks import check_finite
from headkit.distributed import map_cells
from headkit.interventions.sites import SITES, Patch, describe, hook_name
from headkit.memory import grouped_batches
from headkit.model_types import Model, is_bridge

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")

AUTO_ELEMENTS = 2**20  # activation elements per forward pass when batch_size is None


def auto_batch_size(model: Model, tokens: Tensor) -> int:
    """Rows per stacked pass keeping its widest activation near `AUTO_ELEMENTS` elements.

    Stacking saves Python overhead per pass, but on a CPU a pass whose activations
    outgrow the caches gets slower per row (the elementwise GELU is memory-bound):
    about 4 MB of float32 per activation keeps both small. On a GPU pass a larger
    ``batch_size``.
    """
    cfg = model.cfg
    widest = max(cfg.d_model, cfg.d_mlp or 0, cfg.d_vocab, cfg.n_heads * tokens.shape[1])
    return max(tokens.shape[0], AUTO_ELEMENTS // (tokens.shape[1] * widest))


def copies_per_pass(model: Model, tokens: Tensor, batch_size: int | None) -> int:
    """Stacked copies of ``tokens``' batch in one pass: ``batch_size`` rows (None: auto), at least one."""
    rows = batch_size if batch_size is not None else auto_batch_size(model, tokens)
    return max(1, rows // tokens.shape[0])


def run_chunks(
    run_chunk: Callable[[tuple[K, list[int]]], list[R]],
    chunks: Sequence[tuple[K, list[int]]],
    n: int,
    *,
    desc: str,
    progress: bool = False,
    leave: bool = True,
    device: torch.device | str | None = None,
) -> list[R]:
    """``run_chunk`` on every pass, the results put back in id order (ids ``0..n-1``).

    Under a torch.distributed process group the passes are split across the ranks
    and gathered in order (`headkit.distributed.map_cells`).
    """
    results: list[R | None] = [None] * n
    done = map_cells(run_chunk, chunks, desc=desc, progress=progress, leave=leave, device=device)
    for (_, ids), values in zip(chunks, done):
        for i, value in zip(ids, values):
            results[i] = value
    return results  # type: ignore[return-value]


@dataclass(frozen=True)
class Restart:
    """What a forward restarted mid-model needs besides the residual (None when the model has none).

    A HookedTransformer's blocks take the residual alone, plus the shortformer position
    embedding and the padding mask; a TransformerBridge's blocks take what the full
    forward handed them (rotary embeddings, causal mask, ...), recorded once
    (`headkit.bridge.blocks.recorded_inputs`) after the bridge's probe has shown that
    its blocks run alone exactly, on one prompt of the batch's length (they depend on
    the length alone) and stopped after the last block.
    """

    shortformer_pos_embed: Float[Tensor, "batch pos d_model"] | None  # shortformer models add it to q and k
    attention_mask: Int[Tensor, "batch pos"] | None  # padding mask of the tokens
    block_inputs: BlockInputs | None = None  # a bridge's recorded block inputs

    @classmethod
    def of(cls, model: Model, tokens: Int[Tensor, "batch pos"]) -> "Restart":
        if is_bridge(model):
            require(model, "restart")
            # the inputs depend on the length alone (no padding mask here): one prompt's serve the batch
            return cls(None, None, recorded_inputs(model, tokens[:1]))
        _, _, shortformer, attention_mask = model.input_to_embed(tokens)
        return cls(shortformer, attention_mask)


def stack(act: Tensor, copies: int) -> Tensor:
    """``copies`` copies of ``act`` along its batch axis (copy-major): [copies * batch, ...]."""
    return act.repeat(copies, *[1] * (act.ndim - 1))


def run_from(
    model: Model,
    resid: Float[Tensor, "copies_batch pos d_model"],
    *,
    layer: int,
    copies: int,
    restart: Restart,
    hooks: Iterable[tuple[str, Callable]] = (),
    stop_at_layer: int | None = None,
) -> Tensor:
    """The model run from ``resid`` (``copies`` stacked copies of a batch) at block ``layer`` on.

    The shortformer position embedding and the attention mask of ``restart`` are
    stacked to match; ``hooks`` are attached for this pass only. Returns the
    logits, or the residual at ``stop_at_layer``.
    """
    if restart.block_inputs is not None:
        with model.hooks(fwd_hooks=list(hooks)):
            resid = run_blocks(model, resid, layer, stop_at_layer, inputs=restart.block_inputs)
            return resid if stop_at_layer is not None else unembed(model, resid)
    shortformer, mask = restart.shortformer_pos_embed, restart.attention_mask
    with model.hooks(fwd_hooks=list(hooks)):
        return model(
            resid,
            start_at_layer=layer,
            stop_at_layer=stop_at_layer,
            shortformer_pos_embed=None if shortformer is None else stack(shortformer, copies),
            attention_mask=None if mask is None else stack(mask, copies),
        )


def evaluate_copies(
    logits: Float[Tensor, "copies_batch pos d_vocab"],
    runs: Sequence[str],
    evaluate: Callable[[Tensor], Tensor],
) -> list[Tensor]:
    """``evaluate`` of each copy's logits, detached; copy ``i`` is ``runs[i]`` (named if non-finite)."""
    values = []
    for copy_logits, run in zip(logits.unflatten(0, (len(runs), -1)), runs):  # [batch, pos, d_vocab]
        check_finite(copy_logits, where=f"the logits of {run}")
        values.append(evaluate(copy_logits).detach())
    return values


# --- patches at one site ---------------------------------------------------------------

RESUME_AFTER_ATTENTION = ("z", "attn_out")  # sites whose patched layer need not rerun its attention


def resumes_after_attention(model: Model, site: str) -> bool:
    """Whether a patch at ``site`` can skip recomputing its own layer's attention.

    Patching ``z`` or ``attn_out`` leaves the layer's queries, keys, values and
    pattern unchanged, so the patched layer's output is rebuilt from the cached
    activations (`layer_output`). Only for plain pre-norm blocks of a HookedTransformer
    (pinned against ``TransformerBlock.forward`` in tests/interventions/test_engine.py);
    any other architecture, and every TransformerBridge, reruns the whole layer.
    """
    if is_bridge(model):
        return False
    from transformer_lens.components import TransformerBlock  # pyright: ignore[reportMissingImports, reportPrivateImportUsage]  (TL 3.x only)
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    cfg = model.cfg
    plain = (
        not cfg.use_attn_result
        and not cfg.load_in_4bit
        and not cfg.use_normalization_before_and_after
        and not cfg.use_hook_mlp_in
        and cfg.original_architecture not in POST_NORM_ARCHITECTURES
        and cfg.n_devices == 1
        and all(type(block) is TransformerBlock for block in model.blocks)
    )
    return plain and site in RESUME_AFTER_ATTENTION


def layer_output(
    model: Model,
    layer: int,
    site: str,
    cache: Mapping[str, Tensor],
    k: int,
    write: Callable[[Tensor], None],
) -> Float[Tensor, "copies_batch pos d_model"]:
    """Output of block ``layer`` for ``k`` stacked copies, ``write`` patching ``site`` in each.

    ``attn_out = z W_O + b_O`` (the same ``F.linear`` TransformerLens uses), then
    the block's residual sums: parallel ``resid_pre + attn_out + mlp_out``;
    sequential ``resid_mid = resid_pre + attn_out``, MLP recomputed; attention-only
    ``resid_pre + attn_out``. This re-does `TransformerBlock.forward`'s arithmetic
    without its attention; tests/interventions/test_engine.py compares it with the
    block's own forward for every architecture flag where `resumes_after_attention`.
    """
    block, cfg = model.blocks[layer], model.cfg
    if site == "z":
        z = stack(cache[hook_name("z", layer)], k)  # [k*batch, pos, head_index, d_head]
        write(z)
        w = einops.rearrange(block.attn.W_O, "head_index d_head d_model -> d_model (head_index d_head)")
        z = z.reshape(z.shape[0], z.shape[1], cfg.n_heads * cfg.d_head)  # [k*batch, pos, head_index*d_head]
        attn_out = F.linear(z, w.contiguous(), block.attn.b_O)  # [k*batch, pos, d_model]
    else:
        attn_out = stack(cache[hook_name("attn_out", layer)], k)  # [k*batch, pos, d_model]
        write(attn_out)
    resid_pre = stack(cache[hook_name("resid_pre", layer)], k)  # [k*batch, pos, d_model]
    if cfg.attn_only:
        return resid_pre + attn_out
    if cfg.parallel_attn_mlp:  # the MLP read resid_pre: its output is unchanged
        return resid_pre + attn_out + stack(cache[hook_name("mlp_out", layer)], k)
    resid_mid = resid_pre + attn_out
    return resid_mid + block.apply_mlp(block.ln2(resid_mid))


def sweep_patches(
    model: Model,
    tokens: Int[Tensor, "batch pos"],
    sources: Mapping[str, Tensor],
    site: str,
    patches: Sequence[Patch],
    evaluate: Callable[[Tensor], Tensor],
    *,
    batch_size: int | None = None,
    progress: bool = False,
) -> list[Tensor]:
    """``evaluate(logits)`` of the run on ``tokens`` with each patch applied alone.

    ``sources[hook_name]`` is what a patch writes at that hook, shaped like the
    activation ([batch, ...], or a batch axis of 1 to broadcast). Inputs are assumed
    already checked. Runs without gradients; returns one detached result per patch,
    in the order of ``patches``. For each layer ``l``, its patches run ``k`` at a
    time as stacked copies: either from layer ``l`` on with a hook writing the
    patches, or (`resumes_after_attention`) with layer ``l``'s output rebuilt from
    the cache with the patches written in (`layer_output`) and the model run from
    layer ``l + 1`` on.
    """
    by_layer: dict[int, list[int]] = {}
    for i, patch in enumerate(patches):
        by_layer.setdefault(patch.layer, []).append(i)
    if not by_layer:
        return []
    after_attention = resumes_after_attention(model, site)
    chunks = grouped_batches(by_layer, copies_per_pass(model, tokens, batch_size))

    with torch.no_grad():
        # what each patched layer reads, from one pass
        read = ("resid_pre", "z", "attn_out", "mlp_out")[: 4 if after_attention else 1]
        _, cache = model.run_with_cache(
            tokens,
            names_filter=[hook_name(s, l) for l in by_layer for s in read],
            stop_at_layer=max(by_layer) + 1,
            return_cache_object=False,
        )
        run = _PatchRun(model, site, patches, sources, cache, Restart.of(model, tokens), after_attention, evaluate)
        return run_chunks(run, chunks, len(patches), desc=f"patching {site}", progress=progress, device=tokens.device)


@dataclass(frozen=True)
class _PatchRun:
    """One pass of `sweep_patches`: ``k`` patches of one layer as ``k`` stacked copies."""

    model: Model
    site: str
    patches: Sequence[Patch]
    sources: Mapping[str, Tensor]
    cache: Mapping[str, Tensor]  # the base run's resid_pre (and z, attn_out, mlp_out) of each layer
    restart: Restart
    after_attention: bool  # rebuild the layer's output from the cache (`layer_output`)
    evaluate: Callable[[Tensor], Tensor]

    def __call__(self, chunk: tuple[int, list[int]]) -> list[Tensor]:
        (layer, ids), model, site = chunk, self.model, self.site
        k, name = len(ids), hook_name(site, layer)

        def write(act: Tensor) -> None:
            for copy, i in zip(act.unflatten(0, (k, -1)), ids):  # [batch, ...] views of [k*batch, ...]
                SITES[site].write(copy, self.sources[name], self.patches[i])

        def write_hook(act: Tensor, hook: object) -> Tensor:
            write(act)
            return act

        if self.after_attention:
            resid = layer_output(model, layer, site, self.cache, k, write)  # [k*batch, pos, d_model]
            logits = run_from(model, resid, layer=layer + 1, copies=k, restart=self.restart)
        else:
            resid = stack(self.cache[hook_name("resid_pre", layer)], k)  # [k*batch, pos, d_model]
            hooks = [(name, write_hook)]
            logits = run_from(model, resid, layer=layer, copies=k, restart=self.restart, hooks=hooks)
        runs = [f"the run with {describe(site, self.patches[i])} replaced" for i in ids]
        return evaluate_copies(logits, runs, self.evaluate)
