"""IOI-style prompts for pretrained models (SPEC 2.7; Wang et al. 2022).

Indirect-object identification: "When Mary and John went to the store, John gave a
drink to" -> " Mary". The name said once is the indirect object (IO), the name said
twice the subject (S1, S2); the model should predict the IO at the last position.
A template is a string with one ``{IO}`` and two ``{S}`` placeholders; the default
templates come in the two orders of Wang et al.: ABBA (``When {IO} and {S} ...``)
and BABA (``When {S} and {IO} ...``).

Prompts are built with any Hugging Face tokenizer. Every name, as used (with its
leading space, e.g. " Mary"), must be a single token, and every prompt of a batch
must have the same number of tokens; both are checked before building, and the
errors name the offending name or templates. Each prompt is tokenised as a whole
text and the name tokens are then located in it (the check that no name merged
with its neighbours).

Per prompt: a uniform template, and IO, S (and C) three distinct uniform names.
``answers`` = the IO token, ``wrong_answers`` = the S token (so the logit
difference IO - S works out of the box), ``answer_pos`` = the last position, the
only scored target.

Corruptions (``corruption=``), the ``corrupted`` twin:

- ``"abc"`` (SPEC, Wang et al.'s ABC distribution, here only S2 changes): S2 is
  replaced by a third name C: "When Mary and John went to the store, Sarah gave a
  drink to". The twin has no defined answer; it keeps the clean prompt's
  ``answers`` (IO) and ``wrong_answers`` (S), so patching metrics compare the same
  two tokens on both runs. This twin's answer does NOT differ from the clean one.
- ``"swap"``: IO and S trade places: "When John and Mary went to the store, Mary
  gave a drink to" -> " John". The twin's answer is the clean S and its
  ``wrong_answers`` the clean IO.

Positions: ``"IO"``, ``"S1"``, ``"S2"``, ``"end"`` [batch] (token slots of the
template; the twin uses the same slots).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from headkit.checks import check_bool, check_int
from headkit.errors import HeadkitError
from headkit.tasks.base import IGNORE, TaskBatch, decode_ids, make_generator
from headkit.tasks.params import require

NAMES: tuple[str, ...] = (
    "Mary", "John", "Tom", "James", "David", "Michael", "Robert", "Daniel", "Paul", "Mark",
    "Sarah", "Lisa", "Kate", "Emma", "Jack", "Peter", "Chris", "Steve", "Mike", "Alex",
    "Anna", "Laura", "Rachel", "Kevin", "Brian", "Eric", "Jason", "Ryan", "Adam", "Sam",
)  # fmt: skip

_ABBA: tuple[str, ...] = (
    "When {IO} and {S} went to the store, {S} gave a drink to",
    "When {IO} and {S} went to the park, {S} gave a ball to",
    "When {IO} and {S} went to the office, {S} gave a book to",
    "When {IO} and {S} went to the school, {S} gave a pen to",
)
# BABA: the same sentences with the first two names in the other order
TEMPLATES: tuple[str, ...] = _ABBA + tuple(
    t.replace("{IO} and {S}", "{S} and {IO}", 1) for t in _ABBA
)


@dataclass(frozen=True)
class TokenizerVocab:
    """`Vocab`'s interface over a Hugging Face tokenizer: one id <-> one string."""

    tokenizer: PreTrainedTokenizerBase

    def __len__(self) -> int:
        return len(self.tokenizer)

    def id(self, token: str) -> int:
        ids = self.tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            pieces = self.tokenizer.convert_ids_to_tokens(ids)
            raise HeadkitError(f"{token!r} is not a single token: it tokenises to {pieces}")
        return ids[0]

    def encode(self, strings: Iterable[str]) -> list[int]:
        """Token strings -> ids; a string that is not exactly one token is an error naming it."""
        return [self.id(s) for s in strings]

    def decode(self, ids: Iterable[int] | Tensor) -> list[str]:
        """Token ids -> their text, one string per id (e.g. `` Mary``)."""
        # transformers 5 types decode's result str | list[str]; one id list gives a str
        return decode_ids(ids, size=len(self.tokenizer), string_of=lambda i: self.tokenizer.decode([i]))  # pyright: ignore[reportArgumentType]


def _fill(template: str, io: str, s1: str, s2: str) -> str:
    """The template with ``{IO}`` and the first/second ``{S}`` replaced."""
    first, rest = template.split("{S}", 1)
    return first.replace("{IO}", io) + s1 + rest.replace("{IO}", io).replace("{S}", s2)


def _check_template(i: int, template: Any) -> None:
    if not isinstance(template, str):
        raise HeadkitError(f"templates[{i}] must be a string, got {template!r}")
    require(
        template.count("{IO}") == 1 and template.count("{S}") == 2,
        f"templates[{i}] {template!r} must contain {{IO}} once and {{S}} twice",
    )
    leftover = template.replace("{IO}", "").replace("{S}", "")
    require(
        "{" not in leftover and "}" not in leftover,
        f"templates[{i}] {template!r} has a placeholder other than {{IO}} and {{S}}",
    )
    for slot in ("{IO}", "{S}"):
        at = template.find(slot)
        while at != -1:
            require(
                at > 0 and template[at - 1] == " ",
                f"templates[{i}] {template!r}: every name must follow a space (names are used with "
                f"their leading space, e.g. ' Mary')",
            )
            at = template.find(slot, at + 1)


def _name_ids(tokenizer: PreTrainedTokenizerBase, names: Sequence[str]) -> list[int]:
    ids = []
    for name in names:
        toks = tokenizer.encode(" " + name, add_special_tokens=False)
        if len(toks) != 1:
            pieces = tokenizer.convert_ids_to_tokens(toks)
            raise HeadkitError(
                f"name {name!r} is not a single token with its leading space: {' ' + name!r} "
                f"tokenises to {len(toks)} tokens {pieces}; remove it from names"
            )
        if toks[0] == tokenizer.unk_token_id and " " + name != tokenizer.unk_token:
            raise HeadkitError(
                f"name {name!r} is unknown to the tokenizer ({' ' + name!r} becomes its unknown token "
                f"{tokenizer.unk_token!r}); remove it from names"
            )
        ids.append(toks[0])
    return ids


# A corruption maps the clean (IO, S, C) name indices to the twin's names in the
# (IO, S1, S2) slots, and the twin's (answer, wrong answer) names.
Trio = tuple[int, int, int]


def _abc(io: int, s: int, c: int) -> tuple[Trio, tuple[int, int]]:
    """S2 becomes the third name C; answer and wrong answer stay the clean IO and S."""
    return (io, s, c), (io, s)


def _swap(io: int, s: int, c: int) -> tuple[Trio, tuple[int, int]]:
    """IO and S trade places: the twin's answer is the clean S."""
    return (s, io, io), (s, io)


CORRUPTIONS: dict[str, Callable[[int, int, int], tuple[Trio, tuple[int, int]]]] = {
    "abc": _abc,
    "swap": _swap,
}


def _check_inputs(
    n_prompts: int, *, tokenizer: Any, names: Sequence[str] | None, templates: Sequence[str] | None, corruption: str,
    prepend_bos: bool,
) -> tuple[tuple[str, ...], tuple[str, ...], list[int], list[int]]:
    """Step 1 of `ioi_task`: every input checked before any work.

    Returns ``(names, templates, name ids, BOS prefix ids)``.
    """
    check_int("n_prompts", n_prompts, low=1)
    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        raise HeadkitError(f"tokenizer must be a Hugging Face tokenizer, got {type(tokenizer).__name__}")
    if corruption not in CORRUPTIONS:
        raise HeadkitError(f"corruption={corruption!r} is unknown: allowed {', '.join(CORRUPTIONS)}")
    check_bool("prepend_bos", prepend_bos)
    for label, given in (("names", names), ("templates", templates)):
        if isinstance(given, str):
            raise HeadkitError(f"{label} must be a list of strings, got the single string {given!r}")
    names = tuple(NAMES if names is None else names)
    templates = tuple(TEMPLATES if templates is None else templates)
    for i, name in enumerate(names):
        require(
            isinstance(name, str) and name != "" and name.strip() == name,
            f"names[{i}]={name!r} must be a non-empty string without surrounding spaces",
        )
    require(len(set(names)) == len(names), f"names has duplicates: {sorted(names)}")
    require(len(names) >= 3, f"names has {len(names)} names: allowed 3 or more (IO, S and the third name C)")
    require(len(templates) >= 1, "templates is empty: give at least one template")
    for i, template in enumerate(templates):
        _check_template(i, template)
    if prepend_bos and tokenizer.bos_token_id is None:
        raise HeadkitError("prepend_bos=True but the tokenizer has no BOS token: pass prepend_bos=False")
    name_ids = _name_ids(tokenizer, names)
    lengths: dict[int, list[int]] = {}
    for i, template in enumerate(templates):
        probe = _fill(template, names[0], names[1], names[1])
        lengths.setdefault(len(tokenizer.encode(probe, add_special_tokens=False)), []).append(i)
    if len(lengths) > 1:
        groups = "; ".join(f"{k} tokens: templates {v}" for k, v in sorted(lengths.items()))
        raise HeadkitError(
            f"templates tokenise to different lengths ({groups}): all prompts of a batch must have "
            f"the same length, so pass templates of one length group"
        )
    # transformers 5 types special-token ids loosely (int | list | str | None)
    return names, templates, name_ids, [tokenizer.bos_token_id] if prepend_bos else []  # pyright: ignore[reportReturnType]


def _name_slots(
    clean: list[list[int]], twin: list[list[int]], *, trio: list[list[int]], twin_slots: list[Trio],
    name_ids: list[int], what: tuple[list[str], list[int]],
) -> Tensor:
    """Step 3 of `ioi_task`: the [batch, 3] positions of IO, S1, S2 in the tokenised prompts.

    Every prompt must have one width, IO once, S twice, and the twin its names in the
    same slots; else an error names the prompt (``what``: its text and template).
    """
    width, (clean_text, which) = len(clean[0]), what
    slots = torch.zeros(len(clean), 3, dtype=torch.long)  # IO, S1, S2
    for i, (a, b, _) in enumerate(trio):
        io_at = [k for k, x in enumerate(clean[i]) if x == name_ids[a]]
        s_at = [k for k, x in enumerate(clean[i]) if x == name_ids[b]]
        ok = len(clean[i]) == width and len(twin[i]) == width and len(io_at) == 1 and len(s_at) == 2
        if ok:
            slots[i] = torch.tensor([io_at[0], s_at[0], s_at[1]])
            ok = [twin[i][k] for k in slots[i].tolist()] == [name_ids[k] for k in twin_slots[i]]
        if not ok:
            raise HeadkitError(
                f"prompt {i} ({clean_text[i]!r}, template {which[i]}) did not tokenise as expected: "
                f"{len(clean[i])} tokens (others {width}), IO found {len(io_at)}x, S found {len(s_at)}x; "
                f"a name merges with its neighbours, or the template itself contains a name"
            )
    return slots


def ioi_task(  # long: steps 2-4 share the names and templates drawn, in the generator's order
    n_prompts: int,
    *,
    seed: int,
    tokenizer: PreTrainedTokenizerBase,
    names: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    corruption: str = "abc",
    prepend_bos: bool = True,
) -> TaskBatch:
    """``n_prompts`` IOI prompts tokenised with ``tokenizer``, plus the ``corruption`` twin.

    ``names`` defaults to `NAMES` (30 common first names), ``templates`` to
    `TEMPLATES` (4 ABBA + 4 BABA). ``prepend_bos`` puts the tokenizer's BOS token first.
    """
    # 1. check every input before any work
    names, templates, name_ids, prefix = _check_inputs(
        n_prompts, tokenizer=tokenizer, names=names, templates=templates, corruption=corruption, prepend_bos=prepend_bos
    )
    n = n_prompts

    # 2. sample a template and three distinct names per prompt
    gen = make_generator(seed)
    which = torch.randint(0, len(templates), (n,), generator=gen).tolist()
    trio = torch.rand(n, len(names), generator=gen).argsort(dim=1)[:, :3].tolist()  # IO, S, C
    corrupt = CORRUPTIONS[corruption]
    twin_slots = [corrupt(*abc)[0] for abc in trio]
    # names follow a space in the template, so each is used as " Name"
    clean_text = [_fill(templates[t], names[a], names[b], names[b]) for t, (a, b, _) in zip(which, trio)]
    twin_text = [_fill(templates[t], *(names[k] for k in ts)) for t, ts in zip(which, twin_slots)]

    # 3. tokenise whole texts and locate the name slots
    clean = [prefix + ids for ids in tokenizer(clean_text, add_special_tokens=False)["input_ids"]]
    twin = [prefix + ids for ids in tokenizer(twin_text, add_special_tokens=False)["input_ids"]]
    width = len(clean[0])
    slots = _name_slots(clean, twin, trio=trio, twin_slots=twin_slots, name_ids=name_ids, what=(clean_text, which))
    tokens = torch.tensor(clean)  # [batch, pos]
    twin_tokens = torch.tensor(twin)  # [batch, pos]

    ids = torch.tensor(name_ids)
    io_ids, s_ids = ids[[a for a, _, _ in trio]], ids[[b for _, b, _ in trio]]
    twin_pairs = torch.tensor([corrupt(*abc)[1] for abc in trio])  # [batch, 2] name indices
    twin_answers, twin_wrong = ids[twin_pairs[:, 0]], ids[twin_pairs[:, 1]]
    vocab = TokenizerVocab(tokenizer)
    params = dict(
        tokenizer=getattr(tokenizer, "name_or_path", type(tokenizer).__name__),
        names=list(names),
        templates=list(templates),
        corruption=corruption,
        prepend_bos=prepend_bos,
    )

    def build(toks: Tensor, answers: Tensor, wrong: Tensor) -> TaskBatch:
        targets = torch.full_like(toks, IGNORE)
        targets[:, -1] = answers
        return TaskBatch(
            task="ioi",
            tokens=toks,
            targets=targets,
            answers=answers.clone(),
            answer_pos=torch.full((n,), width - 1, dtype=torch.long),
            vocab=vocab,  # type: ignore[arg-type]  # Vocab's interface, over the tokenizer
            wrong_answers=wrong.clone(),
            positions={
                "IO": slots[:, 0].clone(),
                "S1": slots[:, 1].clone(),
                "S2": slots[:, 2].clone(),
                "end": torch.full((n,), width - 1, dtype=torch.long),
            },
            params=params,
        )

    corrupted = build(twin_tokens, twin_answers, twin_wrong)
    return dataclasses.replace(build(tokens, io_ids, s_ids), corrupted=corrupted)
