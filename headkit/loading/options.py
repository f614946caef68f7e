"""The checked options of `load_gptj` and `load_pretrained` (torch only): `LoadOptions`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from headkit.bridge.build import PROCESSING_FLAGS, Processing
from headkit.checks import check_device, check_int
from headkit.errors import HeadkitError
from headkit.model_config import resolve_dtype


@dataclass(frozen=True)
class LoadOptions:
    """The options of `load_gptj` and `load_pretrained`, checked (in this order) when built.

    Pass one to a loader (``load_pretrained(path, LoadOptions(dtype="bfloat16"))``) or
    give its fields as keywords (``load_pretrained(path, dtype="bfloat16")``), not both.
    """

    dtype: str | torch.dtype = "float32"  # float32, float16 or bfloat16; held as a torch.dtype once checked
    device: str | torch.device | None = None  # None: CUDA if available, else the CPU
    n_devices: int = 1  # only 1: the bridge holds a model on one device
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
    def of(cls, options: Mapping[str, Any], *, what: str) -> LoadOptions:
        """``cls(**options)``; an unknown option is a TypeError naming ``what`` and the allowed ones."""
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = [name for name in options if name not in allowed]
        if unknown:
            raise TypeError(f"{what}() got an unexpected keyword argument {unknown[0]!r}: allowed {', '.join(allowed)}")
        return cls(**options)

    @property
    def processing(self) -> Processing:
        return Processing(**{flag: getattr(self, flag) for flag in PROCESSING_FLAGS})


def target_device(device: str | torch.device | None, n_devices: int) -> str:
    """``device`` as a checked device name (None: CUDA if available, else the CPU); ``n_devices`` must be 1.

    TransformerLens's bridge runs one Hugging Face module; headkit does not split a
    model over several GPUs (``n_devices > 1`` is refused, naming why).
    """
    check_int("n_devices", n_devices)
    if n_devices > 1:
        raise HeadkitError(
            f"n_devices={n_devices}: headkit loads a model onto one device (TransformerLens's bridge wraps one "
            "Hugging Face module); allowed n_devices=1"
        )
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return check_device(str(device))
