"""A model with NaN or infinite outputs gives errors, never a normal-looking table (issue 9).

The rule (docs/interventions.md): non-finite logits of any run an intervention
measures, and non-finite metric values, raise `HeadkitError` naming the run and
what was not finite. Without it, ``accuracy`` on all-NaN logits is a valid-looking
0.0 (the argmax of NaN logits is id 0), and NaN deltas print as a quiet table.
"""

from __future__ import annotations

import pytest
import torch

from headkit.errors import HeadkitError
from headkit.evaluation import evaluate
from headkit.interventions.ablation import (
    ablate,
    ablate_metric,
    ablation_sweep,
    ablation_sweep_by_hop,
    attention_knockout,
)
from headkit.interventions.activation_patching import activation_patching
from headkit.interventions.attribution import attribution_patching
from headkit.interventions.metrics import METRICS, accuracy, logit_diff
from headkit.interventions.path_patching import path_patching, path_patching_sweep
from headkit.model_config import ModelConfig
from headkit.models import model_from_config
from headkit.tasks import TaskSpec

from model_edits import negative_eps

TASK = TaskSpec("number", {"target_window": 4, "pointer_window": 4, "max_hops": 2, "n_letters": 10, "max_pointer": 6})
NOT_FINITE = "is not finite"


@pytest.fixture(scope="module")
def batch():
    return TASK.build(8, seed=0)


def _model(batch, *, seed=0):
    cfg = ModelConfig(n_layers=2, d_model=32, n_heads=2, d_vocab=len(batch.vocab), n_ctx=32)
    model = model_from_config(cfg, seed=seed)
    model.eval()
    return model


@pytest.fixture(scope="module")
def nan_model(batch):
    """A diverged model: a NaN in one head's W_V reaches every logit."""
    model = _model(batch)
    with torch.no_grad():
        model.blocks[0].attn.W_V[1, 0, 0] = float("nan")
    assert torch.isnan(model(batch.tokens)).all()  # as after `--lr 1e9`
    return model


@pytest.fixture(scope="module")
def healthy(batch):
    return _model(batch, seed=1)


def test_accuracy_of_nan_logits_is_an_error_not_zero(nan_model, batch):
    logits = nan_model(batch.tokens)
    assert float((logits[:, -1].argmax(-1) == 0).float().mean()) == 1.0  # what made it look like a number
    for name, factory in METRICS.items():
        with pytest.raises(HeadkitError, match=rf"metric {name}: the logits {NOT_FINITE} \(\d+ NaN of \d+ values\)"):
            factory(batch)(logits)


@pytest.mark.parametrize("metric_name", ["accuracy", "logit_diff"])
def test_ablation_of_a_nan_model(nan_model, batch, metric_name):
    metric = METRICS[metric_name](batch)
    for together in (False, True):
        with pytest.raises(HeadkitError, match=f"the logits without ablation {NOT_FINITE}"):
            ablation_sweep(nan_model, batch, method="mean", metric=metric, together=together)
    with pytest.raises(HeadkitError, match=f"the logits without ablation {NOT_FINITE}"):
        ablation_sweep_by_hop(nan_model, batch, method="zero", metric=METRICS[metric_name](batch, per_example=True))
    with pytest.raises(HeadkitError, match=rf"ablate_metric: the logits with 1\.0 ablated {NOT_FINITE}"):
        ablate_metric(nan_model, batch.tokens, [(1, 0)], metric)
    # zero-ablating the broken head itself (0.1, NaN in its W_V) makes the output finite again
    assert ablate_metric(nan_model, batch.tokens, [(0, 1)], metric, method="zero") == pytest.approx(
        float(metric(ablate(nan_model, batch.tokens, [(0, 1)], method="zero")).detach())
    )


def test_ablation_that_makes_logits_nan_names_the_head(healthy, batch):
    # a replacement with a NaN: only the rows that ablate head 1.1 become non-finite
    def nan_mean(model, tokens, layers, reference, seed):
        z = torch.zeros(1, tokens.shape[1], model.cfg.n_heads, model.cfg.d_head)
        z[..., 1, :] = float("nan")
        return {f"blocks.{l}.attn.hook_z": z for l in layers}

    from headkit.interventions import ablation

    original = ablation.METHODS["zero"]
    ablation.METHODS["zero"] = nan_mean
    try:
        with pytest.raises(HeadkitError, match=f"the logits of the run with z of head 1.1 replaced {NOT_FINITE}"):
            ablation_sweep(healthy, batch, method="zero", metric=accuracy(batch), heads=[(1, 0), (1, 1)])
        # head 1.0 alone gets a finite row
        frame = ablation_sweep(healthy, batch, method="zero", metric=accuracy(batch), heads=[(1, 0)])
        assert frame["ablated"].notna().all()
    finally:
        ablation.METHODS["zero"] = original


def test_patching_and_attribution_of_a_nan_model(nan_model, batch):
    metric = logit_diff(batch)
    with pytest.raises(HeadkitError, match=f"the logits of the clean run {NOT_FINITE}"):
        activation_patching(nan_model, batch.tokens, batch.corrupted.tokens, accuracy(batch))
    with pytest.raises(HeadkitError, match=f"the logits of the clean run {NOT_FINITE}"):
        path_patching(nan_model, batch.tokens, batch.corrupted.tokens, [(0, 0)], "final", metric)
    with pytest.raises(HeadkitError, match=f"the logits of the clean run {NOT_FINITE}"):
        path_patching_sweep(nan_model, batch.tokens, batch.corrupted.tokens, [(1, 0, "q")], metric)
    with pytest.raises(HeadkitError, match=f"the logits of the clean run {NOT_FINITE}"):
        attribution_patching(nan_model, batch.tokens, batch.corrupted.tokens, metric)


def test_knockout_logits_of_a_nan_model_are_refused_by_every_metric(nan_model, batch):
    logits = attention_knockout(nan_model, batch.tokens, layer=1, head=0, query_pos=-1, key_pos=0)
    with pytest.raises(HeadkitError, match=f"metric accuracy: the logits {NOT_FINITE}"):
        accuracy(batch)(logits)


def test_a_metric_that_comes_out_nan_is_an_error(healthy, batch):
    def nan_metric(logits):
        return logits[:, -1, 0].mean() * float("nan")

    with pytest.raises(HeadkitError, match=f"metric on the clean run: the metric value {NOT_FINITE} \\(1 NaN of 1"):
        activation_patching(healthy, batch.tokens, batch.corrupted.tokens, nan_metric)
    with pytest.raises(HeadkitError, match=f"ablation_sweep metric: the metric value {NOT_FINITE}"):
        ablation_sweep(healthy, batch, metric=nan_metric)
    with pytest.raises(HeadkitError, match=f"metric on the clean run: the metric value {NOT_FINITE}"):
        path_patching_sweep(healthy, batch.tokens, batch.corrupted.tokens, "final", nan_metric)
    with pytest.raises(HeadkitError, match=f"metric on the corrupted run: the metric value {NOT_FINITE}"):
        attribution_patching(healthy, batch.tokens, batch.corrupted.tokens, nan_metric)

    def inf_per_prompt(logits):
        return torch.full((batch.n,), float("inf"))

    with pytest.raises(HeadkitError, match=f"per-prompt metric values {NOT_FINITE} \\(8 infinite of 8"):
        ablation_sweep_by_hop(healthy, batch, metric=inf_per_prompt)


def test_finite_models_are_unaffected(healthy, batch):
    frame = ablation_sweep(healthy, batch, method="mean", metric=accuracy(batch))
    assert frame[["baseline", "ablated", "delta"]].notna().all().all()
    logits = ablate(healthy, batch.tokens, [(0, 0)], method="zero")
    assert torch.isfinite(logits).all()


def test_evaluate_of_a_nan_model_is_an_error_not_an_accuracy(nan_model):
    with pytest.raises(HeadkitError, match=rf"the model's logits on number prompts of length \d+ {NOT_FINITE}"):
        evaluate(nan_model, TASK, n_prompts=8)


def test_evaluate_of_finite_weights_with_nan_activations_is_an_error(batch):
    """Issue 18: finite weights, a negative LayerNorm epsilon (as a config.json can set)."""
    model = _model(batch)
    negative_eps(model)
    assert all(p.isfinite().all() for p in model.parameters())
    with pytest.raises(HeadkitError, match=rf"the model's logits on number prompts of length \d+ {NOT_FINITE}"):
        evaluate(model, TASK, n_prompts=8)
