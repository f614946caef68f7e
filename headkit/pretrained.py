"""Load any causal language model TransformerLens converts, offline and lean.

`HookedTransformer.from_pretrained` (TransformerLens 3.9) loads a model by hub
name: it fetches the config online, materialises the whole Hugging Face model,
converts it into a second full state dict and processes that one. For a local
directory (or a hub name found in the local cache) `load_pretrained` builds
the same HookedTransformer with TransformerLens's own pieces, but one
component at a time:

1. ``config.json`` -> `HookedTransformerConfig` through TransformerLens's
   ``get_pretrained_model_config`` (``convert_hf_model_config``), pointed at a
   private copy of the config so that its name-based shortcuts (any path with
   "llama" or "gemma" in it) never fire and nothing is fetched.
2. The Hugging Face model class is built on the ``meta`` device (no memory);
   every parameter it declares is looked up in the weight files, from their
   headers only, and its shape checked: a config that disagrees with the
   weights is refused in one line naming the first mismatching tensor.
3. The HookedTransformer is built on the ``meta`` device.
4. For each component in turn (embedding, each block, unembedding), only that
   component's Hugging Face parameters are read (one tensor at a time, checked
   finite) into the meta skeleton, and TransformerLens's own converter for the
   architecture (``pretrained/weight_conversions``) is run on it: its outputs
   for this component are real, all others stay meta (free). With processing
   asked for, TransformerLens's ``ProcessWeights.process_weights`` (fold_ln,
   center_writing_weights, center_unembed, fold_value_biases) runs on the same
   mixed state dict, so the real part is processed exactly as TransformerLens
   would, in float32, one component at a time. The results are cast to the
   target dtype and device and kept; the component's inputs are released.
5. Everything is assigned with ``load_state_dict(strict=True, assign=True)``.

Steps 3 to 5 (around the conversion itself) are `headkit.loading.build.build_model`,
and the files are read through `headkit.loading.files`, both shared with
`headkit.loading.load_gptj`; the options are `headkit.loading.LoadOptions`.
Peak memory is the model in the target dtype plus one component in flight.
GPT-J goes through `headkit.loading.load_gptj` (TransformerLens's GPT-J config
ignores ``n_inner`` and ``layer_norm_epsilon``; headkit's own GPT-J mapping
reads both).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor
from transformer_lens import HookedTransformer, HookedTransformerConfig

from headkit.errors import HeadkitError
from headkit.loading.build import LoadOptions, Weights, build_model
from headkit.loading.files import (
    WeightFiles,
    check_config_sizes,
    open_weight_files,
    read_hf_config,
    resolve_checkpoint_dir,
    saved_tokenizer,
)
from headkit.loading.gptj import gptj_from_directory

log = logging.getLogger(__name__)

# Hugging Face architecture -> what config.json's model_type says. Each one is
# loaded by TransformerLens's own config mapping and weight converter and is
# checked against Hugging Face's forward in tests/test_pretrained.py.
SUPPORTED_ARCHITECTURES: dict[str, str] = {
    "GPT2LMHeadModel": "gpt2",
    "GPTNeoForCausalLM": "gpt_neo",
    "GPTJForCausalLM": "gptj",
    "GPTNeoXForCausalLM": "gpt_neox",
    "OPTForCausalLM": "opt",
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Phi3ForCausalLM": "phi3",
}
# Not supported, checked with the same tiny models: GemmaForCausalLM and
# Gemma2ForCausalLM (TransformerLens 3.9 maps Gemma configs by hub name only),
# PhiForCausalLM (TL reads partial_rotary_factor, which transformers 5 moved),
# BloomForCausalLM (TL's converter leaves ALiBi models without pos_embed),
# Olmo2ForCausalLM (no config mapping in TL 3.9).


def architecture_of(raw: dict[str, Any], path: Path) -> str:
    """The architecture a config names (``architectures[0]``, else from ``model_type``); refused unless supported."""
    names = raw.get("architectures")
    if isinstance(names, list) and names and isinstance(names[0], str):
        architecture = names[0]
    else:
        by_type = {t: a for a, t in SUPPORTED_ARCHITECTURES.items()}
        architecture = by_type.get(raw.get("model_type"), f"model_type={raw.get('model_type')!r}")
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise HeadkitError(
            f"{path}: architecture {architecture} is not supported: "
            f"supported {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return architecture


def _hf_config(directory: Path) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)
    except Exception as error:
        raise HeadkitError(f"{directory / 'config.json'} is not a valid config: {error}") from None


def tl_config(directory: Path, hf_config: Any, options: LoadOptions, *, model_name: str) -> HookedTransformerConfig:
    """TransformerLens's config for the model in ``directory``, built offline from its config.json."""
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    with tempfile.TemporaryDirectory(prefix="headkit-config-") as tmp:
        neutral = Path(tmp) / "model"  # a path TL's name-based branches cannot match
        neutral.mkdir()
        raw = read_hf_config(directory)
        # TL reads architectures[0]; a config saved from a bare config object lacks it
        if not raw.get("architectures"):
            raw["architectures"] = [architecture_of(raw, directory / "config.json")]
        if raw.get("model_type") == "gpt2" and "n_ctx" not in raw:  # TL 3.9 reads n_ctx, transformers 5 n_positions
            raw["n_ctx"] = raw.get("n_positions", 1024)
        (neutral / "config.json").write_text(json.dumps(raw))
        try:
            cfg = get_pretrained_model_config(
                str(neutral), fold_ln=options.fold_ln, device=options.device, n_devices=options.n_devices,
                dtype=options.dtype, local_files_only=True, trust_remote_code=False,
            )
        except Exception as error:  # TL's mapping reads fields the config lacks
            raise HeadkitError(
                f"{directory / 'config.json'}: TransformerLens cannot map this config: "
                f"{type(error).__name__}: {error}"
            ) from None
    cfg.model_name = model_name
    cfg.tokenizer_name = None  # HookedTransformer would load it; load_pretrained attaches it itself
    # TransformerLens 3.9 reads GPT-2's MLP width as 4 * n_embd; HF honours n_inner.
    if cfg.original_architecture == "GPT2LMHeadModel" and getattr(hf_config, "n_inner", None):
        cfg.d_mlp = int(hf_config.n_inner)
    return cfg


# --- the Hugging Face skeleton on the meta device ----------------------------------


@dataclass(frozen=True)
class Skeleton:
    """A Hugging Face model on the meta device and where each of its parameters is stored."""

    model: torch.nn.Module
    stored: dict[str, str]  # parameter name -> tensor name in the weight files
    layers: str  # dotted name of the ModuleList of decoder blocks

    def names(self, component: str) -> list[str]:
        """Parameter names of ``"embed"``, ``"unembed"`` or ``"block.{l}"``.

        The embedding reads every parameter outside the blocks except the output
        embedding; the unembedding every one except the input embedding (small
        ones, such as a final norm, are read by both and used by one).
        """
        prefix = self.layers + "."
        if component.startswith("block."):
            own = prefix + component.split(".", 1)[1] + "."
            return [n for n in self.stored if n.startswith(own)]
        skip = _module_name(self.model, self.model.get_output_embeddings() if component == "embed"
                            else self.model.get_input_embeddings())
        return [n for n in self.stored if not n.startswith(prefix) and (skip is None or not n.startswith(skip + "."))]


def _module_name(model: torch.nn.Module, module: torch.nn.Module | None) -> str | None:
    if module is None:
        return None
    return next(n for n, m in model.named_modules() if m is module)


def _decoder_layers(model: torch.nn.Module, n_layers: int) -> str:
    lists = [
        (sum(p.numel() for p in m.parameters()), name)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.ModuleList) and len(m) == n_layers
    ]
    if not lists:
        raise HeadkitError(f"{type(model).__name__}: no list of {n_layers} decoder blocks found")
    return max(lists)[1]


def build_skeleton(hf_config: Any, weights: WeightFiles, directory: Path, n_layers: int) -> Skeleton:
    """The HF model on meta, every parameter matched to a stored tensor of the same shape."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config, trust_remote_code=False)
    prefix = getattr(model, "base_model_prefix", "") + "."
    params = dict(model.named_parameters(remove_duplicate=False))
    lookup = _stored_names(model, weights.names())
    stored: dict[str, str] = {}
    for name, p in params.items():
        candidates = [name, name.removeprefix(prefix), prefix + name]
        found = next((lookup[c] for c in candidates if c in lookup), None)
        if found is None:  # a tied parameter, stored once under the other name
            found = next((stored[n] for n, q in params.items() if q is p and n in stored), None)
        if found is None and name == _output_weight(model) and getattr(hf_config, "tie_word_embeddings", False):
            found = next((stored[n] for n, q in params.items() if q is _input_weight(model) and n in stored), None)
        if found is None:
            raise HeadkitError(f"{directory}: the weights lack tensor {name} (config.json expects it)")
        if weights.shape(found) != tuple(p.shape):
            raise HeadkitError(
                f"{weights.file(found)}: tensor {found} has shape {weights.shape(found)}, "
                f"config.json implies {tuple(p.shape)}"
            )
        weights.check_dtype(found)
        stored[name] = found
    return Skeleton(model=model, stored=stored, layers=_decoder_layers(model, n_layers))


def _stored_names(model: torch.nn.Module, names: list[str]) -> dict[str, str]:
    """Model-side name -> stored name, with the renamings transformers applies when it loads.

    (transformers 5 renames, e.g., GPT-NeoX's stored ``embed_out`` to ``lm_head``.)
    """
    import re

    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightRenaming

    renamings = [
        (src, tgt)
        for t in get_model_conversion_mapping(model)
        if type(t) is WeightRenaming
        for src, tgt in zip(t.source_patterns, t.target_patterns * len(t.source_patterns))
    ]
    out = {name: name for name in names}
    for name in names:
        renamed = name
        for src, tgt in renamings:
            renamed = re.sub(src, tgt, renamed)
        out.setdefault(renamed, name)
    return out


def _output_weight(model: torch.nn.Module) -> str | None:
    name = _module_name(model, model.get_output_embeddings())
    return None if name is None else name + ".weight"


def _input_weight(model: torch.nn.Module) -> Tensor:
    return model.get_input_embeddings().weight


def _set_parameter(model: torch.nn.Module, name: str, value: Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    module._parameters[leaf] = torch.nn.Parameter(value, requires_grad=False)


# --- conversion, one component at a time --------------------------------------------


def _tl_keys(component: str, keys: list[str]) -> list[str]:
    if component.startswith("block."):
        own = "blocks." + component.split(".", 1)[1] + "."
        return [k for k in keys if k.startswith(own)]
    embed = [k for k in keys if k.startswith(("embed.", "pos_embed."))]
    if component == "embed":
        return embed
    return [k for k in keys if not k.startswith("blocks.") and k not in embed]


def _laid_out(t: Tensor) -> Tensor:
    """``t`` contiguous, except a transposed matrix (``W_U``, ``W_in``, ``W_out``), kept as a view.

    A contiguous copy of a transposed matrix needs the matrix twice at once (for
    the unembedding, the largest tensor of most models); matmuls take the view as is.
    """
    if t.is_contiguous() or (t.dim() == 2 and t.T.is_contiguous()):
        return t
    return t.contiguous()


def _owned(t: Tensor) -> Tensor:
    """``t`` alone: a view into a larger tensor is copied so that the rest can be freed."""
    return t.clone() if t.untyped_storage().nbytes() > t.nbytes else t


def _components(n_layers: int) -> Iterator[str]:
    yield "embed"
    for layer in range(n_layers):
        yield f"block.{layer}"
    yield "unembed"


def _convert(
    skeleton: Skeleton,
    directory: Path,
    weights: WeightFiles,
    cfg: HookedTransformerConfig,
    component: str,
    options: LoadOptions,
    expected: Mapping[str, Tensor],
) -> Weights:
    """TransformerLens's converter (and processing) for one component; its real outputs the model keeps."""
    from transformer_lens.loading_from_pretrained import get_pretrained_state_dict
    from transformer_lens.weight_processing import ProcessWeights

    originals: dict[str, Tensor] = {}
    cache: dict[str, Tensor] = {}
    params = dict(skeleton.model.named_parameters(remove_duplicate=False))
    for name in skeleton.names(component):
        source = skeleton.stored[name]
        if source not in cache:
            cache[source] = weights.read(source).to(options.work_dtype)
        originals[name] = params[name]
        _set_parameter(skeleton.model, name, cache[source])
    del cache
    # TL's converters move some tensors to cfg.device; with None that is a no-op,
    # so the meta tensors of other components stay meta (and free).
    cfg = copy.copy(cfg)
    cfg.device = None
    try:
        state = get_pretrained_state_dict(str(directory), cfg, hf_model=skeleton.model, dtype=options.work_dtype)
    finally:  # back to meta, before processing: the converted tensors hold the only references left
        for name, original in originals.items():
            _set_parameter(skeleton.model, name, original)
    own = set(_tl_keys(component, list(state)))
    # Only this component's outputs stay real: a small tensor read for the
    # other outer component (a final norm) must not meet the other's meta ones.
    state = {k: v if k in own else torch.empty_like(v, device="meta") for k, v in state.items()}
    lost = sorted(k for k in own if state[k].is_meta)
    # as TL's fill_missing_keys, before processing (fold_ln writes into b_U)
    state |= _default_fills({k: v for k, v in expected.items() if k in _tl_keys(component, list(expected))}, state)
    if options.processing.needed:
        state = ProcessWeights.process_weights(state, cfg, **dataclasses.asdict(options.processing))
    out = {k: state[k] for k in _tl_keys(component, list(state))}
    lost += sorted(k for k, v in out.items() if v.is_meta)
    if lost:  # the converter or processing read a tensor of another component
        raise RuntimeError(f"load_pretrained: {', '.join(lost)} depend on tensors outside {component}")
    return {k: v for k, v in out.items() if k in expected}  # folded LayerNorm weights are dropped, as TL does


def converted_components(
    skeleton: Skeleton, directory: Path, weights: WeightFiles, cfg: HookedTransformerConfig, options: LoadOptions,
    expected: Mapping[str, Tensor],
) -> Iterator[Weights]:
    """Embedding, each block, unembedding through `_convert`, each read only when asked for.

    The generator keeps nothing of a component between yields (`build_model`
    releases it before asking for the next), so one component is in flight.
    """  # fmt: skip
    for component in _components(cfg.n_layers):
        yield _convert(skeleton, directory, weights, cfg, component, options, expected)


def load_pretrained(name_or_dir: str | Path, **options: Any) -> HookedTransformer:
    """A pretrained causal LM as a HookedTransformer, built one component at a time (see module doc).

    ``name_or_dir``: a Hugging Face directory (config.json + safetensors or
    pytorch_model.bin, sharded or not) or a hub id found in the local HF cache;
    its architecture must be one of `SUPPORTED_ARCHITECTURES`. ``options`` are
    `headkit.loading.LoadOptions`'s fields, as for `headkit.loading.load_gptj`:
    ``dtype`` float32, float16 or bfloat16 (nothing is held in float32 for a half
    dtype, except one component while it is processed); ``device`` (None =
    TransformerLens's default); ``n_devices``; and the processing flags
    (``fold_ln``, ``center_writing_weights``, ``center_unembed``,
    ``fold_value_biases``), which mean what they mean in
    ``HookedTransformer.from_pretrained`` but default to off (raw weights); all
    of them leave log-probabilities unchanged. TransformerLens skips what does
    not apply (no folding for post-norm models, no centring with RMSNorm). A
    tokenizer is attached when the directory holds one.
    """
    checked = LoadOptions.of("load_pretrained", options)
    directory = resolve_checkpoint_dir(name_or_dir)
    raw = read_hf_config(directory)
    architecture = architecture_of(raw, directory / "config.json")
    if architecture == "GPTJForCausalLM":
        return gptj_from_directory(directory, checked, model_name=directory.name)

    weights = open_weight_files(directory)
    check_config_sizes(raw, directory / "config.json", weights)  # before transformers builds anything of them
    hf_config = _hf_config(directory)
    cfg = tl_config(directory, hf_config, checked, model_name=Path(str(name_or_dir)).name)
    skeleton = build_skeleton(hf_config, weights, directory, cfg.n_layers)
    parts = partial(converted_components, skeleton, directory, weights, cfg, checked)  # given the expected tensors
    return build_model(
        cfg, parts, options=checked, layout=lambda t: _owned(_laid_out(t)), tokenizer=saved_tokenizer(directory),
        n_parts=cfg.n_layers + 2, what="load_pretrained", desc=f"loading {architecture}",
    )  # fmt: skip


def _default_fills(expected: dict[str, Tensor], state: dict[str, Tensor]) -> dict[str, Tensor]:
    """What TransformerLens's ``fill_missing_keys`` fills: absent biases (zeros) and norm scales (ones)."""
    out: dict[str, Tensor] = {}
    for name, meta in expected.items():
        leaf = name.rsplit(".", 1)[-1]
        if name in state:
            continue
        if leaf == "b" or leaf.startswith(("b_", "_b_")):
            out[name] = torch.zeros(meta.shape)
        elif leaf == "w":
            out[name] = torch.ones(meta.shape)
    return out


def require_tokenizer(name_or_dir: str | Path, *, option: str = "--model") -> Any:
    """The tokenizer saved with a model, or a HeadkitError when there is none (checked before loading weights)."""
    directory = resolve_checkpoint_dir(name_or_dir)
    tokenizer = saved_tokenizer(directory)
    if tokenizer is None:
        from headkit.loading.files import TOKENIZER_FILES

        raise HeadkitError(
            f"{option} {name_or_dir} holds no tokenizer (none of {', '.join(TOKENIZER_FILES)}): "
            "the prompts need the model's own tokenizer"
        )
    return tokenizer
