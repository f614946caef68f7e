"""analyses/pretrained_heads.py end to end on a tiny checkpoint with a word-level tokenizer saved by the test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import transformers as T

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # importlib import mode: make `analyses` importable
    sys.path.insert(0, str(ROOT))

from analyses import pretrained_heads  # noqa: E402
from headkit.errors import HeadkitError  # noqa: E402
from headkit.tasks.natural import build_suite, word_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tokenizer = word_tokenizer()
    torch.manual_seed(0)
    config = T.LlamaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=128, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
    )  # fmt: skip
    hf = T.AutoModelForCausalLM.from_config(config).eval()
    directory = tmp_path_factory.mktemp("llama")
    hf.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory, hf, tokenizer


def test_end_to_end(checkpoint, tmp_path):
    directory, hf, tokenizer = checkpoint
    cfg = pretrained_heads.quick_config(str(directory))
    table = pretrained_heads.main(cfg, out=tmp_path, png=False)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "results.csv", "summary.json", "report.html"} == names
    written = pd.read_csv(tmp_path / "results.csv", keep_default_na=False, na_values=[""], dtype={"note": str})
    pd.testing.assert_frame_equal(written.drop(columns="note"), table.drop(columns="note"), check_dtype=False)
    assert len(table) == 2 * 4 and {"role", "ablation", "patching", "path_to_logits", "confirmed"} <= set(table.columns)
    page = (tmp_path / "report.html").read_text()
    assert "ioi: confirm" in page and "induction: look" in page  # the page of headkit report --model
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["architecture"] == "LlamaForCausalLM"
    # one-hop accuracy against Hugging Face's own forward on the same prompts
    for task in ("number", "letter"):
        for length in cfg.lengths:
            batch = build_suite(task, cfg.n_one_hop, seed=cfg.seed, tokenizer=tokenizer, length=length)
            with torch.no_grad():
                logits = hf(batch.tokens).logits[:, -1]
            expected = (logits.argmax(-1) == batch.answers).float().mean().item()
            assert summary["one_hop_accuracy"][task][str(length)] == pytest.approx(expected, abs=1e-4)
    assert json.loads((tmp_path / "config.json").read_text())["model"] == str(directory)


@pytest.mark.slow
def test_script_without_model_is_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "analyses" / "pretrained_heads.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "error: no model: pass --model DIR (a pretrained model directory with its tokenizer)"
    )


def test_model_without_tokenizer_refused_before_loading(tmp_path):
    T.AutoModelForCausalLM.from_config(
        T.GPT2Config(vocab_size=20, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    ).save_pretrained(tmp_path / "m")
    with pytest.raises(HeadkitError, match="holds no tokenizer"):
        pretrained_heads.main(pretrained_heads.quick_config(str(tmp_path / "m")), out=tmp_path / "o", png=False)
    assert not (tmp_path / "o").exists()
