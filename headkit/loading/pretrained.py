"""Load any causal language model TransformerLens's bridge covers, offline.

TransformerLens 4.0 removed ``HookedTransformer.from_pretrained``; its
`TransformerBridge` (also in 3.9) wraps the Hugging Face model itself.
`load_pretrained` takes a local Hugging Face directory (or a hub name found in
the local cache) and:

1. reads ``config.json`` and names the architecture (``architectures[0]``, else
   from ``model_type``); one TransformerLens's bridge has no adapter for is refused;
2. checks the config's sizes against the weight files' headers
   (`headkit.loading.files`), before transformers builds anything of them;
3. loads the model with ``AutoModelForCausalLM.from_pretrained`` offline
   (``local_files_only``, ``trust_remote_code=False``) in the target dtype, and
   wraps it in place (`headkit.bridge.build.boot`): compatibility mode (HookedTransformer's
   hook names), raw weights unless a processing step is asked for, headkit's
   attention where TransformerLens's cannot show what headkit reads (GPT-J).

Which of the model's attention hooks are faithful is measured per model by
`headkit.bridge.probe` before an analysis that needs them runs (docs/bridge.md
gives the table by architecture). GPT-J directories go through `headkit.load_gptj`,
which also checks every tensor's name and shape against the config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from headkit.checks import options_of
from headkit.errors import HeadkitError
from headkit.loading.files import (
    TOKENIZER_FILES,
    check_config_sizes,
    open_weight_files,
    read_hf_config,
    resolve_checkpoint_dir,
    saved_tokenizer,
)
from headkit.loading.gptj import gptj_from_directory
from headkit.loading.hf import boot
from headkit.loading.options import LoadOptions
from headkit.model_types import Model


def supported_architectures() -> list[str]:
    """The causal-LM architectures the installed TransformerLens's bridge has an adapter for."""
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

    return sorted(name for name in SUPPORTED_ARCHITECTURES if name.endswith(("ForCausalLM", "LMHeadModel")))


def architecture_of(raw: dict[str, Any], path: Path) -> str:
    """The architecture a config names (``architectures[0]``, else from ``model_type``); refused unless supported."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    supported = supported_architectures()
    names = raw.get("architectures")
    if isinstance(names, list) and names and isinstance(names[0], str):
        architecture = names[0]
    else:
        model_type = raw.get("model_type")
        architecture = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type, f"model_type={model_type!r}")
    if architecture not in supported:
        raise HeadkitError(
            f"{path}: architecture {architecture} is not supported: TransformerLens's bridge covers "
            f"{len(supported)} causal LMs, e.g. {', '.join(supported[:8])} (headkit.loading.pretrained.supported_architectures())"
        )
    return architecture


def load_pretrained(name_or_dir: str | Path, options: LoadOptions | None = None, **fields: Any) -> Model:
    """A pretrained causal LM as a `TransformerBridge`, wrapped in place (see module doc).

    ``name_or_dir``: a Hugging Face directory (config.json + safetensors or
    pytorch_model.bin, sharded or not) or a hub id found in the local HF cache;
    its architecture must be one `supported_architectures` lists. ``options``: a
    `headkit.loading.options.LoadOptions`, or its fields as keywords (``fields``; not
    both), as for `headkit.loading.gptj.load_gptj`:
    ``dtype`` float32, float16 or bfloat16 (the weights are read straight into it);
    ``device`` (None: CUDA if available, else the CPU); ``n_devices`` (1 only);
    and the processing flags (``fold_ln``, ``center_writing_weights``,
    ``center_unembed``, ``fold_value_biases``), TransformerLens's own steps, off by
    default (raw weights); all of them leave log-probabilities unchanged, and
    TransformerLens skips what does not apply. A tokenizer is attached when the
    directory holds one.
    """
    checked = options_of(LoadOptions, options, fields, what="load_pretrained")
    directory = resolve_checkpoint_dir(name_or_dir)
    raw = read_hf_config(directory)
    architecture = architecture_of(raw, directory / "config.json")
    if architecture == "GPTJForCausalLM":
        return gptj_from_directory(directory, checked)
    check_config_sizes(raw, directory / "config.json", open_weight_files(directory))
    return boot(
        # LoadOptions holds the checked torch.dtype and device name (its fields are typed as given)
        directory, dtype=checked.dtype, device=checked.device, tokenizer=saved_tokenizer(directory),  # pyright: ignore[reportArgumentType]
        processing=checked.processing,
    )  # fmt: skip


def require_tokenizer(name_or_dir: str | Path, *, option: str = "--model") -> Any:
    """The tokenizer saved with a model, or a HeadkitError when there is none (checked before loading weights)."""
    directory = resolve_checkpoint_dir(name_or_dir)
    tokenizer = saved_tokenizer(directory)
    if tokenizer is None:
        raise HeadkitError(
            f"{option} {name_or_dir} holds no tokenizer (none of {', '.join(TOKENIZER_FILES)}): "
            "the prompts need the model's own tokenizer"
        )
    return tokenizer
