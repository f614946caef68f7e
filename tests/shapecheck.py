"""jaxtyping's runtime shape checks for the test run, on the tensor annotations only.

`tests/conftest.py` installs ``jaxtyping.install_import_hook("headkit",
"shapecheck.check_shapes")`` before headkit is imported: every headkit function and
dataclass gets ``@jaxtyped(typechecker=check_shapes)``. jaxtyping then calls the
checker on a stand-in function carrying the real one's signature, once for the
parameters and once for the return value, inside one shape memo per call, so a
named dimension (``batch``, ``pos`` ...) must have one size across every argument
and the result.

Why not beartype or typeguard, jaxtyping's usual partners: they check every hint,
and headkit's input checks exist to turn a wrong *type* (``seed="x"``,
``batch_size=True``) into a `HeadkitError` naming it, which the tests pin; a
generic type checker would raise its own error first. This checker looks only at
parameters annotated with a jaxtyping array type (``Float[Tensor, "batch pos"]``,
optionally ``| None``), which is what jaxtyping's shape checks are about; and a
parameter that breaks its annotation counts against a function only when the
function goes on to return (one that refuses the input with a `HeadkitError`, as the
public functions do for mismatched clean/corrupted prompts, has done its job).
"""

from __future__ import annotations

import builtins
import functools
import inspect
import re
import sys
import types
import typing
from typing import Any, Callable

import jaxtyping
import torch
from jaxtyping import (
    AbstractArray,
    AnnotationError,
    TypeCheckError,
    _storage,  # the shape-memo stack: one entry per running jaxtyped call
)

_RET = re.compile(r"ret[0-9]*")  # the keyword jaxtyping adds for the return value

# an annotation string worth evaluating: it names a jaxtyping dtype class with a shape
_JAXTYPING = re.compile(r"\b(Float|Int|Bool|Shaped|Num|Integer|UInt|Real|Complex|Inexact|Float32|Float64|Int64)\[")


def _is_array_hint(hint: Any) -> bool:
    if isinstance(hint, type) and issubclass(hint, AbstractArray):
        return True
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_is_array_hint(arg) for arg in typing.get_args(hint))
    return False


def _resolve(annotation: Any, namespace: dict[str, Any]) -> Any | None:
    """The jaxtyping hint an annotation stands for, or None (not a tensor annotation)."""
    if isinstance(annotation, str):
        if not _JAXTYPING.search(annotation):
            return None
        try:
            annotation = eval(annotation, namespace)  # noqa: S307 (annotations of headkit's own code)
        except Exception:  # a name imported only under TYPE_CHECKING: not a shape to check
            return None
    return annotation if _is_array_hint(annotation) else None


class ParameterShapeError(TypeCheckError, AnnotationError):
    """A function returned after taking a parameter that breaks its annotation.

    Also an `AnnotationError`, which jaxtyping re-raises as it is: its own message for
    an error raised after the call would speak of the return value.
    """


_FALLBACK = {"Tensor": torch.Tensor, **{name: getattr(jaxtyping, name) for name in dir(jaxtyping) if name[:1].isupper()}}
# jaxtyping resolves each annotation in the module's globals and reads one it cannot
# resolve as Any: the modules that import torch lazily (so that the command line starts
# fast) name Tensor only under TYPE_CHECKING. In the test run it is a builtin, so their
# tensor annotations are checked too.
builtins.Tensor = torch.Tensor  # type: ignore[attr-defined]

# Parameter mismatches waiting for the function's verdict: (memo depth, message).
_pending: list[tuple[int, str]] = []


def _depth() -> int:
    """How many `jaxtyped` calls are running on this thread (jaxtyping's shape-memo stack)."""
    return len(getattr(_storage._shape_storage, "memo_stack", ()))


def _mismatch(fn: Callable[..., Any], bound: inspect.BoundArguments, hints: dict[str, Any]) -> str | None:
    for name, hint in hints.items():
        if name in bound.arguments and not isinstance(bound.arguments[name], hint):
            value = bound.arguments[name]
            shown = f"shape {tuple(value.shape)}, dtype {value.dtype}" if hasattr(value, "shape") else type(value).__name__
            return f"{getattr(fn, '__qualname__', fn)}: {name} ({shown}) is not {hint}"
    return None


def check_shapes(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A typechecker for `jaxtyping.jaxtyped`: isinstance checks of the jaxtyping hints only.

    jaxtyping calls it twice per decorated function: on a stand-in taking the
    parameters (checked before the call), and on one taking the parameters plus the
    return value as a last keyword ``ret0`` that it returns (checked after, against
    the return annotation). A parameter that breaks
    its annotation is held until the function's verdict: a function that refuses it
    with a `HeadkitError` has done its job (headkit's checks name the bad input, and
    the tests pin those messages); one that returns normally fails with the
    mismatch. The return value must always match.
    """
    module = sys.modules.get(getattr(fn, "__module__", ""), None)
    # modules that import torch lazily name Tensor only under TYPE_CHECKING: supply it
    namespace = {**_FALLBACK, **(vars(module) if module is not None else {})}
    signature = inspect.signature(fn)
    params = list(signature.parameters.values())
    output = bool(params) and params[-1].kind is inspect.Parameter.KEYWORD_ONLY and _RET.fullmatch(params[-1].name)
    hints = {name: hint for p in params if (hint := _resolve(p.annotation, namespace)) is not None for name in [p.name]}
    returns = _resolve(signature.return_annotation, namespace) if output else None
    if not hints and returns is None:
        return fn

    @functools.wraps(fn)
    def checked(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        depth = _depth()
        if not output:  # before the call: a new call at this depth ends any older one here
            while _pending and _pending[-1][0] >= depth:
                _pending.pop()
            problem = _mismatch(fn, bound, hints)
            if problem is not None:
                _pending.append((depth, problem))
            return fn(*args, **kwargs)
        if _pending and _pending[-1][0] == depth:  # the function ran on a mismatched parameter
            raise ParameterShapeError(_pending.pop()[1] + "; the function went on with it instead of refusing it")
        result = fn(*args, **kwargs)  # the stand-in returns the real function's return value
        if returns is not None and not isinstance(result, returns):
            shown = f"shape {tuple(result.shape)}, dtype {result.dtype}" if hasattr(result, "shape") else type(result).__name__
            raise TypeCheckError(f"{getattr(fn, '__qualname__', fn)}: the return value ({shown}) is not {returns}")
        return result

    return checked
