"""Natural-language prompt suites: answers checked by reading the prompts back as text."""

from __future__ import annotations

import pytest
import torch

from headkit.errors import HeadkitError
from headkit.tasks.natural import SUITES, build_suite, word_tokenizer


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer()


def words_of(tok, row) -> list[str]:
    return tok.convert_ids_to_tokens(row.tolist())


@pytest.mark.parametrize("name", list(SUITES))
def test_seeded_twin_shaped_and_last_position_scored(tok, name):
    a, b = build_suite(name, 6, seed=3, tokenizer=tok), build_suite(name, 6, seed=3, tokenizer=tok)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.corrupted.tokens, b.corrupted.tokens)
    assert not torch.equal(a.tokens, build_suite(name, 6, seed=4, tokenizer=tok).tokens)
    assert a.corrupted.tokens.shape == a.tokens.shape
    assert (a.answer_pos == a.length - 1).all()
    assert torch.equal(a.targets[:, -1], a.answers)
    assert (a.tokens[:, 0] == tok.bos_token_id).all()
    assert (a.tokens != a.corrupted.tokens).any(1).all()  # every twin differs


@pytest.mark.parametrize("length", [8, 32, 100])
def test_number_answer_is_the_letter_j_places_back(tok, length):
    batch = build_suite("number", 20, seed=0, tokenizer=tok, length=length)
    for clean in (batch, batch.corrupted):
        for i in range(batch.n):
            text = words_of(tok, clean.tokens[i])
            listed = text[clean.positions["start"][i] :]
            assert len(listed) == length
            j = int(listed[-1])
            assert tok.convert_ids_to_tokens([int(clean.answers[i])])[0] == listed[-1 - j]
    assert (batch.answers != batch.corrupted.answers).all()  # the twin's letter differs
    assert torch.equal(batch.tokens[:, :-1], batch.corrupted.tokens[:, :-1])  # only the query changes


@pytest.mark.parametrize("length", [9, 32, 100])
def test_letter_answer_is_the_digit_after_the_queried_symbol(tok, length):
    batch = build_suite("letter", 20, seed=0, tokenizer=tok, length=length)
    for clean in (batch, batch.corrupted):
        for i in range(batch.n):
            listed = words_of(tok, clean.tokens[i])[clean.positions["start"][i] :]
            assert len(listed) == length - (length - 1) % 2
            symbols = listed[0:-1:2]
            assert len(set(symbols)) == len(symbols)  # one lookup target
            digit = listed[2 * symbols.index(listed[-1]) + 1]
            assert tok.convert_ids_to_tokens([int(clean.answers[i])])[0] == digit
    assert (batch.answers != batch.corrupted.answers).all()


def test_induction_answer_is_the_successor_in_the_first_half(tok):
    batch = build_suite("induction", 10, seed=0, tokenizer=tok, half_length=7)
    body = batch.tokens[:, 1:]
    assert torch.equal(body[:, 7:], body[:, :6])
    assert torch.equal(batch.answers, body[:, 6])
    assert not set(batch.tokens.flatten().tolist()[1:]) & set(tok.all_special_ids) - {tok.bos_token_id}
    for i in range(batch.n):  # the twin's last token occurs nowhere else
        assert int(batch.corrupted.tokens[i, -1]) not in batch.corrupted.tokens[i, :-1].tolist()


def test_duplicate_positions_and_answer(tok):
    batch = build_suite("duplicate", 10, seed=0, tokenizer=tok, length=12)
    for i in range(batch.n):
        row = batch.tokens[i].tolist()
        d = int(batch.positions["duplicate"][i])
        assert row[d] == row[-1] and row.count(row[-1]) == 2
        assert row[d + 1] == int(batch.answers[i])
        assert int(batch.positions["previous"][i]) == len(row) - 2
        assert batch.corrupted.tokens[i, -1].item() not in row


def test_single_token_check_names_the_word(tok):
    with pytest.raises(HeadkitError, match=r"letter 'c-d': ' c-d' is not a single token: it tokenises to \['c', '<bos>', 'd'\]"):
        build_suite("number", 2, seed=0, tokenizer=tok, letters=["a", "b", "c-d"])
    small = word_tokenizer(["a", "b", "c", "1", "2", "3"])
    with pytest.raises(HeadkitError, match=r"symbol 'd' is unknown to the tokenizer"):
        build_suite("letter", 2, seed=0, tokenizer=small, length=9)


def test_bad_parameters_are_refused(tok):
    with pytest.raises(HeadkitError, match="unknown prompt suite 'nope'"):
        build_suite("nope", 2, seed=0, tokenizer=tok)
    with pytest.raises(HeadkitError, match=r"length=200 needs 99 distinct symbols"):
        build_suite("letter", 2, seed=0, tokenizer=tok, length=200)
    with pytest.raises(HeadkitError, match="tokenizer must be a Hugging Face tokenizer"):
        build_suite("number", 2, seed=0, tokenizer="gpt2")
    with pytest.raises(HeadkitError, match="n_prompts=0 is out of range"):
        build_suite("duplicate", 0, seed=0, tokenizer=tok)


def test_letter_suite_lengths_it_cannot_build_are_refused_naming_the_nearest(tok):
    """The list after the frame is pairs plus the query, an odd count: half the whole lengths are impossible.

    Before issue 19 `discrepancy` found out after building (``task built prompts of
    length 39 when asked for 40``); now the suite says so before any prompt is built.
    """
    from headkit.tasks.natural import NaturalSpec

    spec = NaturalSpec("letter", tok)
    frame = spec.overhead()
    good = frame + 21  # 10 pairs and the query
    assert spec.build(2, seed=0, length=good).tokens.shape[1] == good
    spec.check_length(good)
    with pytest.raises(HeadkitError) as error:
        spec.check_length(good + 1)
    assert str(error.value) == (
        f"letter prompts cannot have length {good + 1}: after the {frame}-token frame (BOS included) come "
        f"symbol-digit pairs and the query, an odd count; nearest lengths {good} and {good + 2}"
    )
    with pytest.raises(HeadkitError, match=f"cannot have length {good + 1}"):
        spec.build(2, seed=0, length=good + 1)
    NaturalSpec("number", tok).check_length(good + 1)  # the other suites take every length
