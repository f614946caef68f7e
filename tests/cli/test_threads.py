"""headkit.cli.threads: the CLI's torch thread count (idle cores by load average, or --threads)."""

from __future__ import annotations

import pytest
import torch

import headkit.cli.threads as threads_module
from headkit.cli import build_parser, main
from headkit.cli.threads import OVERSUBSCRIPTION, auto_threads, max_threads, usable_cpus, use_threads
from headkit.errors import HeadkitError


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    "cores, load, ceiling, expected",
    [
        (2, 0.0, 2, 2),  # quiet 2-core machine: both cores
        (2, 0.3, 2, 2),  # nearly quiet: round(1.7) = 2
        (2, 0.8, 2, 1),  # one core busy
        (2, 8.0, 2, 1),  # overloaded: never below one
        (16, 3.0, 8, 8),  # capped at torch's own default
        (16, 3.0, 32, 13),
    ],
)
def test_auto_threads_counts_idle_cores(cores, load, ceiling, expected):
    assert auto_threads(cores=cores, load=load, ceiling=ceiling) == expected


def test_use_threads_sets_torch(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert use_threads(1) == 1 and torch.get_num_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert use_threads() == 1  # the environment's setting wins over the automatic choice
    monkeypatch.delenv("OMP_NUM_THREADS")
    # no setting: the automatic choice from this machine's readings, here fixed: 4 usable
    # CPUs, a load of 1.6 -> round(4 - 1.6) = 2 threads (under torch's own default of 4)
    monkeypatch.setattr(threads_module, "usable_cpus", lambda: 4)
    monkeypatch.setattr(threads_module.os, "getloadavg", lambda: (1.6, 1.0, 1.0))
    torch.set_num_threads(4)
    assert use_threads() == 2 and torch.get_num_threads() == 2
    monkeypatch.setattr(threads_module.os, "getloadavg", lambda: (0.2, 1.0, 1.0))
    torch.set_num_threads(4)
    assert use_threads() == 4 and torch.get_num_threads() == 4
    torch.set_num_threads(1)
    with pytest.raises(HeadkitError, match="--threads=0 is out of range: allowed 1 or more"):
        use_threads(0)


def test_every_computing_command_takes_threads(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    computing = {"train", "eval", "demo", "report", "census", "dynamics", "discrepancy", "ablate", "patch", "path-patch"}
    for name in computing:
        options = {o for a in sub.choices[name]._actions for o in a.option_strings}
        assert "--threads" in options, name
    assert "load average" in sub.choices["demo"].format_help()
    assert main(["eval", "x", "--threads", "0"]) == 2
    assert "--threads=0 is out of range: allowed 1 or more" in capsys.readouterr().err


# --- thread counts that torch cannot take (issue 18) -------------------------------------


@pytest.mark.parametrize("value", ["²", "٣", "99999999999999999999", "1000000000", "0", "-2", "two", "4,2"])
def test_omp_num_threads_that_is_not_a_usable_count_is_refused(monkeypatch, value):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    before = torch.get_num_threads()
    with pytest.raises(HeadkitError, match=rf"^OMP_NUM_THREADS={value!r} is not a thread count: allowed 1\.\.\d+ "):
        use_threads()
    assert torch.get_num_threads() == before
    assert use_threads(1) == 1  # --threads wins over the environment, which is then not read


def test_far_more_threads_than_cpus_is_refused_a_few_more_is_allowed(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    limit = max_threads()
    assert limit == OVERSUBSCRIPTION * usable_cpus()
    before = torch.get_num_threads()
    try:
        assert use_threads(usable_cpus() + 1) == usable_cpus() + 1  # oversubscribed: slower, legal
        for value in (limit + 1, 10**6, 2**63):
            with pytest.raises(HeadkitError, match=rf"^--threads={value} is out of range: allowed 1\.\.{limit} \({OVERSUBSCRIPTION} per CPU"):
                use_threads(value)
        monkeypatch.setenv("OMP_NUM_THREADS", str(limit + 1))
        with pytest.raises(HeadkitError, match=rf"^OMP_NUM_THREADS='{limit + 1}' is not a thread count"):
            use_threads()
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("argv_tail, env, message", [
    (["--threads", "1000000"], None, "--threads=1000000 is out of range: allowed 1.."),
    (["--threads", "99999999999999999999"], None, "--threads=99999999999999999999 is out of range"),
    ([], "²", "OMP_NUM_THREADS='²' is not a thread count"),
    ([], "1000000000", "OMP_NUM_THREADS='1000000000' is not a thread count"),
])  # fmt: skip
def test_cli_refuses_bad_thread_counts_before_any_work(tmp_path, monkeypatch, capsys, argv_tail, env, message):
    if env is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    out = tmp_path / "run"
    assert main(["train", "--task", "number", "--steps", "2", "--out", str(out), *argv_tail]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists()
