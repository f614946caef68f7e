"""Forward and block-rerun cost: TransformerBridge (headkit.bridge) vs HookedTransformer vs Hugging Face.

One GPT-J-shaped model (random weights, saved once to a temporary directory), three
views of the same weights, timed side by side in one run, interleaved round by round
so that machine load hits all of them alike:

- ``hf``: Hugging Face's ``GPTJForCausalLM`` forward, eager attention;
- ``bridge``: the same module wrapped in place by ``headkit.bridge.build.wrap``
  (headkit's GPT-J attention, compatibility mode, raw weights);
- ``hooked``: TransformerLens 3.9's ``HookedTransformer`` of the same weights
  (its own ``convert_gptj_weights``); skipped on TransformerLens 4.x.

Timed: a plain forward; ``run_with_cache`` of every attention pattern; one block rerun
alone on a cached residual (the swap metric's unit of work; ``run_blocks``); and two
whole analyses: an activation-patching sweep of every head's ``z``
(``activation_patching``, the engine's restarts) and the swap metric
(``positional_symbolic_scores``, residual swaps). Medians of ``--rounds`` rounds
(``--analysis-rounds`` for the two analyses), one torch thread; the ratios are to Hugging
Face's forward, and bridge / hooked for each.

    python benchmarks/bridge_speed.py            # d_model 256, 6 layers, batch 64 x 32 tokens
    python benchmarks/bridge_speed.py --small    # seconds
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from transformers import GPTJConfig, GPTJForCausalLM

from headkit.bridge.blocks import record_block_inputs, run_blocks
from headkit.bridge.build import wrap
from headkit.interventions.activation_patching import activation_patching
from headkit.scores.positional_symbolic import positional_symbolic_scores


def _hooked(hf: GPTJForCausalLM):
    """TransformerLens 3.9's HookedTransformer of ``hf``'s weights (its own conversion); None on 4.x."""
    from headkit.model_types import HookedTransformer, has_hooked_transformer

    if not has_hooked_transformer():
        return None
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.gptj import convert_gptj_weights

    c = hf.config
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, n_heads=c.n_head, d_head=c.n_embd // c.n_head, d_mlp=4 * c.n_embd,
        d_vocab=c.vocab_size, n_ctx=c.n_positions, act_fn=c.activation_function, eps=c.layer_norm_epsilon,
        normalization_type="LN", positional_embedding_type="rotary", rotary_dim=c.rotary_dim,
        rotary_adjacent_pairs=True, parallel_attn_mlp=True, device="cpu", default_prepend_bos=False,
    )  # fmt: skip
    model = HookedTransformer(cfg)
    model.load_and_process_state_dict(convert_gptj_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                      center_unembed=False, fold_value_biases=False)  # fmt: skip
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--analysis-rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    d_model, layers, batch, n_pos = (64, 2, 8, 16) if args.small else (256, 6, 64, 32)
    config = GPTJConfig(vocab_size=512, n_positions=256, n_embd=d_model, n_layer=layers, n_head=4, rotary_dim=d_model // 8, use_cache=False)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = GPTJForCausalLM(config).eval()
    hooked = _hooked(hf)  # before wrapping: the wrap replaces hf's modules
    bridge = wrap(hf)
    tokens = torch.randint(0, 512, (batch, n_pos))
    layer = layers // 2
    with torch.no_grad(), record_block_inputs(bridge, batch=batch, n_pos=n_pos) as inputs:
        _, bridge_cache = bridge.run_with_cache(tokens)
    resid = bridge_cache[f"blocks.{layer}.hook_resid_pre"]
    patterns = lambda name: name.endswith("hook_pattern")  # noqa: E731

    cases: dict[str, Callable[[], object]] = {
        "forward hf": lambda: hf(tokens).logits,
        "forward bridge": lambda: bridge(tokens),
        "cache patterns bridge": lambda: bridge.run_with_cache(tokens, names_filter=patterns),
        "block alone bridge": lambda: run_blocks(bridge, resid, layer, layer + 1, inputs=inputs),
    }
    if hooked is not None:
        cases["forward hooked"] = lambda: hooked(tokens)
        cases["cache patterns hooked"] = lambda: hooked.run_with_cache(tokens, names_filter=patterns)
        cases["block alone hooked"] = lambda: hooked.blocks[layer](resid)
    corrupted = tokens.roll(1, dims=1)
    analyses: dict[str, Callable[[], object]] = {}
    for kind, model in (("bridge", bridge), ("hooked", hooked)):
        if model is None:
            continue
        metric = lambda logits: logits[:, -1, 0].mean()  # noqa: E731
        analyses[f"patching sweep {kind}"] = lambda m=model, metric=metric: activation_patching(
            m, tokens[:8], corrupted[:8], metric, progress=False
        )
        analyses[f"swap metric {kind}"] = lambda m=model: positional_symbolic_scores(m, tokens[:4])
    times: dict[str, list[float]] = {name: [] for name in [*cases, *analyses]}
    with torch.no_grad():
        for rounds, group in ((args.rounds, cases), (args.analysis_rounds, analyses)):
            for _ in range(rounds):
                for name, run in group.items():
                    start = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    base = median["forward hf"]
    print(f"GPT-J d_model {d_model}, {layers} layers, batch {batch} x {n_pos} tokens, {args.rounds} rounds, 1 thread")
    for name, seconds in median.items():
        print(f"{name:24s} {seconds * 1e3:9.2f} ms   {seconds / base:5.2f}x hf forward")
    if hooked is not None:
        for what in ("forward", "cache patterns", "block alone", "patching sweep", "swap metric"):
            print(f"{what:24s} bridge / hooked = {median[what + ' bridge'] / median[what + ' hooked']:.2f}")


if __name__ == "__main__":
    main()
