"""Input checks shared by every analysis and command: heads, layers, token batches, output paths.

Each check raises `HeadkitError` with a message that names the bad value and the
allowed range, and runs before any forward pass, so bad input costs nothing.

This module imports neither torch nor TransformerLens at the top (the command line
imports it to check arguments, and ``headkit --help`` must answer at once); the
checks that need torch import it when called.
"""

from __future__ import annotations

import operator
import re
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence, TypeVar, Union

if TYPE_CHECKING:  # torch and TransformerLens are slow to import; only the types are needed here
    from torch import Tensor

    from headkit.model_types import Model

from headkit.errors import HeadkitError, NonFiniteError

Head = tuple[int, int]  # (layer, head)
HeadInput = tuple[int, int, str]  # (layer, head, "q" | "k" | "v"): a head's query, key or value input
Receiver = Union[HeadInput, str]  # a head input, "final", or a spec like "5.0.q" (path patching)
FINAL = "final"  # the path-patching receiver that is the final residual stream
QKV = ("q", "k", "v")

_NUMBER = re.compile(r"[0-9]+")  # ASCII digits only: str.isdigit and int() also accept '²', '١'


def check_model(model: Any, *, name: str = "model") -> None:
    """Refuse what no analysis can run: a model that is not headkit's analysis model, or one without weights.

    A Hugging Face model (``TrainResult.hf_model``, a ``GPTJForCausalLM``) has no
    hooks; a model on the ``meta`` device has shapes but no values. Both are named
    in one line, before any forward pass.
    """
    if not hasattr(model, "cfg"):  # HookedTransformer, TransformerBridge, headkit's own HFLogits view have one
        kind = type(model).__name__
        if hasattr(model, "config") and hasattr(model, "save_pretrained"):
            raise HeadkitError(
                f"{name} is a Hugging Face {kind}, not headkit's analysis model (a TransformerBridge or HookedTransformer): "
                "pass TrainResult.model (not TrainResult.hf_model), load_checkpoint(...).model, load_pretrained(DIR), "
                "or headkit.bridge.build.wrap(model)"
            )
        raise HeadkitError(f"{name} must be a TransformerBridge or HookedTransformer (headkit's analysis model), got {kind}")
    parameters = getattr(model, "named_parameters", None)
    # callable() narrows to a function returning object: the type checker cannot see the (name, tensor) pairs
    meta = next((n for n, p in parameters() if p.is_meta), None) if callable(parameters) else None  # pyright: ignore[reportGeneralTypeIssues]
    if meta is not None:
        raise HeadkitError(
            f"{name} is on the meta device (tensor {meta} has a shape but no values): "
            "load its weights (load_pretrained, load_checkpoint) before analysing it"
        )


def check_layer(model: Model, layer: int) -> int:
    check_model(model)
    n = model.cfg.n_layers
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
        raise HeadkitError(f"layer {layer} is out of range: this model has layers 0..{n - 1}")
    return layer


def check_heads(model: Model, heads: Iterable[Sequence[int]]) -> list[Head]:
    """Validate (layer, head) pairs against the model; returns them as int tuples.

    A head given twice is an error (a repeated head is a typo, and would otherwise
    give duplicate rows or a set label like ``1.0+1.0``).
    """
    out: list[Head] = []
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    for item in heads:
        if isinstance(item, (str, bytes)) or not hasattr(item, "__len__") or len(item) != 2:
            raise HeadkitError(f"head {item!r} must be a (layer, head) pair")
        layer, head = (_head_index(item, name, value) for name, value in zip(("layer", "head"), item))
        if not 0 <= layer < n_layers:
            raise HeadkitError(
                f"head {layer}.{head}: layer {layer} is out of range: "
                f"this model has layers 0..{n_layers - 1}"
            )
        if not 0 <= head < n_heads:
            raise HeadkitError(
                f"head {layer}.{head}: head {head} is out of range: "
                f"this model has heads 0..{n_heads - 1} in each layer"
            )
        if (layer, head) in out:
            raise HeadkitError(f"head {layer}.{head} is given twice: list each head once")
        out.append((layer, head))
    return out


def _head_index(item: Any, name: str, value: Any) -> int:
    """One index of a head as an int: Python, numpy or 0-d torch integers; never a float, bool or string.

    ``int()`` would truncate ``0.7`` to head 0 and read ``True`` as 1 and ``"1"`` as 1.
    """
    if not isinstance(value, bool) and type(value).__name__ != "bool_":  # numpy's bool_ too
        try:
            return operator.index(value)  # int, numpy integers, integer 0-d tensors
        except TypeError:
            pass
    raise HeadkitError(
        f"head {tuple(item)!r}: {name} {value!r} is not an integer: a head is a (layer, head) pair of integers"
    )


def parse_head(spec: str) -> Head:
    """``"5.0"`` -> ``(5, 0)``; anything else is an error naming the spec."""
    parts = spec.strip().split(".")
    if len(parts) != 2 or not all(is_number(p.strip()) for p in parts):
        raise HeadkitError(f"head spec {spec!r} must look like LAYER.HEAD, e.g. 5.0")
    return int(parts[0]), int(parts[1])


def is_number(text: str) -> bool:
    """Whether ``text`` is a non-negative integer in ASCII digits (``"12"``; not ``"²"``, ``"+1"``, ``"1_0"``)."""
    return _NUMBER.fullmatch(text) is not None


def parse_heads(specs: str) -> list[Head]:
    """``"0.1,3.0"`` -> ``[(0, 1), (3, 0)]``; a head given twice is an error."""
    items = [s for s in specs.split(",") if s.strip()]
    if not items:
        raise HeadkitError(f"no heads given in {specs!r}: expected LAYER.HEAD[,LAYER.HEAD...]")
    heads = [parse_head(s) for s in items]
    twice = sorted({h for h in heads if heads.count(h) > 1})
    if twice:
        raise HeadkitError(f"head {twice[0][0]}.{twice[0][1]} is given twice in {specs!r}: list each head once")
    return heads


def parse_receiver(spec: str) -> Receiver:
    """``"final"`` -> ``"final"``; ``"5.0.q"`` -> ``(5, 0, "q")``; else a HeadkitError."""
    text = spec.strip()
    if text == FINAL:
        return FINAL
    parts = text.split(".")
    if len(parts) != 3 or not is_number(parts[0]) or not is_number(parts[1]) or parts[2] not in QKV:
        raise HeadkitError(f"receiver spec {spec!r} must look like LAYER.HEAD.q|k|v (e.g. 5.0.q) or 'final'")
    return int(parts[0]), int(parts[1]), parts[2]


def parse_receivers(specs: str) -> list[Receiver]:
    """``"5.0.q,5.0.k"`` -> ``[(5, 0, "q"), (5, 0, "k")]``; a receiver given twice is an error."""
    items = [s for s in specs.split(",") if s.strip()]
    if not items:
        raise HeadkitError(f"no receivers given in {specs!r}: expected LAYER.HEAD.q|k|v[,...] or 'final'")
    receivers = [parse_receiver(s) for s in items]
    for i, receiver in enumerate(receivers):
        if receiver in receivers[:i]:
            shown = receiver if receiver == FINAL else ".".join(map(str, receiver))
            raise HeadkitError(f"receiver {shown} is given twice in {specs!r}: list each receiver once")
    return receivers


def parse_int_list(text: str, *, name: str, low: int = 1) -> list[int]:
    """``"17,33,65"`` -> ``[17, 33, 65]``; a malformed or too-small number names itself."""
    values = []
    for part in text.split(","):
        part = part.strip()
        sign, digits = ("-", part[1:]) if part.startswith("-") else ("", part)
        if not is_number(digits):
            raise HeadkitError(f"{name}: {part!r} is not an integer (expected e.g. 17,33,65)")
        value = int(sign + digits)
        if value < low:
            raise HeadkitError(f"{name}: {value} is too small: allowed {low} or more")
        values.append(value)
    if not values:
        raise HeadkitError(f"{name}: no values given")
    return values


# --------------------------------------------------------------------------- numbers


def check_int(name: str, value: Any, *, low: int = 1, high: int | None = None) -> int:
    """``value`` if it is an integer in ``low..high`` (``high`` None: no top); else a HeadkitError.

    The one integer check of headkit (builder parameters, counts, batch sizes,
    steps): ``bool`` is refused (``True`` is not a count), and the message names the
    parameter, its value and the allowed range.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise HeadkitError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        allowed = f"{low}..{high}" if high is not None else f"{low} or more"
        raise HeadkitError(f"{name}={value} is out of range: allowed {allowed}")
    return value


def check_optional_int(name: str, value: Any, *, low: int = 1) -> int | None:
    """`check_int` that also lets ``None`` through (e.g. ``batch_size=None``: automatic)."""
    return None if value is None else check_int(name, value, low=low)


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is True or False (not 1, not ``"yes"``); else a HeadkitError naming it."""
    if not isinstance(value, bool):
        raise HeadkitError(f"{name}={value!r} must be True or False")
    return value


def check_positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise HeadkitError(f"{name}={value!r} must be a positive number")
    return float(value)


def check_length(
    length: int, n_ctx: int, *, name: str = "length", whose: str = "the model's", label: str | None = None
) -> int:
    """A prompt length the model's context holds: ``1..n_ctx``; else a HeadkitError.

    The message reads ``"{name} {length} exceeds {whose} context n_ctx=N: allowed
    lengths are 1..N"``; ``label`` replaces ``"{name} {length}"`` where the value the
    user gave is not the length itself (``"--added 2100"``), ``whose`` names the model
    (``"the number model's"``).
    """
    if length > n_ctx:
        shown = label if label is not None else f"{name} {length}"
        raise HeadkitError(f"{shown} exceeds {whose} context n_ctx={n_ctx}: allowed lengths are 1..{n_ctx}")
    return length


TOKEN_DTYPES = ("torch.int64", "torch.int32")  # integer dtypes that hold any vocabulary id safely


def check_tokens(model: Model, tokens: Tensor, *, name: str = "tokens") -> Tensor:
    """A non-empty [batch, pos] int64/int32 tensor of ids the model knows, within its context.

    Other dtypes are refused naming the dtype: floats and complex are not ids,
    ``bool`` and ``uint8`` index as masks, ``int8``/``int16`` wrap around for
    larger vocabularies. Tokens on the meta device hold no values.
    """
    from torch import Tensor

    check_model(model)
    if not isinstance(tokens, Tensor):
        raise HeadkitError(f"{name} must be a torch tensor of token ids, got {type(tokens).__name__}")
    if tokens.ndim != 2:
        raise HeadkitError(f"{name} must have shape [batch, pos], got shape {tuple(tokens.shape)}")
    if str(tokens.dtype) not in TOKEN_DTYPES:
        raise HeadkitError(
            f"{name} must hold integer token ids of dtype {' or '.join(TOKEN_DTYPES)}, got dtype {tokens.dtype}"
            + (": convert with tokens.long()" if not (tokens.is_floating_point() or tokens.is_complex()) else "")
        )
    if tokens.device.type == "meta":
        raise HeadkitError(f"{name} is on the meta device, which holds no values: pass tokens on {model.cfg.device}")
    batch, pos = tokens.shape
    if batch == 0 or pos == 0:
        raise HeadkitError(f"{name} is empty (shape {tuple(tokens.shape)}): give at least one prompt")
    check_length(pos, model.cfg.n_ctx, name=f"{name} length")
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= model.cfg.d_vocab:
        bad = (tokens < 0) | (tokens >= model.cfg.d_vocab)
        p, t = (int(x) for x in bad.nonzero()[0])
        raise HeadkitError(
            f"{name}: prompt {p}, position {t} has token id {int(tokens[p, t])}, "
            f"outside the model's vocabulary 0..{model.cfg.d_vocab - 1}"
        )
    return tokens


def check_token_pair(model: Model, clean: Tensor, corrupted: Tensor) -> None:
    """Check ``clean_tokens`` and ``corrupted_tokens`` for ``model``, and that their shapes agree."""
    check_tokens(model, clean, name="clean_tokens")
    check_tokens(model, corrupted, name="corrupted_tokens")
    if clean.shape != corrupted.shape:
        raise HeadkitError(
            f"clean_tokens shape {tuple(clean.shape)} and corrupted_tokens shape "
            f"{tuple(corrupted.shape)} differ: patching needs prompts of the same shape"
        )


def check_finite(values: Tensor, *, where: str) -> Tensor:
    """``values`` unchanged if every entry is finite; else a `NonFiniteError` naming ``where``.

    The one finiteness check of headkit, on any tensor a model computed: logits,
    metric values, activations (`headkit.scores.capture.finite_hooks`). A model with
    NaN or infinite outputs (a diverged run, non-finite weights, or finite weights
    whose activations overflow) would otherwise give normal-looking numbers (the
    argmax of all-NaN logits is id 0; an accuracy of 0.0 is a valid value; an
    all-NaN attention pattern is zeroed into an "inactive" head).
    """
    finite = values.isfinite()
    if bool(finite.all()):
        return values
    n_nan = int(values.isnan().sum())
    n_inf = int((~finite).sum()) - n_nan
    found = ", ".join(f"{n} {kind}" for n, kind in ((n_nan, "NaN"), (n_inf, "infinite")) if n)
    raise NonFiniteError(
        f"{where} is not finite ({found} of {values.numel()} values): the model computes NaN or infinity "
        "(diverged training, non-finite weights, or a config such as a negative layer-norm epsilon?), "
        "so any number computed from it would mean nothing"
    )


def check_position(model_or_length: int, position: int, *, name: str = "position") -> int:
    """Resolve a (possibly negative) position in a sequence of the given length."""
    length = model_or_length
    if not -length <= position < length:
        raise HeadkitError(
            f"{name} {position} is out of range for prompts of length {length}: "
            f"allowed {-length}..{length - 1}"
        )
    return position % length


# --------------------------------------------------------------------------- seeds and devices

SEED_MAX = 2**64 - 1  # largest seed torch.Generator.manual_seed accepts (an unsigned 64-bit integer)


def check_seed(seed: int, *, name: str = "seed") -> int:
    """A seed torch can take: an int in 0..2**64-1 (2**70 used to overflow inside manual_seed)."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise HeadkitError(f"{name} must be an integer, got {seed!r}")
    if not 0 <= seed <= SEED_MAX:
        raise HeadkitError(f"{name}={seed} is out of range: seeds are 0..{SEED_MAX} (2**64 - 1)")
    return seed



def check_device(device: str) -> str:
    """``device`` as a torch device string this machine has; else a HeadkitError naming it.

    ``auto`` is ``cuda`` when a GPU is present, else ``cpu``.
    ``cuda`` on a CPU-only torch (or with no GPU visible), a ``cuda:N`` beyond the
    visible GPUs, ``mps`` without Metal, ``meta`` (no values) and unknown names
    are refused before any work.
    """
    import torch

    if device == "auto":  # the GPU when there is one
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise HeadkitError(f"device {device!r} is not a torch device: e.g. cpu, cuda, cuda:0") from None
    kind = parsed.type
    if kind == "cpu":
        return str(parsed)
    if kind == "meta":
        raise HeadkitError(f"device {device!r} holds no values and cannot run a model: use cpu or cuda")
    if kind == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise HeadkitError(f"device {device!r} is not available: {why}; use cpu")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise HeadkitError(f"device {device!r} is not available: this machine has cuda:0..cuda:{count - 1}")
        return str(parsed)
    try:
        torch.empty(0, device=parsed)
    except Exception:  # torch raises RuntimeError, AssertionError or others for a missing backend
        raise HeadkitError(f"device {device!r} is not available on this machine: use cpu") from None
    return str(parsed)


O = TypeVar("O")


def options_of(
    kind: type[O], options: O | None, fields: Mapping[str, Any], *, what: str, name: str = "options"
) -> O:
    """The options of function ``what``: the dataclass ``options``, or its fields given as keywords.

    The one checked path of every function that takes an options dataclass (`SwapOptions`,
    `LoadOptions`, ...): keywords are built into ``kind`` by ``kind.of(fields, what=what)``
    (an unknown name refused, listing the known ones; every value checked on creation).
    ``options`` (the parameter ``name``) must be a ``kind``; giving it and keywords too is
    refused, naming both.
    """
    if options is None:
        return kind.of(fields, what=what)  # type: ignore[attr-defined]
    if not isinstance(options, kind):
        raise HeadkitError(f"{what}: {name} must be a {kind.__name__}, got {type(options).__name__} {options!r}")
    if fields:
        raise HeadkitError(
            f"{what}: got {name}={kind.__name__}(...) and keyword option(s) {', '.join(fields)}: give one or the "
            f"other (dataclasses.replace({name}, {next(iter(fields))}=...) changes a field)"
        )
    return options


def some_names(names: Sequence[str], *, shown: int = 3) -> str:
    """The first ``shown`` names for a message, then how many more: ``a, b, c and 4 more``."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")
