"""Argument types shared by every ``headkit`` command: seeds and devices.

An argparse ``type=`` turns a bad value into one ``headkit CMD: error: argument
--seed: ...`` line with exit code 2, before the command does any work. torch is
imported only when a ``--device`` is actually given, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse

from headkit.checks import SEED_MAX, check_device, is_number
from headkit.errors import HeadkitError


def seed(text: str) -> int:
    """A seed in 0..2**64-1, written in ASCII digits."""
    if not is_number(text.strip()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative integer")
    value = int(text)
    if value > SEED_MAX:
        raise argparse.ArgumentTypeError(f"{value} is too large: seeds are 0..{SEED_MAX} (2**64 - 1)")
    return value


def device(text: str) -> str:
    """A torch device this machine has (`headkit.checks.check_device`)."""
    try:
        return check_device(text)
    except HeadkitError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
