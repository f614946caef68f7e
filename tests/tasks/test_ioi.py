"""ioi_task with a tiny byte-level BPE tokenizer trained here (no downloads)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from headkit.errors import HeadkitError
from headkit.tasks import IGNORE
from headkit.tasks.ioi import NAMES, TEMPLATES, ioi_task

EOT = "<|endoftext|>"


def train_tokenizer(*, bos: bool = True) -> PreTrainedTokenizerFast:
    """GPT-2-style byte-level BPE trained on the default prompts: every default name
    becomes one token " Name"; an unseen name falls apart into pieces."""
    corpus = [
        t.replace("{IO}", a).replace("{S}", b) for t in TEMPLATES for a in NAMES for b in NAMES[:6]
    ] + ["When Mary and John went to the big store, John gave a drink to"] * 50
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    special = dict(bos_token=EOT, eos_token=EOT) if bos else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer()


def solve(strings: list[str]) -> tuple[str, str]:
    """(IO, S) read from the decoded prompt: the name said once and the name said twice."""
    said = Counter(s for s in strings if s.strip() in NAMES)
    once = [s for s, k in said.items() if k == 1]
    twice = [s for s, k in said.items() if k == 2]
    assert len(once) == 1 and len(twice) == 1, strings
    return once[0], twice[0]


def test_prompts_follow_templates_and_answer_is_io(tokenizer):
    batch = ioi_task(64, seed=0, tokenizer=tokenizer)
    width = batch.tokens.shape[1]
    assert (batch.answer_pos == width - 1).all() and (batch.positions["end"] == width - 1).all()
    assert (batch.targets[:, :-1] == IGNORE).all() and torch.equal(batch.targets[:, -1], batch.answers)
    used = set()
    for i in range(batch.n):
        strings = batch.decode(i)
        assert strings[0] == EOT
        text = "".join(strings[1:])
        io, s = solve(strings)
        template = text.replace(io, " {IO}", 1)
        first = template.index(s)
        template = template[:first] + " {S}" + template[first + len(s) :]
        template = template.replace(s, " {S}", 1)
        assert template in TEMPLATES, text
        used.add(template)
        assert batch.vocab.decode([batch.answers[i], batch.wrong_answers[i]]) == [io, s]
        slots = [strings[batch.positions[k][i]] for k in ("IO", "S1", "S2")]
        assert slots == [io, s, s]
        assert batch.positions["S1"][i] < batch.positions["S2"][i]
        assert batch.vocab.encode(strings) == batch.tokens[i].tolist()
    assert len(used) == len(TEMPLATES)  # ABBA and BABA both used


def test_abc_twin_puts_a_third_name_at_s2_and_keeps_answers(tokenizer):
    batch = ioi_task(40, seed=1, tokenizer=tokenizer, corruption="abc")
    twin = batch.corrupted
    assert twin.corrupted is None and twin.tokens.shape == batch.tokens.shape
    differ = (twin.tokens != batch.tokens).nonzero()
    assert torch.equal(differ[:, 0], torch.arange(40)) and torch.equal(differ[:, 1], batch.positions["S2"])
    for i in range(40):
        clean, corrupt = batch.decode(i), twin.decode(i)
        c = corrupt[batch.positions["S2"][i]]
        assert c.strip() in NAMES and c not in clean
    assert torch.equal(twin.answers, batch.answers) and torch.equal(twin.wrong_answers, batch.wrong_answers)


def test_swap_twin_answer_is_the_clean_subject(tokenizer):
    batch = ioi_task(40, seed=2, tokenizer=tokenizer, corruption="swap")
    twin = batch.corrupted
    for i in range(40):
        io, s = solve(batch.decode(i))
        twin_io, twin_s = solve(twin.decode(i))
        assert (twin_io, twin_s) == (s, io)
        assert twin.vocab.decode([twin.answers[i], twin.wrong_answers[i]]) == [twin_io, twin_s]
    assert (twin.answers != batch.answers).all()
    assert torch.equal(twin.answers, batch.wrong_answers) and torch.equal(twin.wrong_answers, batch.answers)


def test_no_bos_and_determinism(tokenizer):
    a = ioi_task(10, seed=5, tokenizer=tokenizer, prepend_bos=False)
    b = ioi_task(10, seed=5, tokenizer=tokenizer, prepend_bos=False)
    c = ioi_task(10, seed=6, tokenizer=tokenizer, prepend_bos=False)
    assert a.decode(0)[0] == "When"
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.corrupted.tokens, b.corrupted.tokens)
    assert not torch.equal(a.tokens, c.tokens)
    assert ioi_task(10, seed=5, tokenizer=tokenizer).tokens.shape[1] == a.tokens.shape[1] + 1


def test_multi_token_name_is_an_error_naming_it(tokenizer):
    message = r"name 'Zyxwvu' is not a single token with its leading space: ' Zyxwvu' tokenises to [2-9]"
    with pytest.raises(HeadkitError, match=message):
        ioi_task(5, seed=0, tokenizer=tokenizer, names=["Mary", "John", "Zyxwvu"])


def test_templates_of_different_lengths_are_refused(tokenizer):
    templates = [TEMPLATES[0], "When {IO} and {S} went to the big store, {S} gave a drink to"]
    with pytest.raises(HeadkitError, match=r"different lengths.*templates \[0\].*templates \[1\]"):
        ioi_task(5, seed=0, tokenizer=tokenizer, templates=templates)


def test_tokenizer_without_bos():
    with pytest.raises(HeadkitError, match="prepend_bos"):
        ioi_task(5, seed=0, tokenizer=train_tokenizer(bos=False))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(n_prompts=0), "n_prompts="),
        (dict(corruption="zzz"), "corruption='zzz'"),
        (dict(names=["Mary", "John"]), "names has 2"),
        (dict(names="Mary"), "single string"),
        (dict(names=["Mary", "John", "Mary"]), "duplicates"),
        (dict(names=["Mary", " John", "Tom"]), r"names\[1\]"),
        (dict(templates=[]), "templates is empty"),
        (dict(templates=["When {IO} and {IO} went, {S} gave a drink to"]), r"templates\[0\]"),
        (dict(templates=["{IO} and {S} went, {S} gave a drink to"]), "follow a space"),
        (dict(templates=["When {IO} and {S} went to {X}, {S} gave it to"]), "placeholder"),
        (dict(prepend_bos=1), "prepend_bos"),
        (dict(tokenizer="gpt2"), "tokenizer"),
    ],
)
def test_bad_parameters_name_themselves(tokenizer, kwargs, name):
    args = dict(n_prompts=5, seed=0, tokenizer=tokenizer) | kwargs
    with pytest.raises(HeadkitError, match=name):
        ioi_task(args.pop("n_prompts"), **args)


def test_name_the_tokenizer_does_not_know_is_named():
    """A word-level tokenizer maps an unknown name to its unknown token: the error names the word (issue 19)."""
    from headkit.tasks.natural import suite_words, word_tokenizer

    tok = word_tokenizer([w for w in suite_words() if w != "Mary"])
    names = ["Mary", *[n for n in NAMES if n != "Mary"][:3]]
    with pytest.raises(HeadkitError) as error:
        ioi_task(4, seed=0, tokenizer=tok, names=names)
    assert str(error.value) == (
        "name 'Mary' is unknown to the tokenizer (' Mary' becomes its unknown token '<bos>'); remove it from names"
    )
