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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
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


# --- issue 18: remote code, sizes, integer weights, special files --------------------


@pytest.mark.parametrize("name", ["config.json", "tokenizer_config.json"])
def test_auto_map_is_refused_naming_it_and_the_file(tmp_path, name):
    """An auto_map asks transformers to import the directory's Python; refused before transformers is called."""
    (tmp_path / "evil.py").write_text(f"open({str(tmp_path / 'MARKER')!r}, 'w').write('ran')\n")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (tmp_path / "tokenizer.json").write_text("{}")
    config = {"model_type": "gpt2"} if name == "config.json" else {"tokenizer_class": "EvilTokenizer"}
    (tmp_path / name).write_text(json.dumps({**config, "auto_map": {"AutoConfig": "evil.EvilConfig"}}))
    for read in (saved_tokenizer, read_hf_config) if name == "config.json" else (saved_tokenizer,):
        with pytest.raises(HeadkitError, match=rf"{tmp_path / name} has an auto_map \(AutoConfig\): .*headkit never"):
            read(tmp_path)
    assert not (tmp_path / "MARKER").exists()


@pytest.mark.parametrize("field", ["hidden_size", "n_layer", "max_position_embeddings"])
@pytest.mark.parametrize("value", [-32, 0, True])
def test_config_sizes_must_be_positive_integers(tmp_path, field, value):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", field: value}))
    with pytest.raises(HeadkitError, match=rf"config\.json: {field}"):
        read_hf_config(tmp_path)


def weights_of(tmp_path, tensors):
    from safetensors.torch import save_file

    save_file(tensors, tmp_path / "model.safetensors")
    return open_weight_files(tmp_path)


def test_sizes_are_bounded_by_the_weight_headers(tmp_path):
    from headkit.loading.files import check_config_sizes

    weights = weights_of(tmp_path, {f"model.layers.{i}.w": torch.zeros(8, 4) for i in range(3)} | {"lm_head.weight": torch.zeros(50, 4)})
    assert weights.block_count() == 3 and weights.largest_dim() == 50
    path = tmp_path / "config.json"
    check_config_sizes({"num_hidden_layers": 3, "hidden_size": 4, "vocab_size": 50, "max_position_embeddings": 4096}, path, weights)
    with pytest.raises(HeadkitError, match=r"config\.json: num_hidden_layers=1000000000 but the weight files \(model\.safetensors\) hold 3 blocks"):
        check_config_sizes({"num_hidden_layers": 10**9}, path, weights)
    with pytest.raises(HeadkitError, match=r"config\.json: hidden_size=1000000000 but no tensor in the weight files \(model\.safetensors\) has a dimension that large \(largest 50\)"):
        check_config_sizes({"num_hidden_layers": 3, "hidden_size": 10**9}, path, weights)


@pytest.mark.parametrize("dtype, name", [(torch.int32, "I32"), (torch.uint32, "U32"), (torch.int64, "I64"), (torch.bool, "BOOL")])
def test_integer_weights_are_refused_naming_the_tensor(tmp_path, dtype, name):
    """I32 holding float bytes would load as values ~1e9; U32 was a KeyError repr."""
    stored = torch.randn(4, 4).view(torch.int32).to(dtype) if dtype != torch.uint32 else torch.randn(4, 4).view(torch.uint32)
    weights = weights_of(tmp_path, {"a.weight": stored})
    message = rf"model\.safetensors: tensor a\.weight is stored as {name}: model weights must be floating point"
    with pytest.raises(HeadkitError, match=message):
        weights.check_dtype("a.weight")
    with pytest.raises(HeadkitError, match=message):
        weights.read("a.weight")


def test_integer_weights_in_a_pytorch_file_are_refused(tmp_path):
    torch.save({"w": torch.zeros(3, dtype=torch.int32)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(HeadkitError, match=r"tensor w is stored as int32: model weights must be floating point"):
        open_weight_files(tmp_path).read("w")


@pytest.mark.parametrize("special", ["/dev/zero", "fifo", "directory"])
def test_a_weight_file_that_is_not_a_regular_file_is_named_so(tmp_path, special):
    import os

    target = tmp_path / "model.safetensors"
    if special == "fifo":
        os.mkfifo(target)
    elif special == "directory":
        target.mkdir()
    else:
        target.symlink_to(special)
    kind = {"/dev/zero": "a character device", "fifo": "a FIFO", "directory": "a directory"}[special]
    with pytest.raises(HeadkitError, match=rf"model\.safetensors is not a regular file \({kind}\)"):
        open_weight_files(tmp_path)


def test_a_symlink_to_a_regular_weight_file_is_read(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, tmp_path / "real.safetensors")
    (tmp_path / "model.safetensors").symlink_to(tmp_path / "real.safetensors")
    assert torch.equal(open_weight_files(tmp_path).read("w"), torch.ones(2))
