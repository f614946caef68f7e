"""Natural-language prompt suites for pretrained models, built with any HF tokenizer.

Every suite is ``suite(n_prompts, *, seed, tokenizer, ...) -> TaskBatch`` with a
``corrupted`` twin of the same shape, seeded with its own generator, and checks
before any work that every word it uses (with its leading space, e.g. " c") is a
single token of the tokenizer, naming the offending word otherwise. Each prompt
is tokenised as a whole text and the word slots are checked again in it (a word
that merges with its neighbours is an error). The answer is predicted at the
last position, the only scored target.

- ``"ioi"``: `headkit.tasks.ioi.ioi_task` (Wang et al. 2022; SPEC 2.7), as is.
- ``"number"``: the PosSym-2026 number task with one hop, in text. PosSym-2026
  (Table 3) asks frontier models the one-hop number and letter tasks at lengths
  32 and 100 and reports the number task below 0.5 at 32 and the letter task
  above 0.88 at 32 and 0.65 at 100. The exact wording of its prompts is not in
  the paper text available to us, so the frame is ours: an instruction sentence,
  then ``length - 1`` letters and one integer ``j``, "the letter ``j`` places
  before the number": ``... : a z b y c x d w 5`` -> `` y`` (the example of
  SPEC 2.1). Twin (ours): the same letters with another ``j`` whose letter differs.
- ``"letter"``: the letter task with one hop, in text (frame ours as above):
  ``(length - 1) // 2`` pairs ``symbol digit`` with distinct symbols, then one
  symbol; the answer is that symbol's digit: ``... : a 4 b 3 c 2 d 1 c`` -> `` 2``
  (SPEC 2.2's ``a4 b3 c2 d1 fc`` -> ``c2``, written as words; the query's unused
  first symbol is dropped). Twin (as the synthetic letter task): the answer pair's
  digit changed, so the answer differs.
- ``"induction"``: repeated random tokens ``[BOS, r_1..r_L, r_1..r_L]`` (SPEC 2.6)
  drawn from the tokenizer's ordinary tokens (no special tokens); answers are the
  last token's successor in the first half; twin: the second half's last token
  replaced by one that does not occur in the prompt (no induction possible).
- ``"duplicate"`` (ours): a sentence frame and ``length`` common words drawn with
  replacement, whose last word repeats an earlier one; the answer is the word that
  followed that earlier occurrence (previous-token, duplicate-token and induction
  heads all have a target). Positions ``"previous"`` [batch] (the position before
  the last) and ``"duplicate"`` [batch] (the earlier occurrence). Twin: the last
  word replaced by a word absent from the prompt, answers kept (as IOI's ABC twin).

`SUITES` maps these names to builders.
"""

from __future__ import annotations

import dataclasses
import string
from typing import Callable, Sequence

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from headkit.checks import check_bool, check_int
from headkit.errors import HeadkitError
from headkit.tasks.base import IGNORE, TaskBatch, make_generator
from headkit.tasks.ioi import NAMES, TEMPLATES, TokenizerVocab, ioi_task
from headkit.tasks.params import require

LETTERS: tuple[str, ...] = tuple(string.ascii_lowercase)
SYMBOLS: tuple[str, ...] = tuple(string.ascii_lowercase + string.ascii_uppercase)
DIGITS: tuple[str, ...] = tuple(str(d) for d in range(1, 10))
WORDS: tuple[str, ...] = (
    "the", "cat", "dog", "house", "tree", "car", "book", "sun", "water", "road",
    "city", "king", "door", "river", "table", "bird", "light", "stone", "field", "hand",
    "school", "fire", "ship", "night", "game", "horse", "money", "paper", "music", "glass",
)  # fmt: skip
NUMBER_FRAME = "Each number points back to the letter that many places before it:"
LETTER_FRAME = "Each letter is followed by its digit, and the last letter asks for its digit:"
DUPLICATE_FRAME = "Here is a list of words:"


def _check_tokenizer(tokenizer: object) -> PreTrainedTokenizerBase:
    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        raise HeadkitError(f"tokenizer must be a Hugging Face tokenizer, got {type(tokenizer).__name__}")
    return tokenizer


def word_ids(tokenizer: PreTrainedTokenizerBase, words: Sequence[str], *, what: str) -> list[int]:
    """The token id of each word used with its leading space; one that is not one token is named."""
    vocab = TokenizerVocab(tokenizer)
    ids = []
    for word in words:
        try:
            ids.append(vocab.id(" " + word))
        except HeadkitError as error:
            raise HeadkitError(f"{what} {word!r}: {error}; remove it from {what}s") from None
        if ids[-1] == tokenizer.unk_token_id and word != tokenizer.unk_token:
            raise HeadkitError(f"{what} {word!r} is unknown to the tokenizer (it becomes the unknown token)")
    require(len(set(ids)) == len(ids), f"{what}s {list(words)} map two words to one token")
    return ids


def _bos(tokenizer: PreTrainedTokenizerBase, prepend_bos: bool) -> list[int]:
    check_bool("prepend_bos", prepend_bos)
    if prepend_bos and tokenizer.bos_token_id is None:
        raise HeadkitError("prepend_bos=True but the tokenizer has no BOS token: pass prepend_bos=False")
    # checked above; transformers 5 types special-token ids loosely (int | list | str | None)
    return [tokenizer.bos_token_id] if prepend_bos else []  # pyright: ignore[reportReturnType]


def _encode_lists(
    tokenizer: PreTrainedTokenizerBase, frame: str, words: list[list[str]], expected: list[list[int]], prefix: list[int]
) -> tuple[Tensor, int]:
    """Tokenise ``frame + " w1 w2 ..."`` per prompt; check the list tokens are ``expected``. Returns (tokens, start)."""
    frame_ids = tokenizer.encode(frame, add_special_tokens=False) if frame else []
    texts = [frame + "".join(" " + w for w in ws) for ws in words]
    rows = [prefix + ids for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    start = len(prefix) + len(frame_ids)
    for i, (row, want) in enumerate(zip(rows, expected)):
        if row[start:] != want or row[:start] != prefix + frame_ids:
            raise HeadkitError(
                f"prompt {i} ({texts[i][-80:]!r}) did not tokenise word by word: a word merges with its "
                "neighbours or with the frame; change the frame or the words"
            )
    return torch.tensor(rows), start


def _start(n_prompts: int, tokenizer: object, prepend_bos: bool) -> tuple[PreTrainedTokenizerBase, list[int]]:
    """The checks every suite starts with (``n_prompts``, the tokenizer, BOS); returns (tokenizer, BOS prefix ids)."""
    check_int("n_prompts", n_prompts, low=1)
    tokenizer = _check_tokenizer(tokenizer)
    return tokenizer, _bos(tokenizer, prepend_bos)


def _batch(
    task: str, tokens: Tensor, answers: Tensor, wrong: Tensor | None, vocab: TokenizerVocab,
    positions: dict[str, Tensor], params: dict, *, one_hop: bool = False, corrupted: TaskBatch | None = None,
) -> TaskBatch:
    """A suite's batch, scored at the last position; ``one_hop``: ``hops`` all 1 (number, letter)."""
    n, width = tokens.shape
    targets = torch.full_like(tokens, IGNORE)
    targets[:, -1] = answers
    return TaskBatch(
        task=task, tokens=tokens, targets=targets, answers=answers.clone(),
        answer_pos=torch.full((n,), width - 1, dtype=torch.long), vocab=vocab,  # type: ignore[arg-type]
        wrong_answers=None if wrong is None else wrong.clone(), positions=positions, params=params,
        hops=torch.ones(n, dtype=torch.long) if one_hop else None, corrupted=corrupted,
    )  # fmt: skip


def _params(tokenizer: PreTrainedTokenizerBase, **kwargs) -> dict:
    return dict(tokenizer=getattr(tokenizer, "name_or_path", type(tokenizer).__name__), **kwargs)


def number_natural_task(
    n_prompts: int, *, seed: int, tokenizer: PreTrainedTokenizerBase, length: int = 32, max_pointer: int = 16,
    letters: Sequence[str] = LETTERS, frame: str = NUMBER_FRAME, prepend_bos: bool = True,
) -> TaskBatch:
    """One-hop number task in text: ``length - 1`` letters then ``j``; answer the letter ``j`` places back."""
    tokenizer, prefix = _start(n_prompts, tokenizer, prepend_bos)
    n = n_prompts
    check_int("length", length, low=3)
    check_int("max_pointer", max_pointer, low=2)
    letters = tuple(letters)
    require(len(set(letters)) >= 2, f"letters {list(letters)} must hold at least two distinct letters")
    top = min(max_pointer, length - 1)
    letter_ids = word_ids(tokenizer, letters, what="letter")
    number_ids = word_ids(tokenizer, [str(j) for j in range(1, top + 1)], what="number")

    gen = make_generator(seed)
    T = length - 1
    pick = torch.randint(0, len(letters), (n, T), generator=gen)  # [batch, T] letter indices
    jump = torch.randint(1, top + 1, (n,), generator=gen)
    answer_idx = pick[torch.arange(n), T - jump]
    # twin: another jump whose letter differs (a uniform one among those)
    steps = torch.arange(1, top + 1)
    other = (pick[:, T - steps] != answer_idx[:, None]) & (steps[None, :] != jump[:, None])  # [batch, top]
    for i in torch.nonzero(~other.any(1)).flatten().tolist():  # every letter in reach is the answer's
        j2 = 1 if int(jump[i]) != 1 else 2
        pick[i, T - j2] = (answer_idx[i] + 1) % len(letters)
        other[i, j2 - 1] = True
    twin_jump = 1 + (torch.rand(n, top, generator=gen) * other).argmax(1)
    twin_answer_idx = pick[torch.arange(n), T - twin_jump]

    words = [[letters[k] for k in row] for row in pick.tolist()]
    lids = torch.tensor(letter_ids)
    clean, start = _encode_lists(
        tokenizer, frame, [w + [str(j)] for w, j in zip(words, jump.tolist())],
        [lids[row].tolist() + [number_ids[j - 1]] for row, j in zip(pick, jump.tolist())], prefix,
    )
    twin, _ = _encode_lists(
        tokenizer, frame, [w + [str(j)] for w, j in zip(words, twin_jump.tolist())],
        [lids[row].tolist() + [number_ids[j - 1]] for row, j in zip(pick, twin_jump.tolist())], prefix,
    )
    vocab = TokenizerVocab(tokenizer)
    params = _params(tokenizer, length=length, max_pointer=max_pointer, letters=list(letters), frame=frame,
                     prepend_bos=prepend_bos)  # fmt: skip
    answers, twin_answers = lids[answer_idx], lids[twin_answer_idx]

    def positions(j: Tensor) -> dict[str, Tensor]:
        return {"query": torch.full((n,), clean.shape[1] - 1), "target": start + T - j, "start": torch.full((n,), start)}

    corrupted = _batch("number_natural", twin, twin_answers, answers, vocab, positions(twin_jump), params)
    return _batch(
        "number_natural", clean, answers, twin_answers, vocab, positions(jump), params, one_hop=True, corrupted=corrupted
    )


def letter_natural_task(
    n_prompts: int, *, seed: int, tokenizer: PreTrainedTokenizerBase, length: int = 32, symbols: Sequence[str] = SYMBOLS,
    digits: Sequence[str] = DIGITS, frame: str = LETTER_FRAME, prepend_bos: bool = True,
) -> TaskBatch:
    """One-hop letter task in text: ``(length - 1) // 2`` pairs ``symbol digit``, then a symbol; answer its digit."""
    tokenizer, prefix = _start(n_prompts, tokenizer, prepend_bos)
    n = n_prompts
    check_int("length", length, low=3)
    symbols, digits = tuple(symbols), tuple(digits)
    pairs = (length - 1) // 2
    require(
        len(symbols) >= pairs,
        f"length={length} needs {pairs} distinct symbols, but symbols has {len(symbols)}: give more symbols",
    )
    require(len(digits) >= 2, f"digits {list(digits)} must hold at least two digits (the twin changes one)")
    symbol_ids = torch.tensor(word_ids(tokenizer, symbols, what="symbol"))
    digit_ids = torch.tensor(word_ids(tokenizer, digits, what="digit"))

    gen = make_generator(seed)
    sym = torch.rand(n, len(symbols), generator=gen).argsort(1)[:, :pairs]  # [batch, pairs] distinct symbols
    dig = torch.randint(0, len(digits), (n, pairs), generator=gen)
    which = torch.randint(0, pairs, (n,), generator=gen)
    shift = torch.randint(1, len(digits), (n,), generator=gen)
    rows = torch.arange(n)
    twin_dig = dig.clone()
    twin_dig[rows, which] = (dig[rows, which] + shift) % len(digits)

    def encode(d: Tensor) -> tuple[Tensor, int]:
        words = [
            [x for s, t in zip(srow, drow) for x in (symbols[s], digits[t])] + [symbols[srow[q]]]
            for srow, drow, q in zip(sym.tolist(), d.tolist(), which.tolist())
        ]
        ids = [
            [x for s, t in zip(srow, drow) for x in (int(symbol_ids[s]), int(digit_ids[t]))] + [int(symbol_ids[srow[q]])]
            for srow, drow, q in zip(sym.tolist(), d.tolist(), which.tolist())
        ]
        return _encode_lists(tokenizer, frame, words, ids, prefix)

    (clean, start), (twin, _) = encode(dig), encode(twin_dig)
    answers, twin_answers = digit_ids[dig[rows, which]], digit_ids[twin_dig[rows, which]]
    vocab = TokenizerVocab(tokenizer)
    params = _params(tokenizer, length=length, symbols=list(symbols), digits=list(digits), frame=frame,
                     prepend_bos=prepend_bos)  # fmt: skip
    positions = {
        "query": torch.full((n,), clean.shape[1] - 1),
        "target": start + 2 * which + 1,  # the answer digit
        "symbol": start + 2 * which,  # its symbol
        "start": torch.full((n,), start),
    }
    corrupted = _batch("letter_natural", twin, twin_answers, answers, vocab, positions, params)
    return _batch("letter_natural", clean, answers, twin_answers, vocab, positions, params, one_hop=True, corrupted=corrupted)


def _ordinary_ids(tokenizer: PreTrainedTokenizerBase) -> Tensor:
    special = set(tokenizer.all_special_ids)
    return torch.tensor([i for i in range(len(tokenizer)) if i not in special])


def induction_natural_task(
    n_prompts: int, *, seed: int, tokenizer: PreTrainedTokenizerBase, half_length: int = 20, prepend_bos: bool = True
) -> TaskBatch:
    """``[BOS, r_1..r_L, r_1..r_L]`` with ``r`` distinct ordinary tokens of the tokenizer (SPEC 2.6)."""
    tokenizer, prefix = _start(n_prompts, tokenizer, prepend_bos)
    n = n_prompts
    check_int("half_length", half_length, low=2)
    pool = _ordinary_ids(tokenizer)
    require(
        len(pool) >= half_length + 2,
        f"half_length={half_length} needs {half_length + 2} ordinary tokens; the tokenizer has {len(pool)}",
    )
    gen = make_generator(seed)
    draw = pool[torch.rand(n, len(pool), generator=gen).argsort(1)[:, : half_length + 2]]  # distinct per prompt
    r, spare = draw[:, :half_length], draw[:, half_length]
    # the second half stops one short: its last token r_{L-1}, whose successor r_L is the answer
    body = torch.cat([r, r[:, :-1]], dim=1)
    bos = torch.tensor(prefix, dtype=torch.long).expand(n, len(prefix))
    tokens = torch.cat([bos, body], dim=1)
    twin = tokens.clone()
    twin[:, -1] = spare
    answers = r[:, -1]
    wrong = draw[:, half_length + 1]
    vocab = TokenizerVocab(tokenizer)
    params = _params(tokenizer, half_length=half_length, prepend_bos=prepend_bos)
    width = tokens.shape[1]
    positions = {"duplicate": torch.full((n,), len(prefix) + half_length - 2), "previous": torch.full((n,), width - 2)}
    corrupted = _batch("induction_natural", twin, answers, wrong, vocab, positions, params)
    return _batch("induction_natural", tokens, answers, wrong, vocab, positions, params, corrupted=corrupted)


def duplicate_natural_task(
    n_prompts: int, *, seed: int, tokenizer: PreTrainedTokenizerBase, length: int = 16, words: Sequence[str] = WORDS,
    frame: str = DUPLICATE_FRAME, prepend_bos: bool = True,
) -> TaskBatch:
    """``length`` words whose last repeats an earlier one; answer: what followed that earlier one."""
    tokenizer, prefix = _start(n_prompts, tokenizer, prepend_bos)
    n = n_prompts
    check_int("length", length, low=4)
    words = tuple(words)
    require(len(set(words)) >= length + 1, f"length={length} needs {length + 1} distinct words, got {len(set(words))}")
    ids = torch.tensor(word_ids(tokenizer, words, what="word"))

    gen = make_generator(seed)
    # distinct words for the first length-1 slots (so the duplicate is unambiguous), one spare for the twin
    order = torch.rand(n, len(words), generator=gen).argsort(1)
    body, spare = order[:, : length - 1], order[:, length - 1]
    dup = torch.randint(0, length - 2, (n,), generator=gen)  # earlier occurrence, with a successor before the end
    rows = torch.arange(n)
    last = body[rows, dup]
    clean_idx = torch.cat([body, last[:, None]], 1)
    twin_idx = torch.cat([body, spare[:, None]], 1)
    to_words = lambda idx: [[words[k] for k in row] for row in idx.tolist()]  # noqa: E731
    clean, start = _encode_lists(tokenizer, frame, to_words(clean_idx), ids[clean_idx].tolist(), prefix)
    twin, _ = _encode_lists(tokenizer, frame, to_words(twin_idx), ids[twin_idx].tolist(), prefix)
    answers = ids[body[rows, dup + 1]]
    wrong = ids[spare]
    vocab = TokenizerVocab(tokenizer)
    params = _params(tokenizer, length=length, words=list(words), frame=frame, prepend_bos=prepend_bos)
    positions = {"duplicate": start + dup, "previous": torch.full((n,), clean.shape[1] - 2), "start": torch.full((n,), start)}
    corrupted = _batch("duplicate_natural", twin, answers, wrong, vocab, positions, params)
    return _batch("duplicate_natural", clean, answers, wrong, vocab, positions, params, corrupted=corrupted)


SUITES: dict[str, Callable[..., TaskBatch]] = {
    "ioi": ioi_task,
    "number": number_natural_task,
    "letter": letter_natural_task,
    "induction": induction_natural_task,
    "duplicate": duplicate_natural_task,
}


def build_suite(name: str, n_prompts: int, *, seed: int, tokenizer: PreTrainedTokenizerBase, **params) -> TaskBatch:
    """``n_prompts`` prompts of suite ``name`` (a key of `SUITES`)."""
    if name not in SUITES:
        raise HeadkitError(f"unknown prompt suite {name!r}: allowed {', '.join(SUITES)}")
    return SUITES[name](n_prompts, seed=seed, tokenizer=tokenizer, **params)


def suite_words() -> list[str]:
    """Every word the default suites use (frames, letters, symbols, digits, numbers, words, IOI)."""
    frames = " ".join([NUMBER_FRAME, LETTER_FRAME, DUPLICATE_FRAME, *TEMPLATES])
    for mark in ",.:{}":
        frames = frames.replace(mark, " ")
    pieces = [w for w in frames.split() if w not in ("IO", "S")]
    numbers = [str(j) for j in range(1, 100)]
    return list(dict.fromkeys([*pieces, *SYMBOLS, *numbers, *WORDS, *NAMES]))


def word_tokenizer(words: Sequence[str] | None = None, *, bos: str = "<bos>") -> PreTrainedTokenizerFast:
    """A small whitespace word-level tokenizer (id 0 = ``bos``, also EOS and unknown) for tiny checkpoints.

    ``words`` defaults to `suite_words`, so every suite builds with it; punctuation
    in the frames is split off as its own tokens (",", ".", ":").
    """
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = [bos, ",", ".", ":", *(suite_words() if words is None else words)]
    vocab = list(dict.fromkeys(vocab))
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token=bos))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=bos, unk_token=bos)


@dataclasses.dataclass(frozen=True)
class NaturalSpec:
    """A suite with its tokenizer, as a `TaskSpec`-like object: ``build(n_prompts, *, seed, length=None)``.

    ``length`` here is the whole prompt (BOS and frame included), as
    `headkit.scores.discrepancy.discrepancy` asks; it is turned into the suite's
    own list length. Only the suites with a ``length`` parameter (number,
    letter, duplicate) take it; the letter suite's list is pairs plus the query,
    an odd count, so it refuses the other lengths (`check_length`).
    """

    name: str
    tokenizer: PreTrainedTokenizerBase
    params: dict = dataclasses.field(default_factory=dict)

    def overhead(self) -> int:
        """Tokens before the list: BOS (if prepended) and the frame."""
        frame = self.params.get("frame", {"number": NUMBER_FRAME, "letter": LETTER_FRAME}.get(self.name, DUPLICATE_FRAME))
        bos = 1 if self.params.get("prepend_bos", True) else 0
        return bos + (len(self.tokenizer.encode(frame, add_special_tokens=False)) if frame else 0)

    def check_length(self, length: int) -> None:
        """Refuse a whole prompt length the suite cannot build (before any prompt is built).

        The letter suite's list is pairs plus the query, an odd count, so only every
        other length exists; the error names the two nearest that do.
        """
        frame = self.overhead()
        if self.name == "letter" and (length - frame) % 2 == 0:
            raise HeadkitError(
                f"letter prompts cannot have length {length}: after the {frame}-token frame (BOS included) come "
                f"symbol-digit pairs and the query, an odd count; nearest lengths {length - 1} and {length + 1}"
            )

    def build(self, n_prompts: int, *, seed: int, length: int | None = None, **overrides) -> TaskBatch:
        params = {**self.params, **overrides}
        if length is not None:
            self.check_length(length)
            if self.name not in ("number", "letter", "duplicate"):
                raise HeadkitError(f"prompt suite {self.name!r} has no length: lengths apply to number, letter, duplicate")
            params["length"] = length - self.overhead()
            require(params["length"] >= 4, f"length {length} leaves no room after the {self.overhead()}-token frame")
        return build_suite(self.name, n_prompts, seed=seed, tokenizer=self.tokenizer, **params)
