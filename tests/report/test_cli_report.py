"""``headkit report RUN_DIR``: one self-contained page of a run, and in a real headless Chromium."""

from __future__ import annotations

import dataclasses
import io
import os
import re

import pandas as pd
import pytest

from headkit.cli import main

import chromium_cdp as _cdp  # tests/ is on sys.path (tests/conftest.py)

N = 16  # prompts per length / ablation / patching: tiny, the page is what is tested
REPORT = ["--eval-n", str(N), "--n-prompts", "8", "--no-progress", "--threads", "1"]


@pytest.fixture(scope="module")
def number_run(tmp_path_factory):
    """A 2-layer d_model 16 number-task run with checkpoints at steps 2 and 4."""
    from headkit.training.config import default_config
    from headkit.training.loop import train

    cfg = default_config("number")
    cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, n_layers=2, d_model=16), steps=4, batch_size=8,
        eval_every=2, eval_n=16, warmup_steps=1, checkpoint_steps=(2,),
    )  # fmt: skip
    run = tmp_path_factory.mktemp("report") / "number"
    train(cfg, out_dir=run, progress=False)
    return run


@pytest.fixture(scope="module")
def report(number_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    assert main(["report", str(number_run), "--out", str(out), *REPORT]) == 0
    return out


def expected_views(seed: int = 1) -> int:
    """Attention views the report shows: two prompts per hop count of its batch (seed 0 + 1)."""
    from headkit.report.sections import VIEWS_PER_HOP
    from headkit.tasks import TaskSpec

    hops = TaskSpec("number").build(N, seed=seed).hops
    return sum(min(VIEWS_PER_HOP, int((hops == h).sum())) for h in hops.unique())


def test_report_writes_one_page_and_its_tables(report, capsys):
    page = (report / "report.html").read_text()
    for title in (
        "Accuracy by length and hop", "Head census", "Learning dynamics over checkpoints", "Ablation per hop",
        "Activation patching", "Attention views",
    ):  # fmt: skip
        assert f"<h2>{title}" in page
    assert page.count("How to read this:") == 6
    assert page.count("Plotly.newPlot(") == 6  # accuracy, census, dynamics, ablation, 2 patching maps
    assert page.count('class="headkit-attention-widget"') == expected_views()
    assert "trained length 17" in page and "2-layer × 1-head model, d_model 16, step 4" in page
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=.https?:", page)
    assert sorted(p.name for p in report.iterdir()) == [
        "ablation.csv", "accuracy.csv", "dynamics.csv", "heads.csv", "report.html",
    ]  # fmt: skip
    assert sorted(pd.read_csv(report / "dynamics.csv")["step"].unique()) == [2, 4]
    assert sorted(pd.read_csv(report / "accuracy.csv")["length"].unique()) == [17, 33, 65, 129, 257]


def test_report_errors_are_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
    (tmp_path / "file").write_text("x")
    assert main(["report", str(tmp_path), "--eval-n", "0"]) == 2


def _files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _dead_pid() -> int:
    import subprocess
    import sys

    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def test_a_report_rerun_replaces_the_folder_whole_and_cleans_what_a_killed_one_left(number_run, tmp_path, monkeypatch, capsys):
    """Issue 18.8: a rerun killed midway left new CSVs beside the old report.html and a hidden
    temporary nothing removed. The report is built beside its folder and swapped in whole; a
    killed writer's temporaries (its pid gone) are removed by the next report, a user's never."""
    import headkit.report.run

    out = tmp_path / "out"
    assert main(["report", str(number_run), "--out", str(out), *REPORT]) == 0
    before = _files(out)

    def killed(*args, **kwargs):  # the tables are written: the process dies before the page
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(headkit.report.run, "report_html", killed)
        assert main(["report", str(number_run), "--out", str(out), *REPORT, "--seed", "1"]) == 130
    assert _files(out) == before  # the old report, whole: no new table beside its page
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    # what a kill -9 leaves: a half-built folder beside OUT, an old folder moved aside, a temp page inside OUT
    from headkit.io import temp_prefix

    dead = temp_prefix("out").replace(f"-{os.getpid()}-", f"-{_dead_pid()}-")
    (tmp_path / f"{dead}abc123.tmp").mkdir()
    (tmp_path / f"{dead}abc123.tmp" / "accuracy.csv").write_text("half")
    (tmp_path / f"{dead}def456.old").mkdir()
    (out / ".report.html.k2j3h4g5.tmp").write_text("a 4 MB page, half written")
    alive = tmp_path / f"{temp_prefix('out')}ghi789.tmp"  # this process's own: still being written
    alive.mkdir()
    (tmp_path / ".notes.tmp").write_text("the user's")
    assert main(["report", str(number_run), "--out", str(out), *REPORT, "--seed", "1"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, ".notes.tmp", "out"])
    assert sorted(p.name for p in out.iterdir()) == [
        "ablation.csv", "accuracy.csv", "dynamics.csv", "heads.csv", "report.html",
    ]  # fmt: skip
    assert _files(out) != before  # seed 1's report
    capsys.readouterr()

    # a folder of other files is never swapped away
    (out / "my_notes.txt").write_text("mine")
    assert main(["report", str(number_run), "--out", str(out), *REPORT]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds files that are not a headkit report's (my_notes.txt)" in err, err


def test_a_full_disk_during_a_report_is_one_line_naming_the_folder(number_run, tmp_path, monkeypatch, capsys):
    """Issue 18.11: ``report --out`` on a full disk ended in an OSError 28 traceback."""
    import errno

    def full(self, path, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    out = tmp_path / "out"
    assert main(["report", str(number_run), "--out", str(out), *REPORT]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"headkit: error: the disk is full: could not write {out}/accuracy.csv" in err, err
    assert list(tmp_path.iterdir()) == []


def test_the_largest_documented_seed_works(number_run, tmp_path, capsys):
    """Issue 18.14: ``--seed 18446744073709551615`` did all the work, then failed naming a seed one higher."""
    assert main(["report", str(number_run), "--out", str(tmp_path / "out"), *REPORT, "--seed", str(2**64 - 1)]) == 0
    assert (tmp_path / "out" / "report.html").is_file()


# --------------------------------------------------------------------------- a real browser


chromium_path, open_page = _cdp.chromium_path, _cdp.open_page

CHROMIUM_MISSING = (
    "SKIPPED LOUDLY: no Chromium on this machine (install Debian's `chromium`: apt-get install -y chromium; "
    ".ci/run does), so the report was NOT checked in a real browser"
)


@pytest.mark.slow
@pytest.mark.skipif(chromium_path() is None, reason=CHROMIUM_MISSING)
def test_report_renders_offline_in_headless_chromium(report):
    result = open_page(
        report / "report.html",
        ready=(
            "document.readyState === 'complete' && "
            "[...document.querySelectorAll('.headkit-attention-widget')].every(e => e.childElementCount > 0) && "
            "[...document.querySelectorAll('.js-plotly-plot')].every(e => e.querySelector('.main-svg'))"
        ),
        expressions={
            "plots": "document.querySelectorAll('.js-plotly-plot .main-svg .cartesianlayer').length",
            "views": "[...document.querySelectorAll('.headkit-attention-widget')].filter(e => e.querySelector('canvas, svg, table, div')).length",
            "online": "navigator.onLine",
            "rects": (
                "[...document.querySelectorAll('.js-plotly-plot, .headkit-attention-widget')].map(e => {"
                " const r = e.getBoundingClientRect(); return [r.left, r.top + window.scrollY, r.width, r.height]; })"
            ),
        },
    )
    assert result.failed_requests == []
    assert result.console_errors == []
    assert result.values["online"] is False  # networking was off
    assert result.values["plots"] == 6
    assert result.values["views"] == expected_views()
    from PIL import Image

    image = Image.open(io.BytesIO(result.screenshot)).convert("RGB")
    assert image.width >= 1000 and image.height > 3000  # the whole page, not a viewport
    small = image.resize((image.width // 10, image.height // 10))
    colours = small.getcolors(maxcolors=1 << 20)
    non_white = sum(count for count, rgb in colours if min(rgb) < 235)
    assert len(colours) > 100 and non_white > 0.05 * small.width * small.height  # not blank
    assert image.height == result.height  # every pixel of the page's height (issue 19: it stopped at 12,000)
    for left, top, width, height in result.values["rects"]:  # each figure drawn where it stands, down the page
        crop = image.crop((int(left), int(top), int(left + width), int(min(top + height, image.height))))
        small = crop.resize((max(1, crop.width // 4), max(1, crop.height // 4)))
        inked = sum(n for n, rgb in small.getcolors(maxcolors=1 << 20) if min(rgb) < 235)
        assert width > 100 and height > 50 and inked > 0.01 * small.width * small.height, (left, top, width, height)
    if os.environ.get("HEADKIT_KEEP_SCREENSHOT"):
        image.save(os.environ["HEADKIT_KEEP_SCREENSHOT"])


def test_png_option_writes_figure_files_or_says_why_not(number_run, tmp_path, capsys):
    out = tmp_path / "png"
    assert main(["report", str(number_run), "--out", str(out), "--png", *REPORT]) == 0
    printed = capsys.readouterr().out
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert [f"figure_{i}.html" for i in range(1, 7)] == [n for n in figures if n.endswith(".html")]
    pngs = [n for n in figures if n.endswith(".png")]
    assert len(pngs) == 6 or (not pngs and "no PNG written: PNG export needs kaleido" in printed)


def test_a_checkpoint_directory_gets_a_report_beside_not_inside_it(number_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    from headkit.training.layout import latest_checkpoint

    checkpoint = latest_checkpoint(number_run)
    before = sorted(p.name for p in checkpoint.iterdir())
    assert main(["report", str(checkpoint), *REPORT]) == 0
    page = (tmp_path / f"report_{checkpoint.name}" / "report.html").read_text()
    assert "Learning dynamics" not in page and page.count("Plotly.newPlot(") == 5  # no run: no dynamics
    assert sorted(p.name for p in checkpoint.iterdir()) == before
