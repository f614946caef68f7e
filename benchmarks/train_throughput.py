"""Training steps per second: headkit's GPT-J (TransformerLens) vs Hugging Face GPTJForCausalLM.

Both models have the same shape (layers, width, heads, rotary dimension, MLP width,
vocabulary, context), no dropout, the same AdamW settings, the same loss
(cross-entropy on the number task's scored position) and the very same batches
(number task, batch 128, length 17, generated before timing so data generation
is not measured). After a few untimed warm-up steps each, the two are timed in
alternating blocks (the order flips every repeat) so that machine noise hits both;
the median block rate of each is reported, and the ratio.

    .venv/bin/python benchmarks/train_throughput.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from transformers import GPTJConfig, GPTJForCausalLM

from headkit.models import ModelConfig, model_from_config
from headkit.tasks import IGNORE, TaskSpec
from headkit.training import default_config, make_optimizer, train_step, trained_parameters


def hf_twin(cfg: ModelConfig) -> GPTJForCausalLM:
    """A Hugging Face GPT-J with the shape of ``cfg`` and no dropout."""
    config = GPTJConfig(
        vocab_size=cfg.d_vocab,
        n_positions=cfg.n_ctx,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layers,
        n_head=cfg.n_heads,
        rotary_dim=cfg.rotary_dim or cfg.head_dim,
        n_inner=cfg.d_mlp or 4 * cfg.d_model,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return GPTJForCausalLM(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per model")
    parser.add_argument("--block", type=int, default=10, help="timed steps per block")
    parser.add_argument("--repeats", type=int, default=4, help="blocks per model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    task = TaskSpec("number", {})
    probe = task.build(1, seed=0)
    cfg = ModelConfig(n_layers=args.layers, d_model=args.d_model, n_heads=args.heads, d_vocab=len(probe.vocab), n_ctx=257)
    n_batches = args.warmup + args.block * args.repeats
    batches = [task.build(args.batch_size, seed=1000 + i) for i in range(n_batches)]

    tl_model = model_from_config(cfg, seed=0).train()
    hf_model = hf_twin(cfg).train()
    # the same GPT-J: headkit trains exactly the parameters Hugging Face's model has
    n_tl = sum(p.numel() for _, p in trained_parameters(tl_model))
    n_hf = sum(p.numel() for p in hf_model.parameters())
    assert n_tl == n_hf, (n_tl, n_hf)

    # headkit: its own training step (tied LayerNorm, frozen Q/K/V/O biases)
    train_cfg = default_config("number", model=cfg)
    tl_opt = make_optimizer(tl_model, train_cfg)

    def tl_step(batch) -> None:
        train_step(tl_model, tl_opt, batch, lr=train_cfg.lr, grad_clip=train_cfg.grad_clip)

    # Hugging Face: the same loss, AdamW settings (decay on matrices only) and clipping
    hf_opt = torch.optim.AdamW(
        [
            {"params": [p for p in hf_model.parameters() if p.ndim >= 2], "weight_decay": train_cfg.weight_decay},
            {"params": [p for p in hf_model.parameters() if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=train_cfg.lr,
        betas=train_cfg.betas,
    )

    def hf_step(batch) -> None:
        logits = hf_model(input_ids=batch.tokens).logits  # [batch, pos, d_vocab]
        loss = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE)
        hf_model.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf_model.parameters(), train_cfg.grad_clip)
        hf_opt.step()

    runners = {"headkit (TransformerLens)": tl_step, "Hugging Face GPTJForCausalLM": hf_step}
    for step in runners.values():
        for batch in batches[: args.warmup]:
            step(batch)

    rates: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(args.repeats):
        order = list(runners) if r % 2 == 0 else list(runners)[::-1]
        block = batches[args.warmup + r * args.block : args.warmup + (r + 1) * args.block]
        for name in order:
            start = time.perf_counter()
            for batch in block:
                runners[name](batch)
            rates[name].append(len(block) / (time.perf_counter() - start))

    print(
        f"training throughput, number task, batch {args.batch_size}, length {probe.length}, "
        f"{cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} head(s), {args.threads} thread(s); "
        f"HF attention: {hf_model.config._attn_implementation}"
    )
    for name, values in rates.items():
        print(f"  {name:30s} {statistics.median(values):6.2f} steps/s  (blocks: {', '.join(f'{v:.2f}' for v in values)})")
    names = list(rates)
    ratio = statistics.median(rates[names[0]]) / statistics.median(rates[names[1]])
    print(f"  ratio headkit / Hugging Face: {ratio:.2f}")


if __name__ == "__main__":
    main()
