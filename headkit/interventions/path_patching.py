"""Path patching: how much of a corruption's effect travels along chosen paths.

Activation patching asks whether a head *matters*; path patching asks *through
which later component* it matters (Wang et al. 2022, IOI, Appendix B). A path
runs from one or more **sender** heads to a **receiver**: the query, key or
value input of later heads (``(layer, head, "q" | "k" | "v")``), or the final
residual stream (``"final"``, the direct path to the logits). The effect of the
path is measured by a metric of the logits, in three steps:

1. Cache every head's output (``hook_z``) on the original (clean) input and on
   the new (corrupted) input.
2. Run the original input with the sender heads' outputs taken from the new run
   and every other head frozen to its original output; MLPs and LayerNorms are
   recomputed, so a sender's effect reaches the receivers directly and through
   MLPs, but never through another head. Record the receivers' inputs: the
   ``hook_q``/``hook_k``/``hook_v`` of each receiver head (what the head computes
   from this residual stream, after its linear map), or the final residual.
3. Run the original input again with only those receiver inputs patched in
   (everything else recomputed) and measure the metric. For ``"final"`` the
   patched final residual *is* the end of the step-2 run, so step 3 is the
   metric of the step-2 logits.

Senders must lie in earlier layers than every head receiver. With no senders
nothing changes (the clean metric comes back); with every head a sender and
``"final"`` the step-2 run is exactly activation patching of all head outputs
at once (noising direction), since no head is left to freeze.

`path_patching_sweep` scores each sender head on its own. Its ``normalised``
column is ``(value - clean) / (corrupted - clean)``: 0 when the path carries
none of the corruption's effect on the metric, 1 when it carries all of it (the
noising mirror of activation patching's normalisation). The sweep stacks
``k`` copies of the prompt batch along the batch axis, copy ``i`` patching
sender ``i``, and starts each forward at the first layer that differs from the
clean run (the first sender's layer in step 2, the first receiver's in step 3)
from the cached clean residual stream (`headkit.interventions.engine`, the same
stacked forward as activation patching, with the same ``batch_size`` default).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterable, Sequence, cast

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens.hook_points import HookPoint

from headkit.checks import (
    FINAL,
    Head,
    HeadInput,
    Receiver,
    check_heads,
    check_optional_int,
    check_token_pair,
    parse_receiver,
)
from headkit.errors import HeadkitError
from headkit.interventions import engine
from headkit.interventions.engine import Restart
from headkit.interventions.metrics import Metric, run_value, scalar_metric
from headkit.interventions.metrics import normalise as normalise_values
from headkit.interventions.sites import QKV, SITES, hook_name, site_heads
from headkit.memory import grouped_batches
from headkit.model_types import Model

# receiver kind -> its hook's name inside blocks.{layer}.attn (hook_q, hook_k, hook_v)
QKV_HOOKS: dict[str, str] = {kind: SITES[kind].hook.removeprefix("attn.") for kind in QKV}
COLUMNS = ("layer", "head", "value", "normalised")


# --------------------------------------------------------------------------- input


@dataclass(frozen=True)
class Receivers:
    """Validated receivers: head inputs (sorted, unique) or the final residual."""

    heads: tuple[HeadInput, ...]
    final: bool

    @property
    def first_layer(self) -> int:
        """First layer whose computation a receiver patch changes."""
        return min(layer for layer, _, _ in self.heads) if self.heads else 0

    @property
    def last_layer(self) -> int:
        return max(layer for layer, _, _ in self.heads) if self.heads else 0

    def hook_heads(self) -> dict[str, list[int]]:
        """Hook name -> receiver head indices read there, e.g. ``blocks.3.attn.hook_q: [0, 2]``."""
        out: dict[str, list[int]] = {}
        for layer, head, kind in self.heads:
            out.setdefault(hook_name(kind, layer), []).append(head)
        return out

    def label(self) -> str:
        """``"final"`` or the head inputs joined by ``+``, e.g. ``"3.0.q+3.1.k"``."""
        if self.final:
            return FINAL
        return "+".join(f"{layer}.{head}.{kind}" for layer, head, kind in self.heads)


def check_receivers(
    model: Model, receivers: Receiver | Iterable[Receiver]
) -> Receivers:
    """Validate receivers against the model (heads in range, q/k/v, no mix with final).

    A key or value receiver's head index is checked against the heads its hook
    holds (`site_heads`: ``n_key_value_heads`` in grouped-query models). The
    receivers are a set: one given twice counts once (the command line refuses
    a repeated spec, `headkit.checks.parse_receivers`).
    """
    single = isinstance(receivers, str) or (
        isinstance(receivers, tuple) and len(receivers) == 3 and isinstance(receivers[2], str)
    )
    items = [receivers] if single else list(receivers)
    if not items:
        raise HeadkitError("no receivers given: pass head inputs like (5, 0, 'q') or 'final'")
    final = False
    heads: set[HeadInput] = set()
    for item in items:
        if isinstance(item, str):
            item = parse_receiver(item)
        if item == FINAL:
            final = True
            continue
        if not isinstance(item, (tuple, list)) or len(item) != 3 or item[2] not in QKV_HOOKS:
            raise HeadkitError(
                f"receiver {item!r} must be (layer, head, 'q'|'k'|'v') or 'final'"
            )
        [(layer, head)] = check_heads(model, [item[:2]])  # pyright: ignore[reportArgumentType]  (checked there)
        kind = str(item[2])
        n = site_heads(model, kind)
        if head >= n:
            raise HeadkitError(
                f"receiver {layer}.{head}.{kind}: head {head} is out of range for {QKV_HOOKS[kind]}, "
                f"which holds heads 0..{n - 1} in this grouped-query model (n_key_value_heads={n})"
            )
        heads.add((layer, head, kind))
    if final and heads:
        raise HeadkitError(
            "receivers mix 'final' with head inputs "
            f"({', '.join(f'{l}.{h}.{k}' for l, h, k in sorted(heads))}): "
            "patch the final residual and head inputs in separate calls"
        )
    return Receivers(heads=tuple(sorted(heads)), final=final)


def check_senders(
    model: Model, senders: Iterable[Sequence[int]], receivers: Receivers
) -> list[Head]:
    """Validate sender heads; each must lie in a layer before every head receiver."""
    heads = sorted(set(check_heads(model, senders)))
    for s_layer, s_head in heads:
        for r_layer, r_head, kind in receivers.heads:
            if s_layer >= r_layer:
                allowed = (
                    f"senders of this receiver must be in layers 0..{r_layer - 1}"
                    if r_layer
                    else "a receiver in layer 0 has no earlier heads to send to it"
                )
                raise HeadkitError(
                    f"sender head {s_layer}.{s_head} (layer {s_layer}) is not before receiver "
                    f"{r_layer}.{r_head}.{kind} (layer {r_layer}): {allowed}"
                )
    return heads


def _check_pair(model: Model, clean: Tensor, corrupted: Tensor) -> None:
    check_token_pair(model, clean, corrupted)
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None and getattr(tokenizer, "padding_side", None) == "left":
        raise HeadkitError(
            "path patching does not support a left-padding tokenizer: "
            "set model.tokenizer.padding_side = 'right' (prompts of equal length need no padding)"
        )


# --------------------------------------------------------------------------- engine


@dataclass(frozen=True)
class _Runs:
    """Step 1: the clean and corrupted runs, cached per layer."""

    clean_z: list[Float[Tensor, "batch pos head_index d_head"]]
    corrupted_z: list[Float[Tensor, "batch pos head_index d_head"]]
    clean_resid: list[Float[Tensor, "batch pos d_model"]]  # resid_pre of each layer
    clean_logits: Float[Tensor, "batch pos d_vocab"]
    corrupted_logits: Float[Tensor, "batch pos d_vocab"]
    restart: Restart  # what a forward restarted mid-model needs besides the residual


def _cache_runs(
    model: Model,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
) -> _Runs:
    # (1) cache head outputs on the original (clean) and the new (corrupted) input
    layers = range(model.cfg.n_layers)
    z_names = [hook_name("z", layer) for layer in layers]
    resid_names = [hook_name("resid_pre", layer) for layer in layers]
    clean_logits, clean = model.run_with_cache(
        clean_tokens, names_filter=z_names + resid_names, return_cache_object=False
    )
    corrupted_logits, corrupted = model.run_with_cache(
        corrupted_tokens, names_filter=z_names, return_cache_object=False
    )
    return _Runs(
        clean_z=[clean[name] for name in z_names],
        corrupted_z=[corrupted[name] for name in z_names],
        clean_resid=[clean[name] for name in resid_names],
        clean_logits=cast(Tensor, clean_logits),  # TransformerLens 3.x types run_with_cache's output loosely
        corrupted_logits=cast(Tensor, corrupted_logits),
        restart=Restart.of(model, clean_tokens),
    )


def _freeze_z(
    z: Float[Tensor, "copy_batch pos head_index d_head"],
    hook: HookPoint,
    *,
    clean: Float[Tensor, "batch pos head_index d_head"],
    new: Float[Tensor, "batch pos head_index d_head"],
    senders: Bool[Tensor, "copy head_index"],
) -> Float[Tensor, "copy_batch pos head_index d_head"]:
    """Every head's output frozen to its clean value, except copy i's senders (new value)."""
    pick = senders[:, None, None, :, None]  # [copy, 1, 1, head_index, 1]
    out = torch.where(pick, new.unsqueeze(0), clean.unsqueeze(0))  # [copy, batch, pos, head_index, d_head]
    return out.reshape(z.shape)  # [copy * batch, pos, head_index, d_head], copy-major


def _record(act: Tensor, hook: HookPoint, *, store: dict[str, Tensor]) -> None:
    store[hook.name] = act  # pyright: ignore[reportArgumentType]  (TransformerLens types HookPoint.name Optional)


def _patch_heads(
    act: Float[Tensor, "copy_batch pos head_index d_head"],
    hook: HookPoint,
    *,
    new: Float[Tensor, "copy_batch pos head_index d_head"],
    heads: list[int],
) -> Float[Tensor, "copy_batch pos head_index d_head"]:
    out = act.clone()
    out[:, :, heads] = new[:, :, heads]
    return out


def _run_from(
    model: Model,
    runs: _Runs,
    layer: int,
    copies: int,
    hooks: list[tuple[str, Callable]],
    *,
    stop_at_layer: int | None = None,
) -> Tensor:
    """Run ``copies`` stacked copies of the clean input from the clean residual at ``layer``."""
    resid = engine.stack(runs.clean_resid[layer], copies)  # [copies * batch, pos, d_model]
    return engine.run_from(
        model, resid, layer=layer, copies=copies, restart=runs.restart, hooks=hooks, stop_at_layer=stop_at_layer
    )


def _path_patched_logits(
    model: Model,
    runs: _Runs,
    sender_sets: Sequence[Sequence[Head]],
    receivers: Receivers,
) -> Float[Tensor, "copy_batch pos d_vocab"]:
    """Steps 2 and 3 for ``len(sender_sets)`` copies of the batch, copy i with senders i."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    copies = len(sender_sets)
    mask = torch.zeros(n_layers, copies, n_heads, dtype=torch.bool, device=runs.clean_logits.device)
    for i, heads in enumerate(sender_sets):
        for layer, head in heads:
            mask[layer, i, head] = True
    # nothing differs from the clean run below the first sender's layer
    start = min((layer for heads in sender_sets for layer, _ in heads), default=0)

    # (2) original input, senders from the new input, every other head frozen to its
    # original output, MLPs and LayerNorms recomputed; record the receivers' inputs
    freeze = [
        (
            hook_name("z", layer),
            partial(_freeze_z, clean=runs.clean_z[layer], new=runs.corrupted_z[layer], senders=mask[layer]),
        )
        for layer in range(start, n_layers)
    ]
    if receivers.final:
        # (3) for the final residual, the step-2 logits are the patched run
        return _run_from(model, runs, start, copies, freeze)
    recorded: dict[str, Tensor] = {}
    record = [(name, partial(_record, store=recorded)) for name in receivers.hook_heads()]
    _run_from(model, runs, start, copies, freeze + record, stop_at_layer=receivers.last_layer + 1)

    # (3) original input with only the receivers' inputs patched, everything else recomputed
    patch = [
        (name, partial(_patch_heads, new=recorded[name], heads=heads))
        for name, heads in receivers.hook_heads().items()
    ]
    return _run_from(model, runs, receivers.first_layer, copies, patch)


def _metric_values(
    metric: Metric, logits: Float[Tensor, "copy_batch pos d_vocab"], sender_sets: Sequence[Sequence[Head]]
) -> list[float]:
    """The metric of each copy's logits; non-finite logits or values are errors naming the senders."""
    runs = [
        f"the path-patched run from sender(s) {'+'.join(f'{l}.{h}' for l, h in senders) or 'none'}"
        for senders in sender_sets
    ]
    evaluate = scalar_metric(metric, where="metric on a path-patched run")
    return [float(value) for value in engine.evaluate_copies(logits, runs, evaluate)]


# --------------------------------------------------------------------------- API


def path_patching(
    model: Model,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    senders: Iterable[Sequence[int]],
    receivers: Receiver | Iterable[Receiver],
    metric: Metric,
) -> float:
    """The metric after patching the paths from ``senders`` to ``receivers`` (IOI App. B).

    ``senders``: (layer, head) pairs patched together from ``corrupted_tokens``
    (may be empty: the clean metric comes back). ``receivers``: ``(layer, head,
    "q"|"k"|"v")`` head inputs patched together, or ``"final"``; specs like
    ``"5.0.q"`` are accepted. ``metric`` maps logits [batch, pos, d_vocab] to a
    scalar. Returns the metric of the path-patched clean run.
    """
    _check_pair(model, clean_tokens, corrupted_tokens)
    checked = check_receivers(model, receivers)
    heads = check_senders(model, senders, checked)
    device = model.cfg.device
    with torch.no_grad():
        runs = _cache_runs(model, clean_tokens.to(device), corrupted_tokens.to(device))
        run_value(metric, runs.clean_logits, run="the clean run")
        logits = _path_patched_logits(model, runs, [heads], checked)
    (value,) = _metric_values(metric, logits, [heads])
    return value


def _default_senders(model: Model, receivers: Receivers) -> list[Head]:
    """Every head in a layer before the first head receiver, or every head for ``"final"``."""
    last = model.cfg.n_layers if receivers.final else receivers.first_layer
    if last == 0:
        raise HeadkitError(f"receivers {receivers.label()} are in layer 0: no earlier heads can send to them")
    return [(layer, head) for layer in range(last) for head in range(model.cfg.n_heads)]


def path_patching_sweep(
    model: Model,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    receivers: Receiver | Iterable[Receiver],
    metric: Metric,
    *,
    senders: Iterable[Sequence[int]] | None = None,
    normalise: bool = True,
    batch_size: int | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Path patching from each sender head alone to ``receivers``.

    ``senders``: the heads to score, each on its own (default: every head in a
    layer before the first head receiver, or every head for ``"final"``).
    Returns one row per sender, sorted by (layer, head), with columns
    ``layer, head, value, normalised``:
    ``value`` is the metric of the path-patched clean run and ``normalised`` is
    ``(value - clean) / (corrupted - clean)`` (NaN when ``normalise=False`` or
    when the clean and corrupted metrics are equal). The clean and corrupted
    metrics are in ``df.attrs["clean"]`` and ``df.attrs["corrupted"]``.
    ``batch_size`` caps the rows (prompts x senders) of one forward pass, at
    least one sender per pass; None: the engine's default for every sweep
    (`headkit.interventions.engine.auto_batch_size`, sized for CPU caches; larger
    is faster on a GPU, smaller saves memory).
    """
    _check_pair(model, clean_tokens, corrupted_tokens)
    checked = check_receivers(model, receivers)
    heads = check_senders(model, _default_senders(model, checked) if senders is None else senders, checked)
    if not heads:
        raise HeadkitError("no sender heads given: pass at least one (layer, head)")
    check_optional_int("batch_size", batch_size)

    chunks = grouped_batches({0: list(range(len(heads)))}, engine.copies_per_pass(model, clean_tokens, batch_size))
    device = model.cfg.device
    with torch.no_grad():
        runs = _cache_runs(model, clean_tokens.to(device), corrupted_tokens.to(device))
        clean = run_value(metric, runs.clean_logits, run="the clean run").item()
        corrupted = run_value(metric, runs.corrupted_logits, run="the corrupted run").item()

        def run_chunk(chunk: tuple[int, list[int]]) -> list[float]:
            sender_sets = [[heads[i]] for i in chunk[1]]
            logits = _path_patched_logits(model, runs, sender_sets, checked)
            return _metric_values(metric, logits, sender_sets)

        values = engine.run_chunks(run_chunk, chunks, len(heads), desc="path patching", progress=progress, leave=False)

    df = pd.DataFrame(
        {
            "layer": [layer for layer, _ in heads],
            "head": [head for _, head in heads],
            "value": values,
        }
    )
    value = torch.tensor(df["value"].to_numpy(), dtype=torch.float64)
    df["normalised"] = normalise_values(value, base=clean, source=corrupted).numpy() if normalise else float("nan")
    df.attrs.update(clean=clean, corrupted=corrupted, receivers=checked.label())
    return df[list(COLUMNS)]
