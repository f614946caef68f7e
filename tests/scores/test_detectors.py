"""Detectors against TransformerLens's detect_head and an explicit induction loop."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformer_lens.head_detector import detect_head
from transformers import PreTrainedTokenizerFast

from headkit.bridge.build import attach_tokenizer
from headkit.errors import HeadkitError
from headkit.scores.detectors import (
    DetectorOptions,
    detector_scores,
    duplicate_token_scores,
    induction_pattern_scores,
    induction_scores,
    induction_scores_from_tokens,
    previous_token_scores,
    repeated_random_tokens,
)

D_VOCAB = 24


def word_tokenizer(d_vocab: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer: word ``w{i}`` is token id ``i`` (no downloads)."""
    words = {f"w{i}": i for i in range(d_vocab)}
    tok = Tokenizer(WordLevel(words, unk_token="w0"))
    tok.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0", eos_token="w1", pad_token="w1")


@pytest.fixture
def model_and_prompts(tiny_gptj):
    model = tiny_gptj(n_layers=2, d_model=32, n_heads=2, d_vocab=D_VOCAB, n_ctx=32)
    attach_tokenizer(model, word_tokenizer(D_VOCAB))
    gen = torch.Generator().manual_seed(1)
    # small id range so that duplicates (and induction targets) occur often
    tokens = torch.randint(2, 9, (4, 10), generator=gen)
    prompts = [" ".join(f"w{i}" for i in row) for row in tokens.tolist()]
    assert torch.equal(model.to_tokens(prompts), tokens)
    return model, tokens, prompts


TL_NAMES = {
    "previous_token": ("previous_token_head", previous_token_scores),
    "duplicate_token": ("duplicate_token_head", duplicate_token_scores),
    "induction_pattern": ("induction_head", induction_pattern_scores),
}


@pytest.mark.parametrize("exclude_bos,exclude_current", [(False, False), (True, False), (False, True), (True, True)])
def test_detectors_equal_detect_head(model_and_prompts, exclude_bos, exclude_current):
    model, tokens, prompts = model_and_prompts
    flags = dict(exclude_bos=exclude_bos, exclude_current_token=exclude_current)
    for detector, (tl_name, fn) in TL_NAMES.items():
        expected = detect_head(model, prompts, tl_name, error_measure="mul", **flags)
        df = fn(model, tokens, batch_size=2, **flags)
        assert list(df.columns) == ["layer", "head", "detector", "score"]
        assert set(df.detector) == {detector}
        assert len(df) == model.cfg.n_layers * model.cfg.n_heads
        got = torch.full_like(expected, float("nan"))
        got[df.layer.tolist(), df["head"].tolist()] = torch.tensor(df.score.tolist(), dtype=got.dtype)
        assert (got - expected).abs().max() <= 1e-5, detector
        assert fn(model, tokens, DetectorOptions(batch_size=2, **flags)).equals(df)  # the dataclass: the same path


def test_detectors_with_bos_equal_detect_head(model_and_prompts):
    """With a BOS prepended by the tokenizer, exclude_bos drops key 0."""
    model, tokens, prompts = model_and_prompts
    model.cfg.default_prepend_bos = True
    with_bos = model.to_tokens(prompts)
    assert with_bos.shape[1] == tokens.shape[1] + 1
    df = detector_scores(model, with_bos, exclude_bos=True)
    for detector, (tl_name, _) in TL_NAMES.items():
        expected = detect_head(model, prompts, tl_name, exclude_bos=True)
        sub = df[df.detector == detector]
        got = torch.tensor(sub.score.to_numpy(), dtype=expected.dtype).reshape(expected.shape)
        assert (got - expected).abs().max() <= 1e-5


def test_batch_size_does_not_change_scores(model_and_prompts):
    model, tokens, _ = model_and_prompts
    a = detector_scores(model, tokens, batch_size=1)
    b = detector_scores(model, tokens, batch_size=64)
    assert (a.score - b.score).abs().max() < 1e-6
    assert ((a.score >= 0) & (a.score <= 1)).all()


def test_hand_built_patterns_are_fractions(tiny_gptj):
    """A head whose attention is forced onto the previous token scores exactly 1."""
    model = tiny_gptj(n_layers=1, n_heads=2, d_vocab=D_VOCAB)
    tokens = torch.randint(0, D_VOCAB, (3, 10))

    def force_previous(pattern, hook):
        pos = pattern.shape[-1]
        forced = torch.zeros(pos, pos)
        forced[0, 0] = 1.0
        forced[torch.arange(1, pos), torch.arange(pos - 1)] = 1.0
        pattern[:, 0] = forced
        return pattern

    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", force_previous)]):
        df = previous_token_scores(model, tokens)
    assert df.score.iloc[0] == pytest.approx((10 - 1) / 10)
    assert model.hook_dict["blocks.0.attn.hook_pattern"].fwd_hooks == []


def test_repeated_random_tokens_layout():
    tokens = repeated_random_tokens(4, half_length=6, vocab_range=(3, 20), seed=7, bos_id=0)
    assert tokens.shape == (4, 13)
    assert (tokens[:, 0] == 0).all()
    assert torch.equal(tokens[:, 1:7], tokens[:, 7:])
    assert tokens[:, 1:].min() >= 3 and tokens[:, 1:].max() < 20
    for row in tokens[:, 1:7]:
        assert len(set(row.tolist())) == 6  # distinct within a half
    again = repeated_random_tokens(4, half_length=6, vocab_range=(3, 20), seed=7, bos_id=0)
    assert torch.equal(tokens, again)


def test_repeated_random_tokens_match_the_induction_task():
    from headkit.tasks import repeated_tokens_task

    task = repeated_tokens_task(5, seed=2, half_length=6, vocab_size=12, bos=True)
    mine = repeated_random_tokens(5, half_length=6, vocab_range=(1, 13), seed=2, bos_id=0)
    assert torch.equal(mine, task.tokens)


@pytest.mark.parametrize("bos_id", [None, 0])
def test_induction_scores_equal_explicit_loop(tiny_gptj, bos_id):
    model = tiny_gptj(n_layers=2, n_heads=2, d_vocab=D_VOCAB, n_ctx=32)
    half = 7
    df = induction_scores(model, half_length=half, n_prompts=6, seed=3, vocab_range=(1, D_VOCAB), bos_id=bos_id, batch_size=4)
    assert list(df.columns) == ["layer", "head", "induction_score", "is_induction"]
    tokens = repeated_random_tokens(6, half_length=half, vocab_range=(1, D_VOCAB), seed=3, bos_id=bos_id)
    _, cache = model.run_with_cache(tokens)
    offset = 0 if bos_id is None else 1
    for row in df.itertuples():
        pattern = cache["pattern", row.layer][:, row.head]  # [batch, q, k]
        values = []
        for b in range(tokens.shape[0]):
            for q in range(offset + half, offset + 2 * half):
                first = [k for k in range(offset, q) if tokens[b, k] == tokens[b, q]]
                assert len(first) == 1
                values.append(float(pattern[b, q, first[0] + 1]))
        assert row.induction_score == pytest.approx(sum(values) / len(values), abs=1e-6)
        assert row.is_induction == (row.induction_score > 0.4)


def test_induction_score_of_forced_induction_head(tiny_gptj):
    """A head forced to attend to the token after the earlier copy scores 1."""
    model = tiny_gptj(n_layers=1, n_heads=1, d_model=16, d_vocab=D_VOCAB)
    half = 5
    tokens = repeated_random_tokens(3, half_length=half, vocab_range=(0, D_VOCAB), seed=0)

    def force(pattern, hook):
        pos = pattern.shape[-1]
        forced = torch.eye(pos)
        for q in range(half, 2 * half):
            forced[q] = 0.0
            forced[q, q - half + 1] = 1.0
        return forced.expand_as(pattern).clone()

    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", force)]):
        df = induction_scores_from_tokens(model, tokens, half_length=half, threshold=0.9)
    assert df.induction_score.iloc[0] == pytest.approx(1.0)
    assert bool(df.is_induction.iloc[0])


def test_bad_inputs(tiny_gptj):
    model = tiny_gptj(d_vocab=D_VOCAB, n_ctx=32)
    with pytest.raises(HeadkitError, match="outside the model's vocabulary 0..23"):
        previous_token_scores(model, torch.tensor([[1, 2, 99]]))
    with pytest.raises(HeadkitError, match="is empty"):
        previous_token_scores(model, torch.zeros(0, 5, dtype=torch.long))
    with pytest.raises(HeadkitError, match="2..32 tokens"):
        previous_token_scores(model, torch.tensor([[1]]))
    with pytest.raises(HeadkitError, match="unknown detector"):
        detector_scores(model, torch.tensor([[1, 2]]), detectors=("nope",))
    with pytest.raises(HeadkitError, match="allowed half_length 2..16"):
        induction_scores(model, half_length=17)
    with pytest.raises(HeadkitError, match="need more than half_length=10"):
        induction_scores(model, half_length=10, vocab_range=(0, 5))
    with pytest.raises(HeadkitError, match="n_prompts=0"):
        induction_scores(model, n_prompts=0, half_length=4)
    with pytest.raises(HeadkitError, match="not two copies"):
        induction_scores_from_tokens(model, torch.tensor([[1, 2, 3, 1, 2, 4]]), half_length=3)


def test_default_half_length_fits_small_vocab_and_context(tiny_gptj):
    from headkit.scores.detectors import default_half_length

    small = tiny_gptj(n_layers=1, d_vocab=10, n_ctx=64)
    assert default_half_length(small, vocab_range=(0, 10), bos=False) == 9  # 9 distinct + 1 spare
    short = tiny_gptj(n_layers=1, d_vocab=D_VOCAB, n_ctx=15)
    assert default_half_length(short, vocab_range=(0, D_VOCAB), bos=True) == 7  # 1 + 2*7 <= 15
    big = tiny_gptj(n_layers=1, d_vocab=D_VOCAB + 40, n_ctx=64)
    assert default_half_length(big, vocab_range=(0, D_VOCAB + 40), bos=False) == 20
    df = induction_scores(small, n_prompts=2)
    assert len(df) == small.cfg.n_heads
    with pytest.raises(HeadkitError, match="half_length >= 2"):
        default_half_length(small, vocab_range=(0, 2), bos=False)


def test_batch_size_true_is_refused(tiny_gptj):
    # bool is an int subclass: True must not pass as batch_size=1
    from headkit.errors import HeadkitError
    from headkit.scores.detectors import previous_token_scores

    model = tiny_gptj()
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 8))
    with pytest.raises(HeadkitError, match="batch_size must be an integer, got True"):
        previous_token_scores(model, tokens, batch_size=True)


@pytest.mark.parametrize("fn", [previous_token_scores, duplicate_token_scores, induction_pattern_scores, detector_scores])
def test_detector_options_are_one_checked_dataclass(tiny_gptj, fn):
    model = tiny_gptj()
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 8))
    name = fn.__name__
    with pytest.raises(HeadkitError, match=rf"{name}: got options=DetectorOptions\(...\) and keyword option.s. batch_size"):
        fn(model, tokens, DetectorOptions(exclude_bos=True), batch_size=2)
    with pytest.raises(HeadkitError, match=f"{name}: unknown detector option.s. exclude_eos: allowed exclude_bos, "):
        fn(model, tokens, exclude_eos=True)
    with pytest.raises(HeadkitError, match=f"{name}: options must be a DetectorOptions, got dict"):
        fn(model, tokens, {"exclude_bos": True})
    with pytest.raises(HeadkitError, match="exclude_bos=1 must be True or False"):
        DetectorOptions(exclude_bos=1)
