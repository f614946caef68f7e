"""Errors that headkit raises for bad user input.

`HeadkitError` is what the command line turns into a one-line message with exit
code 2; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class HeadkitError(ValueError):
    """Bad input from the user: the message says what is wrong and what is allowed."""


def check_range(name: str, value: int, low: int, high: int) -> None:
    """Raise HeadkitError unless ``low <= value <= high`` (both ends inclusive)."""
    if not (low <= value <= high):
        raise HeadkitError(f"{name}={value} is out of range: allowed {low}..{high}")
