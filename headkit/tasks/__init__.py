"""Prompt builders for the tasks of SPEC section 2.

Each builder is ``builder(n, *, seed, ...) -> TaskBatch``: a pure function of its
parameters and seed (its own ``torch.Generator``), checking its parameters before
doing any work. ``BUILDERS`` maps the trainable task names (the command line's
``--task`` choices) to builders; ``ioi_task`` and the natural-language suites
(`headkit.tasks.natural`) need a tokenizer and are not among them.
Builders are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

if TYPE_CHECKING:  # headkit.tasks.base imports torch: loaded on first use, so the CLI parser stays fast
    from headkit.tasks.base import IGNORE, TaskBatch, TaskSpec, Vocab

_BASE_NAMES = ("IGNORE", "TaskBatch", "TaskSpec", "Vocab")

# builder name -> module that defines it
_BUILDER_MODULES: dict[str, str] = {
    "number_task": "headkit.tasks.number",
    "letter_task": "headkit.tasks.letter",
    "tree_task": "headkit.tasks.tree",
    "copy_task": "headkit.tasks.copying",
    "repeated_tokens_task": "headkit.tasks.repeated",
    "ioi_task": "headkit.tasks.ioi",
    "number_natural_task": "headkit.tasks.natural",
    "letter_natural_task": "headkit.tasks.natural",
    "induction_natural_task": "headkit.tasks.natural",
    "duplicate_natural_task": "headkit.tasks.natural",
}

# trainable task name -> builder name
_TASK_NAMES: dict[str, str] = {
    "number": "number_task",
    "letter": "letter_task",
    "tree": "tree_task",
    "copy": "copy_task",
    "induction": "repeated_tokens_task",
}


def _builder(name: str) -> Callable[..., TaskBatch]:
    return getattr(importlib.import_module(_BUILDER_MODULES[name]), name)


class _Builders(Mapping[str, Callable[..., "TaskBatch"]]):
    """Read-only map task name -> builder, importing each builder when asked."""

    def __getitem__(self, key: str) -> Callable[..., TaskBatch]:
        return _builder(_TASK_NAMES[key])

    def __iter__(self) -> Iterator[str]:
        return iter(_TASK_NAMES)

    def __len__(self) -> int:
        return len(_TASK_NAMES)


BUILDERS: Mapping[str, Callable[..., "TaskBatch"]] = _Builders()


def __getattr__(name: str) -> Any:
    if name in _BASE_NAMES:
        return getattr(importlib.import_module("headkit.tasks.base"), name)
    if name in _BUILDER_MODULES:
        return _builder(name)
    raise AttributeError(f"module 'headkit.tasks' has no attribute {name!r}")


__all__ = ["BUILDERS", "IGNORE", "TaskBatch", "TaskSpec", "Vocab", *_BUILDER_MODULES]
