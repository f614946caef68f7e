"""Shared input checks name the bad value and the allowed range."""

from __future__ import annotations

import pytest
import torch

from headkit.checks import check_heads, check_position, check_tokens, parse_head, parse_heads, parse_int_list
from headkit.errors import HeadkitError


def test_check_heads(tiny_gptj):
    model = tiny_gptj()  # 2 layers, 2 heads
    assert check_heads(model, [(0, 1), (1, 0)]) == [(0, 1), (1, 0)]
    with pytest.raises(HeadkitError, match=r"head 2\.0: layer 2 is out of range: this model has layers 0\.\.1"):
        check_heads(model, [(2, 0)])
    with pytest.raises(HeadkitError, match=r"head 0\.5: head 5 is out of range: .* heads 0\.\.1"):
        check_heads(model, [(0, 5)])


def test_parse_heads_and_lists():
    assert parse_head("5.0") == (5, 0)
    assert parse_heads("0.1, 3.0") == [(0, 1), (3, 0)]
    for bad in ["5", "a.b", "1.2.3", "-1.0"]:
        with pytest.raises(HeadkitError, match="LAYER.HEAD"):
            parse_head(bad)
    assert parse_int_list("17,33", name="--lengths") == [17, 33]
    with pytest.raises(HeadkitError, match=r"--lengths: 'x' is not an integer"):
        parse_int_list("17,x", name="--lengths")
    with pytest.raises(HeadkitError, match=r"--lengths: 0 is too small"):
        parse_int_list("0", name="--lengths")


def test_check_tokens(tiny_gptj):
    model = tiny_gptj()  # d_vocab 40, n_ctx 64
    check_tokens(model, torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(HeadkitError, match=r"shape \[batch, pos\]"):
        check_tokens(model, torch.zeros(5, dtype=torch.long))
    with pytest.raises(HeadkitError, match="is empty"):
        check_tokens(model, torch.zeros(0, 5, dtype=torch.long))
    with pytest.raises(HeadkitError, match="length 65 exceeds the model's context n_ctx=64"):
        check_tokens(model, torch.zeros(1, 65, dtype=torch.long))
    bad = torch.zeros(2, 5, dtype=torch.long)
    bad[1, 3] = 40
    with pytest.raises(HeadkitError, match=r"prompt 1, position 3 has token id 40, outside .* 0\.\.39"):
        check_tokens(model, bad)
    with pytest.raises(HeadkitError, match="integer token ids"):
        check_tokens(model, torch.zeros(2, 5))


def test_check_position():
    assert check_position(17, -1) == 16
    assert check_position(17, 3) == 3
    with pytest.raises(HeadkitError, match=r"query_pos 17 is out of range .* allowed -17\.\.16"):
        check_position(17, 17, name="query_pos")
