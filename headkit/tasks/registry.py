"""The trainable tasks, one entry each, and `TaskSpec`: a task by name with its parameters.

`TASKS` maps a task name (the command line's ``--task`` choices, ``run.json``'s
``task.name``) to a `TaskEntry`: its parameters dataclass (`headkit.tasks.params`,
which knows the vocabulary size, prompt length and hop range of any parameter
setting) and its builder, named as ``"module:function"`` and imported on first use.
Adding a task is one entry here (plus its builder and parameters, which are the task).

`TaskSpec` is what a run stores: the name and the parameters as given. Creating one
checks them (an unknown task or parameter is refused by name, a bad value by its
dataclass), so every ``TaskSpec`` in hand is valid; ``spec.config`` is the typed
parameters. Neither this module nor `headkit.tasks.params` imports torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from headkit.errors import HeadkitError
from headkit.tasks.params import CopyParams, InductionParams, LetterParams, NumberParams, TaskParams, TreeParams

if TYPE_CHECKING:  # headkit.tasks.base imports torch
    from headkit.tasks.base import TaskBatch


@dataclass(frozen=True)
class TaskEntry:
    """One trainable task: its name, parameters dataclass and builder."""

    name: str  # the task's name (TaskSpec.name, TaskBatch.task)
    params: type[TaskParams]  # its parameters, with their defaults and checks
    builder: str  # "module:function" of ``builder(n_prompts, *, seed, **params) -> TaskBatch``

    @property
    def builder_name(self) -> str:
        """The builder's function name (``number_task``), an attribute of `headkit.tasks`."""
        return self.builder.partition(":")[2]

    def load(self) -> Callable[..., "TaskBatch"]:
        """The builder function (imports its module, and torch, on first use)."""
        module, _, function = self.builder.partition(":")
        return getattr(importlib.import_module(module), function)


TASKS: dict[str, TaskEntry] = {
    entry.name: entry
    for entry in (
        TaskEntry("number", NumberParams, "headkit.tasks.number:number_task"),
        TaskEntry("letter", LetterParams, "headkit.tasks.letter:letter_task"),
        TaskEntry("tree", TreeParams, "headkit.tasks.tree:tree_task"),
        TaskEntry("copy", CopyParams, "headkit.tasks.copying:copy_task"),
        TaskEntry("induction", InductionParams, "headkit.tasks.repeated:repeated_tokens_task"),
    )
}


def task_entry(name: str) -> TaskEntry:
    """The entry of task ``name``; an unknown name is refused, listing the known ones."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise HeadkitError(f"unknown task {name!r}: allowed {', '.join(sorted(TASKS))}") from None


@dataclass(frozen=True)
class TaskSpec:
    """A task by name plus the builder parameters that define it (checked on creation).

    Stored in checkpoints and ``run.json`` (``to_dict``: ``{"name", "params"}``, the
    parameters as given) so a trained model can be evaluated later on fresh prompts of
    the same task, at the trained length or longer ones. ``config`` is the typed,
    frozen parameters (every default filled in); ``length``, ``d_vocab`` and
    ``hop_range`` are computed from it without building a prompt.
    """

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    config: TaskParams = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.params, Mapping):
            raise HeadkitError(f"task parameters must be a mapping of names to values, got {type(self.params).__name__}")
        entry = task_entry(self.name)
        object.__setattr__(self, "params", dict(self.params))
        object.__setattr__(self, "config", entry.params.of(self.params, task=self.name))

    @property
    def entry(self) -> TaskEntry:
        return TASKS[self.name]

    def builder(self) -> Callable[..., "TaskBatch"]:
        return self.entry.load()

    def build(self, n_prompts: int, *, seed: int, **overrides: Any) -> "TaskBatch":
        """``n_prompts`` prompts of this task; ``overrides`` replace stored parameters (e.g. length)."""
        return self.builder()(n_prompts, seed=seed, **{**self.params, **overrides})

    def replace(self, **overrides: Any) -> "TaskSpec":
        """This task with some parameters replaced (checked: a bad value is refused by name)."""
        return TaskSpec(self.name, {**self.params, **overrides})

    def resolved(self) -> "TaskSpec":
        """The same task with every parameter written out (defaults filled in; ``None`` stays ``None``).

        A run's ``run.json`` then names the task in full, so changing a default later
        does not change what an old run means. A parameter whose default is ``None``
        (``length``: the trained length; ``balance``: by protocol) is decided per call.
        """
        return TaskSpec(self.name, self.config.to_dict())

    @property
    def length(self) -> int:
        """The length of this task's prompts (``TaskBatch.length`` of any batch it builds)."""
        return self.config.prompt_length()

    @property
    def d_vocab(self) -> int:
        """The size of this task's vocabulary (``len(batch.vocab)``; a model's ``d_vocab``)."""
        return self.config.d_vocab()

    @property
    def hop_range(self) -> tuple[int, int] | None:
        """``(min_hops, max_hops)``, or None for a task without hops."""
        return self.config.hop_range()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TaskSpec":
        return cls(name=data["name"], params=dict(data.get("params", {})))


__all__ = ["TASKS", "TaskEntry", "TaskSpec", "task_entry"]
