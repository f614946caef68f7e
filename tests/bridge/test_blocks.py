"""Blocks run alone with the recorded inputs of a full forward equal the full forward;
the probe catches a block runner that lets attention see the future."""

from __future__ import annotations

import pytest
import torch

from headkit.bridge import blocks as blocks_mod
from headkit.bridge import probe as probe_mod
from headkit.bridge.blocks import record_block_inputs, run_blocks, unembed
from headkit.bridge.build import wrap
from headkit.bridge.probe import probe, require
from headkit.errors import HeadkitError

from tiny_architectures import VOCAB, build


@pytest.mark.parametrize("name", ["gptj", "llama", "gpt2", "bloom", "gpt_neox"])
def test_restart_at_each_layer_equals_the_full_forward_also_stacked(name):
    bridge = wrap(build(name))
    tokens = torch.randint(0, VOCAB, (2, 8))
    with torch.no_grad(), record_block_inputs(bridge, batch=2, n_pos=8) as inputs:
        logits, cache = bridge.run_with_cache(tokens)
    with torch.no_grad():
        for layer in range(bridge.cfg.n_layers):
            resid = cache[f"blocks.{layer}.hook_resid_pre"]
            torch.testing.assert_close(unembed(bridge, run_blocks(bridge, resid, layer, inputs=inputs)), logits, atol=1e-5, rtol=1e-5)
            stacked = run_blocks(bridge, resid.repeat(3, 1, 1), layer, inputs=inputs)  # 3 copies along the batch
            torch.testing.assert_close(unembed(bridge, stacked)[2:4], logits, atol=1e-5, rtol=1e-5)


def test_run_blocks_refuses_a_bridge_without_recorded_inputs_and_a_wrong_length():
    bridge = wrap(build("llama"))
    resid = torch.zeros(1, 5, 32)
    with pytest.raises(HeadkitError, match="recorded forward"):
        run_blocks(bridge, resid, 0)
    with torch.no_grad(), record_block_inputs(bridge, batch=1, n_pos=4) as inputs:
        bridge(torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(HeadkitError, match="recorded at 4 positions"):
        run_blocks(bridge, resid, 0, inputs=inputs)
    with pytest.raises(HeadkitError, match="blocks 0..4"):
        run_blocks(bridge, resid[:, :4], 0, 5, inputs=inputs)


def test_the_probe_catches_a_block_run_without_its_causal_mask(monkeypatch):
    """Hand Llama's blocks an all-visible mask instead of the recorded inputs: attention then
    reads later positions, and the probe's block_alone check fails, so `require` refuses."""
    bridge = wrap(build("llama"))
    assert probe(bridge).block_alone
    original = blocks_mod.BlockInputs.for_layer

    def without_causal_mask(self, layer, batch):
        kwargs = original(self, layer, batch)
        kwargs["attention_mask"] = torch.zeros(batch, 1, self.n_pos, self.n_pos)  # everything visible
        return kwargs

    monkeypatch.setattr(blocks_mod.BlockInputs, "for_layer", without_causal_mask)
    verdict = probe(bridge)
    assert not verdict.block_alone
    probe_mod._PROBED.pop(bridge)  # wrap probed the model as built; probe it again as it now runs
    with pytest.raises(HeadkitError, match=r"swap needs blocks\[l\] run alone .* LlamaForCausalLM"):
        require(bridge, "swap")


def test_headkit_gptj_attention_stays_causal_whatever_mask_it_is_given(monkeypatch):
    bridge = wrap(build("gptj"))
    original = blocks_mod.BlockInputs.for_layer

    def without_causal_mask(self, layer, batch):
        kwargs = original(self, layer, batch)
        kwargs["attention_mask"] = torch.zeros(batch, 1, self.n_pos, self.n_pos)
        return kwargs

    monkeypatch.setattr(blocks_mod.BlockInputs, "for_layer", without_causal_mask)
    assert probe(bridge).block_alone


def test_require_names_the_architecture_and_the_hook():
    bridge = wrap(build("opt"))
    with pytest.raises(HeadkitError, match=r"discrepancy needs hook_attn_scores \(pre-softmax scores\).*OPTForCausalLM"):
        require(bridge, "discrepancy")
    with pytest.raises(HeadkitError, match=r"patch_pattern needs hook_pattern \(edits must reach the output\)"):
        require(bridge, "patch_pattern")
    require(bridge, "swap")  # OPT's pattern and blocks are faithful
    neox = wrap(build("gpt_neox"))
    with pytest.raises(HeadkitError, match=r"rotary needs hook_rot_q/hook_rot_k .*GPTNeoXForCausalLM"):
        require(neox, "rotary")
    require(wrap(build("gptj")), "rotary")


def test_boot_loads_a_directory_offline_and_keeps_issue_18s_checks(tmp_path):
    """`boot` = from_pretrained (local, no remote code) + wrap; an auto_map and a config whose
    sizes the weights do not hold are refused before transformers builds anything."""
    import json

    from headkit.loading.hf import boot

    hf = build("llama")
    hf.save_pretrained(tmp_path / "m")
    tokens = torch.randint(0, VOCAB, (1, 6))
    with torch.no_grad():
        torch.testing.assert_close(boot(tmp_path / "m")(tokens), hf(tokens).logits, atol=1e-5, rtol=1e-5)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoConfig": "evil.Config"}}))
    with pytest.raises(HeadkitError, match="has an auto_map"):
        boot(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 10**9}))
    with pytest.raises(HeadkitError, match="num_hidden_layers=1000000000 but the weight files"):
        boot(tmp_path / "m")
