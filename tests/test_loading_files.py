"""headkit.loading.files: config.json, weight files read one tensor at a time, the saved tokenizer.

References: the JSON written by the test, and safetensors' / torch's own readers.
"""

from __future__ import annotations

import json

import pytest
import torch

from headkit.errors import HeadkitError
from headkit.loading.files import open_weight_files, read_hf_config, saved_tokenizer


def test_read_hf_config_returns_the_object(tmp_path):
    config = {"model_type": "llama", "hidden_size": 32, "architectures": ["LlamaForCausalLM"]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert read_hf_config(tmp_path) == config


@pytest.mark.parametrize(
    "text, message",
    [(None, r"config\.json not found: .* is not a Hugging Face model directory"),
     ("{not json", r"config\.json is not valid JSON"),
     ("[1, 2]", r"config\.json does not hold a JSON object")],
    ids=["missing", "not_json", "not_an_object"],
)  # fmt: skip
def test_read_hf_config_names_the_problem(tmp_path, text, message):
    if text is not None:
        (tmp_path / "config.json").write_text(text)
    with pytest.raises(HeadkitError, match=message):
        read_hf_config(tmp_path)


def test_no_tokenizer_files_means_no_tokenizer(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert saved_tokenizer(tmp_path) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64])
def test_safetensors_read_equals_safetensors_own_reader(tmp_path, dtype):
    from safetensors.torch import load_file, save_file

    tensors = {
        "a.weight": (torch.randn(5, 3) * 10).to(dtype),
        "b.bias": (torch.randn(7) * 10).to(dtype),
        "empty": torch.zeros(0, 4, dtype=dtype),
    }
    save_file(tensors, tmp_path / "model.safetensors")
    weights = open_weight_files(tmp_path)
    reference = load_file(tmp_path / "model.safetensors")
    assert sorted(weights.names()) == sorted(reference)
    for name, tensor in reference.items():
        assert weights.shape(name) == tuple(tensor.shape)
        read = weights.read(name)
        assert read.dtype == tensor.dtype and torch.equal(read, tensor), name


def test_pytorch_bin_read_is_an_owned_copy(tmp_path):
    state = {"w": torch.randn(4, 4)}
    torch.save(state, tmp_path / "pytorch_model.bin")
    weights = open_weight_files(tmp_path)
    read = weights.read("w")
    assert torch.equal(read, state["w"])
    read.zero_()  # the file's memory map is not written through
    assert torch.equal(weights.read("w"), state["w"])
