"""``--model DIR`` on classify, patch, path-patch, ablate and discrepancy.

The model is a tiny random GPT-2 (absolute positions) or Llama (grouped-query)
checkpoint with a word-level tokenizer, both saved by the test; each command's
CSV is compared with the library call it wraps, on the prompts built with the
model's own tokenizer.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import transformers as T

from headkit.cli import main
from headkit.interventions.activation_patching import activation_patching
from headkit.interventions.metrics import logit_diff
from headkit.loading.pretrained import load_pretrained
from headkit.tasks.natural import build_suite, word_tokenizer


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model_dir(request, tmp_path_factory):
    tokenizer = word_tokenizer()
    v = len(tokenizer)
    config = (
        T.GPT2Config(vocab_size=v, n_positions=128, n_embd=32, n_layer=2, n_head=4)
        if request.param == "gpt2"
        else T.LlamaConfig(vocab_size=v, max_position_embeddings=128, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, intermediate_size=64)
    )  # fmt: skip
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp(request.param)
    T.AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_patch_with_model_matches_the_library(model_dir, tmp_path, capsys):
    out = tmp_path / "patch.csv"
    args = ["patch", "--model", str(model_dir), "--suite", "duplicate", "--n-prompts", "4", "--site", "z", "--device", "cpu"]
    assert main([*args, "--out", str(out)]) == 0
    model = load_pretrained(model_dir, device="cpu")
    batch = build_suite("duplicate", 4, seed=0, tokenizer=model.tokenizer)
    expected = activation_patching(model, batch.tokens, batch.corrupted.tokens, logit_diff(batch), site="z")
    got = pd.read_csv(out)
    assert len(got) == model.cfg.n_layers * model.cfg.n_heads
    assert (got["value"] - expected["value"]).abs().max() <= 1e-5
    assert "duplicate" not in capsys.readouterr().err


def test_ablate_path_patch_classify_discrepancy_with_model(model_dir, tmp_path):
    common = ["--model", str(model_dir), "--device", "cpu"]
    assert main(["ablate", *common, "--n-prompts", "4", "--method", "zero", "--out", str(tmp_path / "a.csv")]) == 0
    assert len(pd.read_csv(tmp_path / "a.csv")) == 8
    assert main(["path-patch", *common, "--n-prompts", "4", "--receivers", "final", "--out", str(tmp_path / "p.csv")]) == 0
    assert set(pd.read_csv(tmp_path / "p.csv")["receivers"]) == {"final"}
    assert main(["census", *common, "--n-prompts", "3", "--out", str(tmp_path / "c.csv")]) == 0
    census = pd.read_csv(tmp_path / "c.csv")
    assert len(census) == 8 and census["positional_score"].notna().all()  # IOI prompts: scored
    assert main(["discrepancy", *common, "--lengths", "40,60", "--n-prompts", "3", "--out", str(tmp_path / "d.csv")]) == 0
    assert sorted(pd.read_csv(tmp_path / "d.csv")["length"].unique()) == [40, 60]


def test_gptj_flag_is_an_alias_of_model(model_dir, tmp_path):
    assert main(["census", "--gptj", str(model_dir), "--device", "cpu", "--n-prompts", "2",
                 "--out", str(tmp_path / "c.csv")]) == 0  # fmt: skip


@pytest.mark.parametrize(
    "argv, message",
    [
        (["patch", "RUN", "--model", "M"], "give exactly one of RUN_DIR (a headkit run) or --model DIR"),
        (["ablate"], "give exactly one of RUN_DIR"),
        (["patch", "--model", "{dir}", "--suite", "nope"], "argument --suite: invalid choice: 'nope' (choose from 'ioi', 'number'"),
        (["discrepancy", "--model", "{dir}", "--lengths", "30", "--task", "ioi"], "--task 'ioi' with --model"),
        (["census", "--model", "{dir}", "--task", "number"], "--task applies to a RUN_DIR, not to --model"),
    ],
)
def test_bad_input_is_one_line(model_dir, tmp_path, capsys, argv, message):
    argv = [a.replace("{dir}", str(model_dir)) for a in argv] + ["--out", str(tmp_path / "x.csv")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize("command", ["census", "patch", "discrepancy"])
def test_model_without_tokenizer_files_is_refused_naming_them(tmp_path, capsys, command):
    """census --model (then classify) exited 0 with NaN rows on such a directory while the others refused it (issue 19)."""
    T.GPT2Config(vocab_size=20, n_positions=16, n_embd=16, n_layer=1, n_head=2).save_pretrained(tmp_path / "m")
    extra = ["--lengths", "9"] if command == "discrepancy" else []
    assert main([command, "--model", str(tmp_path / "m"), *extra, "--out", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"headkit: error: --model {tmp_path / 'm'} holds no tokenizer (none of tokenizer.json, vocab.json, "
        "tokenizer_config.json): the prompts need the model's own tokenizer\n"
    )
    assert not (tmp_path / "x.csv").exists()  # refused before any weight file is read: the directory has none


def test_discrepancy_letter_length_it_cannot_build_is_refused_before_loading(model_dir, tmp_path, capsys):
    """``--task letter --lengths 40,80`` with a word-level tokenizer: 40 is not a letter prompt's length."""
    argv = ["discrepancy", "--model", str(model_dir), "--task", "letter", "--lengths", "41,40", "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "d.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "letter prompts cannot have length 40" in err and "nearest lengths 39 and 41" in err
    assert main([*argv[:-3], "41,81", "--n-prompts", "2", "--device", "cpu", "--out", str(tmp_path / "d.csv")]) == 0
    assert sorted(pd.read_csv(tmp_path / "d.csv")["length"].unique()) == [41, 81]


@pytest.mark.slow
def test_model_without_tokenizer_is_refused_through_a_real_process(tmp_path):
    T.AutoModelForCausalLM.from_config(
        T.GPT2Config(vocab_size=20, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    ).save_pretrained(tmp_path / "m")
    script = Path(sys.executable).with_name("headkit")
    done = subprocess.run(
        [str(script), "patch", "--model", str(tmp_path / "m"), "--device", "cpu"],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("headkit: error: --model"), done.stderr
    assert "holds no tokenizer" in done.stderr


@pytest.mark.parametrize("key", ["layer_norm_epsilon", "rms_norm_eps"])
def test_model_whose_activations_are_not_finite_is_refused(tmp_path, capsys, key):
    """Finite weights, a negative norm epsilon: NaN activations, never an all-"inactive" census (issue 18)."""
    tokenizer = word_tokenizer()
    v = len(tokenizer)
    config = (
        T.GPT2Config(vocab_size=v, n_positions=128, n_embd=32, n_layer=2, n_head=4, layer_norm_epsilon=-10.0)
        if key == "layer_norm_epsilon"
        else T.LlamaConfig(vocab_size=v, max_position_embeddings=128, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, rms_norm_eps=-10.0)
    )  # fmt: skip
    torch.manual_seed(0)
    T.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    capsys.readouterr()  # transformers' progress bar while saving
    common = ["--model", str(tmp_path / "m"), "--device", "cpu", "--n-prompts", "2"]
    for argv in (["census", *common], ["discrepancy", *common, "--lengths", "40"]):
        assert main([*argv, "--out", str(tmp_path / "x.csv")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "of layer 0 is not finite" in err, err
        assert not (tmp_path / "x.csv").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["config.json", "tokenizer_config.json"])
def test_remote_code_never_runs_even_when_stdin_says_yes(tmp_path, name):
    """An auto_map names Python in the model directory; `echo y | headkit classify` (now census) once ran it (issue 18)."""
    import json

    directory = tmp_path / "m"
    tokenizer = word_tokenizer()
    T.AutoModelForCausalLM.from_config(
        T.GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=16, n_layer=1, n_head=2)
    ).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    marker = tmp_path / "MARKER"
    (directory / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import GPT2Config, PreTrainedTokenizerFast\n"
        "class EvilConfig(GPT2Config):\n    model_type = 'evil'\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n"
    )  # fmt: skip
    config = json.loads((directory / name).read_text())
    unknown = {"model_type": "evil"} if name == "config.json" else {"tokenizer_class": "EvilTokenizer"}
    auto_map = {"AutoConfig": "evil.EvilConfig", "AutoTokenizer": [None, "evil.EvilTokenizer"]}
    (directory / name).write_text(json.dumps({**config, **unknown, "auto_map": auto_map}))
    script = Path(sys.executable).with_name("headkit")
    done = subprocess.run(
        [str(script), "census", "--model", str(directory), "--device", "cpu", "--n-prompts", "2",
         "--out", str(tmp_path / "c.csv")],
        input="y\n" * 4, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300,
    )  # fmt: skip
    assert not marker.exists(), "the model directory's Python ran"
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1 and f"{directory / name} has an auto_map (AutoConfig, AutoTokenizer)" in done.stderr
    assert "[y/N]" not in done.stdout + done.stderr and not (tmp_path / "c.csv").exists()
