"""Issue 16, "same numbers": the tables of the main analyses on a trained run's checkpoint,
as headkit loads it (a TransformerBridge), equal those of TransformerLens 3.9's own
HookedTransformer of the same checkpoint (its ``convert_gptj_weights``) within 1e-5.

Runs while TransformerLens 3.9 installs (the second environment of .ci/run); skipped on 4.x.
"""

from __future__ import annotations

import pandas as pd
import torch

from headkit.evaluation import evaluate
from headkit.interventions.ablation import ablation_sweep
from headkit.interventions.activation_patching import activation_patching
from headkit.interventions.metrics import default_metric
from headkit.interventions.path_patching import path_patching_sweep
from headkit.model_types import is_bridge, is_hooked
from headkit.scores.positional_symbolic import classify_heads
from headkit.training.checkpoints import load_checkpoint, load_hf_model
from headkit.training.layout import latest_checkpoint

from hooked import hooked_from_hf_gptj, needs_hooked


def _numbers(frame: pd.DataFrame) -> torch.Tensor:
    return torch.tensor(frame.select_dtypes("number").astype(float).to_numpy())


@needs_hooked
def test_tables_of_a_trained_run_equal_the_hooked_transformer_of_its_checkpoint(tiny_number_run):
    run, task = tiny_number_run
    folder = latest_checkpoint(run)
    bridge = load_checkpoint(folder, device="cpu").model
    hooked = hooked_from_hf_gptj(load_hf_model(folder, dropout=0.0))
    assert is_bridge(bridge) and is_hooked(hooked)
    batch = task.build(12, seed=7)
    clean, corrupted = batch.tokens, batch.corrupted.tokens
    tables = {  # what `census`, `patch`, `path-patch`, `ablate` and `eval` compute
        "classify": lambda m: classify_heads(m, clean),
        "patch": lambda m: activation_patching(m, clean, corrupted, default_metric(batch, per_example=False)),
        "path-patch": lambda m: path_patching_sweep(m, clean, corrupted, "final", default_metric(batch, per_example=False)),
        "ablate": lambda m: ablation_sweep(m, batch),
        "eval": lambda m: evaluate(m, task, n_prompts=16),
    }
    for name, table in tables.items():
        got, want = table(bridge), table(hooked)
        assert len(got) > 0 and list(got.columns) == list(want.columns), name
        non_numeric = want.select_dtypes(exclude="number").columns
        pd.testing.assert_frame_equal(got[non_numeric], want[non_numeric], obj=name)
        torch.testing.assert_close(_numbers(got), _numbers(want), atol=1e-5, rtol=1e-5, equal_nan=True, msg=name)
