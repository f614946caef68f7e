"""load_gptj against Hugging Face's own GPT-J forward and (TransformerLens 3.x) its own conversion.

Every checkpoint here is a tiny random `GPTJForCausalLM` written by the test with
``save_pretrained``; nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import GPTJConfig, GPTJForCausalLM

from headkit.errors import HeadkitError
from headkit.loading.gptj import load_gptj
from headkit.model_types import is_bridge

from hooked import hooked_gptj_config, needs_hooked

D_VOCAB = 50
PROCESSING = dict(fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True)


def tiny_hf(*, n_inner: int | None = None, seed: int = 0, **overrides) -> GPTJForCausalLM:
    """A random tiny GPT-J whose LayerNorms and biases are far from their defaults."""
    torch.manual_seed(seed)
    kwargs = dict(
        vocab_size=D_VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_inner=n_inner,
        bos_token_id=0, eos_token_id=0,
    )
    kwargs.update(overrides)
    model = GPTJForCausalLM(GPTJConfig(**kwargs)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name and name.endswith("weight"):
                p.normal_(1.0, 0.3)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.3)
    return model


def save(model: GPTJForCausalLM, directory: Path, **kwargs) -> Path:
    model.save_pretrained(directory, **kwargs)
    return directory


def hf_log_probs(model: GPTJForCausalLM, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens).logits.log_softmax(-1)


def tl_log_probs(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens).float().log_softmax(-1)


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, D_VOCAB, (3, 12), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("n_inner", [None, 48])
@pytest.mark.parametrize(
    "flags",
    [{}, dict(fold_ln=True), PROCESSING, dict(center_unembed=True, center_writing_weights=True)],
    ids=["raw", "fold_ln", "all", "center_only"],
)
def test_log_probs_match_huggingface(tmp_path, tokens, n_inner, flags):
    hf = tiny_hf(n_inner=n_inner)
    model = load_gptj(save(hf, tmp_path), **flags)
    assert model.cfg.d_mlp == (n_inner or 4 * 32)
    diff = (tl_log_probs(model, tokens) - hf_log_probs(hf, tokens)).abs().max().item()
    assert diff <= 1e-4


def test_rotary_on_the_whole_head(tmp_path, tokens):
    hf = tiny_hf(rotary_dim=8)  # d_head = 32 / 4
    model = load_gptj(save(hf, tmp_path))
    assert model.cfg.rotary_dim == 8
    assert (tl_log_probs(model, tokens) - hf_log_probs(hf, tokens)).abs().max() <= 1e-4


@needs_hooked
@pytest.mark.parametrize("flags", [{}, PROCESSING], ids=["raw", "all"])
def test_weights_and_log_probs_equal_transformer_lens_conversion(tmp_path, tokens, flags):
    """The bridge holds the weights TransformerLens 3.9's own GPT-J conversion makes
    (``convert_gptj_weights``), and with processing computes the same log-probabilities
    as ``load_and_process_state_dict``."""
    from transformer_lens import HookedTransformer
    from transformer_lens.pretrained.weight_conversions.gptj import convert_gptj_weights

    hf = tiny_hf()
    ours = load_gptj(save(hf, tmp_path), device="cpu", **flags)
    assert is_bridge(ours)
    reference = HookedTransformer(hooked_gptj_config(hf.config))
    reference.load_and_process_state_dict(
        convert_gptj_weights(hf, reference.cfg), **{**{name: False for name in PROCESSING}, **flags}
    )
    torch.testing.assert_close(tl_log_probs(ours, tokens), tl_log_probs(reference, tokens), atol=1e-5, rtol=1e-5)
    if not flags:
        for name in ("W_E", "W_Q", "W_K", "W_V", "W_O", "W_U"):
            torch.testing.assert_close(getattr(ours, name), getattr(reference, name), msg=name)


def test_bfloat16_load(tmp_path, tokens):
    hf = tiny_hf()
    directory = save(hf, tmp_path)
    fp32 = load_gptj(directory)
    bf16 = load_gptj(directory, dtype="bfloat16")
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    # This machine's CPU advertises AMX, which the sandbox does not grant: oneDNN's
    # bf16 matmul dies with SIGILL. Torch's own kernels (mkldnn off) are fine.
    with torch.backends.mkldnn.flags(enabled=False):
        diff = (tl_log_probs(bf16, tokens) - tl_log_probs(fp32, tokens)).abs().max().item()
    assert 0 < diff < 0.05


def test_half_precision_load_makes_no_float32_copies(tmp_path, float32_allocations):
    hf = tiny_hf().to(torch.bfloat16)
    directory = save(hf, tmp_path)
    mode = float32_allocations(min_numel=32 * 32)  # any weight matrix
    with mode:
        model = load_gptj(directory, dtype="bfloat16")
    assert mode.seen == []
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with float32_allocations(min_numel=32 * 32) as processing:  # the check can fail
        load_gptj(directory, dtype="bfloat16", fold_ln=True)
    assert processing.seen


def test_model_owns_its_memory(tmp_path, tokens):
    """Rewriting the weight file in place afterwards must not change the loaded model."""
    directory = save(tiny_hf(), tmp_path)
    model = load_gptj(directory)
    before = tl_log_probs(model, tokens)
    path = directory / "model.safetensors"
    size = path.stat().st_size
    with open(path, "r+b") as f:  # same inode, so a memory map of it would see this
        f.seek(size // 4)
        f.write(b"\x00" * (size - size // 4))
    assert torch.equal(tl_log_probs(model, tokens), before)


@pytest.mark.parametrize(
    "save_kwargs",
    [dict(max_shard_size="20KB"), dict(safe_serialization=False)],
    ids=["sharded_safetensors", "pytorch_bin"],
)
def test_other_weight_formats(tmp_path, tokens, save_kwargs):
    hf = tiny_hf()
    try:
        save(hf, tmp_path, **save_kwargs)
    except TypeError as error:  # transformers without safe_serialization: write the .bin ourselves
        assert "safe_serialization" in str(error)
        hf.config.save_pretrained(tmp_path)
        torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    if "max_shard_size" in save_kwargs:
        assert (tmp_path / "model.safetensors.index.json").is_file()
    model = load_gptj(tmp_path)
    assert (tl_log_probs(model, tokens) - hf_log_probs(hf, tokens)).abs().max() <= 1e-4


def test_tokenizer_in_directory_is_attached(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<|endoftext|>"] + [f"w{i}" for i in range(1, D_VOCAB)]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=words[0], eos_token=words[0])
    directory = save(tiny_hf(), tmp_path)
    assert load_gptj(directory).tokenizer is None
    tokenizer.save_pretrained(directory)
    model = load_gptj(directory)
    assert model.to_str_tokens("w3 w5") == ["<|endoftext|>", "w3", "w5"]  # BOS prepended, as TL does
    assert model.to_tokens("w3 w5").tolist() == [[0, 3, 5]]


def _fake_hub_cache(root: Path, source: Path, repo: str) -> None:
    """The layout huggingface_hub keeps: models--org--name/{refs/main, snapshots/<commit>/}."""
    commit = "0" * 40
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    shutil.copytree(source, repo_dir / "snapshots" / commit)


def test_hub_name_resolved_from_local_cache(tmp_path, tokens, monkeypatch):
    from huggingface_hub import constants

    hf = tiny_hf()
    save(hf, tmp_path / "src")
    _fake_hub_cache(tmp_path / "hub", tmp_path / "src", "EleutherAI/gpt-j-6B")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model = load_gptj("EleutherAI/gpt-j-6B")
    assert (tl_log_probs(model, tokens) - hf_log_probs(hf, tokens)).abs().max() <= 1e-4


def test_hub_name_not_cached_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HeadkitError, match=r"EleutherAI/gpt-j-6B.*HF_HUB_OFFLINE"):
        load_gptj("EleutherAI/gpt-j-6B")


def test_missing_directory(tmp_path):
    with pytest.raises(HeadkitError, match="does not exist"):
        load_gptj(tmp_path / "nowhere")


def test_directory_without_config(tmp_path):
    with pytest.raises(HeadkitError, match=r"config\.json not found"):
        load_gptj(tmp_path)


def test_config_of_another_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 32}))
    with pytest.raises(HeadkitError, match=r"config\.json has model_type='gpt2'"):
        load_gptj(tmp_path)


def test_config_not_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(HeadkitError, match=r"config\.json is not valid JSON"):
        load_gptj(tmp_path)


def test_no_weight_file(tmp_path):
    tiny_hf().config.save_pretrained(tmp_path)
    with pytest.raises(HeadkitError, match="has no weights"):
        load_gptj(tmp_path)


def test_truncated_safetensors_names_file(tmp_path):
    save(tiny_hf(), tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(HeadkitError, match=r"model\.safetensors is not a readable safetensors file"):
        load_gptj(tmp_path)


def test_corrupted_pytorch_bin_names_file(tmp_path):
    hf = tiny_hf()
    hf.config.save_pretrained(tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(path.read_bytes()[:-300])
    with pytest.raises(HeadkitError, match=r"pytorch_model\.bin is not a readable PyTorch"):
        load_gptj(tmp_path)


def test_weights_disagreeing_with_config(tmp_path):
    save(tiny_hf(), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_inner": 64}))
    with pytest.raises(HeadkitError, match=r"transformer\.h\.0\.mlp\.fc_in\.weight has shape \(128, 32\)"):
        load_gptj(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_layer": 3}))
    with pytest.raises(HeadkitError, match=r"config\.json: n_layer=3 but the weight files \(model\.safetensors\) hold 2 blocks"):
        load_gptj(tmp_path)


def test_bad_options(tmp_path):
    directory = save(tiny_hf(), tmp_path)
    with pytest.raises(HeadkitError, match="dtype 'float64' is not supported"):
        load_gptj(directory, dtype="float64")
    with pytest.raises(HeadkitError, match="n_devices=0 is out of range: allowed 1 or more"):
        load_gptj(directory, n_devices=0)
    with pytest.raises(HeadkitError, match="n_devices=2: headkit loads a model onto one device"):
        load_gptj(directory, n_devices=2, device="cpu")
