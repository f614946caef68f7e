"""The Hugging Face GPT-J backend: HF == HookedTransformer, exact resume with dropout, presets, device."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch
from transformers import GPTJForCausalLM

from headkit.errors import HeadkitError
from headkit.evaluation import score_batch
from headkit.gptj_hf import ATTN_IMPLEMENTATION, build_hf_model, hf_config
from headkit.model_config import ModelConfig
from headkit.tasks import TaskSpec
from headkit.training.checkpoints import load_checkpoint
from headkit.training.config import PRESETS, TrainConfig, default_config, lr_at
from headkit.training.layout import checkpoint_dir
from headkit.training.loop import estimate_memory, eval_seed, resolve_device, train

NUMBER = TaskSpec("number", {"n_letters": 6, "max_pointer": 8, "target_window": 4, "pointer_window": 4})


def tiny(**overrides) -> TrainConfig:
    settings = dict(
        task=NUMBER,
        model=ModelConfig(n_layers=2, d_model=16, n_heads=2, d_vocab=14, n_ctx=40),
        steps=6, batch_size=16, lr=3e-3, warmup_steps=2, eval_every=2, eval_n=32, seed=3,
        dropout=0.1, device="cpu",
    )  # fmt: skip
    settings.update(overrides)
    return TrainConfig(**settings)


def test_the_trained_model_is_hugging_faces_gptj_with_dropout_and_sdpa():
    result = train(tiny(steps=2), progress=False)
    hf = result.hf_model
    assert isinstance(hf, GPTJForCausalLM)
    assert (hf.config.attn_pdrop, hf.config.resid_pdrop, hf.config.embd_pdrop) == (0.1, 0.1, 0.1)
    assert hf.config._attn_implementation == ATTN_IMPLEMENTATION == "sdpa"
    assert not hf.training  # returned in eval mode


def test_checkpoint_logits_match_the_hooked_transformer_and_hugging_face(tmp_path):
    """A trained checkpoint: from_pretrained (any HF tool) == load_gptj's HookedTransformer, <= 1e-4."""
    train(tiny(), out_dir=tmp_path, progress=False)
    folder = checkpoint_dir(tmp_path, 6)
    hooked = load_checkpoint(folder, device="cpu").model
    hf = GPTJForCausalLM.from_pretrained(folder).eval()
    tokens = NUMBER.build(8, seed=11).tokens
    with torch.no_grad():
        expected = hf(input_ids=tokens).logits  # [batch, pos, d_vocab]
        got = hooked(tokens)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def test_evaluation_during_training_equals_the_hooked_transformers_accuracy(tmp_path):
    result = train(tiny(steps=4), out_dir=tmp_path, progress=False)
    cfg = tiny(steps=4)
    score = score_batch(result.model, cfg.task.build(cfg.eval_n, seed=eval_seed(cfg)))
    last = result.metrics.iloc[-1]
    assert last["accuracy"] == score.accuracy
    for hop, accuracy in score.accuracy_by_hop().items():
        assert last[f"accuracy_hop{hop}"] == accuracy
    assert last["eval_loss"] == pytest.approx(score.loss, abs=1e-5)


def test_resume_with_dropout_is_bitwise_equal_to_a_straight_run(tmp_path):
    cfg = tiny(steps=6, checkpoint_steps=(3,))
    straight = train(cfg, out_dir=tmp_path / "straight", progress=False)
    train(dataclasses.replace(cfg, steps=3), out_dir=tmp_path / "resumed", progress=False)
    resumed = train(cfg, out_dir=tmp_path / "resumed", resume=True, progress=False)
    for name, tensor in straight.hf_model.state_dict().items():
        assert torch.equal(resumed.hf_model.state_dict()[name], tensor), name
    columns = [c for c in straight.metrics.columns if c != "elapsed_s"]
    pd.testing.assert_frame_equal(resumed.metrics[columns], straight.metrics[columns])
    # dropout is really on: another dropout seed stream gives other weights
    other = train(dataclasses.replace(cfg, dropout=0.2), progress=False)
    assert not torch.equal(other.hf_model.transformer.h[0].attn.q_proj.weight, straight.hf_model.transformer.h[0].attn.q_proj.weight)


def test_training_leaves_the_callers_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    train(tiny(steps=2), progress=False)
    assert torch.equal(torch.get_rng_state(), before)


def test_loss_is_on_the_last_position_only():
    """The number task scores the last position: logits_to_keep=1 gives the full forward's loss."""
    from headkit.training.loop import batch_loss

    cfg = tiny()
    model = build_hf_model(cfg.model, seed=0).eval()
    batch = cfg.task.build(8, seed=1)
    full = model(input_ids=batch.tokens).logits[:, -1]  # [batch, d_vocab]
    expected = torch.nn.functional.cross_entropy(full, batch.answers)
    assert (batch.targets[:, :-1] == -100).all()
    torch.testing.assert_close(batch_loss(model, batch.tokens, batch.targets), expected)


def test_attention_only_models_train_and_load_without_mlps(tmp_path):
    copy = TaskSpec("copy", {"length": 6, "vocab_size": 5})
    cfg = tiny(task=copy, model=ModelConfig(n_layers=1, d_model=16, n_heads=2, d_vocab=5, n_ctx=12, attn_only=True))
    result = train(cfg, out_dir=tmp_path, progress=False)
    assert result.model.cfg.attn_only
    assert all(not p.any() for block in result.hf_model.transformer.h for p in block.mlp.parameters())
    tokens = copy.build(4, seed=2).tokens
    with torch.no_grad():
        torch.testing.assert_close(result.model(tokens), result.hf_model(input_ids=tokens).logits, rtol=0, atol=1e-4)


def test_linear_schedule_decays_to_zero():
    cfg = tiny(steps=10, warmup_steps=2, schedule="linear", lr=1.0)
    assert [lr_at(cfg, s) for s in (1, 2, 6, 10)] == pytest.approx([0.5, 1.0, 0.5, 0.0])


def test_presets():
    assert set(PRESETS) == {"cpu", "paper"}
    cpu = default_config("number")
    assert cpu == default_config("number", preset="cpu") and cpu.dropout == 0.0
    paper = default_config("letter", preset="paper")
    m = paper.model
    assert (m.n_layers, m.n_heads, m.d_model, m.rotary_dim, m.act_fn) == (12, 1, 128, None, "gelu")
    assert m.head_dim == 128 and hf_config(m).rotary_dim == 128  # rotary over the whole head
    assert (paper.dropout, paper.batch_size, paper.warmup_steps, paper.curriculum_every) == (0.1, 64, 750, None)
    assert paper.steps * paper.batch_size == 432_000
    assert (paper.lr, paper.betas, paper.weight_decay, paper.schedule) == (1e-4, (0.95, 0.999), 1e-4, "linear")
    assert (paper.task.params["n_symbols"], paper.task.params["n_digits"]) == (8, 8)
    with pytest.raises(HeadkitError, match="unknown task 'copy' for preset 'paper'"):
        default_config("copy", preset="paper")
    with pytest.raises(HeadkitError, match="unknown preset 'gpu'"):
        default_config("number", preset="gpu")


def test_paper_preset_starts_checkpoints_and_resumes_on_cpu(tmp_path):
    cfg = default_config("number", preset="paper", steps=2, checkpoint_steps=(1,), eval_n=8, batch_size=4, device="cpu")
    train(dataclasses.replace(cfg, steps=1), out_dir=tmp_path, progress=False)
    result = train(cfg, out_dir=tmp_path, resume=True, progress=False)
    assert result.step == 2 and result.model.cfg.n_layers == 12
    assert load_checkpoint(checkpoint_dir(tmp_path, 2)).train_config.dropout == 0.1  # issue 11: a TrainConfig


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(HeadkitError, match="device 'cuda' is not available"):
            resolve_device("cuda")
    with pytest.raises(HeadkitError, match="not a torch device"):
        tiny(device="gpu0")


def test_memory_estimate_grows_with_the_batch_and_refuses_what_cannot_fit():
    cfg = tiny()
    assert estimate_memory(dataclasses.replace(cfg, batch_size=32), 9) > estimate_memory(cfg, 9)
    with pytest.raises(HeadkitError, match=r"one update of batch_size=1000000000 \(prompts of length \d+\) needs about [0-9.]+ GiB of memory on cpu but only"):
        train(tiny(batch_size=1_000_000_000), progress=False)
