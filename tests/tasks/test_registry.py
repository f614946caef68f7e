"""The task registry (headkit.tasks.registry) and the task parameters (headkit.tasks.params).

What the registry says about a task (vocabulary size, prompt length, hop range) is
computed from its parameters; every test here checks it against what the builder
actually produces, for several parameter settings per task.
"""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys

import pytest
import torch

import headkit.tasks as tasks
from headkit.errors import HeadkitError
from headkit.tasks import BUILDERS, TASKS, TaskEntry, TaskSpec
from headkit.tasks.base import IGNORE, TaskBatch, Vocab
from headkit.tasks.chains import chain_counts
from headkit.tasks.params import (
    CopyParams,
    InductionParams,
    LetterParams,
    NumberParams,
    TaskParams,
    TreeParams,
    builder_of,
)

SETTINGS = {
    "number": [{}, {"length": 40}, {"length": 40, "extend": "window"}, {"n_letters": 6, "max_pointer": 8, "target_window": 4, "pointer_window": 4}, {"min_hops": 2, "max_hops": 3}],
    "letter": [{}, {"length": 33}, {"length": 30, "extend": "window"}, {"n_symbols": 24, "n_digits": 3}, {"max_hops": 2, "pointer_window": 3}],
    "tree": [{}, {"generator": "random"}, {"n_nodes": 5}, {"n_nodes": 7, "generator": "random"}],
    "copy": [{}, {"length": 7, "vocab_size": 3}],
    "induction": [{}, {"bos": False}, {"half_length": 5, "vocab_size": 9}],
}


def test_every_task_has_settings_here():
    assert set(SETTINGS) == set(TASKS) == set(BUILDERS)


@pytest.mark.parametrize("name, params", [(name, p) for name, ps in SETTINGS.items() for p in ps])
def test_length_vocabulary_and_hops_equal_what_the_builder_produces(name, params):
    spec = TaskSpec(name, params)
    batch = spec.build(60, seed=1)
    assert spec.length == batch.length == batch.corrupted.length
    assert spec.d_vocab == len(batch.vocab)
    assert int(batch.tokens.max()) < spec.d_vocab and int(batch.corrupted.tokens.max()) < spec.d_vocab
    if spec.hop_range is None:
        assert not spec.config.accepts("min_hops") and not spec.config.accepts("max_hops")
    else:
        low, high = spec.hop_range
        assert sorted(set(batch.hops.tolist())) == list(range(low, high + 1))  # 60 prompts: every hop occurs


@pytest.mark.parametrize("name", list(SETTINGS))
def test_resolved_spec_names_every_parameter_and_builds_the_same_prompts(name):
    spec = TaskSpec(name)
    full = spec.resolved()
    assert set(full.params) == {f.name for f in dataclasses.fields(TASKS[name].params)}
    assert torch.equal(full.build(5, seed=2).tokens, spec.build(5, seed=2).tokens)
    assert TaskSpec.from_dict(full.to_dict()) == full


@pytest.mark.parametrize(
    "params_type, kwargs, name",
    [
        (NumberParams, {"n_letters": 1}, "n_letters=1"),
        (NumberParams, {"max_pointer": 0}, "max_pointer=0"),
        (NumberParams, {"min_hops": 3, "max_hops": 2}, "max_hops=2"),
        (NumberParams, {"extend": "middle"}, "extend='middle'"),
        (NumberParams, {"distractors": "distinct"}, "distractors='distinct'"),  # the letter task's option
        (NumberParams, {"length": 40, "extend": "window", "balance": "joint"}, "balance='joint' cannot"),
        (LetterParams, {"n_symbols": 5}, "n_symbols=5"),
        (LetterParams, {"n_digits": 10}, "n_digits=10 is out of range: allowed 2..9"),
        (LetterParams, {"distractors": "uniform"}, "distractors='uniform'"),
        (TreeParams, {"n_nodes": True}, "n_nodes must be an integer"),
        (TreeParams, {"generator": "bfs"}, "generator='bfs'"),
        (CopyParams, {"vocab_size": 1}, "vocab_size=1"),
        (InductionParams, {"half_length": 10, "vocab_size": 10}, "vocab_size=10"),
    ],
)
def test_a_bad_parameter_is_refused_on_creation_naming_it(params_type, kwargs, name):
    with pytest.raises(HeadkitError, match=name):
        params_type(**kwargs)


def test_unknown_task_and_unknown_parameter_are_refused_by_name():
    with pytest.raises(HeadkitError, match="unknown task 'chess': allowed copy, induction, letter, number, tree"):
        TaskSpec("chess")
    with pytest.raises(HeadkitError, match="task 'number' has no parameter colour, size: allowed target_window"):
        TaskSpec("number", {"size": 3, "colour": 1})
    with pytest.raises(HeadkitError, match="task 'copy' has no parameter colour"):
        tasks.copy_task(4, seed=0, colour=1)  # the builder itself, too
    with pytest.raises(HeadkitError, match="max_hops=10"):
        TaskSpec("number").replace(max_hops=10)  # replace checks its overrides


def test_params_are_frozen_and_typed():
    spec = TaskSpec("letter", {"n_symbols": 24})
    assert isinstance(spec.config, LetterParams) and spec.config.n_symbols == 24 and spec.config.n_digits == 8
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.config.n_symbols = 3  # type: ignore[misc]


@pytest.mark.parametrize("name", list(SETTINGS))
def test_builder_signature_is_made_from_the_params_dataclass(name):
    entry = TASKS[name]
    signature = inspect.signature(entry.load()).parameters
    named = {k: p.default for k, p in signature.items() if p.kind is inspect.Parameter.KEYWORD_ONLY and k != "seed"}
    assert named == {f.name: f.default for f in dataclasses.fields(entry.params)}
    assert list(signature)[:2] == ["n_prompts", "seed"]


def test_number_feasibility_rule_equals_the_chain_count_table():
    # NumberParams decides "h hops are possible" by h * max_pointer >= P + 1 (no torch); the
    # builders' count table (an independent dynamic programme over positions) must agree
    for target in (1, 3, 6):
        for pointer in (0, 1, 4, 7):
            for max_pointer in (1, 2, 3, 5, 9):
                counts = chain_counts(target_window=target, pointer_window=pointer, max_jump=max_pointer, max_hops=pointer + 1)
                for h in range(1, pointer + 2):
                    feasible = counts[h, target + pointer] > 0
                    kwargs = dict(target_window=target, pointer_window=pointer, max_pointer=max_pointer, min_hops=h, max_hops=h)
                    if feasible:
                        NumberParams(**kwargs)
                    else:
                        with pytest.raises(HeadkitError, match=f"hops={h} is impossible"):
                            NumberParams(**kwargs)


# --- a new task is one entry -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FakeParams(TaskParams):
    """A fake task: ``length`` tokens, all 0, answer 1 at the last position."""

    length: int = 5

    def __post_init__(self) -> None:
        if self.length < 2:
            raise HeadkitError(f"length={self.length} is too short")

    def d_vocab(self) -> int:
        return 2

    def prompt_length(self) -> int:
        return self.length


@builder_of(FakeParams)
def fake_task(n: int, *, seed: int, **params) -> TaskBatch:
    config = FakeParams.of(params, task="fake")
    tokens = torch.zeros(n, config.length, dtype=torch.long)
    targets = torch.full_like(tokens, IGNORE)
    targets[:, -1] = 1
    last = torch.full((n,), config.length - 1)
    return TaskBatch(
        task="fake", tokens=tokens, targets=targets, answers=torch.ones(n, dtype=torch.long), answer_pos=last,
        vocab=Vocab(("zero", "one")), params=config.to_dict(),
    )  # fmt: skip


@pytest.fixture
def fake_entry(monkeypatch):
    monkeypatch.setitem(TASKS, "fake", TaskEntry("fake", FakeParams, f"{__name__}:fake_task"))


@pytest.mark.slow  # imports headkit.training (transformers, TransformerLens): 40 s alone on the loaded 2-core machine
def test_a_new_entry_appears_everywhere_task_names_are_used(fake_entry):
    from headkit.cli import build_parser
    from headkit.training.config import default_config

    assert "fake" in BUILDERS and BUILDERS["fake"] is fake_task
    assert tasks.fake_task is fake_task  # headkit.tasks.<builder name>
    spec = TaskSpec("fake", {"length": 7})
    assert spec.build(3, seed=0).length == spec.length == 7 and spec.hop_range is None
    with pytest.raises(HeadkitError, match="length=1 is too short"):
        TaskSpec("fake", {"length": 1})
    cfg = default_config("fake", steps=3)  # the cpu preset's entry for tasks without their own
    assert cfg.model.d_vocab == 2 and cfg.task == spec.replace(length=5)
    args = build_parser().parse_args(["train", "--task", "fake", "--out", "x"])
    assert args.task == "fake"  # the command line's --task choices come from the registry


def test_registry_and_params_import_no_torch():
    probe = (
        "import sys\n"
        "from headkit.tasks import TaskSpec, BUILDERS\n"
        "spec = TaskSpec('number', {'length': 40})\n"
        "assert (spec.length, spec.d_vocab, spec.hop_range) == (40, 136, (1, 4)), spec\n"
        "assert list(BUILDERS) == ['number', 'letter', 'tree', 'copy', 'induction']\n"
        "print(','.join(m for m in ('torch', 'numpy', 'transformers') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
