"""The parameters of every trainable task: one frozen dataclass per task, checked on creation.

A task's parameters are a `TaskParams` dataclass (`NumberParams`, `LetterParams`,
`TreeParams`, `CopyParams`, `InductionParams`). Creating one checks every field
(`__post_init__`), naming the bad one and its allowed range, so a bad parameter is
refused before any prompt is built; its defaults are the builder's defaults (the
builder's signature is made from the dataclass, `builder_of`). What the rest of
headkit needs to know about a task is a method of its parameters, computed, never
probed by building prompts:

- ``d_vocab()``: the size of the task's vocabulary (a model's ``d_vocab`` must equal it);
- ``prompt_length()``: the length of its prompts, in tokens;
- ``hop_range()``: ``(min_hops, max_hops)``, or None for a task without hops;
- ``accepts(name)``: whether it has a parameter (``length``, ``extend``).

This module imports neither torch nor anything heavy: the command line checks
task parameters with it before loading a model.
"""

from __future__ import annotations

import dataclasses
import inspect
import string
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, TypeVar

from headkit.checks import check_bool, check_int
from headkit.errors import HeadkitError

P = TypeVar("P", bound="TaskParams")
F = TypeVar("F", bound=Callable[..., Any])

# number task letters: "a".."z", "A".."Z", then "aa", "ab", ..., "zz" (never integer-like)
LETTER_NAMES: tuple[str, ...] = tuple(
    list(string.ascii_lowercase + string.ascii_uppercase) + [x + y for x in string.ascii_lowercase for y in string.ascii_lowercase]
)
MAX_LETTERS = len(LETTER_NAMES)  # 728
# letter task symbols and digits
SYMBOL_NAMES: tuple[str, ...] = tuple(string.ascii_lowercase + string.ascii_uppercase)
DIGIT_NAMES: tuple[str, ...] = tuple("123456789")
MAX_SYMBOLS = len(SYMBOL_NAMES)  # 52
MAX_DIGITS = len(DIGIT_NAMES)  # 9
MAX_NODES = 128  # tree task: nothing breaks above; prompts are 4 * n_nodes tokens long

EXTENDS = ("prefix", "window")  # length protocols of the pointer-chain tasks
BALANCES = ("joint", "hops")  # what a pointer-chain batch balances
TREE_GENERATORS = ("brinkmann", "random")


def require(condition: bool, message: str) -> None:
    """Raise HeadkitError(message) unless ``condition``; for parameter checks."""
    if not condition:
        raise HeadkitError(message)


def require_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of ``allowed``; else a HeadkitError naming ``name=value`` and the choices."""
    require(value in allowed, f"{name}={value!r} is not supported: allowed {', '.join(map(repr, allowed))}")
    return value


@dataclass(frozen=True)
class TaskParams:
    """Base of every task's parameters; subclasses add fields and checks."""

    @classmethod
    def of(cls: type[P], values: Mapping[str, Any], *, task: str) -> P:
        """The parameters ``values`` (names -> values, defaults for the rest); an unknown name is refused."""
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise HeadkitError(f"task {task!r} has no parameter {', '.join(unknown)}: allowed {', '.join(allowed)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Every parameter by name (JSON values), in field order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def accepts(cls, name: str) -> bool:
        """Whether the task has a parameter ``name`` (e.g. ``length``: evaluated at other lengths)."""
        return name in {f.name for f in dataclasses.fields(cls)}

    def d_vocab(self) -> int:
        raise NotImplementedError

    def prompt_length(self) -> int:
        raise NotImplementedError

    def hop_range(self) -> tuple[int, int] | None:
        """``(min_hops, max_hops)`` of a task with hops; None for the others."""
        return None


def builder_of(params: type[TaskParams]) -> Callable[[F], F]:
    """Decorator: give a builder ``fn(n_prompts, *, seed, **params)`` the signature that names ``params``'s fields.

    The fields (and their defaults) live in the dataclass only; ``help()`` and
    `inspect.signature` show them as the builder's keyword-only parameters.
    """

    def mark(fn: F) -> F:
        signature = inspect.signature(fn)
        kept = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        named = [
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
            for f in dataclasses.fields(params)
        ]
        fn.__signature__ = signature.replace(parameters=kept + named)  # type: ignore[attr-defined]
        return fn

    return mark


# --------------------------------------------------------------------------- pointer chains


@dataclass(frozen=True)
class ChainParams(TaskParams):
    """Layout, hops and length protocol shared by the number and letter tasks (`headkit.tasks.chains`).

    ``length`` (the total prompt length) with ``extend="prefix"`` (PosSym-2026's
    protocol) puts ``length - (T + P + 1)`` tokens in front of an unchanged prompt;
    ``extend="window"`` (ours) sets ``T = length - P - 1``. ``balance=None``:
    ``"joint"`` (the paper's), or ``"hops"`` when the window protocol enlarges ``T``.
    """

    target_window: int = 8  # T: tokens of the target window
    pointer_window: int = 8  # P: tokens of the pointer window
    min_hops: int = 1
    max_hops: int = 4
    length: int | None = None  # total prompt length; None = T + P + 1
    extend: str = "prefix"  # "prefix" (the paper's) or "window" (ours)
    distractors: str = "paper"  # the paper's; the other choice is the task's own (DISTRACTORS)
    balance: str | None = None  # "joint" (the paper's) or "hops" (ours); None = by protocol
    DISTRACTORS: ClassVar[tuple[str, ...]] = ()  # allowed distractors values

    def __post_init__(self) -> None:
        check_int("pointer_window", self.pointer_window, low=0)
        check_int("min_hops", self.min_hops, low=1)
        check_int("max_hops", self.max_hops, low=self.min_hops)
        require(
            self.max_hops <= self.pointer_window + 1,
            f"max_hops={self.max_hops} is impossible with pointer_window={self.pointer_window}: "
            f"allowed 1..{self.pointer_window + 1} (a chain of h hops needs h-1 landings in the pointer window)",
        )
        self.check_vocab()
        require_choice("extend", self.extend, EXTENDS)
        if self.length is None or self.extend == "window":
            if self.length is None:
                check_int("target_window", self.target_window, low=1)
            else:
                check_int("length", self.length, low=self.pointer_window + 2)  # at least one target token
        else:
            check_int("target_window", self.target_window, low=1)
            check_int("length", self.length, low=self.target_window + self.pointer_window + 1)
        require_choice("distractors", self.distractors, self.DISTRACTORS)
        if self.balance is not None:
            require_choice("balance", self.balance, BALANCES)
            require(
                not (self.balance == "joint" and self.target > self.target_window),
                "balance='joint' cannot be combined with extend='window' and a longer length: use balance='hops' "
                "(or extend='prefix', the paper's protocol)",
            )
        self.check_chains()

    def check_vocab(self) -> None:
        """The task's own vocabulary checks (run after the hop range is checked)."""

    def check_chains(self) -> None:
        """The task's own chain checks (run after the layout is checked)."""

    @property
    def target(self) -> int:
        """``T``: the target window of the prompts built (enlarged by the window protocol)."""
        if self.length is None or self.extend == "prefix":
            return self.target_window
        return self.length - self.pointer_window - 1

    @property
    def added(self) -> int:
        """Tokens put in front of the prompt by the prefix protocol (0 otherwise)."""
        return self.prompt_length() - (self.target + self.pointer_window + 1)

    @property
    def chain_balance(self) -> str:
        """``balance`` resolved: ``"joint"``, or ``"hops"`` when the window protocol enlarged ``T``.

        Joint balance over an enlarged window would need a ``(hops, L, T)`` count table
        (gigabytes at ``L`` ~ 1,000), and the window protocol is headkit's own anyway.
        """
        if self.balance is not None:
            return self.balance
        return "hops" if self.target > self.target_window else "joint"

    def prompt_length(self) -> int:
        return self.length if self.length is not None else self.target_window + self.pointer_window + 1

    def hop_range(self) -> tuple[int, int]:
        return self.min_hops, self.max_hops


@dataclass(frozen=True)
class NumberParams(ChainParams):
    """The number task (SPEC 2.1): ``n_letters`` letters, jumps ``1..max_pointer``."""

    n_letters: int = 120  # letter tokens (ids 0..n_letters-1)
    max_pointer: int = 16  # largest jump (integer token); 16 never binds at 17 tokens
    DISTRACTORS: ClassVar[tuple[str, ...]] = ("paper", "uniform")  # uniform (ours): any jump 1..max_pointer

    def check_vocab(self) -> None:
        check_int("n_letters", self.n_letters, low=2, high=MAX_LETTERS)
        check_int("max_pointer", self.max_pointer, low=1)

    def check_chains(self) -> None:
        # h jumps of 1..max_pointer cover the P + 1 steps from the query past the pointer
        # window (h - 1 landings in it, h <= P + 1 checked above) iff h * max_pointer >= P + 1
        for h in range(self.min_hops, self.max_hops + 1):
            require(
                h * self.max_pointer >= self.pointer_window + 1,
                f"hops={h} is impossible with max_pointer={self.max_pointer}, pointer_window={self.pointer_window}, "
                f"target_window={self.target}: no chain of {h} jumps of 1..{self.max_pointer} ends in the target "
                f"window; raise max_pointer or change the hop range min_hops..max_hops",
            )

    def d_vocab(self) -> int:
        return self.n_letters + self.max_pointer


@dataclass(frozen=True)
class LetterParams(ChainParams):
    """The letter task (SPEC 2.2): ``n_symbols`` symbols, ``n_digits`` digits (the paper's: 8 and 8)."""

    n_symbols: int = 8  # symbols a.. (first and second halves of every token)
    n_digits: int = 8  # digits 1.. of the target tokens
    DISTRACTORS: ClassVar[tuple[str, ...]] = ("paper", "distinct")  # distinct (ours): any other second symbol

    def check_vocab(self) -> None:
        check_int("n_digits", self.n_digits, low=2, high=MAX_DIGITS)  # the twin needs a second digit
        check_int("n_symbols", self.n_symbols, low=2, high=MAX_SYMBOLS)
        require(
            self.n_symbols >= self.max_hops + 2,
            f"n_symbols={self.n_symbols} is too few for max_hops={self.max_hops}: allowed "
            f"{self.max_hops + 2}..{MAX_SYMBOLS} (the {self.max_hops} looked-up symbols must be unique first "
            f"symbols, and the query and distractors need at least 2 other symbols)",
        )

    def d_vocab(self) -> int:
        return self.n_symbols * self.n_digits + self.n_symbols**2  # (symbol, digit) then (symbol, symbol)


# --------------------------------------------------------------------------- other tasks


@dataclass(frozen=True)
class TreeParams(TaskParams):
    """Tree path-finding (SPEC 2.4): ``n_nodes`` nodes, Brinkmann et al.'s generator or ours."""

    n_nodes: int = 16  # the paper's
    generator: str = "brinkmann"  # "brinkmann" (the paper's) or "random" (ours)

    def __post_init__(self) -> None:
        check_int("n_nodes", self.n_nodes, low=3, high=MAX_NODES)
        require_choice("generator", self.generator, TREE_GENERATORS)

    def d_vocab(self) -> int:
        return 2 * self.n_nodes + 4  # labels, >labels, "," ":" "|" "PAD"

    def prompt_length(self) -> int:
        # 3 tokens per edge, "|", goal, ":", root, then the longest path (n-1 steps; n-2 for "random")
        return 4 * self.n_nodes - (self.generator == "random")


@dataclass(frozen=True)
class CopyParams(TaskParams):
    """The shift-by-one copy task (SPEC 2.5)."""

    length: int = 32  # tokens per prompt
    vocab_size: int = 16  # symbols t0..t{V-1}

    def __post_init__(self) -> None:
        check_int("length", self.length, low=2)
        check_int("vocab_size", self.vocab_size, low=2)  # the twin needs a second symbol

    def d_vocab(self) -> int:
        return self.vocab_size

    def prompt_length(self) -> int:
        return self.length


@dataclass(frozen=True)
class InductionParams(TaskParams):
    """Repeated random tokens (SPEC 2.6): ``[BOS, r_1..r_L, r_1..r_L]``."""

    half_length: int = 20  # L
    vocab_size: int = 50  # symbols t0..t{V-1} (BOS comes on top)
    bos: bool = True  # start every prompt with BOS

    def __post_init__(self) -> None:
        check_int("half_length", self.half_length, low=2)  # the answer position is the second r_{L-1}
        check_int("vocab_size", self.vocab_size, low=self.half_length + 1)  # L distinct tokens + the twin's r'
        check_bool("bos", self.bos)

    def d_vocab(self) -> int:
        return self.vocab_size + 1  # BOS, then t0..t{V-1}

    def prompt_length(self) -> int:
        return 2 * self.half_length + int(self.bos)
