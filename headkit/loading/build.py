"""What both loaders share: their checked options and the component-by-component build.

`headkit.loading.gptj.load_gptj` (headkit's own GPT-J mapping) and
`headkit.pretrained.load_pretrained` (TransformerLens's converters, any supported
architecture) differ only in how they turn a checkpoint's tensors into
TransformerLens's. Everything around that lives here, once:

- `LoadOptions`: the keyword options of both loaders (dtype, device, n_devices and
  TransformerLens's four weight-processing flags), checked when built, before any
  file is read.
- `build_model`: an empty HookedTransformer on the ``meta`` device (no memory);
  each component's converted tensors, as the loader yields them, cast to the target
  dtype and moved to the target device one component at a time; the attention
  buffers the meta build left empty; a strict ``load_state_dict(assign=True)``
  whose mismatch is one line (`state_dict_mismatch`); the tokenizer; eval mode.

Peak memory is therefore the model in the target dtype plus the one component in
flight (see docs/loading.md for measured numbers).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer, HookedTransformerConfig

from headkit.checks import check_device, check_int
from headkit.errors import HeadkitError
from headkit.models import resolve_dtype

Weights = dict[str, Tensor]  # TransformerLens tensor name -> tensor


@dataclass(frozen=True)
class Processing:
    """Which of TransformerLens's weight-processing steps to apply (``from_pretrained``'s meaning)."""

    fold_ln: bool = False
    center_writing_weights: bool = False
    center_unembed: bool = False
    fold_value_biases: bool = False

    @property
    def needed(self) -> bool:
        return self.fold_ln or self.center_writing_weights or self.center_unembed or self.fold_value_biases


@dataclass(frozen=True)
class LoadOptions:
    """The keyword options of `load_gptj` and `load_pretrained`, checked (in this order) when built."""

    dtype: str | torch.dtype = "float32"  # float32, float16 or bfloat16; held as a torch.dtype once checked
    device: str | torch.device | None = None  # None: TransformerLens's default (CUDA if available)
    n_devices: int = 1  # > 1 is passed to TransformerLens (3.9: the GPU with most free memory); needs CUDA
    fold_ln: bool = False  # the four processing steps: off by default (raw weights);
    center_writing_weights: bool = False  # each leaves log-probabilities unchanged
    center_unembed: bool = False
    fold_value_biases: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", resolve_dtype(self.dtype))
        object.__setattr__(self, "device", target_device(self.device, self.n_devices))
        for flag in PROCESSING_FLAGS:
            object.__setattr__(self, flag, bool(getattr(self, flag)))

    @classmethod
    def of(cls, what: str, options: Mapping[str, Any]) -> LoadOptions:
        """``cls(**options)``; an unknown option is a TypeError naming ``what`` and the allowed ones."""
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = [name for name in options if name not in allowed]
        if unknown:
            raise TypeError(f"{what}() got an unexpected keyword argument {unknown[0]!r}: allowed {', '.join(allowed)}")
        return cls(**options)

    @property
    def processing(self) -> Processing:
        return Processing(**{flag: getattr(self, flag) for flag in PROCESSING_FLAGS})

    @property
    def work_dtype(self) -> torch.dtype:
        """The dtype tensors are converted in: float32 while processing, else the target dtype."""
        return torch.float32 if self.processing.needed else self.dtype


PROCESSING_FLAGS = tuple(f.name for f in dataclasses.fields(Processing))


def target_device(device: str | torch.device | None, n_devices: int) -> str | None:
    """``device`` as a checked device name (None stays None); ``n_devices > 1`` needs that many GPUs."""
    check_int("n_devices", n_devices)
    name = None if device is None else check_device(str(device))
    if n_devices > 1:
        kind = torch.device(name).type if name is not None else "cuda"
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if kind != "cuda" or available < n_devices:
            raise HeadkitError(
                f"n_devices={n_devices} needs a CUDA device and {n_devices} GPUs "
                f"(found device={device!r}, {available} GPUs): allowed n_devices=1 here"
            )
    return name


# --- the build, one component at a time ----------------------------------------------


def meta_model(cfg: HookedTransformerConfig) -> tuple[HookedTransformer, torch.device]:
    """An empty HookedTransformer on the meta device (no memory), and the device its tensors go to."""
    with torch.device("meta"):
        model = HookedTransformer(cfg, move_to_device=False)
    from transformer_lens.utilities.multi_gpu import get_best_available_device

    return model, get_best_available_device(model.cfg)


def attention_buffers(model: HookedTransformer, device: torch.device) -> Weights:
    """Real values of the attention buffers, which the meta-device build left empty."""
    cfg = model.cfg
    out: Weights = {}
    for layer, block in enumerate(model.blocks):
        attn = block.attn
        prefix = f"blocks.{layer}.attn."
        if cfg.positional_embedding_type == "rotary":  # as AbstractAttention.__init__ computes them
            size = min(cfg.n_ctx, attn.ROTARY_INITIAL_CACHE_SIZE)
            sin, cos = attn.calculate_sin_cos_rotary(
                cfg.rotary_dim, size, base=attn._rotary_base(), dtype=cfg.dtype
            )
            out[prefix + "rotary_sin"] = sin.to(device)
            out[prefix + "rotary_cos"] = cos.to(device)
        out[prefix + "mask"] = torch.empty((0, 0), dtype=torch.bool, device=device)
        out[prefix + "IGNORE"] = torch.tensor(-torch.inf, device=device)
    return out


def state_dict_mismatch(model: torch.nn.Module, state: Mapping[str, Tensor]) -> str | None:
    """One line naming the first disagreement between ``model``'s tensors and ``state``, or None.

    Covers what ``load_state_dict(strict=True)`` reports in many lines: a
    missing tensor, an unexpected one, a shape that differs (expected vs found).
    """
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in state:
            more = sum(n not in state for n in expected) - 1
            return f"tensor {name} is missing" + (f" ({more} more missing)" if more else "")
        if tuple(state[name].shape) != tuple(tensor.shape):
            more = sum(n in state and tuple(state[n].shape) != tuple(t.shape) for n, t in expected.items()) - 1
            return (
                f"tensor {name}: expected shape {tuple(tensor.shape)}, found {tuple(state[name].shape)}"
                + (f" ({more} more mismatching)" if more else "")
            )
    extra = [n for n in state if n not in expected]
    if extra:
        return f"unexpected tensor {extra[0]}" + (f" ({len(extra) - 1} more unexpected)" if len(extra) > 1 else "")
    return None


def assign_state(model: HookedTransformer, state: Mapping[str, Tensor], *, what: str) -> None:
    """Swap ``model``'s meta tensors for ``state`` (strict); a mismatch is one line, not a dump."""
    problem = state_dict_mismatch(model, state)
    if problem is not None:  # the weights and TransformerLens's model disagree
        raise HeadkitError(f"{what}: the converted weights do not fit the model: {problem}")
    model.load_state_dict(state, strict=True, assign=True)
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:  # a TransformerLens change this loader does not know about
        raise RuntimeError(f"{what} left tensors on the meta device: {', '.join(leftover)}")


def build_model(
    cfg: HookedTransformerConfig,
    parts: Callable[[Mapping[str, Tensor]], Iterable[Weights]],
    *,
    options: LoadOptions,
    layout: Callable[[Tensor], Tensor],
    tokenizer: Any | None,
    n_parts: int,
    what: str,
    desc: str,
) -> HookedTransformer:
    """The HookedTransformer of ``cfg``, its tensors filled one component at a time.

    ``parts(expected)`` yields each component's tensors in TransformerLens names
    (processed as asked), given the meta model's state dict ``expected``; each is
    cast to ``options.dtype``, moved to the target device, passed through
    ``layout`` (e.g. ``Tensor.contiguous``) and kept, and the yielded tensors are
    released before the next component is converted. ``what`` names the loader in
    errors; ``desc`` labels the progress bar.
    """
    model, target = meta_model(cfg)
    state: Weights = {}
    for part in tqdm(parts(model.state_dict()), total=n_parts, desc=desc, leave=False, disable=None):
        state |= {name: layout(tensor.to(device=target, dtype=options.dtype)) for name, tensor in part.items()}
        del part  # the converted component (float32 while processing) goes before the next one comes
    state |= attention_buffers(model, target)
    assign_state(model, state, what=what)
    del state
    if tokenizer is not None:
        model.set_tokenizer(tokenizer)
    model.eval()
    return model
