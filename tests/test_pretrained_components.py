"""headkit.pretrained.converted_components: one component in flight at a time.

The reference for the tensors is `load_pretrained`'s model (checked against
Hugging Face's forward in tests/test_pretrained.py); the memory claim is checked
with weak references: a component's tensors are gone once the next is asked for.
"""

from __future__ import annotations

import gc
import weakref

import torch
import transformers as T

from headkit.loading import LoadOptions, open_weight_files
from headkit.pretrained import _hf_config, build_skeleton, converted_components, load_pretrained, tl_config


def _llama(directory):
    torch.manual_seed(0)
    config = T.LlamaConfig(
        vocab_size=50, max_position_embeddings=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64,
    )  # fmt: skip
    T.AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    return directory


def _components(directory, options: LoadOptions, expected):
    hf_config, weights = _hf_config(directory), open_weight_files(directory)
    cfg = tl_config(directory, hf_config, options, model_name="test")
    skeleton = build_skeleton(hf_config, weights, directory, cfg.n_layers)
    return converted_components(skeleton, directory, weights, cfg, options, expected)


def test_components_are_the_loaded_models_tensors(tmp_path):
    directory = _llama(tmp_path)
    model = load_pretrained(directory, fold_ln=True)
    expected = model.state_dict()
    parts = list(_components(directory, LoadOptions(fold_ln=True), expected))
    assert len(parts) == model.cfg.n_layers + 2
    merged = {name: t for part in parts for name, t in part.items()}
    assert sum(len(part) for part in parts) == len(merged)
    assert set(merged) <= set(expected)  # folded norm weights are not passed on
    for name, tensor in merged.items():
        assert torch.equal(tensor, expected[name]), name


def drain(parts, refs: list[weakref.ref]) -> int:
    """Ask for every component, keeping only weak references to its tensors; returns the count."""
    n = 0
    for part in parts:
        refs.extend(weakref.ref(t) for t in part.values())
        del part  # as build_model does
        n += 1
    return n


def test_no_component_is_alive_while_the_next_is_converted(tmp_path, monkeypatch):
    import headkit.pretrained as pretrained

    directory = _llama(tmp_path)
    expected = load_pretrained(directory, fold_ln=True).state_dict()
    refs: list[weakref.ref] = []
    convert = pretrained._convert

    def convert_checking_the_last_is_gone(*args, **kwargs):
        gc.collect()
        assert all(ref() is None for ref in refs)
        return convert(*args, **kwargs)

    monkeypatch.setattr(pretrained, "_convert", convert_checking_the_last_is_gone)
    assert drain(_components(directory, LoadOptions(fold_ln=True), expected), refs) == 4
