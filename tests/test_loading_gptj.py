"""headkit.loading.gptj.converted_parts: GPT-J's components one at a time, against load_gptj's model.

The reference is the HookedTransformer `load_gptj` builds (itself checked against
Hugging Face's forward and TransformerLens's own conversion in tests/test_loading.py).
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from transformers import GPTJConfig, GPTJForCausalLM

from headkit.loading import LoadOptions, load_gptj
from headkit.loading.files import open_weight_files
from headkit.loading.gptj import check_weights, converted_parts, read_gptj_config


PROCESSING = dict(fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True)


def save(model: GPTJForCausalLM, directory):
    model.save_pretrained(directory)
    return directory


def tiny_hf() -> GPTJForCausalLM:
    """A random tiny GPT-J with LayerNorms and biases away from their defaults (so folding matters)."""
    config = GPTJConfig(vocab_size=50, n_positions=32, n_embd=32, n_layer=2, n_head=4, rotary_dim=4)
    model = GPTJForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ("ln" in name and name.endswith("weight")):
                p.add_(torch.randn_like(p) * 0.3)
    return model


@pytest.mark.parametrize("flags", [{}, PROCESSING], ids=["raw", "all"])
def test_parts_are_the_loaded_models_tensors_one_component_each(tmp_path, flags):
    directory = save(tiny_hf(), tmp_path)
    model = load_gptj(directory, **flags)
    shapes, weights = read_gptj_config(directory), open_weight_files(directory)
    aliases = check_weights(weights, shapes, directory)
    options = LoadOptions(**flags)
    parts = list(converted_parts(lambda n: weights.read(aliases[n]).float(), shapes, options.processing))

    assert len(parts) == shapes.n_layers + 2
    assert all(name.startswith(f"blocks.{layer}.") for layer, part in enumerate(parts[1:-1]) for name in part)
    merged = {name: t for part in parts for name, t in part.items()}
    assert sum(len(part) for part in parts) == len(merged)  # no tensor in two components
    expected = {name: t for name, t in model.state_dict().items() if not name.endswith(("mask", "IGNORE", "_sin", "_cos"))}
    assert merged.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(merged[name], tensor), name


def test_no_component_is_alive_while_the_next_is_read(tmp_path):
    directory = save(tiny_hf(), tmp_path)
    shapes, weights = read_gptj_config(directory), open_weight_files(directory)
    aliases = check_weights(weights, shapes, directory)
    refs: list[weakref.ref] = []

    def read(name: str) -> torch.Tensor:
        gc.collect()
        assert all(ref() is None for ref in refs)  # what was yielded before is gone
        return weights.read(aliases[name]).float()

    n = 0
    for part in converted_parts(read, shapes, LoadOptions(**PROCESSING).processing):
        refs.extend(weakref.ref(t) for t in part.values())
        del part  # as build_model does
        n += 1
    assert n == shapes.n_layers + 2 and refs
