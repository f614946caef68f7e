"""Errors that headkit raises for bad user input.

`HeadkitError` is what the command line turns into a one-line message with exit
code 2; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class HeadkitError(ValueError):
    """Bad input from the user: the message says what is wrong and what is allowed."""



class NonFiniteError(HeadkitError):
    """A model's outputs or a metric came out NaN or infinite (`headkit.checks.check_finite`)."""


_OOM_WORDS = ("out of memory", "can't allocate", "failed to allocate")  # CUDA, torch's CPU allocator, MPS


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is running out of memory: `MemoryError`, `torch.OutOfMemoryError`
    (a `RuntimeError`), or an allocator's `RuntimeError` saying so.

    Torch-free: training and the analysis commands turn such an error into one line.
    """
    if isinstance(error, MemoryError) or any(c.__name__ == "OutOfMemoryError" for c in type(error).__mro__):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(words in text for words in _OOM_WORDS)


class DiskFullError(HeadkitError):
    """A write failed because the disk is full (`headkit.io.disk_full`); what was there is unchanged."""
