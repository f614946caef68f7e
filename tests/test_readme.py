"""README.md is true: its commands exist, it stands alone, its claims match the repository (issue 19)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from headkit.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
# what a reader types for the README's placeholders
PLACEHOLDERS = {"RUN_DIR": "run", "DIR": "dir", "N": "3", "B": "8", "LR": "0.001", "S": "0", "K": "10", "T": "number",
                "FILE.csv": "f.csv", "PAGE": "page", "SUITE": "ioi", "HOPS.csv": "h.csv"}  # fmt: skip


def _subcommands() -> dict:
    parser = build_parser()
    return next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices


def _options(command: str) -> set[str]:
    return {o for a in _subcommands()[command]._actions for o in a.option_strings}


def _readme_commands() -> list[str]:
    """Every ``headkit ...`` command line of the README: in code blocks and in backticks."""
    blocks = "\n".join(re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL))
    lines = [m.group(1) for m in re.finditer(r"^\s*(headkit [^\n#]*)", blocks, flags=re.MULTILINE)]
    quoted = [m.group(1) for m in re.finditer(r"`(headkit [^`]+)`", README)]
    return [c.strip() for c in dict.fromkeys(lines + quoted) if c.split()[1:2] and not c.startswith("headkit --help")]


def _argv(command: str) -> list[str]:
    """The README's usage syntax made a command line: ``[--x A|B]`` -> ``--x A``, ``{a,b}`` -> ``a``."""
    text = command.replace("\\|", "|").replace("…", "x")
    text = re.sub(r"\{([^},]+)[^}]*\}", r"\1", text)  # {number,letter} -> number
    text = text.replace("[", " ").replace("]", " ").replace("(", " ").replace(")", " ")
    argv = []
    for word in shlex.split(text):
        word = word.split("|")[0]
        argv.append(PLACEHOLDERS.get(word, word))
    return argv[1:]


@pytest.mark.parametrize("command", _readme_commands())
def test_every_readme_command_parses(command):
    """Each command the README shows is one headkit accepts (its subcommand, its options)."""
    argv = _argv(command)
    assert argv[0] in _subcommands(), command
    known = _options(argv[0])
    unknown = [w for w in argv if w.startswith("--") and w.split("=")[0] not in known and w != "--"]
    assert not unknown, f"{command}: {argv[0]} has no {unknown}"


def test_readme_commands_were_found():
    assert len(_readme_commands()) >= 15  # the command table, the quickstart, the pretrained section


def test_commands_said_to_take_suite_do():
    """A paragraph that names commands beside ``--suite`` names only commands that accept it."""
    for paragraph in README.split("\n\n"):
        if "`--suite" not in paragraph:
            continue
        named = [c for c in re.findall(r"`([a-z-]+)`", paragraph) if c in _subcommands()]
        wrong = [c for c in named if "--suite" not in _options(c)]
        assert not wrong, f"the README says {wrong} take --suite, which they do not: {paragraph[:200]}"


def test_readme_stands_alone():
    """No pointer to a file outside the repository (SPEC.md lived in a shared folder)."""
    mentioned = set(re.findall(r"`?([\w./-]+\.(?:md|ipynb|txt|py|toml))`?", README))
    relative = {m for m in mentioned if not m.startswith("/") and ".." not in m}
    missing = sorted(m for m in relative if not any(ROOT.glob(m if "/" in m else f"**/{m}")))
    assert not missing, f"README names files the repository does not hold: {missing}"
    assert "SPEC" not in README


def test_readme_states_no_test_count_that_goes_stale():
    assert not re.search(r"\d[\d,]* passed", README), "a test count in the README goes stale at the next test"


def test_constraints_claim_matches_the_file():
    """The README says what constraints/cpu.txt pins and what pip does where no CPU torch is installed."""
    pin = re.search(r"^torch==([\w.+]+)", (ROOT / "constraints" / "cpu.txt").read_text(), flags=re.MULTILINE).group(1)
    paragraph = next(p for p in README.split("\n\n") if "constraints/cpu.txt` pins" in p)
    assert pin in paragraph
    assert "download.pytorch.org/whl/cpu" in paragraph  # where the CPU build comes from elsewhere


def test_ci_runs_the_readme_test_command():
    """.ci/run's last line is exactly the README's test command (lint, type check, both test suites)."""
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL)
    readme = [line for block in blocks for line in block.splitlines() if "pytest" in line]
    ci = [line for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(readme) == 1, f"expected one test command in the README, found {readme}"
    assert ci[-1] == readme[0], f".ci/run runs\n  {ci[-1]}\nthe README says\n  {readme[0]}"
