"""headkit's activation patching on bridges of several architectures equals TransformerLens's
own ``patching.get_act_patch_attn_head_out_all_pos`` (one forward per patch), on TransformerLens
3.9 and 4.x: the engine's restarts reuse block inputs recorded on one prompt (rotary tables,
masks, BLOOM's ALiBi tiled to the batch)."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import patching

from headkit.bridge.build import wrap
from headkit.interventions.activation_patching import activation_patching

from tiny_architectures import VOCAB, build


def metric(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1, 0].mean()


@pytest.mark.parametrize("name", ["gptj", "gpt2", "llama", "bloom", "falcon", "qwen2"])
def test_head_output_patching_equals_transformer_lens_patching(name):
    model = wrap(build(name))
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(0, VOCAB, (3, 7), generator=gen)
    corrupted = clean.clone()
    corrupted[:, 2] = (clean[:, 2] + 1 + torch.randint(0, VOCAB - 1, (3,), generator=gen)) % VOCAB
    table = activation_patching(model, clean, corrupted, metric, site="z")
    with torch.no_grad():
        _, cache = model.run_with_cache(clean)
        reference = patching.get_act_patch_attn_head_out_all_pos(model, corrupted, cache, metric)
    assert len(table) == reference.numel() > 0
    torch.testing.assert_close(torch.tensor(table["value"].to_numpy()).float(), reference.flatten().float(), atol=1e-5, rtol=1e-5)
    assert float(reference.abs().max()) > 0  # a metric that moves
