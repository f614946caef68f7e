"""Shared input checks name the bad value and the allowed range."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import GPTJForCausalLM

from headkit.checks import (
    check_device,
    check_finite,
    check_heads,
    check_position,
    check_tokens,
    parse_head,
    parse_heads,
    parse_int_list,
    parse_receivers,
)
from headkit.errors import HeadkitError
from headkit.training.layout import check_output_path


def test_check_heads(tiny_gptj):
    model = tiny_gptj()  # 2 layers, 2 heads
    assert check_heads(model, [(0, 1), (1, 0)]) == [(0, 1), (1, 0)]
    with pytest.raises(HeadkitError, match=r"head 2\.0: layer 2 is out of range: this model has layers 0\.\.1"):
        check_heads(model, [(2, 0)])
    with pytest.raises(HeadkitError, match=r"head 0\.5: head 5 is out of range: .* heads 0\.\.1"):
        check_heads(model, [(0, 5)])


@pytest.mark.parametrize(
    "head, shown",
    [((0.7, 0), r"\(0\.7, 0\): layer 0\.7"), ((1.0, 0), r"\(1\.0, 0\): layer 1\.0"),
     ((True, 0), r"\(True, 0\): layer True"), ((0, False), r"\(0, False\): head False"),
     (("1", 0), r"\('1', 0\): layer '1'"), ((0, None), r"\(0, None\): head None")],
)  # fmt: skip
def test_heads_must_be_integers_not_truncated(tiny_gptj, head, shown):
    """Issue 18: (0.7, 0), (True, 0) and ("1", 0) were truncated by int() into real heads."""
    model = tiny_gptj()  # 2 layers, 2 heads
    with pytest.raises(HeadkitError, match=rf"^head {shown} is not an integer: a head is a \(layer, head\) pair of integers"):
        check_heads(model, [(0, 0), head])


def test_heads_accept_integer_types(tiny_gptj):
    import numpy as np

    model = tiny_gptj()
    assert check_heads(model, [(np.int64(1), torch.tensor(0))]) == [(1, 0)]
    assert all(type(v) is int for v in check_heads(model, [(np.int64(1), torch.tensor(0))])[0])
    for bad in ("10", 3, None):
        with pytest.raises(HeadkitError, match=rf"head {bad!r} must be a \(layer, head\) pair"):
            check_heads(model, [bad])


def test_parse_heads_and_lists():
    assert parse_head("5.0") == (5, 0)
    assert parse_heads("0.1, 3.0") == [(0, 1), (3, 0)]
    for bad in ["5", "a.b", "1.2.3", "-1.0"]:
        with pytest.raises(HeadkitError, match="LAYER.HEAD"):
            parse_head(bad)
    assert parse_int_list("17,33", name="--lengths") == [17, 33]
    with pytest.raises(HeadkitError, match=r"--lengths: 'x' is not an integer"):
        parse_int_list("17,x", name="--lengths")
    with pytest.raises(HeadkitError, match=r"--lengths: 0 is too small"):
        parse_int_list("0", name="--lengths")


def test_check_tokens(tiny_gptj):
    model = tiny_gptj()  # d_vocab 40, n_ctx 64
    check_tokens(model, torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(HeadkitError, match=r"shape \[batch, pos\]"):
        check_tokens(model, torch.zeros(5, dtype=torch.long))
    with pytest.raises(HeadkitError, match="is empty"):
        check_tokens(model, torch.zeros(0, 5, dtype=torch.long))
    with pytest.raises(HeadkitError, match="length 65 exceeds the model's context n_ctx=64"):
        check_tokens(model, torch.zeros(1, 65, dtype=torch.long))
    bad = torch.zeros(2, 5, dtype=torch.long)
    bad[1, 3] = 40
    with pytest.raises(HeadkitError, match=r"prompt 1, position 3 has token id 40, outside .* 0\.\.39"):
        check_tokens(model, bad)
    with pytest.raises(HeadkitError, match="integer token ids"):
        check_tokens(model, torch.zeros(2, 5))


def test_check_position():
    assert check_position(17, -1) == 16
    assert check_position(17, 3) == 3
    with pytest.raises(HeadkitError, match=r"query_pos 17 is out of range .* allowed -17\.\.16"):
        check_position(17, 17, name="query_pos")


# --- strict parsing and duplicates (issue 9) ------------------------------------------


@pytest.mark.parametrize("spec", ["\u00b2.0", "0.\u00b9", "\u0661.0", "+1.0", "1_0.0", "1.0x", " .0"])
def test_head_specs_take_ascii_digits_only(spec):
    # '\u00b2'.isdigit() is True and int('\u0661') == 1: both used to pass (and '²' crashed int())
    with pytest.raises(HeadkitError, match="must look like LAYER.HEAD"):
        parse_head(spec)
    with pytest.raises(HeadkitError, match="LAYER.HEAD.q|k|v"):
        parse_receivers(spec + ".q")


@pytest.mark.parametrize("text", ["\u00b2", "\u0661\u0662", "1_000", "+5", "1e3", "17,"])
def test_int_lists_take_ascii_digits_only(text):
    if text == "17,":  # an empty item is a malformed number too
        with pytest.raises(HeadkitError, match="'' is not an integer"):
            parse_int_list(text, name="--lengths")
        return
    with pytest.raises(HeadkitError, match="is not an integer"):
        parse_int_list(text, name="--lengths")
    assert parse_int_list("-3", name="--x", low=-5) == [-3]


def test_duplicate_heads_are_refused(tiny_gptj):
    model = tiny_gptj()
    with pytest.raises(HeadkitError, match=r"head 1\.0 is given twice in '1\.0,1\.0'"):
        parse_heads("1.0,1.0")
    with pytest.raises(HeadkitError, match=r"head 1\.0 is given twice"):
        check_heads(model, [(1, 0), (0, 1), (1, 0)])
    with pytest.raises(HeadkitError, match=r"receiver 1\.0\.q is given twice"):
        parse_receivers("1.0.q,1.0.k,1.0.q")
    with pytest.raises(HeadkitError, match="receiver final is given twice"):
        parse_receivers("final,final")
    assert parse_receivers("1.0.q,1.0.k") == [(1, 0, "q"), (1, 0, "k")]


# --- token dtypes and devices ---------------------------------------------------------


@pytest.mark.parametrize(
    "dtype", [torch.int8, torch.int16, torch.uint8, torch.bool, torch.complex64, torch.float16, torch.float32]
)
def test_check_tokens_refuses_dtypes_that_cannot_hold_ids(tiny_gptj, dtype):
    model = tiny_gptj()
    tokens = torch.ones(2, 5, dtype=dtype)
    with pytest.raises(HeadkitError, match=rf"dtype torch.int64 or torch.int32, got dtype {dtype}"):
        check_tokens(model, tokens)


def test_check_tokens_accepts_int32_and_int64(tiny_gptj):
    model = tiny_gptj()
    for dtype in (torch.int32, torch.int64):
        tokens = torch.arange(10, dtype=dtype).reshape(2, 5)
        assert check_tokens(model, tokens) is tokens
        logits = model(tokens)  # the model really takes them
        assert torch.equal(logits, model(tokens.long()))


def test_check_tokens_refuses_meta_tensors(tiny_gptj):
    with pytest.raises(HeadkitError, match="on the meta device"):
        check_tokens(tiny_gptj(), torch.zeros(2, 5, dtype=torch.long, device="meta"))


def test_check_device():
    assert check_device("cpu") == "cpu"
    with pytest.raises(HeadkitError, match="'gpu' is not a torch device"):
        check_device("gpu")
    with pytest.raises(HeadkitError, match="holds no values"):
        check_device("meta")
    if torch.cuda.is_available():  # a GPU machine: cuda works, a GPU beyond the visible ones does not
        assert check_device("cuda").startswith("cuda")
        with pytest.raises(HeadkitError, match="cuda:999' is not available"):
            check_device("cuda:999")
    else:  # this torch has no CUDA (or no GPU visible): cuda is refused by name
        with pytest.raises(HeadkitError, match="'cuda' is not available: .*use cpu"):
            check_device("cuda")


def test_check_finite():
    x = torch.ones(3)
    assert check_finite(x, where="w") is x
    with pytest.raises(HeadkitError, match=r"the logits is not finite \(1 NaN, 1 infinite of 4 values\)"):
        check_finite(torch.tensor([1.0, float("nan"), float("inf"), 2.0]), where="the logits")


# --- output paths -----------------------------------------------------------------------


@pytest.fixture
def run_dir(tmp_path):
    """The files a headkit run directory holds (as headkit.training and checkpoints write them)."""
    run = tmp_path / "run"
    step = run / "checkpoints" / "step_0000010"
    step.mkdir(parents=True)
    (run / "run.json").write_text("{}")
    (run / "metrics.csv").write_text("step\n")
    (step / "meta.json").write_text("{}")
    (step / "model.safetensors").write_text("")
    return run


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize(
    "relative,words",
    [
        ("run.json", "belongs to the run"),
        ("metrics.csv", "belongs to the run"),
        ("checkpoints/step_0000010/meta.json", "inside the checkpoint"),
        ("checkpoints/step_0000010/new.csv", "inside the checkpoint"),
        ("checkpoints/other.csv", "belongs to the run"),
        (".lock", "belongs to the run"),
        ("checkpoints", "is a directory"),
    ],
)
def test_output_path_never_overwrites_a_run(run_dir, relative, words):
    before = _listing(run_dir)
    with pytest.raises(HeadkitError, match=words):
        check_output_path(run_dir / relative)
    assert _listing(run_dir) == before


def test_output_path_through_a_symlink_is_still_the_run(run_dir, tmp_path):
    link = tmp_path / "alias.csv"
    link.symlink_to(run_dir / "metrics.csv")
    with pytest.raises(HeadkitError, match="belongs to the run"):
        check_output_path(link)


def test_output_path_allows_new_files_beside_a_run(run_dir, tmp_path):
    before = _listing(tmp_path)
    assert check_output_path(run_dir / "eval.csv", inputs=[run_dir]) == run_dir / "eval.csv"
    assert check_output_path(tmp_path / "new" / "deeper" / "x.csv") == tmp_path / "new" / "deeper" / "x.csv"
    assert check_output_path(run_dir, directory=True) == run_dir  # e.g. train --resume into the run
    assert _listing(tmp_path) == before  # the writability probe leaves nothing behind


def test_output_path_never_overwrites_its_input(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    with pytest.raises(HeadkitError, match="would write over this command's input"):
        check_output_path(model_dir / "config.json", inputs=[model_dir])
    source = tmp_path / "in.csv"
    source.write_text("x\n")
    with pytest.raises(HeadkitError, match="would write over this command's input"):
        check_output_path(source, inputs=[source])
    assert check_output_path(model_dir / "heads.csv", inputs=[model_dir]) == model_dir / "heads.csv"


@pytest.mark.parametrize("out", ["/proc/headkit.csv", "/proc/self/headkit.csv", "/sys/headkit.csv"])
def test_output_path_must_be_writable(out):
    with pytest.raises(HeadkitError, match=rf"--out {out}: cannot write in /"):
        check_output_path(out)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories; /proc covers it above")
def test_output_path_in_a_read_only_directory(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    with pytest.raises(HeadkitError, match="cannot write in"):
        check_output_path(folder / "x.csv")


def test_output_path_kinds(tmp_path):
    a_file = tmp_path / "f.txt"
    a_file.write_text("")
    with pytest.raises(HeadkitError, match=r"f\.txt is a file, not a directory"):
        check_output_path(a_file / "x.csv")
    with pytest.raises(HeadkitError, match="is a directory: give a file name"):
        check_output_path(tmp_path)
    with pytest.raises(HeadkitError, match="exists and is not a directory"):
        check_output_path(a_file, directory=True)
    with pytest.raises(HeadkitError, match="--target"):
        check_output_path(tmp_path, option="--target")


def test_output_path_refuses_fifos_and_devices_but_writes_through_a_symlink(tmp_path):
    """Issue 18.1: a target that exists and is not a regular file is refused (atomic_path would
    replace it: as root, ``--out /dev/null`` replaced the system's file); a symlink to a
    regular file is written through, its target replaced and the link kept."""
    from headkit.io import write_text

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(HeadkitError, match=r"--out .*pipe exists and is not a regular file \(a FIFO\)"):
        check_output_path(fifo)
    with pytest.raises(HeadkitError, match="is not a regular file"):
        write_text(fifo, "x")  # the library's own write refuses it too
    assert fifo.is_fifo()
    link_to_fifo = tmp_path / "to-pipe.csv"
    link_to_fifo.symlink_to(fifo)
    with pytest.raises(HeadkitError, match=r"exists and is not a regular file \(a FIFO\)"):
        check_output_path(link_to_fifo)

    real = tmp_path / "data" / "real.csv"
    real.parent.mkdir()
    real.write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    assert check_output_path(link) == link
    write_text(link, "new\n")
    assert link.is_symlink() and os.readlink(link) == str(real)  # the link is kept...
    assert real.read_text() == "new\n"  # ...and its target written
    assert sorted(p.name for p in real.parent.iterdir()) == ["real.csv"]  # no temporary left


def test_output_path_refuses_loops_dangling_links_trailing_slashes_and_empty_paths(tmp_path):
    """Issue 18.10, 18.13, 18.2: ``--out x.csv/`` used to write ``x.csv``; a symlink loop gave a
    traceback; ``--out ""`` meant the current directory."""
    loop = tmp_path / "loop.csv"
    loop.symlink_to(loop)
    with pytest.raises(HeadkitError, match=r"--out .*loop\.csv is a symlink loop"):
        check_output_path(loop)
    with pytest.raises(HeadkitError, match="is a symlink loop"):
        check_output_path(loop / "x.csv")
    dangling = tmp_path / "dangling.csv"
    dangling.symlink_to(tmp_path / "missing" / "x.csv")
    with pytest.raises(HeadkitError, match=r"dangling\.csv is a symlink to .*missing/x\.csv, which does not exist"):
        check_output_path(dangling)
    with pytest.raises(HeadkitError, match=r"--out .*x\.csv/ ends with '/', which names a directory: give a file name"):
        check_output_path(f"{tmp_path}/x.csv/")
    assert check_output_path(f"{tmp_path}/run/", directory=True) == tmp_path / "run"  # a folder may end in '/'
    for directory in (False, True):
        with pytest.raises(HeadkitError, match="--out is empty: give a"):
            check_output_path("", directory=directory)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling.csv", "loop.csv"]


def test_check_seed():
    from headkit.checks import SEED_MAX, check_seed

    assert check_seed(0) == 0 and check_seed(SEED_MAX) == SEED_MAX == 2**64 - 1
    torch.Generator().manual_seed(SEED_MAX)  # the bound is what torch takes...
    with pytest.raises((ValueError, RuntimeError)):  # ...and one more is not
        torch.Generator().manual_seed(SEED_MAX + 1)
    for bad in (SEED_MAX + 1, -1, 2**70):
        with pytest.raises(HeadkitError, match=r"out of range: seeds are 0\.\.18446744073709551615"):
            check_seed(bad)
    for bad in (1.0, "3", True):
        with pytest.raises(HeadkitError, match="must be an integer"):
            check_seed(bad)


def test_check_bool_takes_true_and_false_only() -> None:
    from headkit.checks import check_bool

    assert check_bool("flag", True) is True and check_bool("flag", False) is False
    for bad in (1, 0, "yes", None):
        with pytest.raises(HeadkitError, match=rf"flag={bad!r} must be True or False"):
            check_bool("flag", bad)


# --- issue 18: a model no analysis can run ----------------------------------------------


def _not_analysable():
    """TrainResult.hf_model's kind (a Hugging Face GPT-J) and headkit's model on the meta device."""
    from headkit.bridge.build import wrap
    from headkit.gptj_hf import build_hf_model, hf_config
    from headkit.model_config import ModelConfig

    config = ModelConfig(n_layers=2, d_model=32, n_heads=2, d_vocab=40, n_ctx=64)
    with torch.device("meta"):
        meta = wrap(GPTJForCausalLM(hf_config(config)))
    return {"hf_model": build_hf_model(config, seed=0, dropout=0.0, device="cpu"), "meta": meta}


MODEL_PROBLEMS = {
    "hf_model": r"model is a Hugging Face GPTJForCausalLM, not headkit's analysis model .*not TrainResult\.hf_model",
    "meta": r"model is on the meta device \(tensor \S+ has a shape but no values\)",
}


@pytest.mark.parametrize(
    "analysis",
    ["activation_patching", "ablate", "head_census", "evaluate", "previous_token_scores", "discrepancy",
     "rope_frequency_scores", "ablation_sweep", "induction_scores", "copying_scores", "composition_scores"],
)  # fmt: skip
def test_hf_model_and_meta_model_are_refused_by_name(analysis):
    """Each was an AttributeError ('no attribute cfg') or torch's 'Cannot copy out of meta tensor'."""
    import headkit as hk
    from headkit.tasks import TaskSpec

    task = TaskSpec("number", {"target_window": 4, "pointer_window": 4, "max_hops": 2, "n_letters": 34, "max_pointer": 6})
    batch = task.build(2, seed=0)
    metric = lambda logits: logits[:, -1, 0].mean()  # noqa: E731
    calls = {
        "activation_patching": lambda m: hk.activation_patching(m, batch.tokens, batch.tokens.flip(0), metric),
        "ablate": lambda m: hk.ablate(m, batch.tokens, [(0, 0)]),
        "head_census": lambda m: hk.head_census(m, batch.tokens),
        "evaluate": lambda m: hk.evaluate(m, task),
        "previous_token_scores": lambda m: hk.previous_token_scores(m, batch.tokens),
        "discrepancy": lambda m: hk.discrepancy(m, task, lengths=[task.length]),
        "rope_frequency_scores": lambda m: hk.rope_frequency_scores(m, batch.tokens),
        "ablation_sweep": lambda m: hk.ablation_sweep(m, batch),
        "induction_scores": lambda m: hk.induction_scores(m),
        "copying_scores": lambda m: hk.copying_scores(m),
        "composition_scores": lambda m: hk.composition_scores(m),
    }
    for kind, model in _not_analysable().items():
        with pytest.raises(HeadkitError, match=MODEL_PROBLEMS[kind]):
            calls[analysis](model)


def test_options_of_is_one_path_for_a_dataclass_or_its_fields():
    import dataclasses

    from headkit.checks import check_int, options_of

    @dataclasses.dataclass(frozen=True)
    class Opts:
        size: int = 2
        name: str = "a"

        def __post_init__(self):
            check_int("size", self.size)

        @classmethod
        def of(cls, fields, *, what):
            unknown = sorted(set(fields) - {"size", "name"})
            if unknown:
                raise HeadkitError(f"{what}: unknown {unknown}")
            return cls(**fields)

    assert options_of(Opts, None, {}, what="f") == Opts()
    assert options_of(Opts, None, {"size": 5}, what="f") == Opts(size=5)  # keywords built into the dataclass
    given = Opts(name="b")
    assert options_of(Opts, given, {}, what="f") is given
    with pytest.raises(HeadkitError, match=r"^f: unknown \['sizes'\]$"):
        options_of(Opts, None, {"sizes": 5}, what="f")
    with pytest.raises(HeadkitError, match="size=0 is out of range"):  # the dataclass's own check
        options_of(Opts, None, {"size": 0}, what="f")
    with pytest.raises(HeadkitError, match=r"^f: got options=Opts\(\.\.\.\) and keyword option\(s\) size, name: give one"):
        options_of(Opts, given, {"size": 5, "name": "c"}, what="f")
    with pytest.raises(HeadkitError, match=r"^f: settings must be a Opts, got dict \{'size': 5\}$"):
        options_of(Opts, {"size": 5}, {}, what="f", name="settings")
