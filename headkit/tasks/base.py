"""What every task builder returns: a frozen `TaskBatch` with its `Vocab`.

Conventions shared by all tasks (read these before writing a builder or a loss):

- ``tokens`` [batch, pos] are token ids of the task's vocabulary.
- ``targets`` [batch, pos] hold, at each position whose logits are scored, the
  token id the model must predict there, and ``IGNORE`` (-100) elsewhere; the
  training loss is cross-entropy over the non-ignored entries. For the number
  and letter tasks only the last (query) position is scored.
- ``answer_pos`` [batch] is the one position per prompt whose prediction is the
  task's answer, and ``answers`` [batch] the token id expected there, so
  ``logits[arange(batch), answer_pos].argmax(-1) == answers`` is exact-match
  accuracy. ``wrong_answers`` [batch] (optional) is the distractor answer that a
  logit difference compares against (IOI's subject, the corrupted twin's answer).
- ``hops`` [batch] where the task has hops; ``positions`` maps names to
  [batch] or [batch, k] index tensors (-1 = unused slot).
- ``corrupted`` is a twin batch of the same shape whose answers differ, for
  activation and path patching; its own ``corrupted`` is None.
- ``vocab.decode(ids)`` / ``vocab.encode(strings)`` map ids to readable strings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from headkit.checks import check_int, check_seed
from headkit.errors import HeadkitError
from headkit.memory import check_memory

IGNORE = -100  # target value of positions that are not scored


def decode_ids(ids: Iterable[int] | Tensor, *, size: int, string_of: Callable[[int], str]) -> list[str]:
    """Token ids (a list or a 1-D tensor) -> ``string_of(id)``; an id outside ``0..size-1`` is an error."""
    if isinstance(ids, Tensor):
        ids = ids.reshape(-1).tolist()
    out = []
    for i in ids:
        if not 0 <= int(i) < size:
            raise HeadkitError(f"token id {i} is out of range: allowed 0..{size - 1}")
        out.append(string_of(int(i)))
    return out


@dataclass(frozen=True)
class Vocab:
    """A synthetic vocabulary: token id ``i`` is the string ``tokens[i]``."""

    tokens: tuple[str, ...]
    _index: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[str, int] = {}
        for i, tok in enumerate(self.tokens):
            if tok in index:
                raise HeadkitError(f"vocabulary has token {tok!r} twice (ids {index[tok]} and {i})")
            index[tok] = i
        object.__setattr__(self, "_index", index)

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: str) -> bool:
        return token in self._index

    def id(self, token: str) -> int:
        """The id of one token string."""
        try:
            return self._index[token]
        except KeyError:
            raise HeadkitError(f"token {token!r} is not in this vocabulary") from None

    def encode(self, strings: Iterable[str]) -> list[int]:
        """Token strings -> ids; an unknown string is an error naming it."""
        return [self.id(s) for s in strings]

    def decode(self, ids: Iterable[int] | Tensor) -> list[str]:
        """Token ids (a list or a 1-D tensor) -> their strings."""
        return decode_ids(ids, size=len(self.tokens), string_of=self.tokens.__getitem__)

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": list(self.tokens)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Vocab":
        return cls(tuple(data["tokens"]))


@dataclass(frozen=True)
class TaskBatch:
    """A batch of prompts of one task; see the module docstring for the fields."""

    task: str
    tokens: Int[Tensor, "batch pos"]
    targets: Int[Tensor, "batch pos"]
    answers: Int[Tensor, " batch"]
    answer_pos: Int[Tensor, " batch"]
    vocab: Vocab
    hops: Int[Tensor, " batch"] | None = None
    wrong_answers: Int[Tensor, " batch"] | None = None
    positions: Mapping[str, Tensor] = field(default_factory=dict)
    corrupted: "TaskBatch | None" = None
    params: Mapping[str, Any] = field(default_factory=dict)  # builder arguments, for the record

    def __post_init__(self) -> None:
        if not isinstance(self.tokens, Tensor) or self.tokens.ndim != 2:
            shape = tuple(self.tokens.shape) if isinstance(self.tokens, Tensor) else type(self.tokens).__name__
            raise HeadkitError(f"tokens must be a [batch, pos] tensor, got {shape}")
        b, p = self.tokens.shape
        if self.targets.shape != (b, p):
            raise HeadkitError(f"targets shape {tuple(self.targets.shape)} != tokens shape {(b, p)}")
        for name in ("answers", "answer_pos", "hops", "wrong_answers"):
            t = getattr(self, name)
            if t is not None and t.shape != (b,):
                raise HeadkitError(f"{name} shape {tuple(t.shape)} != ({b},)")
        if self.corrupted is not None and self.corrupted.tokens.shape != self.tokens.shape:
            raise HeadkitError(
                f"corrupted tokens shape {tuple(self.corrupted.tokens.shape)} != {(b, p)}"
            )

    @property
    def n(self) -> int:
        return self.tokens.shape[0]

    @property
    def length(self) -> int:
        return self.tokens.shape[1]

    def __len__(self) -> int:
        return self.n

    def decode(self, i: int) -> list[str]:
        """Prompt ``i`` as readable strings."""
        return self.vocab.decode(self.tokens[i])

    def _map(self, fn: Callable[[Tensor], Tensor]) -> "TaskBatch":
        """The same batch with ``fn`` applied to every tensor (positions and twin included)."""

        def apply(x: Any) -> Any:
            return fn(x) if isinstance(x, Tensor) else x

        tensors = ("tokens", "targets", "answers", "answer_pos", "hops", "wrong_answers")
        return dataclasses.replace(
            self,
            **{name: apply(getattr(self, name)) for name in tensors},
            positions={k: apply(v) for k, v in self.positions.items()},
            corrupted=None if self.corrupted is None else self.corrupted._map(fn),
        )

    def to(self, device: str | torch.device | None) -> "TaskBatch":
        """The same batch with every tensor on ``device`` (None: where they are, as ``Tensor.to``)."""
        return self._map(lambda x: x.to(device))

    def select(self, index: Tensor | Sequence[int]) -> "TaskBatch":
        """The sub-batch of prompts ``index`` (a bool mask or ids), twin included."""
        idx = torch.as_tensor(index)
        if idx.dtype == torch.bool:
            if idx.shape != (self.n,):
                raise HeadkitError(f"a mask selecting prompts must have shape ({self.n},), got {tuple(idx.shape)}")
            idx = idx.nonzero().squeeze(-1)
        elif idx.numel() == 0:  # torch.as_tensor([]) is a float tensor
            idx = idx.long()
        if idx.is_floating_point() or idx.ndim > 1:
            raise HeadkitError(f"prompts are selected by integer ids or a bool mask, got {idx.dtype} {tuple(idx.shape)}")
        if idx.numel() and not (-self.n <= int(idx.min()) and int(idx.max()) < self.n):
            raise HeadkitError(f"prompt ids {idx.tolist()} are out of range: this batch has prompts 0..{self.n - 1}")
        return self._map(lambda x: x[idx])


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``: builders never touch the global RNG."""
    gen = torch.Generator()
    gen.manual_seed(check_seed(seed))
    return gen


# the one integer check (headkit.checks), under the name builders used first
require_int = check_int


# int64 tensors of one prompt position a chain builder holds at its peak (tokens, targets
# and their twins, the random draws, the prefix, concatenation copies)
TENSORS_PER_POSITION = 12


def check_prompt_memory(n: int, length: int, *, task: str, extra: int = 0) -> None:
    """Refuse ``n`` prompts of ``length`` tokens whose tensors cannot fit (``extra`` bytes more)."""
    check_memory(
        n * length * 8 * TENSORS_PER_POSITION + extra,
        what=f"{n} {task} prompts of length {length}",
        advice="ask for fewer or shorter prompts",
    )
