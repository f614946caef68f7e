"""What an intervention is measured by: metrics on a model's logits.

Every intervention (ablation, activation patching, path patching, attribution)
compares a model's output under the intervention with its normal output through a
*metric*: a function from logits [batch, pos, d_vocab] to a number. The factories
here close over a `TaskBatch` and read the batch's answer conventions (see
`headkit.tasks.base`): ``answer_pos`` is the one scored position of each prompt,
``answers`` the token expected there and ``wrong_answers`` the distractor.

- `logit_diff`: ``logit(answer) - logit(wrong_answer)`` at the answer position
  (IOI, Wang et al. 2022). The standard patching metric: linear in the final
  residual stream, so effects of different heads roughly add up, and insensitive
  to whatever shifts every logit at once.
- `answer_logprob`: ``log softmax(logits)[answer]`` at the answer position, for
  tasks without a natural distractor.
- `accuracy`: ``argmax == answer`` at the answer position, as a float (exact
  match, as PosSym-2026 scores its models).
- `loss`: cross-entropy on ``batch.targets`` at every non-``IGNORE`` position.

By default a metric returns the mean over the batch as a 0-dim tensor (for
`loss`: the mean over all scored tokens, as in training); ``per_example=True``
returns one value per prompt, shape [batch] (for `loss`: each prompt's mean over
its own scored tokens), which is what per-hop breakdowns group. Metrics keep the
autograd graph, so attribution patching can differentiate them.

Any callable ``logits -> scalar`` can stand in for these; `check_scalar` is how
the interventions refuse one that returns something else, naming where.

Non-finite numbers are errors, never results: the built-in metrics refuse logits
holding NaN or infinity (the argmax of all-NaN logits is id 0, so `accuracy`
would quietly report a number), and `check_scalar` refuses a NaN or infinite
metric value, naming the run it came from.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

from jaxtyping import Float

from headkit.checks import check_finite
from headkit.errors import HeadkitError

if TYPE_CHECKING:  # torch and the tasks are imported when a metric is built or run, so that
    # the command line can read METRICS' names cheaply
    from torch import Tensor

    from headkit.tasks.base import TaskBatch

logger = logging.getLogger(__name__)

Metric = Callable[["Tensor"], "Tensor"]  # logits [batch, pos, d_vocab] -> scalar tensor (0-dim)


def check_scalar(value: object, *, where: str) -> Tensor:
    """``value`` as a finite 0-dim tensor; a metric that returned anything else is an error.

    Accepts a 0-dim or one-element tensor, or a Python int/float. The message names
    ``where`` (which metric, which run) and what came back instead; a NaN or
    infinite value is refused too.
    """
    import torch

    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise HeadkitError(
                f"{where}: the metric must return a scalar (a 0-dim or 1-element tensor, or a "
                f"float), got a tensor of shape {tuple(value.shape)}"
            )
        return check_finite(value.reshape(()), where=f"{where}: the metric value")  # [] (0-dim)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return check_finite(torch.tensor(float(value)), where=f"{where}: the metric value")
    raise HeadkitError(
        f"{where}: the metric must return a scalar (a 0-dim or 1-element tensor, or a float), "
        f"got {type(value).__name__}"
    )


def _check_logits(logits: Tensor, batch: TaskBatch, name: str) -> None:
    """Logits must be finite, [batch.n, pos, d_vocab], with every answer position and id inside."""
    import torch

    if not isinstance(logits, torch.Tensor) or logits.ndim != 3 or logits.shape[0] != batch.n:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise HeadkitError(
            f"metric {name}: expected logits of shape [batch={batch.n}, pos, d_vocab], got {shape}"
        )
    pos, d_vocab = logits.shape[1], logits.shape[2]
    if int(batch.answer_pos.max()) >= pos or int(batch.answer_pos.min()) < -pos:
        raise HeadkitError(
            f"metric {name}: answer positions up to {int(batch.answer_pos.max())} do not fit "
            f"logits of {pos} positions"
        )
    if int(batch.answers.max()) >= d_vocab:
        raise HeadkitError(
            f"metric {name}: answer id {int(batch.answers.max())} is outside the logits' "
            f"vocabulary 0..{d_vocab - 1}"
        )
    check_finite(logits.detach(), where=f"metric {name}: the logits")


def _answer_logits(logits: Float[Tensor, "batch pos d_vocab"], batch: TaskBatch) -> Float[Tensor, "batch d_vocab"]:
    """The logits at each prompt's answer position."""
    import torch

    rows = torch.arange(batch.n, device=logits.device)
    return logits[rows, batch.answer_pos.to(logits.device)]


def _reduce(values: Float[Tensor, " batch"], per_example: bool) -> Tensor:
    return values if per_example else values.mean()


def logit_diff(batch: TaskBatch, *, per_example: bool = False) -> Metric:
    """``logit(answers) - logit(wrong_answers)`` at ``answer_pos``.

    Needs ``batch.wrong_answers`` (the corrupted twin's answers for the number and
    letter tasks, the subject name for IOI).
    """
    if batch.wrong_answers is None:
        raise HeadkitError(
            f"logit_diff needs wrong_answers, but this {batch.task!r} batch has none: "
            "use answer_logprob or accuracy, or a task that defines a distractor"
        )
    wrong = batch.wrong_answers

    def metric(logits: Float[Tensor, "batch pos d_vocab"]) -> Tensor:
        _check_logits(logits, batch, "logit_diff")
        at_answer = _answer_logits(logits, batch)  # [batch, d_vocab]
        right = at_answer.gather(-1, batch.answers.to(logits.device)[:, None])[:, 0]
        other = at_answer.gather(-1, wrong.to(logits.device)[:, None])[:, 0]
        return _reduce(right - other, per_example)

    return metric


def answer_logprob(batch: TaskBatch, *, per_example: bool = False) -> Metric:
    """``log_softmax(logits)[answers]`` at ``answer_pos`` (computed in float32)."""

    def metric(logits: Float[Tensor, "batch pos d_vocab"]) -> Tensor:
        _check_logits(logits, batch, "answer_logprob")
        logprobs = _answer_logits(logits, batch).float().log_softmax(-1)  # [batch, d_vocab]
        return _reduce(logprobs.gather(-1, batch.answers.to(logits.device)[:, None])[:, 0], per_example)

    return metric


def accuracy(batch: TaskBatch, *, per_example: bool = False) -> Metric:
    """``argmax == answers`` at ``answer_pos``, as floats (1.0 right, 0.0 wrong).

    Not differentiable: fine for ablation and patching, useless for attribution.
    """

    def metric(logits: Float[Tensor, "batch pos d_vocab"]) -> Tensor:
        _check_logits(logits, batch, "accuracy")
        predicted = _answer_logits(logits, batch).argmax(-1)  # [batch]
        return _reduce((predicted == batch.answers.to(logits.device)).float(), per_example)

    return metric


def loss(batch: TaskBatch, *, per_example: bool = False) -> Metric:
    """Cross-entropy of the logits against ``batch.targets``, ``IGNORE`` positions skipped.

    The mean is over all scored tokens of the batch (as the training loss);
    ``per_example=True`` gives each prompt's mean over its own scored tokens.
    """
    import torch.nn.functional as F

    from headkit.tasks.base import IGNORE

    scored_per_prompt = (batch.targets != IGNORE).sum(-1)  # [batch]
    if int(scored_per_prompt.min()) == 0:
        empty = int((scored_per_prompt == 0).nonzero()[0])
        raise HeadkitError(
            f"loss: prompt {empty} of this {batch.task!r} batch has no scored target "
            f"(every target is IGNORE={IGNORE})"
        )

    def metric(logits: Float[Tensor, "batch pos d_vocab"]) -> Tensor:
        _check_logits(logits, batch, "loss")
        if logits.shape[1] != batch.length:
            raise HeadkitError(
                f"metric loss: logits have {logits.shape[1]} positions, targets {batch.length}"
            )
        targets = batch.targets.to(logits.device)
        per_token = F.cross_entropy(
            logits.float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="none"
        )  # [batch, pos], 0 at ignored positions
        if not per_example:
            return per_token.sum() / (targets != IGNORE).sum()
        return per_token.sum(-1) / scored_per_prompt.to(logits.device)

    return metric


# metric name -> factory ``(batch, *, per_example) -> Metric``, for the command line
METRICS: dict[str, Callable[..., Metric]] = {
    "logit_diff": logit_diff,
    "answer_logprob": answer_logprob,
    "accuracy": accuracy,
    "loss": loss,
}


def default_metric_name(batch: TaskBatch) -> str:
    """``logit_diff`` where the batch has wrong answers, else ``answer_logprob`` (the default metric)."""
    return "logit_diff" if batch.wrong_answers is not None else "answer_logprob"


def default_metric(batch: TaskBatch, *, per_example: bool) -> Metric:
    """The default metric of ``batch`` (`default_metric_name`), built with ``per_example``."""
    return METRICS[default_metric_name(batch)](batch, per_example=per_example)


def scalar_metric(metric: Metric, *, where: str) -> Callable[[Tensor], Tensor]:
    """``metric`` refusing anything but a finite scalar (`check_scalar`, naming ``where``)."""

    def evaluate(logits: Tensor) -> Tensor:
        return check_scalar(metric(logits), where=where)

    return evaluate


def run_value(metric: Metric, logits: Tensor, *, run: str) -> Tensor:
    """``metric`` of one run's logits as a finite 0-dim tensor.

    Non-finite logits are refused as "the logits of {run}", a non-scalar or
    non-finite value as "metric on {run}" (e.g. ``run="the clean run"``).
    """
    check_finite(logits, where=f"the logits of {run}")
    return scalar_metric(metric, where=f"metric on {run}")(logits)


def normalise(values: Float[Tensor, " n"], *, base: float, source: float) -> Float[Tensor, " n"]:
    """``(values - base) / (source - base)``: 0 = the base run, 1 = the source run.

    One normaliser for activation patching (base = the run patched into) and path
    patching (base = clean, source = corrupted). When ``source == base`` the ratio
    is undefined: every entry is NaN and a warning is logged.
    """
    import torch

    if source == base:
        logger.warning(
            "the clean and corrupted runs give the same metric (%g): with equal metrics the "
            "normalised effects are NaN",
            base,
        )
        return torch.full_like(values, float("nan"))
    return (values - base) / (source - base)
