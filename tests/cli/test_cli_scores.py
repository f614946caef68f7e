"""headkit census / dynamics / discrepancy on a tiny run written by the test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from headkit.cli import main
from headkit.model_config import ModelConfig
from headkit.scores.census import CENSUS_COLUMNS, head_census
from headkit.scores.discrepancy import discrepancy
from headkit.scores.dynamics import DYNAMICS_COLUMNS
from headkit.tasks.registry import TaskSpec
from headkit.training.checkpoints import load_checkpoint
from headkit.training.config import TrainConfig
from headkit.training.layout import latest_checkpoint
from headkit.training.loop import train

from model_edits import forbid_forward

TASK = TaskSpec(
    "number", {"target_window": 4, "pointer_window": 4, "max_hops": 2, "n_letters": 10, "max_pointer": 8}
)
N_CTX = 24


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d_vocab = len(TASK.build(1, seed=0).vocab)
    cfg = TrainConfig(
        task=TASK,
        model=ModelConfig(n_layers=2, d_model=16, n_heads=2, d_vocab=d_vocab, n_ctx=N_CTX),
        steps=2,
        batch_size=8,
        warmup_steps=1,
        eval_every=1,
        eval_n=8,
        checkpoint_steps=(1,),
    )
    out = tmp_path_factory.mktemp("run") / "number"
    train(cfg, out_dir=out, progress=False)
    return out


def test_classify_run(run_dir, tmp_path, capsys):
    out = tmp_path / "heads.csv"
    assert main(["census", str(run_dir), "--n-prompts", "3", "--seed", "2", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == CENSUS_COLUMNS
    ckpt = load_checkpoint(latest_checkpoint(run_dir))
    expected = head_census(ckpt.model, TASK.build(3, seed=2).tokens, seed=2)
    for name in ("previous_token", "induction_score", "copying_score", "max_k_in", "positional_score"):
        np.testing.assert_allclose(table[name], expected[name], rtol=1e-6, equal_nan=True)
    assert table.label.tolist() == expected.label.tolist()
    printed = capsys.readouterr().out
    assert "head census of number model at step 2" in printed and "wrote 4 rows" in printed


def test_dynamics(run_dir, tmp_path, capsys):
    out = tmp_path / "dyn.csv"
    args = ["dynamics", str(run_dir), "--n-prompts", "2", "--eval-n", "4", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == DYNAMICS_COLUMNS + ["accuracy_hop1", "accuracy_hop2"]
    assert table.step.tolist() == [1, 1, 1, 1, 2, 2, 2, 2]
    assert "at 2 checkpoints" in capsys.readouterr().out


def test_discrepancy(run_dir, tmp_path):
    out = tmp_path / "disc.csv"
    args = ["discrepancy", str(run_dir), "--lengths", "9,17", "--heads", "1.0,1.1", "--n-prompts", "3", "--out", str(out)]
    assert main(args) == 0
    table = pd.read_csv(out)
    ckpt = load_checkpoint(latest_checkpoint(run_dir))
    expected = discrepancy(ckpt.model, TASK, lengths=[9, 17], n_prompts=3, seed=0, heads=[(1, 0), (1, 1)])
    assert list(table.columns) == list(expected.columns)
    np.testing.assert_allclose(table.discrepancy, expected.discrepancy, rtol=1e-6)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["census", "RUN", "--n-prompts", "0"], "--n-prompts=0 is out of range: allowed 1 or more"),
        (["census", "MISSING"], "run directory MISSING does not exist"),
        (["census"], "give exactly one of RUN_DIR"),
        (["census", "RUN", "--composition", "x"], "allowed a list of q, k, v"),
        (["dynamics", "MISSING"], "run directory MISSING does not exist"),
        (["dynamics", "RUN", "--steps", "7"], "step(s) [7] have no checkpoint"),
        (["discrepancy", "RUN", "--lengths", "17,99"], f"length 99 exceeds the model's context n_ctx={N_CTX}"),
        (["discrepancy", "RUN", "--lengths", "17", "--heads", "5.0"], "layer 5 is out of range: this model has layers 0..1"),
        (["discrepancy", "RUN", "--lengths", "17", "--heads", "1.3"], "head 3 is out of range: this model has heads 0..1"),
        (["discrepancy", "RUN", "--lengths", "17", "--n-prompts", "0"], "--n-prompts=0 is out of range"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(run_dir, tmp_path, capsys, argv, message):
    out = tmp_path / "x.csv"
    argv = [str(run_dir) if a == "RUN" else str(tmp_path / a) if a == "MISSING" else a for a in argv]
    message = message.replace("MISSING", str(tmp_path / "MISSING"))
    assert main(argv + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("headkit: error: ")
    assert message in err
    assert not out.exists()


def test_classify_pretrained_gptj_without_tokenizer_is_refused(tmp_path, capsys):
    """Issue 19: it wrote a census of NaN swap scores; now it refuses, as every other --model command does."""
    from transformers import GPTJConfig, GPTJForCausalLM

    config = GPTJConfig(n_layer=2, n_embd=32, n_head=2, rotary_dim=8, vocab_size=48, n_positions=64)
    GPTJForCausalLM(config).save_pretrained(tmp_path / "gptj")
    capsys.readouterr()  # save_pretrained's own progress bar
    out = tmp_path / "heads.csv"
    assert main(["census", "--gptj", str(tmp_path / "gptj"), "--n-prompts", "3", "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no tokenizer (none of tokenizer.json, vocab.json, tokenizer_config.json)" in err
    assert not out.exists()


def test_classify_pretrained_gptj_with_tokenizer_uses_ioi_prompts(tmp_path, capsys):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import GPTJConfig, GPTJForCausalLM, PreTrainedTokenizerFast

    from headkit.loading.gptj import load_gptj
    from headkit.tasks.ioi import NAMES, TEMPLATES, ioi_task

    # a word-level tokenizer that knows every IOI word: each name is one token
    words = ["<bos>", "<unk>", *NAMES, *sorted({w for t in TEMPLATES for w in t.split() if "{" not in w})]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    directory = tmp_path / "gptj"
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<bos>", eos_token="<bos>").save_pretrained(directory)
    config = GPTJConfig(n_layer=2, n_embd=32, n_head=2, rotary_dim=8, vocab_size=len(words),
                        n_positions=64, bos_token_id=0, eos_token_id=0)  # fmt: skip
    GPTJForCausalLM(config).save_pretrained(directory)
    out = tmp_path / "heads.csv"
    assert main(["census", "--gptj", str(directory), "--n-prompts", "3", "--device", "cpu", "--out", str(out)]) == 0
    assert "3 IOI prompts" in capsys.readouterr().out
    table = pd.read_csv(out)
    model = load_gptj(directory, device="cpu")
    prompts = ioi_task(3, seed=0, tokenizer=model.tokenizer).tokens
    assert (prompts[:, 0] == 0).all()  # the tokenizer's BOS first
    expected = head_census(model, prompts, n_prompts=3, bos_id=0, composition_kinds=())
    for name in ("previous_token", "duplicate_token", "induction_score", "positional_score", "signal"):
        np.testing.assert_allclose(table[name], expected[name], rtol=1e-6, equal_nan=True)
    assert table.label.notna().all()


@pytest.mark.parametrize("error", ["OutOfMemoryError", "RuntimeError", "MemoryError"])
@pytest.mark.parametrize("command", ["census", "dynamics", "discrepancy"])
def test_out_of_memory_is_one_line(run_dir, tmp_path, capsys, monkeypatch, command, error):
    """Issue 18: out of memory inside classify was a traceback (training already said it in one line)."""
    import torch

    raised = {
        "OutOfMemoryError": torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        "RuntimeError": RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
        "MemoryError": MemoryError(),
    }[error]

    forbid_forward(monkeypatch, raised)
    extra = ["--lengths", "12"] if command == "discrepancy" else []
    out = tmp_path / "x.csv"
    assert main([command, str(run_dir), "--n-prompts", "3", "--no-progress", *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"headkit: error: out of memory in {command} (3 prompts on ") and "--n-prompts" in err, err
    assert not out.exists()


def test_other_runtime_errors_keep_their_traceback(run_dir, tmp_path, monkeypatch):
    forbid_forward(monkeypatch, RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        main(["census", str(run_dir), "--n-prompts", "3"])


def test_the_old_classify_command_names_census(capsys):
    """Issue 20: the command is `census` (the library's head_census); `classify` is refused with one line."""
    assert main(["classify", "RUN", "--n-prompts", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "`headkit classify` was renamed `headkit census`" in err, err
    assert main(["-v", "classify"]) == 2 and "renamed `headkit census`" in capsys.readouterr().err
