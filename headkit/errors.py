"""Errors that headkit raises for bad user input.

`HeadkitError` is what the command line turns into a one-line message with exit
code 2; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class HeadkitError(ValueError):
    """Bad input from the user: the message says what is wrong and what is allowed."""



class NonFiniteError(HeadkitError):
    """A model's outputs or a metric came out NaN or infinite (`headkit.checks.check_finite`)."""


class DiskFullError(HeadkitError):
    """A write failed because the disk is full (`headkit.io.disk_full`); what was there is unchanged."""
