"""``headkit report --model DIR --suite ...`` (headkit.report.model): find, confirm, roles, look.

Tiny GPT-2 (absolute positions), Llama (grouped-query) and GPT-J checkpoints with a
word-level tokenizer, all saved by the test. The GPT-2 one has two heads wired by
hand in layer 0, with one-hot position dimensions (dims 0..47) beside random token
dimensions (48..95):

- L0H1, a previous-token head: its query reads position t, its key position s + 1,
  so each token attends to the one before it; its output weights are zero, so it
  changes nothing: the report must find it (detector ~1) and flag that no
  intervention confirms it;
- L0H0, a positional S-inhibition head: it attends from every position to position
  10 (where IOI's S2, the repeated name, stands in every default template) and
  writes minus that token's embedding, so the tied unembedding lowers the repeated
  name's logit: IO − S goes up on clean prompts, not on the twins (S2 replaced by a
  third name). The report must label it positional and confirm it by ablation,
  patching and path patching.
"""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import torch
import transformers as T

from headkit.cli import main
from headkit.errors import HeadkitError
from headkit.report.model import ModelReportOptions, roles_table
from headkit.tasks.natural import word_tokenizer

import chromium_cdp as _cdp  # tests/ is on sys.path (tests/conftest.py)

POS = 48  # one-hot position dimensions (n_positions; the induction suite is 40 tokens)
S2 = 10  # IOI's repeated name in the default templates, with the word-level tokenizer


def _wired_gpt2(directory, *, inhibit_layer=0):
    """The GPT-2 of the module docstring; ``inhibit_layer=1`` puts the S-inhibition head at L1H0 instead."""
    tokenizer = word_tokenizer()
    config = T.GPT2Config(vocab_size=len(tokenizer), n_positions=POS, n_embd=2 * POS, n_layer=2, n_head=2,
                          bos_token_id=0, eos_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    model = T.GPT2LMHeadModel(config)
    d, dh = 2 * POS, POS  # d_model, d_head
    with torch.no_grad():
        wte = torch.zeros(len(tokenizer), d)
        wte[:, POS:] = torch.randn(len(tokenizer), POS)
        model.transformer.wte.weight.copy_(wte)  # tied to the unembedding
        model.transformer.wpe.weight.copy_(torch.cat([4 * torch.eye(POS), torch.zeros(POS, POS)], dim=1))
        # Conv1D: x @ w; columns q | k | v, each head0 | head1
        w = {layer: torch.zeros(d, 3 * d) for layer in (0, 1)}
        b = {layer: torch.zeros(3 * d) for layer in (0, 1)}
        out = {layer: torch.zeros(d, d) for layer in (0, 1)}
        b[inhibit_layer][0] = 5.0  # head 0 query: constant
        w[inhibit_layer][S2, d] = 1.0  # head 0 key: position 10 only
        w[inhibit_layer][POS:, 2 * d : 2 * d + dh] = torch.eye(dh)  # head 0 value: the token dimensions
        out[inhibit_layer][:dh, POS:] = -3.0 * torch.eye(dh)  # head 0 writes minus the token
        w[0][:POS, dh : 2 * dh] = 3 * torch.eye(POS)  # L0H1 query: position t (sharp)
        w[0][: POS - 1, d + dh : d + 2 * dh] = torch.eye(POS)[1:]  # L0H1 key: position s + 1; it writes nothing
        for layer, block in enumerate(model.transformer.h):
            block.attn.c_attn.weight.copy_(w[layer])
            block.attn.c_attn.bias.copy_(b[layer])
            block.attn.c_proj.weight.copy_(out[layer])
            block.attn.c_proj.bias.zero_()
            block.mlp.c_proj.weight.zero_()  # MLPs off: the wiring alone decides
            block.mlp.c_proj.bias.zero_()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _random(kind, directory):
    tokenizer = word_tokenizer()
    v = len(tokenizer)
    config = {
        "llama": T.LlamaConfig(vocab_size=v, max_position_embeddings=128, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, intermediate_size=64),
        "gptj": T.GPTJConfig(vocab_size=v, n_positions=128, n_embd=32, n_layer=2, n_head=4, rotary_dim=4),
    }[kind]  # fmt: skip
    torch.manual_seed(0)
    T.AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def wired(tmp_path_factory):
    return _wired_gpt2(tmp_path_factory.mktemp("gpt2"))


def _report(model_dir, out, *suites, n="6"):
    argv = ["report", "--model", str(model_dir), *[a for s in suites for a in ("--suite", s)], "--n-prompts", n,
            "--device", "cpu", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def wired_report(wired, tmp_path_factory):
    return _report(wired, tmp_path_factory.mktemp("page") / "page", "ioi", "induction", n="8")


def test_report_finds_and_confirms_the_hand_wired_heads(wired_report):
    roles = pd.read_csv(wired_report / "ioi_roles.csv").set_index(["layer", "head"])
    inhibit, previous = roles.loc[(0, 0)], roles.loc[(0, 1)]
    assert inhibit["label"] == "positional" and inhibit["role"] == "positional"  # found: attends to a slot
    assert inhibit["confirmed"] and min(inhibit["ablation"], inhibit["patching"], inhibit["path_to_logits"]) > 0.5
    assert roles.index[0] == (0, 0)  # first by effect
    assert previous["role"] == "previous-token" and previous["role_score"] > 0.9  # found
    assert not previous["confirmed"] and "no intervention moves the metric" in previous["note"]  # flagged
    census = pd.read_csv(wired_report / "ioi_census.csv").set_index(["layer", "head"])
    assert census.loc[(0, 1), "previous_token"] > 0.9 and census.loc[(0, 0), "previous_token"] < 0.5


def test_report_writes_page_config_and_tables(wired_report):
    names = {p.name for p in wired_report.iterdir()}
    for suite in ("ioi", "induction"):
        assert {f"{suite}_{t}.csv" for t in ("census", "ablation", "patching", "paths", "roles")} <= names
    assert {"report.html", "config.json"} <= names
    assert "ioi_paths_to_queries.csv" not in names  # the only head with an effect is in layer 0: no name mover
    assert "no name movers whose queries to patch" in (wired_report / "report.html").read_text()
    config = json.loads((wired_report / "config.json").read_text())
    assert config["suites"] == ["ioi", "induction"] and config["n_prompts"] == 8 and config["method"] == "mean"
    page = (wired_report / "report.html").read_text()
    for part in ("find — head census", "confirm — ablation", "roles — the evidence joined", "look — attention"):
        assert page.count(part) == 2  # once per suite
    assert "Clean prompts" in page and "var CircuitsVis" in page and "[answer here]" in page
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=.https?:", page)  # nothing loaded from a host


def test_ioi_name_mover_gets_its_query_paths(tmp_path):
    """With the S-inhibition head at L1H0 (a name mover: direct effect on the logits), IOI's report also
    path-patches every layer-0 head to its query."""
    out = _report(_wired_gpt2(tmp_path / "gpt2", inhibit_layer=1), tmp_path / "page", "ioi")
    roles = pd.read_csv(out / "ioi_roles.csv").set_index(["layer", "head"])
    assert roles.loc[(1, 0), "confirmed"] and roles.loc[(1, 0), "path_to_logits"] > 0.5
    queries = pd.read_csv(out / "ioi_paths_to_queries.csv")
    assert set(queries["receivers"]) == {"L1H0.q"} and sorted(zip(queries["layer"], queries["head"])) == [(0, 0), (0, 1)]
    assert "Path patching to the queries of L1H0.q" in (out / "report.html").read_text()


@pytest.mark.parametrize("kind", ["llama", "gptj"])
def test_report_runs_on_llama_and_gptj(kind, tmp_path):
    out = _report(_random(kind, tmp_path / kind), tmp_path / "page", "ioi", n="4")
    roles = pd.read_csv(out / "ioi_roles.csv")
    assert len(roles) == 8 and set(roles.columns) >= {"role", "ablation", "patching", "path_to_logits", "confirmed"}


def test_small_baseline_gap_warns_and_confirms_nothing():
    census = pd.DataFrame({"layer": [0, 0], "head": [0, 1], "label": "mixed", "purity": 1.0, "previous_token": [0.9, 0.1],
                           "duplicate_token": 0.0, "induction_score": 0.0})  # fmt: skip
    effects = pd.DataFrame({"layer": [0, 0], "head": [0, 1], "ablation": [float("nan")] * 2, "patching": [0.3, -0.05]})
    roles = roles_table(census, effects, threshold=0.1)
    assert roles["head"].tolist() == [0, 1]  # sorted by |effect|
    assert roles.loc[0, "confirmed"] and roles.loc[0, "role"] == "previous-token"
    assert roles.loc[1, "role"] == "mixed" and not roles.loc[1, "confirmed"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["report", "--model", "{dir}", "--suite", "nope"], "argument --suite: invalid choice: 'nope'"),
        (["report", "--model", "{dir}"], "--out FOLDER is needed with --model"),
        (["report", "RUN", "--model", "{dir}", "--out", "x"], "give exactly one of RUN_DIR"),
        (["report", "--model", "{dir}", "--suite", "ioi", "--suite", "ioi", "--out", "x"], "repeat a suite"),
    ],
)
def test_bad_input_is_one_line(wired, tmp_path, capsys, argv, message):
    argv = [a.replace("{dir}", str(wired)).replace("x", str(tmp_path / "x")) if a == "x" or a == "{dir}" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "x").exists()


def test_suite_without_model_is_refused(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["report", str(tmp_path / "run"), "--suite", "ioi", "--out", str(tmp_path / "x")]) == 2
    assert "--suite applies to --model DIR" in capsys.readouterr().err


def test_options_are_checked():
    with pytest.raises(HeadkitError, match="unknown prompt suite 'x'"):
        ModelReportOptions(suites=("x",))
    with pytest.raises(HeadkitError, match="method='median' is unknown"):
        ModelReportOptions(method="median")


# --------------------------------------------------------------------------- a real browser, the whole page



RECTS = (
    "[...document.querySelectorAll('.js-plotly-plot, .headkit-attention-widget, table')].map(e => {"
    " const r = e.getBoundingClientRect(); const c = e.classList;"
    " return [c.contains('js-plotly-plot') ? 'plot' : c.contains('headkit-attention-widget') ? 'view' : 'table', r.left, r.top + window.scrollY,"
    " r.width, r.height]; })"
)


@pytest.mark.slow
@pytest.mark.skipif(_cdp.chromium_path() is None, reason="SKIPPED LOUDLY: no Chromium (apt-get install -y chromium)")
def test_model_report_renders_every_figure_down_the_whole_page(wired_report):
    """Every plot, attention widget and table is drawn and visible in a screenshot of the full page height."""
    import io
    import os

    from PIL import Image

    result = _cdp.open_page(
        wired_report / "report.html",
        ready=(
            "document.readyState === 'complete' && "
            "[...document.querySelectorAll('.headkit-attention-widget')].every(e => e.childElementCount > 0) && "
            "[...document.querySelectorAll('.js-plotly-plot')].every(e => e.querySelector('.main-svg'))"
        ),
        expressions={"rects": RECTS, "online": "navigator.onLine"},
    )
    assert result.failed_requests == [] and result.console_errors == []
    assert result.values["online"] is False  # networking was off
    rects = result.values["rects"]
    kinds = [r[0] for r in rects]
    # per suite: 2 census maps + 3 effect maps (IOI's paths to queries: no name mover here); 2 views; 1 roles table
    assert kinds.count("plot") == 10 and kinds.count("view") == 4 and kinds.count("table") == 2
    image = Image.open(io.BytesIO(result.screenshot)).convert("RGB")
    if os.environ.get("HEADKIT_KEEP_SCREENSHOT"):
        image.save(os.environ["HEADKIT_KEEP_SCREENSHOT"])
    assert image.height == result.height > 2 * _cdp.TILE  # the whole page, stitched from several captures
    for kind, left, top, width, height in rects:
        assert width > 100 and height > 50, (kind, width, height)
        crop = image.crop((int(left), int(top), int(left + width), int(min(top + height, image.height))))
        small = crop.resize((max(1, crop.width // 4), max(1, crop.height // 4)))
        inked = sum(n for n, rgb in small.getcolors(maxcolors=1 << 20) if min(rgb) < 235)
        assert inked > 0.01 * small.width * small.height, (kind, top)  # drawn, not blank
