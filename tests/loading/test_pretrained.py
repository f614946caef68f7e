"""load_pretrained against Hugging Face's own forward, for every supported architecture.

Every checkpoint is a tiny random Hugging Face model written by the test with
``save_pretrained``; nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers as T

from headkit.errors import HeadkitError
from headkit.loading.gptj import load_gptj
from headkit.loading.options import LoadOptions
from headkit.loading.pretrained import load_pretrained, supported_architectures

V = 50
SIZES = dict(vocab_size=V, max_position_embeddings=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
GQA = dict(num_key_value_heads=2, intermediate_size=64)
CONFIGS = {
    "gpt2": lambda: T.GPT2Config(vocab_size=V, n_positions=32, n_embd=32, n_layer=2, n_head=4),  # absolute positions
    "gpt_neo": lambda: T.GPTNeoConfig(
        vocab_size=V, max_position_embeddings=32, hidden_size=32, num_layers=2, num_heads=4,
        attention_types=[[["global", "local"], 1]], window_size=4,
    ),
    "gptj": lambda: T.GPTJConfig(vocab_size=V, n_positions=32, n_embd=32, n_layer=2, n_head=4, rotary_dim=4),
    "gpt_neox": lambda: T.GPTNeoXConfig(**SIZES, intermediate_size=64, rotary_pct=0.5),
    "opt": lambda: T.OPTConfig(**SIZES, ffn_dim=64, word_embed_proj_dim=32),
    "llama": lambda: T.LlamaConfig(**SIZES, **GQA),  # grouped-query attention
    "mistral": lambda: T.MistralConfig(**SIZES, **GQA, sliding_window=None),
    "qwen2": lambda: T.Qwen2Config(**SIZES, **GQA),
    "qwen3": lambda: T.Qwen3Config(**SIZES, **GQA, head_dim=8),
    "phi3": lambda: T.Phi3Config(**SIZES, **GQA, pad_token_id=0, sliding_window=None),
}
PROCESSING = dict(fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True)


def tiny_hf(kind: str, *, seed: int = 0) -> torch.nn.Module:
    """A random tiny HF causal LM whose norms and biases are far from their defaults."""
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(CONFIGS[kind]()).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ("norm" in name or "ln" in name) and name.endswith("weight"):
                p.normal_(1.0, 0.3)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.3)
    return model


def save(model: torch.nn.Module, directory: Path, **kwargs) -> Path:
    model.save_pretrained(directory, **kwargs)
    return directory


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, V, (3, 12), generator=torch.Generator().manual_seed(1))


def hf_log_probs(model, tokens):
    with torch.no_grad():
        return model(tokens).logits.float().log_softmax(-1)


def tl_log_probs(model, tokens):
    with torch.no_grad():
        return model(tokens).float().log_softmax(-1)


def test_every_architecture_tested_here_is_one_the_bridge_covers():
    """load_pretrained takes what TransformerLens's bridge covers; tests/bridge/test_architectures.py
    checks 22 of them against Hugging Face and the probe, these against loading from a directory."""
    tested = {T.AutoModelForCausalLM.from_config(make()).__class__.__name__ for make in CONFIGS.values()}
    assert tested <= set(supported_architectures())


@pytest.mark.parametrize("flags", [{}, dict(fold_ln=True), PROCESSING], ids=["raw", "fold_ln", "all"])
@pytest.mark.parametrize("kind", list(CONFIGS))
def test_log_probs_match_huggingface(tmp_path, tokens, kind, flags):
    hf = tiny_hf(kind)
    model = load_pretrained(save(hf, tmp_path), **flags)
    diff = (tl_log_probs(model, tokens) - hf_log_probs(hf, tokens)).abs().max().item()
    assert diff <= 1e-4


def test_grouped_query_and_absolute_positions_are_kept(tmp_path):
    llama = load_pretrained(save(tiny_hf("llama"), tmp_path / "llama"))
    assert (llama.cfg.n_heads, llama.cfg.n_key_value_heads) == (4, 2)
    assert llama.blocks[0].attn.W_K.shape == (2, 32, 8)  # the two stored key heads
    gpt2 = load_pretrained(save(tiny_hf("gpt2"), tmp_path / "gpt2"))
    assert gpt2.cfg.positional_embedding_type == "standard"
    _, cache = gpt2.run_with_cache(torch.zeros(1, 5, dtype=torch.long))
    assert cache["hook_pos_embed"].shape == (1, 5, 32)


def test_gptj_goes_through_load_gptj(tmp_path, tokens):
    directory = save(tiny_hf("gptj"), tmp_path)
    a, b = load_pretrained(directory, fold_ln=True), load_gptj(directory, fold_ln=True)
    assert torch.equal(tl_log_probs(a, tokens), tl_log_probs(b, tokens))


def test_half_precision_makes_no_float32_copies(tmp_path, float32_allocations):
    hf = tiny_hf("llama").to(torch.bfloat16)
    directory = save(hf, tmp_path)
    with float32_allocations(min_numel=32 * 32) as mode:
        model = load_pretrained(directory, LoadOptions(dtype="bfloat16"))  # the dataclass (keywords: test_loading.py)
    assert mode.seen == []
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert torch.equal(model.blocks[1].attn.W_Q, hf.model.layers[1].self_attn.q_proj.weight.view(4, 8, 32).transpose(1, 2))


def test_sharded_checkpoint(tmp_path, tokens):
    hf = tiny_hf("qwen2")
    save(hf, tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    model = load_pretrained(tmp_path)
    assert (tl_log_probs(model, tokens) - hf_log_probs(hf, tokens)).abs().max() <= 1e-4


def test_unsupported_architecture_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"], "model_type": "bert"}))
    with pytest.raises(HeadkitError, match=r"architecture BertForMaskedLM is not supported: TransformerLens's bridge covers \d+ causal LMs"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(HeadkitError, match=r"architecture model_type='t5' is not supported"):
        load_pretrained(tmp_path)


@pytest.mark.parametrize("loader, kind", [(load_pretrained, "llama"), (load_gptj, "gptj")])
def test_shard_index_outside_the_directory_is_refused(tmp_path, loader, kind):
    other = save(tiny_hf(kind), tmp_path / "other")
    directory = tmp_path / "model"
    save(tiny_hf(kind), directory)
    (directory / "model.safetensors").unlink()
    names = json.loads(json.dumps(list(__import__("safetensors").safe_open(str(other / "model.safetensors"), "pt").keys())))
    index = {"metadata": {}, "weight_map": {n: "../other/model.safetensors" for n in names}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(HeadkitError, match=r"names shard files outside .*: \.\./other/model\.safetensors"):
        loader(directory)


@pytest.mark.parametrize("loader, kind", [(load_pretrained, "gpt2"), (load_gptj, "gptj")])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, loader, kind):
    hf = tiny_hf(kind)
    name, param = [(n, p) for n, p in hf.named_parameters() if ".1." in n and p.dim() == 2][0]
    with torch.no_grad():
        param[0, 0] = float("nan")
    directory = save(hf, tmp_path)
    with pytest.raises(HeadkitError, match=rf"tensor {name} holds 1 non-finite value"):
        loader(directory)


def test_config_disagreeing_with_weights_is_one_line(tmp_path):
    directory = save(tiny_hf("llama"), tmp_path)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "intermediate_size": 48}))
    with pytest.raises(HeadkitError) as error:
        load_pretrained(directory)
    message = str(error.value)
    assert "\n" not in message
    assert "tensor model.layers.0.mlp.gate_proj.weight has shape (64, 32), config.json implies (48, 32)" in message
    (directory / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(HeadkitError, match=r"num_hidden_layers=3 but the weight files \(model\.safetensors\) hold 2 blocks") as error:
        load_pretrained(directory)
    assert "\n" not in str(error.value)


def test_tokenizer_in_the_directory_is_attached(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<s>"] + [f"w{i}" for i in range(1, V)]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    directory = save(tiny_hf("llama"), tmp_path)
    PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="<s>").save_pretrained(directory)
    model = load_pretrained(directory)
    assert model.to_tokens("w3 w5").tolist() == [[0, 3, 5]]


# --- issue 18: memory bombs, integer weights, remote code, negative sizes ------------

LAYER_FIELD = {"gpt2": "n_layer", "gptj": "n_layer", "llama": "num_hidden_layers"}


@pytest.mark.parametrize(
    "loader, kind", [(load_pretrained, "gpt2"), (load_pretrained, "llama"), (load_pretrained, "gptj"), (load_gptj, "gptj")]
)
def test_a_billion_layers_is_refused_from_the_weight_headers(tmp_path, kind, loader):
    """config.json's layer count is checked against the blocks the weight files hold before anything is built."""
    directory = save(tiny_hf(kind), tmp_path)
    config = json.loads((directory / "config.json").read_text())
    field = LAYER_FIELD[kind]
    (directory / "config.json").write_text(json.dumps({**config, field: 10**9}))
    with pytest.raises(HeadkitError, match=rf"config\.json: {field}=1000000000 but the weight files \(model\.safetensors\) hold 2 blocks"):
        loader(directory)


@pytest.mark.parametrize("field", ["hidden_size", "intermediate_size", "vocab_size"])
def test_a_size_larger_than_every_stored_tensor_is_refused(tmp_path, field):
    directory = save(tiny_hf("llama"), tmp_path)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, field: 10**9}))
    with pytest.raises(HeadkitError, match=rf"{field}=1000000000 but no tensor in the weight files \(model\.safetensors\) has a dimension that large"):
        load_pretrained(directory)


@pytest.mark.parametrize("kind", ["gpt2", "gptj", "llama"])
def test_a_negative_hidden_size_is_named(tmp_path, kind):
    directory = save(tiny_hf(kind), tmp_path)
    config = json.loads((directory / "config.json").read_text())
    field = "hidden_size" if kind == "llama" else "n_embd"
    (directory / "config.json").write_text(json.dumps({**config, field: -32}))
    with pytest.raises(HeadkitError, match=rf"config\.json: {field}=-32 is out of range: allowed 1 or more"):
        load_pretrained(directory)


@pytest.mark.parametrize("loader, kind", [(load_pretrained, "llama"), (load_gptj, "gptj")])
def test_integer_weights_are_refused_before_loading(tmp_path, loader, kind):
    """An I32 tensor holding a float tensor's bytes would load as values near 1e9."""
    from safetensors.torch import load_file, save_file

    directory = save(tiny_hf(kind), tmp_path)
    state = load_file(directory / "model.safetensors")
    name = next(n for n in state if ".1." in n and state[n].dim() == 2)
    state[name] = state[name].view(torch.int32)
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(HeadkitError, match=rf"tensor {name} is stored as I32: model weights must be floating point"):
        loader(directory)


def test_auto_map_in_config_is_refused_and_nothing_runs(tmp_path):
    directory = save(tiny_hf("gpt2"), tmp_path)
    (directory / "evil.py").write_text(f"open({str(tmp_path / 'MARKER')!r}, 'w').write('ran')\n")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "model_type": "evil", "auto_map": {"AutoConfig": "evil.C"}}))
    with pytest.raises(HeadkitError, match=r"config\.json has an auto_map \(AutoConfig\)"):
        load_pretrained(directory)
    assert not (tmp_path / "MARKER").exists()


def test_gpt_neo_attention_types_that_expand_to_a_billion_layers_are_refused(tmp_path):
    directory = save(tiny_hf("gpt_neo"), tmp_path)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "attention_types": [[["global", "local"], 10**9]]}))
    with pytest.raises(HeadkitError, match=r"attention_types \(expanded\)=2000000000 but the weight files \(model\.safetensors\) hold 2 blocks"):
        load_pretrained(directory)
