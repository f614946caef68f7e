"""Wrap a Hugging Face causal LM in TransformerLens's `TransformerBridge`, in place.

`wrap` is the one way headkit turns a Hugging Face model into the model its analyses
read: the same module (no copy, no weight conversion, no tokenizer or hub lookup)
seen through TransformerLens's hook names, in compatibility mode
(HookedTransformer's names: ``hook_resid_pre``, ``hook_z``, ``hook_pattern`` …)
and without weight processing unless asked. Works on TransformerLens 3.9 and 4.x,
which both ship the bridge.

Where TransformerLens's own adapter leaves attention to Hugging Face's code and so
cannot show what headkit reads (GPT-J: post-softmax ``hook_attn_scores``, silent
rotary hooks, dropped pattern edits), `wrap` swaps in headkit's attention
(`headkit.bridge.attention`); `HEADKIT_ATTENTION` lists those architectures. Every
other architecture keeps TransformerLens's adapter, and `headkit.bridge.probe` says,
per model, which hooks are faithful.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.model_bridge.sources import build_bridge_from_module

from headkit.bridge.attention import GPTJAttention
from headkit.bridge.probe import faithfulness
from headkit.errors import HeadkitError
from headkit.loading.files import all_finite, check_config_sizes, non_finite_count, open_weight_files, read_hf_config
from headkit.loading.options import PROCESSING_FLAGS, Processing


def _gptj_attention(adapter: Any) -> None:
    """Replace the adapter's GPT-J attention with headkit's (same weights, every hook in place)."""
    blocks = adapter.component_mapping["blocks"]
    stock = blocks.submodules["attn"]
    blocks.submodules["attn"] = GPTJAttention(name=stock.name, config=adapter.cfg, submodules=stock.submodules)
    adapter.cfg.rotary_adjacent_pairs = True  # GPT-J's rotate_every_two (TransformerLens reads False)


# architecture (Hugging Face's class name) -> what `wrap` changes in TransformerLens's adapter
HEADKIT_ATTENTION: dict[str, Callable[[Any], None]] = {
    "GPTJForCausalLM": _gptj_attention,
}


def architecture_name(hf_model: torch.nn.Module) -> str:
    """The Hugging Face architecture of ``hf_model`` (its config's, else its class name)."""
    names = getattr(getattr(hf_model, "config", None), "architectures", None) or []
    return names[0] if names else type(hf_model).__name__


def wrap(
    hf_model: torch.nn.Module,
    *,
    tokenizer: Any = None,
    processing: bool | Processing = False,
    model_name: str = "headkit",
) -> TransformerBridge:
    """``hf_model`` as a `TransformerBridge` in compatibility mode, wrapped in place.

    ``processing=True`` folds LayerNorms, centres writing weights and the unembedding
    and folds value biases, as ``enable_compatibility_mode()`` does by default
    (log-probabilities unchanged); a `Processing` picks steps one by one. The default
    keeps the raw weights, so the bridge computes what ``hf_model`` computes. The
    model is put in eval mode. A ``tokenizer`` is attached as ``bridge.tokenizer``.
    """
    if not isinstance(hf_model, torch.nn.Module) or not hasattr(hf_model, "config"):
        raise HeadkitError(f"wrap needs a Hugging Face model (a torch module with a config), got {type(hf_model).__name__}")
    architecture = architecture_name(hf_model)
    hf_model.config.architectures = [architecture]
    try:
        bridge = build_bridge_from_module(
            hf_model,
            architecture,
            hf_config=hf_model.config,
            tokenizer=None,
            model_name=model_name,
            post_adapter_hook=HEADKIT_ATTENTION.get(architecture),
        )
    except (ValueError, KeyError, NotImplementedError) as exc:
        raise HeadkitError(f"TransformerLens has no bridge for architecture {architecture}: {exc}") from exc
    steps = processing if isinstance(processing, Processing) else Processing(**dict.fromkeys(PROCESSING_FLAGS, bool(processing)))
    flags = {flag: getattr(steps, flag) for flag in PROCESSING_FLAGS}
    bridge.enable_compatibility_mode(disable_warnings=True, no_processing=not steps.needed, **flags)
    if tokenizer is not None:
        attach_tokenizer(bridge, tokenizer)
    bridge.eval()
    weight = next(hf_model.parameters(), None)
    if weight is not None and weight.device.type != "meta" and not (weight.dtype == torch.bfloat16 and weight.device.type == "cpu"):
        # probed now, on the model as built: an analysis's checks later cost no forward pass
        # (bf16 on a CPU is probed at first use: some CPUs cannot multiply bf16 matrices;
        # a model on the meta device holds no values to probe)
        faithfulness(bridge)
    return bridge


def attach_tokenizer(bridge: TransformerBridge, tokenizer: Any) -> None:
    """Give ``bridge`` an in-memory tokenizer (TransformerLens's own setup looks its name up on the hub).

    As HookedTransformer's ``set_tokenizer``: a tokenizer without a BOS (or padding) token
    uses its EOS token, and ``cfg.tokenizer_prepends_bos`` records whether encoding adds a token by
    itself (otherwise the bridge's ``to_tokens`` would drop each prompt's first word).
    """
    eos = getattr(tokenizer, "eos_token", None)
    if getattr(tokenizer, "bos_token", None) is None and eos is not None:
        tokenizer.bos_token = eos
    if getattr(tokenizer, "pad_token", None) is None and eos is not None:
        tokenizer.pad_token = eos  # to_tokens pads a batch of prompts
    bridge.tokenizer = tokenizer
    bridge.cfg.tokenizer_prepends_bos = len(tokenizer.encode("")) > 0


def _check_against_files(path: Path, weights: Any) -> None:
    """Every tensor the config's model declares that the files hold: a floating-point dtype and the
    shape the config implies, from the files' headers, before anything is read (one line naming
    the first that differs; transformers' own report is many lines, after the reading)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, OSError, TypeError) as error:
        raise HeadkitError(f"{path}: transformers cannot build a causal LM of its config.json: {error}") from None
    for name, tensor in skeleton.state_dict().items():
        if name not in weights:
            continue  # tied, renamed or buffers: transformers' own loading decides
        weights.check_dtype(name)
        if weights.shape(name) != tuple(tensor.shape):
            raise HeadkitError(
                f"{weights.file(name)}: tensor {name} has shape {weights.shape(name)}, "
                f"config.json implies {tuple(tensor.shape)}"
            )


def _own_memory(model: torch.nn.Module, weights: Any) -> None:
    """Give ``model`` weights in memory it owns, one tensor at a time.

    transformers leaves each weight a view of the memory-mapped file: a file rewritten
    (or truncated) in place later would change (or crash) the model, and cloning the
    views would page the whole file in next to the copy (2x the checkpoint). Instead
    each tensor the files hold as transformers loaded it (same shape, same first and
    last values) is read again from the file straight into fresh memory (``readinto``,
    no mapping; checked finite by `headkit.loading.files.WeightFiles.read`) and cast;
    a tensor transformers changed on loading, or the files do not hold, is cloned and
    checked here.
    """
    seen: set[int] = set()
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            if id(tensor) in seen or tensor.device.type != "cpu":
                continue
            seen.add(id(tensor))
            fresh = None
            if name in weights and weights.shape(name) == tuple(tensor.shape):
                fresh = weights.read(name).to(tensor.dtype)
                if fresh.numel() and not _same_ends(fresh, tensor):
                    fresh = None  # transformers converted it on loading: keep its version
            if fresh is None:  # not read (and checked) from the files: copied, then checked here
                fresh = tensor.data.clone()
                if fresh.is_floating_point() and not all_finite(fresh):
                    bad = non_finite_count(fresh)
                    raise HeadkitError(
                        f"tensor {name} holds {bad} non-finite value(s) (NaN or infinity): the checkpoint is broken"
                    )
            tensor.data = fresh


def _same_ends(a: torch.Tensor, b: torch.Tensor) -> bool:
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    return torch.equal(flat_a[:16], flat_b[:16]) and torch.equal(flat_a[-16:], flat_b[-16:])


def from_pretrained(cls: Any, path: Path, *, dtype: torch.dtype, weights: Any = None) -> torch.nn.Module:
    """``cls.from_pretrained(path)`` offline, no remote code, in ``dtype``, without transformers'
    progress bar (headkit's one-line errors stay one line)."""
    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        # eager attention: TransformerLens's hooks see the scores and pattern of Hugging Face's
        # eager code (with scaled-dot-product attention some never fire)
        model = cls.from_pretrained(
            path, local_files_only=True, trust_remote_code=False, dtype=dtype, attn_implementation="eager"
        )
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    try:
        _own_memory(model, weights if weights is not None else open_weight_files(path))
    except HeadkitError as error:
        raise HeadkitError(f"{path}: {error}" if not str(error).startswith(str(path)) else str(error)) from None
    return model


def boot(
    directory: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | None = None,
    tokenizer: Any = None,
    processing: bool | Processing = False,
) -> TransformerBridge:
    """A local Hugging Face directory as a bridge: ``from_pretrained`` offline, then `wrap`.

    Nothing is fetched (``local_files_only``) and no code from the directory runs
    (``trust_remote_code=False``; a config with an ``auto_map`` is refused). Before
    transformers builds anything, the config's sizes are checked against the weight
    files' headers (`headkit.loading.files`), as `load_pretrained` does.
    """
    from transformers import AutoModelForCausalLM

    path = Path(directory)
    raw = read_hf_config(path)  # refuses a missing config, an auto_map, non-positive sizes
    weights = open_weight_files(path)
    check_config_sizes(raw, path / "config.json", weights)
    _check_against_files(path, weights)
    try:
        hf_model = from_pretrained(AutoModelForCausalLM, path, dtype=dtype, weights=weights)
    except (ValueError, KeyError, OSError) as error:  # an architecture or a file transformers cannot load
        raise HeadkitError(f"{path}: transformers cannot load it as a causal LM: {error}") from None
    if device is not None:
        hf_model.to(device)
    return wrap(hf_model, tokenizer=tokenizer, processing=processing, model_name=path.name)
