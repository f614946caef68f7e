"""Prompt builders for the tasks of SPEC section 2.

Each builder is ``builder(n_prompts, *, seed, ...) -> TaskBatch``: a pure function of its
parameters and seed (its own ``torch.Generator``), checking its parameters before
doing any work. The trainable tasks are the entries of `headkit.tasks.registry.TASKS`
(one entry per task: parameters dataclass and builder); ``BUILDERS`` maps their names
(the command line's ``--task`` choices) to builders. ``ioi_task`` and the
natural-language suites (`headkit.tasks.natural`) need a tokenizer and are not among
them. Builders are imported on first use; importing this package imports no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from headkit.tasks.registry import TASKS, TaskEntry, TaskSpec, task_entry

if TYPE_CHECKING:  # headkit.tasks.base imports torch: loaded on first use, so the CLI parser stays fast
    from headkit.tasks.base import IGNORE, TaskBatch, Vocab

_BASE_NAMES = ("IGNORE", "TaskBatch", "Vocab")

# builders that are not trainable tasks (they need a tokenizer) -> module that defines them
_OTHER_BUILDERS: dict[str, str] = {
    "ioi_task": "headkit.tasks.ioi",
    "number_natural_task": "headkit.tasks.natural",
    "letter_natural_task": "headkit.tasks.natural",
    "induction_natural_task": "headkit.tasks.natural",
    "duplicate_natural_task": "headkit.tasks.natural",
}


class _Builders(Mapping[str, Callable[..., "TaskBatch"]]):
    """Read-only map task name -> builder over `TASKS`, importing each builder when asked."""

    def __getitem__(self, key: str) -> Callable[..., TaskBatch]:
        return TASKS[key].load()

    def __iter__(self) -> Iterator[str]:
        return iter(TASKS)

    def __len__(self) -> int:
        return len(TASKS)


BUILDERS: Mapping[str, Callable[..., "TaskBatch"]] = _Builders()


def __getattr__(name: str) -> Any:
    if name in _BASE_NAMES:
        return getattr(importlib.import_module("headkit.tasks.base"), name)
    for entry in TASKS.values():
        if entry.builder_name == name:
            return entry.load()
    if name in _OTHER_BUILDERS:
        return getattr(importlib.import_module(_OTHER_BUILDERS[name]), name)
    raise AttributeError(f"module 'headkit.tasks' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "BUILDERS", "IGNORE", "TASKS", "TaskBatch", "TaskEntry", "TaskSpec", "Vocab", "task_entry",
    *(entry.builder_name for entry in TASKS.values()), *_OTHER_BUILDERS,
]  # fmt: skip
