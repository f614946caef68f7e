"""Training: config checks, schedule, data stream, loss goes down, resume == straight run."""

from __future__ import annotations

import json
import math
import re

import pandas as pd
import pytest
import torch
from transformers import GPTJForCausalLM

from headkit.errors import HeadkitError
from headkit.model_config import ModelConfig
from headkit.model_types import is_bridge
from headkit.tasks import TaskSpec
from headkit.training.checkpoints import load_checkpoint
from headkit.training.config import METRIC_COLUMNS, TrainConfig, default_config, lr_at, read_metrics, read_run_config
from headkit.training.layout import list_checkpoints, read_run_json
from headkit.training.loop import eval_seed, train, train_seed, training_batch

# length 4 + 4 + 1 = 9, vocabulary 6 letters + 8 integers = 14
NUMBER = TaskSpec("number", {"n_letters": 6, "max_pointer": 8, "target_window": 4, "pointer_window": 4})
COPY = TaskSpec("copy", {"length": 12, "vocab_size": 6})


def tiny(task: TaskSpec = NUMBER, **overrides) -> TrainConfig:
    """A few-second training config on a 2-layer d_model 16 model."""
    vocab = len(task.build(1, seed=0).vocab)
    settings = dict(
        task=task,
        model=ModelConfig(n_layers=2, d_model=16, n_heads=2, d_vocab=vocab, n_ctx=40),
        steps=8,
        batch_size=16,
        lr=3e-3,
        warmup_steps=2,
        eval_every=2,
        eval_n=32,
        seed=3,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


# --- config -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("steps", 0, "steps=0"),
        ("batch_size", 2.5, "batch_size"),
        ("lr", -1.0, "lr=-1.0"),
        ("lr", 1e308, "lr=1e.308 is too large: it overflows float32 (largest 3.4028234663852886e.38)"),
        ("weight_decay", 1e39, "weight_decay=1e.39 is too large: it overflows float32"),
        ("betas", (0.9, 1.5), "betas"),
        ("grad_clip", 0.0, "grad_clip"),
        ("schedule", "exponential", "schedule='exponential'"),
        ("checkpoint_steps", (4, 9), "checkpoint step 9"),
        ("curriculum_every", 0, "curriculum_every"),
        ("device", "nonsense", "device"),
    ],
)
def test_config_rejects_bad_fields(field, value, words):
    with pytest.raises(HeadkitError, match=words.replace("(", r"\(").replace(")", r"\)")):
        tiny(**{field: value})


def test_config_round_trips_through_json():
    cfg = tiny(checkpoint_steps=[6, 2], curriculum_every=3, grad_clip=None)
    assert cfg.checkpoint_steps == (2, 6)  # sorted, a tuple
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(HeadkitError, match="unknown training config fields: colour"):
        TrainConfig.from_dict({**cfg.to_dict(), "colour": "red"})


@pytest.mark.parametrize("task", ["number", "letter", "copy", "induction", "tree"])
def test_default_config_matches_its_task(task):
    cfg = default_config(task)
    probe = cfg.task.build(2, seed=0)
    assert cfg.model.d_vocab == len(probe.vocab)
    assert cfg.model.n_ctx >= max(2048, probe.length)  # issue 7: rotary tables for the paper's +996 and beyond
    if task in ("number", "letter"):
        assert cfg.model.n_layers == 6 and cfg.model.d_model == 64 and cfg.model.n_heads == 1


def test_default_config_overrides_and_unknown_task():
    cfg = default_config("letter", steps=10, lr=1e-2)
    assert (cfg.steps, cfg.lr, cfg.curriculum_every) == (10, 1e-2, 250)
    with pytest.raises(HeadkitError, match="unknown task 'chess'"):
        default_config("chess")
    with pytest.raises(HeadkitError, match="unknown training config fields: stepz"):
        default_config("number", stepz=3)


# --- schedule and data --------------------------------------------------------------


def test_lr_warms_up_linearly_then_holds_or_decays():
    cfg = tiny(steps=20, warmup_steps=4, lr=1.0)
    assert [lr_at(cfg, s) for s in range(1, 7)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cos = tiny(steps=20, warmup_steps=4, lr=1.0, schedule="cosine")
    assert lr_at(cos, 4) == 1.0
    assert lr_at(cos, 12) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way down
    assert lr_at(cos, 20) == pytest.approx(0.1)
    decayed = [lr_at(cos, s) for s in range(4, 21)]
    assert all(a >= b for a, b in zip(decayed, decayed[1:]))


def test_training_batches_are_a_function_of_seed_and_step():
    cfg = tiny()
    a, b = training_batch(cfg, 5), training_batch(cfg, 5)
    assert torch.equal(a.tokens, b.tokens)
    assert not torch.equal(training_batch(cfg, 6).tokens, a.tokens)
    assert not torch.equal(training_batch(tiny(seed=4), 5).tokens, a.tokens)
    seeds = {train_seed(cfg, s) for s in range(1, 2001)}
    assert len(seeds) == 2000 and eval_seed(cfg) not in seeds


def test_hop_curriculum_raises_the_largest_hop_every_k_steps():
    cfg = tiny(curriculum_every=3, batch_size=40)
    largest = [int(training_batch(cfg, s).hops.max()) for s in range(1, 14)]
    assert largest == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 4]  # then capped at max_hops=4
    with pytest.raises(HeadkitError, match="curriculum_every needs a task with min_hops/max_hops"):
        train(tiny(COPY, curriculum_every=2), progress=False)


# --- checks before work ----------------------------------------------------------------


def test_train_refuses_a_task_longer_than_the_context(tmp_path):
    cfg = tiny(model=ModelConfig(n_layers=1, d_model=16, d_vocab=14, n_ctx=8))
    with pytest.raises(HeadkitError, match="prompt length 9 exceeds the model's context n_ctx=8"):
        train(cfg, out_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_train_refuses_a_vocabulary_mismatch(tmp_path):
    cfg = tiny(model=ModelConfig(n_layers=1, d_model=16, d_vocab=20, n_ctx=40))
    with pytest.raises(HeadkitError, match="vocabulary of 14 tokens but the model's d_vocab is 20"):
        train(cfg, out_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


# --- training runs ----------------------------------------------------------------------


def test_loss_decreases_on_the_copy_task():
    # two heads: with Hugging Face's initialisation (std 0.02, the paper's) one head learns it far slower
    cfg = TrainConfig(
        task=COPY,
        model=ModelConfig(n_layers=1, d_model=32, n_heads=2, d_vocab=6, n_ctx=16, attn_only=True),
        steps=100,
        batch_size=16,
        lr=1e-2,
        warmup_steps=3,
        eval_every=50,
        eval_n=64,
    )
    metrics = train(cfg, progress=False).metrics
    assert metrics["step"].tolist() == [0, 50, 100]
    first, last = metrics.iloc[0], metrics.iloc[-1]
    assert first["accuracy"] < 0.5  # not solved at initialisation
    assert last["eval_loss"] < 0.25 * first["eval_loss"]
    assert last["train_loss"] < metrics["train_loss"].iloc[1]
    assert last["accuracy"] > 0.9


def test_run_directory_metrics_and_checkpoints(tmp_path):
    cfg = tiny(steps=7, eval_every=3, checkpoint_steps=(2, 5))
    result = train(cfg, out_dir=tmp_path, progress=False)
    # rows at step 0, every eval_every, every checkpoint step and the last step
    assert result.metrics["step"].tolist() == [0, 2, 3, 5, 6, 7]
    hops = [f"accuracy_hop{h}" for h in (1, 2, 3, 4)]
    expected_columns = ["step", "train_loss", "eval_loss", "accuracy", *hops, "lr", "elapsed_s"]
    assert set(METRIC_COLUMNS) <= set(expected_columns)
    on_disk = read_metrics(tmp_path)
    assert list(on_disk.columns) == expected_columns
    pd.testing.assert_frame_equal(on_disk, result.metrics, check_dtype=False)
    assert math.isnan(on_disk["train_loss"][0]) and on_disk["train_loss"][1:].notna().all()
    # overall accuracy is the hop-balanced mean (eval_n=32, 8 prompts per hop)
    assert on_disk["accuracy"].to_numpy() == pytest.approx(on_disk[hops].mean(axis=1).to_numpy())
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 5, 7]
    assert read_run_config(tmp_path) == cfg
    final = load_checkpoint(list_checkpoints(tmp_path)[-1][1])
    assert final.step == 7 and final.task == cfg.task and final.model_config == cfg.model
    assert final.metrics["accuracy"] == pytest.approx(on_disk["accuracy"].iloc[-1])
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(tensor, final.model.state_dict()[name]), name


def test_resumed_run_equals_a_straight_run(tmp_path):
    """8 steps straight == 4 steps, stop, resume to 8: same weights, same metrics."""
    cfg = tiny(steps=8, eval_every=2, checkpoint_steps=(4,), curriculum_every=3)
    straight = train(cfg, out_dir=tmp_path / "straight", progress=False)

    half = TrainConfig.from_dict({**cfg.to_dict(), "steps": 4})
    train(half, out_dir=tmp_path / "resumed", progress=False)
    resumed = train(cfg, out_dir=tmp_path / "resumed", resume=True, progress=False)

    assert resumed.step == straight.step == 8
    for name, tensor in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], tensor, rtol=0, atol=1e-6, msg=name)
    columns = [c for c in straight.metrics.columns if c != "elapsed_s"]
    pd.testing.assert_frame_equal(
        resumed.metrics[columns], straight.metrics[columns], check_dtype=False, atol=1e-6
    )
    pd.testing.assert_frame_equal(read_metrics(tmp_path / "resumed")[columns], resumed.metrics[columns], check_dtype=False)
    assert read_run_config(tmp_path / "resumed").steps == 8
    # resuming a finished run does nothing and returns its final model
    again = train(cfg, out_dir=tmp_path / "resumed", resume=True, progress=False)
    assert again.step == 8 and len(again.metrics) == len(resumed.metrics)


def test_existing_runs_are_never_overwritten_or_resumed_with_another_config(tmp_path):
    cfg = tiny(steps=2)
    train(cfg, out_dir=tmp_path, progress=False)
    before = (tmp_path / "metrics.csv").read_bytes()
    with pytest.raises(HeadkitError, match="already holds a run"):
        train(cfg, out_dir=tmp_path, progress=False)
    changed = TrainConfig.from_dict({**cfg.to_dict(), "steps": 4, "lr": 1e-2, "batch_size": 8})
    with pytest.raises(HeadkitError, match=r"differs from its run.json in batch_size, lr \(only steps may change\)"):
        train(changed, out_dir=tmp_path, resume=True, progress=False)
    shorter = TrainConfig.from_dict({**cfg.to_dict(), "steps": 1})
    with pytest.raises(HeadkitError, match="already at step 2"):
        train(shorter, out_dir=tmp_path, resume=True, progress=False)
    assert (tmp_path / "metrics.csv").read_bytes() == before
    with pytest.raises(HeadkitError, match="is not a headkit run directory"):
        train(cfg, out_dir=tmp_path / "empty", resume=True, progress=False)
    with pytest.raises(HeadkitError, match="needs out_dir"):
        train(cfg, resume=True, progress=False)


def test_corrupted_run_json_is_a_clear_error(tmp_path):
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(HeadkitError, match="run.json is corrupted: Expecting property name"):
        read_run_config(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"task": {"name": "number"}, "model": {"n_layers": -1}, "steps": 4}))
    with pytest.raises(HeadkitError, match="run.json is corrupted: n_layers=-1"):
        read_run_config(tmp_path)


@pytest.mark.parametrize(
    "content, words",
    [
        (None, "is not a headkit run directory: run.json is missing"),
        ("{not json", "run.json is corrupted: Expecting property name"),
        ("[1, 2]", "run.json is corrupted: not a training config"),
        ('{"task": {"name": "number"}, "model": {}}', "run.json is corrupted: 'steps'"),  # every run.json has steps
        ('{"steps": 4, "model": {}}', "run.json is corrupted: 'task'"),
    ],
)
def test_both_readers_of_run_json_refuse_alike(tmp_path, content, words):
    """read_run_config builds on read_run_json (the one reader of run.json): a file one refuses, both refuse."""
    if content is not None:
        (tmp_path / "run.json").write_text(content)
    for read in (read_run_json, read_run_config):
        with pytest.raises(HeadkitError, match=re.escape(words)):
            read(tmp_path)


def test_training_keeps_the_model_a_gptj(tiny_gptj):
    """What train returns is Hugging Face's GPT-J (a copy of the one trained) seen through a bridge:
    no Q/K/V/O biases, one LayerNorm per block, and the weights moved from their initialisation."""
    cfg = tiny(steps=3, eval_every=3)
    result = train(cfg, progress=False)
    model = result.model
    assert is_bridge(model) and isinstance(model.original_model, GPTJForCausalLM)
    assert model.original_model is not result.hf_model  # training keeps its own module
    fresh = tiny_gptj(n_layers=2, d_model=16, n_heads=2, d_vocab=14, n_ctx=40, seed=cfg.seed)
    for block, start in zip(model.blocks, fresh.blocks):
        for name in ("b_Q", "b_K", "b_V", "b_O"):
            bias = getattr(block.attn, name)
            assert bias is None or not bias.any(), name
        assert not hasattr(block, "ln2") or block.ln2 is None or torch.equal(block.ln2.w, block.ln1.w)
        assert not torch.equal(block.ln1.w, start.ln1.w)  # the shared LayerNorm did train
        assert not torch.equal(block.attn.W_Q, start.attn.W_Q)
    hf = {name: p for name, p in result.hf_model.named_parameters()}
    assert all(name.startswith(("transformer.", "lm_head.")) for name in hf)
    assert not any(name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias", "out_proj.bias")) for name in hf)


def test_a_run_interrupted_before_its_first_checkpoint_resumes_from_step_0(tmp_path, monkeypatch):
    import headkit.training.loop as training

    cfg = tiny(steps=4, eval_every=2)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(training, "_save", crash)
        with pytest.raises(KeyboardInterrupt):
            train(cfg, out_dir=tmp_path / "run", progress=False)
    assert list_checkpoints(tmp_path / "run") == []
    assert read_metrics(tmp_path / "run")["step"].tolist() == [0, 2, 4]  # complete rows only
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]  # no temp files
    resumed = train(cfg, out_dir=tmp_path / "run", resume=True, progress=False)
    straight = train(cfg, progress=False)
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [4]


@pytest.mark.parametrize("task", ["number", "letter", "copy"])
def test_run_json_records_the_tasks_full_parameters(task, tmp_path):
    """run.json names every builder parameter (issue 8), not only the preset's overrides:
    reference = the builder's own keyword defaults (inspect), overridden by the preset's."""
    import inspect
    import json

    from headkit.tasks import BUILDERS

    cfg = default_config(task, steps=1, batch_size=4, eval_n=4, eval_every=1, warmup_steps=0)
    train(cfg, out_dir=tmp_path / "run", progress=False)
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())["task"]["params"]
    signature = inspect.signature(BUILDERS[task]).parameters
    defaults = {k: p.default for k, p in signature.items() if p.kind is inspect.Parameter.KEYWORD_ONLY and k != "seed"}
    preset = {"letter": {"n_symbols": 24}}.get(task, {})
    assert set(recorded) == set(defaults)  # every parameter, no more
    if task != "copy":  # decided per call (window protocol -> hop balance): recorded as "auto"
        assert recorded["balance"] is None and recorded["length"] is None
    expected = {k: v for k, v in {**defaults, **preset}.items() if v is not None}  # None: resolved by the builder
    assert {k: recorded[k] for k in expected} == expected
    same = TaskSpec(task, recorded).build(8, seed=3).tokens, TaskSpec(task, preset).build(8, seed=3).tokens
    assert torch.equal(*same)  # the recorded parameters mean what the defaults meant
    assert "max_hops" in recorded if task != "copy" else "vocab_size" in recorded
    assert read_run_config(tmp_path / "run").task == cfg.task  # read back unchanged


def test_unknown_task_parameter_is_refused_when_the_config_is_made():
    with pytest.raises(HeadkitError, match="has no parameter colour"):
        default_config("number", task=TaskSpec("number", {"colour": 1}))
