"""Every analysis runs on a TransformerBridge and, on TransformerLens 3.9, gives the
HookedTransformer's table for the same weights (issue 16: "same numbers").

One tiny GPT-J (Hugging Face, random weights, vocabulary of the number task) seen two
ways: wrapped in place by `headkit.bridge.build.wrap`, and (TransformerLens 3.9 only)
converted to a HookedTransformer by TransformerLens 3.9's own ``convert_gptj_weights``. Each analysis's numeric
columns must agree within 1e-5. On TransformerLens 4.x, where there is no
HookedTransformer, each analysis runs on the bridge and must return finite numbers
in its documented columns.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from transformers import GPTJConfig, GPTJForCausalLM

import headkit as hk
from headkit.bridge.build import wrap
from headkit.interventions.metrics import default_metric
from headkit.model_types import has_hooked_transformer
from headkit.tasks import number_task

from hooked import hooked_from_hf_gptj

TASK = hk.TaskSpec("number", {})
BATCH = number_task(12, seed=0)
METRIC = default_metric(BATCH, per_example=False)
CLEAN, CORRUPT = BATCH.tokens, BATCH.corrupted.tokens

ANALYSES = {
    "positional_symbolic_scores": lambda m: hk.positional_symbolic_scores(m, CLEAN[:4]),
    "positional_symbolic_tokens": lambda m: hk.positional_symbolic_scores(m, CLEAN[:3], swap="tokens"),
    "rope_frequency_scores": lambda m: hk.rope_frequency_scores(m, CLEAN[:3]),
    "rope_frequency_use": lambda m: hk.rope_frequency_use(m, CLEAN),
    "discrepancy": lambda m: hk.discrepancy(m, TASK, lengths=[17, 25], n_prompts=8),
    "previous_token_scores": lambda m: hk.previous_token_scores(m, CLEAN),
    "induction_scores": lambda m: hk.induction_scores(m, n_prompts=8, seed=0),
    "copying_scores": lambda m: hk.copying_scores(m),
    "composition_scores": lambda m: hk.composition_scores(m, kind="k"),
    "head_census": lambda m: hk.head_census(m, CLEAN[:4], n_prompts=8),
    "ablate_mean": lambda m: hk.ablate(m, CLEAN, [(1, 0)], method="mean"),
    "ablation_sweep": lambda m: hk.ablation_sweep(m, BATCH, metric=METRIC),
    "activation_patching_z": lambda m: hk.activation_patching(m, CLEAN, CORRUPT, METRIC),
    "activation_patching_pattern": lambda m: hk.activation_patching(m, CLEAN, CORRUPT, METRIC, site="pattern"),
    "activation_patching_resid": lambda m: hk.activation_patching(m, CLEAN, CORRUPT, METRIC, site="resid_pre"),
    "path_patching_final": lambda m: hk.path_patching(m, CLEAN, CORRUPT, [(0, 0)], "final", METRIC),
    "path_patching_q": lambda m: hk.path_patching(m, CLEAN, CORRUPT, [(0, 0)], [(1, 1, "q")], METRIC),
    "attribution_patching": lambda m: hk.attribution_patching(m, CLEAN, CORRUPT, METRIC),
    "evaluate": lambda m: hk.evaluate(m, TASK, n_prompts=16, lengths=[17, 25]),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    config = GPTJConfig(vocab_size=TASK.d_vocab, n_positions=64, n_embd=32, n_layer=2, n_head=2, rotary_dim=8, use_cache=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        hf = GPTJForCausalLM(config).eval()
    # TransformerLens 3.9's own HookedTransformer of the same weights (its conversion, not headkit's)
    hooked = hooked_from_hf_gptj(hf) if has_hooked_transformer() else None
    return wrap(hf), hooked


def _numbers(result) -> torch.Tensor:
    if isinstance(result, pd.DataFrame):
        return torch.tensor(result.select_dtypes("number").astype(float).to_numpy())
    return torch.as_tensor(result, dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(ANALYSES))
def test_analysis_on_the_bridge_equals_the_hooked_transformer(models, name):
    bridge, hooked = models
    got = ANALYSES[name](bridge)
    values = _numbers(got)
    assert values.numel() > 0
    if hooked is None:
        finite = torch.isfinite(values) | torch.isnan(values)  # NaN where a column documents it (e.g. nope θ)
        assert finite.all() and torch.isfinite(values).any(), name
        return
    want = ANALYSES[name](hooked)
    if isinstance(want, pd.DataFrame):
        assert list(got.columns) == list(want.columns)
        non_numeric = want.select_dtypes(exclude="number").columns
        pd.testing.assert_frame_equal(got[non_numeric], want[non_numeric])
    torch.testing.assert_close(values, _numbers(want), atol=1e-5, rtol=1e-5, equal_nan=True, msg=name)
