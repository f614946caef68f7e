"""The test run's jaxtyping shape checks (tests/shapecheck.py) are on, and catch what they should."""

from __future__ import annotations

import pytest
import torch
from jaxtyping import Float, TypeCheckError, jaxtyped
from torch import Tensor

from headkit.errors import HeadkitError

from shapecheck import check_shapes


@jaxtyped(typechecker=check_shapes)
def _add(a: Float[Tensor, "batch d"], b: Float[Tensor, "batch d"], *, refuse: bool = False) -> Float[Tensor, "batch d"]:
    if refuse and a.shape != b.shape:
        raise HeadkitError(f"shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
    return a[:, :1]  # [batch, 1]: the annotated [batch, d] only when d == 1


@jaxtyped(typechecker=check_shapes)
def _outer(a: Float[Tensor, "batch d"]) -> Float[Tensor, "batch d"]:
    try:
        _add(a, a[:1], refuse=True)  # an inner refusal the caller handles
    except HeadkitError:
        pass
    return a


def test_named_dimensions_must_agree_across_parameters() -> None:
    with pytest.raises(TypeCheckError, match=r"_add: b \(shape \(3, 1\)"):
        _add(torch.zeros(2, 1), torch.zeros(3, 1))


def test_a_function_that_refuses_the_input_itself_keeps_its_own_error() -> None:
    with pytest.raises(HeadkitError, match=r"shapes \(2, 1\) and \(3, 1\) differ"):
        _add(torch.zeros(2, 1), torch.zeros(3, 1), refuse=True)


def test_a_refused_inner_call_does_not_blame_its_caller() -> None:
    assert _outer(torch.ones(4, 1)).shape == (4, 1)


def test_the_return_value_must_match() -> None:
    with pytest.raises(TypeCheckError, match="the return value"):
        _add(torch.zeros(2, 3), torch.zeros(2, 3))  # returns [2, 1] for [batch=2, d=3]


def test_the_checks_are_installed_on_headkit() -> None:
    """conftest installs the hook before headkit is imported: a headkit function with a
    tensor annotation fails on a tensor of the wrong rank."""
    from headkit.interventions import metrics

    values = torch.zeros(3)
    assert metrics._reduce(values, per_example=True) is values
    with pytest.raises(TypeCheckError, match="_reduce"):
        metrics._reduce(torch.zeros(3, 2), per_example=False)
