"""Every architecture headkit's bridge covers: it boots, computes Hugging Face's logits,
and the faithfulness probe gives the verdict that TransformerLens's adapter earns.

The verdict table is the one `docs/loading.md` shows; it is measured here on tiny random
models of each family, on whichever TransformerLens line is installed (3.9 and 4.x in CI).
A changed verdict fails the test: update the table (and the docs) from what it prints.
"""

from __future__ import annotations

import pytest
import torch

from headkit.bridge.build import wrap
from headkit.bridge.probe import Faithfulness, probe

from tiny_architectures import CONFIGS, VOCAB, build

F, T, N = False, True, None
# name -> (pattern_fires, scores_pre_softmax, rotary_hooks, pattern_edits, block_alone)
EXPECTED: dict[str, tuple[bool, bool, bool | None, bool, bool]] = {
    "gptj": (T, T, T, T, T),  # headkit's attention; TransformerLens's own: (F, F, F, F, T) with sdpa
    "gpt_neo": (T, F, N, F, T),  # Hugging Face attention: post-softmax scores, edits dropped
    "opt": (T, F, N, F, T),
    "gpt_neox": (T, T, F, T, T),  # rotary hooks never fire
    "gpt2": (T, T, N, T, T),
    "llama": (T, T, T, T, T),
    "mistral": (T, T, T, T, T),
    "qwen2": (T, T, T, T, T),
    "qwen3": (T, T, T, T, T),
    "phi3": (T, T, F, T, T),  # rotary hooks never fire
    "phi": (T, T, T, T, T),
    "gemma": (T, T, T, T, T),
    "gemma2": (T, T, T, T, T),
    "gemma3": (T, T, T, T, T),
    "olmo2": (T, T, T, T, T),
    "falcon": (T, T, F, T, T),  # rotary Falcon: rotary hooks never fire
    "bloom": (T, T, N, T, T),  # ALiBi, no rotary
    "stablelm": (T, T, T, T, T),
    "gpt_bigcode": (T, T, N, T, T),
    "starcoder2": (T, T, T, T, T),
    "mixtral": (T, T, T, T, T),
    "qwen2_moe": (T, T, T, T, T),
}


def test_the_table_covers_every_tiny_architecture():
    assert set(EXPECTED) == set(CONFIGS)
    assert len(CONFIGS) >= 20


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_bridge_logits_equal_hugging_face_and_the_probe_gives_the_table(name):
    hf = build(name)
    tokens = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = hf(tokens).logits
        bridge = wrap(hf)
        logits = bridge(tokens)
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)
    verdict = probe(bridge)
    assert isinstance(verdict, Faithfulness)
    got = (verdict.pattern_fires, verdict.scores_pre_softmax, verdict.rotary_hooks, verdict.pattern_edits, verdict.block_alone)
    assert got == EXPECTED[name], f"{name}: probe says {verdict}"
    assert verdict.architecture == type(hf).__name__
