"""Analysis scripts R5-R7: smoke runs of each main() on tiny settings, plus checks of
the pieces each analysis adds on top of the library against independent references."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # importlib import mode: make `analyses` importable
    sys.path.insert(0, str(ROOT))

from analyses import r5_induction, r6_tree, r7_copy  # noqa: E402
from headkit.errors import HeadkitError  # noqa: E402
from headkit.models import gptj_model  # noqa: E402
from headkit.tasks import tree_task  # noqa: E402

from model_edits import bias

OUTPUT_FILES = {"config.json", "results.csv", "summary.json"}


def _check_outputs(folder: Path, table: pd.DataFrame, figure: str) -> dict:
    names = {p.name for p in folder.iterdir()}
    assert OUTPUT_FILES | {f"{figure}.html"} <= names
    assert not [n for n in names if n.endswith(".tmp")]  # atomic writes left nothing behind
    pd.testing.assert_frame_equal(pd.read_csv(folder / "results.csv"), table, check_dtype=False)
    return json.loads((folder / "summary.json").read_text())


# --- R5 -----------------------------------------------------------------------


def test_r5_smoke(tmp_path):
    cfg = r5_induction.quick_config()
    table = r5_induction.main(cfg, out=tmp_path, png=False)
    assert list(table.columns) == r5_induction.COLUMNS
    assert table.step.tolist() == [0, *range(cfg.eval_every, cfg.steps + 1, cfg.eval_every)]
    for col in ("max_induction_l1", "max_prev_token_l0", "tracked_induction", "tracked_prev_token"):
        assert table[col].between(0, 1).all(), col
    assert (table.max_induction_l1 >= table.tracked_induction - 1e-9).all()
    assert (table.max_prev_token_l0 >= table.tracked_prev_token - 1e-9).all()
    summary = _check_outputs(tmp_path, table, "phase_change")
    assert summary["induction_head"] == f"L1H{table.induction_head.iloc[-1]}"
    assert json.loads((tmp_path / "config.json").read_text())["steps"] == cfg.steps


def test_r5_phase_change_on_known_curves():
    steps = np.arange(0, 1001, 50)
    step_curve = pd.DataFrame({"step": steps, "eval_loss": np.where(steps < 500, 3.0, 0.1)})
    found = r5_induction.phase_change(step_curve, window=100, sudden_share=0.5)
    assert found["steepest_drop_step"] == 500 and found["sudden"]
    assert found["share_of_decrease_in_window"] == pytest.approx(1.0)
    ramp = pd.DataFrame({"step": steps, "eval_loss": 3.0 - 2.9 * steps / 1000})
    gradual = r5_induction.phase_change(ramp, window=100, sudden_share=0.5)
    assert not gradual["sudden"]
    assert gradual["share_of_decrease_in_window"] == pytest.approx(0.1, abs=0.06)


def test_r5_layer0_offsets_match_a_slow_loop():
    model = gptj_model(n_layers=2, d_model=16, n_heads=2, d_vocab=9, n_ctx=11, attn_only=True, seed=1)
    tokens = r5_induction.repeated_tokens_task(3, seed=0, half_length=5, vocab_size=8).tokens
    got = r5_induction.layer0_offsets(model, tokens)
    _, cache = model.run_with_cache(tokens)
    pattern = cache["pattern", 0]  # [batch, head, q, k]
    first = r5_induction.FIRST_QUERY
    for head in range(2):
        queries = range(first, tokens.shape[1])
        for name, offset in r5_induction.OFFSETS.items():
            slow = np.mean([float(pattern[b, head, q, q - offset]) for b in range(3) for q in queries])
            assert got[f"L0H{head}"][name] == pytest.approx(slow, abs=1e-6)
        bos = np.mean([float(pattern[b, head, q, 0]) for b in range(3) for q in queries])
        assert got[f"L0H{head}"]["bos"] == pytest.approx(bos, abs=1e-6)
        assert sum(got[f"L0H{head}"].values()) == pytest.approx(1.0)


def test_r5_config_rejects_bad_values():
    with pytest.raises(HeadkitError, match="eval_every"):
        r5_induction.R5Config(steps=10, eval_every=20)
    with pytest.raises(HeadkitError, match="sudden_share"):
        r5_induction.R5Config(sudden_share=1.5)


# --- R6 -----------------------------------------------------------------------


def test_r6_regions_match_the_builders_path():
    """level_j edges lead to the path node j levels above the goal, read off the path tokens."""
    batch = tree_task(40, seed=3, n_nodes=7, generator="random")
    regions, names = r6_tree.key_regions(batch, min_depth=3)
    n_nodes, root = 7, int(batch.positions["root"][0])
    for b in range(batch.n):
        depth = int(batch.hops[b])
        path = batch.tokens[b, root + 1 : root + 1 + depth].tolist()  # ">X" ids, root's child first
        for j in range(depth):
            name = f"level_{j}" if j < 3 else "level_deeper"
            positions = (regions[b] == names.index(name)).nonzero().squeeze(-1).tolist()
            child_ids = [int(batch.tokens[b, p]) for p in positions if p % 3 == 1]
            assert path[depth - 1 - j] in child_ids, (b, j)
        n_path = sum(int((regions[b] == names.index(n)).sum()) for n in names if n.startswith("level_"))
        assert n_path == 3 * depth  # one three-token edge per path step
        assert int((regions[b] == names.index("off_path")).sum()) == 3 * (n_nodes - 1 - depth)
        assert int((regions[b] == names.index("root")).sum()) == 1


def test_r6_attention_shares_match_a_slow_loop():
    batch = tree_task(12, seed=1, n_nodes=6, generator="random")
    batch = batch.select(batch.hops >= 2)
    model = gptj_model(n_layers=2, d_model=16, n_heads=1, d_vocab=len(batch.vocab), n_ctx=batch.length, seed=0)
    table = r6_tree.attention_by_region(model, batch, min_depth=2)
    sums = table.groupby("layer").share.sum()
    assert np.allclose(sums.values, 1.0, atol=1e-5)  # every key before the root is in one region
    regions, names = r6_tree.key_regions(batch, min_depth=2)
    root = int(batch.positions["root"][0])
    _, cache = model.run_with_cache(batch.tokens)
    for layer in range(2):
        pattern = cache["pattern", layer][:, 0, root]  # [batch, key]
        for name in ("level_0", "level_1", "off_path"):
            slow = 0.0
            for b in range(batch.n):
                for k in range(root + 1):
                    if names[int(regions[b, k])] == name:
                        slow += float(pattern[b, k])
            got = table[(table.layer == layer) & (table.region == name)].share.item()
            assert got == pytest.approx(slow / batch.n, abs=1e-5)


def test_r6_smoke(tmp_path):
    cfg = r6_tree.quick_config()
    table = r6_tree.main(cfg, out=tmp_path, png=False)
    assert list(table.columns) == r6_tree.COLUMNS
    assert set(table.layer) == set(range(cfg.n_layers))
    summary = _check_outputs(tmp_path, table, "attention_by_level")
    assert 0 <= summary["path_accuracy"] <= summary["accuracy"] <= 1  # a right path starts with a right first step
    assert summary["n_deep_prompts"] == table.n_prompts.iloc[0]


def test_r6_refuses_a_test_set_without_deep_goals_before_training(tmp_path, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("trained before checking the test set")

    monkeypatch.setattr(r6_tree, "train", no_training)
    cfg = r6_tree.R6Config(n_nodes=9, eval_n=1, min_depth=7)  # one prompt is almost never 7 deep
    with pytest.raises(HeadkitError, match="none of the eval_n=1 held-out prompts"):
        r6_tree.main(cfg, out=tmp_path, png=False)
    assert not any(tmp_path.iterdir())


def test_r6_config_rejects_impossible_depth():
    with pytest.raises(HeadkitError, match="min_depth=6 is out of range: allowed 1..5"):
        r6_tree.R6Config(n_nodes=7, min_depth=6)


# --- R7 -----------------------------------------------------------------------


def _linear_reference(model, tokens):
    """Logits of the one-layer model with attention = masked raw scores, computed by hand."""
    _, cache = model.run_with_cache(tokens)
    q, k, v = cache["blocks.0.attn.hook_rot_q"], cache["blocks.0.attn.hook_rot_k"], cache["v", 0]
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(model.cfg.d_head)  # [batch, head, q, k]
    pattern = scores * torch.ones_like(scores).tril()  # causal, no softmax
    z = torch.einsum("bhqk,bkhd->bqhd", pattern, v)  # [batch, q, head, d_head]
    attn_out = torch.einsum("bqhd,hdm->bqm", z, model.W_O[0]) + bias(model.blocks[0].attn.b_O)
    resid = cache["hook_embed"] + attn_out  # rotary: no positional embedding
    return model.unembed(model.ln_final(resid))


def test_r7_linear_attention_matches_a_hand_computation():
    model = gptj_model(n_layers=1, d_model=16, n_heads=1, d_vocab=7, n_ctx=8, attn_only=True, seed=2)
    tokens = torch.randint(0, 7, (3, 8), generator=torch.Generator().manual_seed(0))
    with r7_copy.ATTENTIONS["linear"](model):
        got = model(tokens)
    assert torch.allclose(got, _linear_reference(model, tokens), atol=1e-5)
    assert not torch.allclose(model(tokens), got, atol=1e-3)  # the hooks are gone afterwards
    assert all(not hp._forward_hooks for hp in model.hook_dict.values())


def test_r7_linear_hooks_removed_after_an_error():
    model = gptj_model(n_layers=1, d_model=16, n_heads=1, d_vocab=7, n_ctx=8, attn_only=True, seed=2)
    with pytest.raises(RuntimeError):
        with r7_copy.ATTENTIONS["linear"](model):
            raise RuntimeError("boom")
    assert all(not hp._forward_hooks for hp in model.hook_dict.values())


def test_r7_copy_score_on_known_patterns():
    pos = 6
    previous = torch.zeros(2, 1, pos, pos)
    previous[:, 0, 0, 0] = 1.0
    previous[:, 0, torch.arange(1, pos), torch.arange(pos - 1)] = 1.0
    assert r7_copy.copy_score(previous) == pytest.approx(1.0)
    uniform = torch.ones(1, 1, pos, pos).tril()
    uniform = uniform / uniform.sum(-1, keepdim=True)
    expected = np.mean([1 / (t + 1) for t in range(1, pos)])
    assert r7_copy.copy_score(uniform) == pytest.approx(expected)
    assert r7_copy.copy_score(-2.0 * previous) == pytest.approx(1.0)  # absolute weights for linear attention


def test_r7_smoke(tmp_path):
    cfg = r7_copy.quick_config()
    table = r7_copy.main(cfg, out=tmp_path, png=False)
    assert list(table.columns) == r7_copy.COLUMNS
    assert len(table) == len(cfg.attentions) * len(cfg.sizes) * len(cfg.seeds)
    assert table.copy_score.between(0, 1).all() and table.test_accuracy.between(0, 1).all()
    summary = _check_outputs(tmp_path, table, "copy_vs_size")
    assert set(summary["jumps"]) == set(cfg.attentions)


def test_r7_config_rejects_unknown_attention():
    with pytest.raises(HeadkitError, match="unknown attention.*allowed softmax, linear"):
        r7_copy.R7Config(attentions=("cosine",))
