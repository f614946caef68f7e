"""Load pretrained Hugging Face checkpoints into HookedTransformers, offline and lean.

One module per step, shared by both loaders:

- `headkit.loading.files`: a Hugging Face directory, read without building a
  model: where it lives (local or the hub cache), ``config.json``, the weight files
  (one tensor at a time), the saved tokenizer.
- `headkit.loading.build`: the loaders' checked options (`LoadOptions`) and the
  component-by-component build on the ``meta`` device (`build_model`).
- `headkit.loading.gptj`: GPT-J's config mapping and tensor conversion, and
  `load_gptj`.
- `headkit.loading.gptj_processing`: TransformerLens's weight processing, one
  GPT-J component at a time.

`headkit.pretrained.load_pretrained` (every architecture TransformerLens
converts) builds through the same `files` and `build`. The names below are the
ones ``headkit.loading`` has always exported, imported on first use: `files` needs
no TransformerLens, so the bridge's loader (`headkit.bridge.build.boot`) uses it on
TransformerLens 4.x, where `build` and `gptj` (HookedTransformer) cannot import.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        ("LoadOptions", "Processing", "Weights", "assign_state", "attention_buffers", "build_model",
         "meta_model", "state_dict_mismatch"),
        "headkit.loading.build",
    ),
    **dict.fromkeys(
        ("WEIGHT_FORMATS", "WeightFiles", "open_weight_files", "read_hf_config", "resolve_checkpoint_dir",
         "saved_tokenizer"),
        "headkit.loading.files",
    ),
    **dict.fromkeys(
        ("GPTJ_HUB_NAME", "GPTJShapes", "check_weights", "expected_hf_shapes", "hooked_config", "load_gptj",
         "read_gptj_config"),
        "headkit.loading.gptj",
    ),
    "PROCESSING_STEPS": "headkit.loading.gptj_processing",
}  # fmt: skip

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'headkit.loading' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
