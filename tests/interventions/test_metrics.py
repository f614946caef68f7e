"""Metrics: each factory against a direct computation on hand-made logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from headkit.errors import HeadkitError
from headkit.interventions.metrics import (
    METRICS,
    accuracy,
    answer_logprob,
    check_scalar,
    default_metric,
    default_metric_name,
    logit_diff,
    loss,
    normalise,
    run_value,
    scalar_metric,
)
from headkit.tasks.base import IGNORE, TaskBatch, Vocab

BATCH, POS, VOCAB = 4, 5, 7


def make_batch(*, wrong: bool = True, targets: torch.Tensor | None = None) -> TaskBatch:
    gen = torch.Generator().manual_seed(1)
    answer_pos = torch.tensor([4, 3, 4, 2])
    answers = torch.tensor([1, 6, 0, 3])
    if targets is None:
        targets = torch.full((BATCH, POS), IGNORE)
        targets[torch.arange(BATCH), answer_pos] = answers
    return TaskBatch(
        task="toy",
        tokens=torch.randint(0, VOCAB, (BATCH, POS), generator=gen),
        targets=targets,
        answers=answers,
        answer_pos=answer_pos,
        vocab=Vocab(tuple(f"t{i}" for i in range(VOCAB))),
        wrong_answers=torch.tensor([2, 5, 0, 1]) if wrong else None,
    )


@pytest.fixture
def logits():
    return torch.randn(BATCH, POS, VOCAB, generator=torch.Generator().manual_seed(2))


def test_logit_diff_per_example_and_mean(logits):
    batch = make_batch()
    expected = torch.stack(
        [
            logits[i, batch.answer_pos[i], batch.answers[i]] - logits[i, batch.answer_pos[i], batch.wrong_answers[i]]
            for i in range(BATCH)
        ]
    )
    per = logit_diff(batch, per_example=True)(logits)
    assert per.shape == (BATCH,)
    torch.testing.assert_close(per, expected)
    mean = logit_diff(batch)(logits)
    assert mean.ndim == 0
    torch.testing.assert_close(mean, expected.mean())
    assert per[2] == 0  # answer == wrong answer


def test_logit_diff_needs_wrong_answers():
    with pytest.raises(HeadkitError, match="logit_diff needs wrong_answers.*'toy'"):
        logit_diff(make_batch(wrong=False))


def test_answer_logprob(logits):
    batch = make_batch()
    expected = torch.stack(
        [torch.log_softmax(logits[i, batch.answer_pos[i]], -1)[batch.answers[i]] for i in range(BATCH)]
    )
    torch.testing.assert_close(answer_logprob(batch, per_example=True)(logits), expected)
    torch.testing.assert_close(answer_logprob(batch)(logits), expected.mean())


def test_accuracy_on_logits_with_known_argmax():
    batch = make_batch()
    logits = torch.zeros(BATCH, POS, VOCAB)
    predicted = torch.tensor([1, 6, 4, 2])  # right, right, wrong, wrong
    logits[torch.arange(BATCH), batch.answer_pos, predicted] = 5.0
    logits[torch.arange(BATCH), 0, batch.answers] = 9.0  # a larger logit elsewhere must not count
    assert accuracy(batch, per_example=True)(logits).tolist() == [1.0, 1.0, 0.0, 0.0]
    assert accuracy(batch)(logits).item() == 0.5


def test_loss_skips_ignored_targets(logits):
    targets = torch.full((BATCH, POS), IGNORE)
    targets[0, [1, 4]] = torch.tensor([3, 1])
    targets[1, 3] = 6
    targets[2, :] = torch.tensor([0, 1, 2, 3, 4])
    targets[3, 2] = 3
    batch = make_batch(targets=targets)
    flat = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1), ignore_index=IGNORE)
    torch.testing.assert_close(loss(batch)(logits), flat)
    expected = []
    for i in range(BATCH):
        scored = targets[i] != IGNORE
        expected.append(F.cross_entropy(logits[i][scored], targets[i][scored]))
    torch.testing.assert_close(loss(batch, per_example=True)(logits), torch.stack(expected))


def test_loss_refuses_a_prompt_without_scored_targets():
    targets = torch.full((BATCH, POS), IGNORE)
    targets[:2, -1] = 1
    with pytest.raises(HeadkitError, match="prompt 2 .* has no scored target"):
        loss(make_batch(targets=targets))


@pytest.mark.parametrize("name", list(METRICS))
def test_metrics_refuse_logits_of_another_batch(name):
    metric = METRICS[name](make_batch())
    with pytest.raises(HeadkitError, match=rf"metric {name}: expected logits of shape \[batch=4"):
        metric(torch.zeros(3, POS, VOCAB))


@pytest.mark.parametrize("name", ["logit_diff", "answer_logprob", "loss"])
def test_metrics_keep_the_gradient(name, logits):
    logits = logits.clone().requires_grad_(True)
    METRICS[name](make_batch())(logits).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_metrics_table_names_the_factories():
    assert METRICS == {"logit_diff": logit_diff, "answer_logprob": answer_logprob, "accuracy": accuracy, "loss": loss}


def test_check_scalar_accepts_scalars():
    assert check_scalar(torch.tensor(2.5), where="x").item() == 2.5
    one = check_scalar(torch.tensor([1.5]), where="x")
    assert one.ndim == 0 and one.item() == 1.5
    assert check_scalar(3, where="x").item() == 3.0
    assert check_scalar(0.25, where="x").item() == 0.25


@pytest.mark.parametrize(
    "value,shown",
    [(torch.zeros(2), r"shape \(2,\)"), (torch.zeros(1, 3), r"shape \(1, 3\)"), ("1.0", "got str"), (None, "got NoneType"), (True, "got bool")],
)
def test_check_scalar_refuses_the_rest_naming_where(value, shown):
    with pytest.raises(HeadkitError, match=rf"^my sweep: the metric must return a scalar.*{shown}"):
        check_scalar(value, where="my sweep")


# --- the shared helpers: default metric, scalar wrapper, run value, normaliser ---------------


def test_default_metric_is_logit_diff_with_wrong_answers_else_answer_logprob():
    logits = torch.randn(BATCH, POS, VOCAB, generator=torch.Generator().manual_seed(4))
    for wrong, factory in ((True, logit_diff), (False, answer_logprob)):
        batch = make_batch(wrong=wrong)
        assert default_metric_name(batch) == factory.__name__
        for per_example in (False, True):
            got = default_metric(batch, per_example=per_example)(logits)
            assert torch.equal(got, factory(batch, per_example=per_example)(logits))


def test_scalar_metric_and_run_value_refuse_what_is_not_a_finite_scalar():
    logits = torch.randn(BATCH, POS, VOCAB)
    per_prompt = lambda logits: logits[:, -1, 0]  # noqa: E731
    assert scalar_metric(lambda logits: logits.sum(), where="x")(logits) == logits.sum()
    with pytest.raises(HeadkitError, match=r"metric on a run: the metric must return a scalar.*shape \(4,\)"):
        scalar_metric(per_prompt, where="metric on a run")(logits)
    assert run_value(lambda logits: logits[0, 0, 0], logits, run="the clean run") == logits[0, 0, 0]
    with pytest.raises(HeadkitError, match=r"metric on the clean run: the metric must return a scalar"):
        run_value(per_prompt, logits, run="the clean run")
    logits[0, 0, 0] = float("inf")
    with pytest.raises(HeadkitError, match=r"the logits of the clean run is not finite \(1 infinite"):
        run_value(lambda logits: logits[1, 0, 0], logits, run="the clean run")


def test_normalise_and_nan_with_a_warning_when_equal(caplog):
    import logging

    values = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    assert torch.equal(normalise(values, base=1.0, source=3.0), torch.tensor([0.0, 0.5, 1.5], dtype=torch.float64))
    assert torch.equal(normalise(values, base=3.0, source=1.0), torch.tensor([1.0, 0.5, -0.5], dtype=torch.float64))
    with caplog.at_level(logging.WARNING):
        nan = normalise(values, base=2.0, source=2.0)
    assert nan.isnan().all() and nan.dtype == torch.float64
    assert "give the same metric (2)" in caplog.text
