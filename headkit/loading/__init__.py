"""Load pretrained Hugging Face checkpoints, offline, as the models headkit's analyses read.

- `headkit.loading.files`: a Hugging Face directory, read without building a
  model: where it lives (local or the hub cache), ``config.json``, the weight files
  (headers, one tensor at a time), the saved tokenizer. Needs no TransformerLens.
- `headkit.loading.options`: the loaders' checked options (`LoadOptions`, `Processing`).
- `headkit.loading.gptj`: GPT-J's config and weight checks, and `load_gptj`.

`headkit.pretrained.load_pretrained` (every causal LM TransformerLens's bridge
covers) checks through the same `files` and `options`; both end in
`headkit.bridge.build.boot` (``from_pretrained`` offline, wrapped in place).
"""

from headkit.loading.files import (
    WEIGHT_FORMATS,
    WeightFiles,
    open_weight_files,
    read_hf_config,
    resolve_checkpoint_dir,
    saved_tokenizer,
)
from headkit.loading.gptj import (
    GPTJ_HUB_NAME,
    GPTJShapes,
    check_weights,
    expected_hf_shapes,
    load_gptj,
    read_gptj_config,
)
from headkit.loading.options import PROCESSING_FLAGS, LoadOptions, Processing

__all__ = [
    "GPTJ_HUB_NAME", "GPTJShapes", "LoadOptions", "PROCESSING_FLAGS", "Processing", "WEIGHT_FORMATS", "WeightFiles",
    "check_weights", "expected_hf_shapes", "load_gptj", "open_weight_files", "read_gptj_config", "read_hf_config",
    "resolve_checkpoint_dir", "saved_tokenizer",
]  # fmt: skip
