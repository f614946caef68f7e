"""Training steps per second: headkit's backend vs the previous TransformerLens loop vs bare Hugging Face.

Three loops train a model of the same shape (layers, width, heads, rotary dimension,
MLP width, vocabulary, context) on the very same batches (number task, generated
before timing so data generation is not measured), with the same AdamW settings,
clipping and loss (cross-entropy on the scored last position), no dropout:

- ``headkit``: `headkit.training.loop.train_step` on `headkit.gptj_hf.build_hf_model`
  (the backend `headkit.training.loop.train` runs);
- ``old TransformerLens loop``: a copy of headkit's loop before issue 8 (a
  HookedTransformer, Q/K/V/O biases frozen at zero, ``ln2`` tied to ``ln1``),
  kept here only, for this comparison;
- ``bare Hugging Face``: `GPTJForCausalLM` with the plainest loop (full logits,
  ``zero_grad``/``backward``/``clip``/``step``), the reference.

After a few untimed warm-up steps each, the loops are timed in blocks whose order
rotates every repeat, so machine noise hits all three; the median block rate of
each is printed with the ratios.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/train_throughput.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer
from transformers import GPTJForCausalLM

from headkit.gptj_hf import build_hf_model
from headkit.model_config import ModelConfig
from headkit.models import model_from_config
from headkit.tasks import IGNORE, TaskSpec
from headkit.training.config import default_config
from headkit.training.loop import make_optimizer, train_step

# --- the previous headkit loop (TransformerLens), kept only for this benchmark -------------

_FROZEN = ("attn.b_Q", "attn.b_K", "attn.b_V", "attn.b_O")


def _tied(model: HookedTransformer) -> list[tuple[torch.nn.Parameter, torch.nn.Parameter]]:
    return [(b.ln1.w, b.ln2.w) for b in model.blocks] + [(b.ln1.b, b.ln2.b) for b in model.blocks]


def old_optimizer(model: HookedTransformer, *, lr: float, betas, weight_decay: float) -> torch.optim.AdamW:
    copies = {id(ln2) for _, ln2 in _tied(model)}
    params = [p for n, p in model.named_parameters() if not n.endswith(_FROZEN) and id(p) not in copies]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def old_train_step(model: HookedTransformer, optimizer, batch, *, lr: float, grad_clip: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = lr
    logits = model(batch.tokens, return_type="logits")  # [batch, pos, d_vocab]
    loss = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE)
    model.zero_grad(set_to_none=True)
    loss.backward()
    tied = _tied(model)
    for ln1, ln2 in tied:
        ln1.grad += ln2.grad
    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], grad_clip)
    optimizer.step()
    with torch.no_grad():
        for ln1, ln2 in tied:
            ln2.copy_(ln1)
    return loss.item()


# --- the benchmark --------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per loop")
    parser.add_argument("--block", type=int, default=10, help="timed steps per block")
    parser.add_argument("--repeats", type=int, default=6, help="blocks per loop")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    task = TaskSpec("number", {})
    probe = task.build(1, seed=0)
    cfg = ModelConfig(n_layers=args.layers, d_model=args.d_model, n_heads=args.heads, d_vocab=len(probe.vocab), n_ctx=257)
    train_cfg = default_config("number", model=cfg, device="cpu")
    n_batches = args.warmup + args.block * args.repeats
    batches = [task.build(args.batch_size, seed=1000 + i) for i in range(n_batches)]
    lr, clip = train_cfg.lr, train_cfg.grad_clip

    # headkit's backend
    new_model = build_hf_model(cfg, seed=0).train()
    new_opt = make_optimizer(new_model, train_cfg)

    # the old TransformerLens loop
    old_model = model_from_config(cfg, seed=0).train()
    old_opt = old_optimizer(old_model, lr=lr, betas=train_cfg.betas, weight_decay=train_cfg.weight_decay)

    # bare Hugging Face
    bare_model: GPTJForCausalLM = build_hf_model(cfg, seed=0).train()
    bare_opt = make_optimizer(bare_model, train_cfg)

    def bare_step(batch) -> None:
        logits = bare_model(input_ids=batch.tokens).logits  # [batch, pos, d_vocab]
        loss = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE)
        bare_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(bare_model.parameters(), clip)
        bare_opt.step()

    runners = {
        "headkit (HF GPT-J backend)": lambda b: train_step(new_model, new_opt, b, lr=lr, grad_clip=clip),
        "old TransformerLens loop": lambda b: old_train_step(old_model, old_opt, b, lr=lr, grad_clip=clip),
        "bare Hugging Face loop": bare_step,
    }
    for step in runners.values():
        for batch in batches[: args.warmup]:
            step(batch)

    names = list(runners)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.repeats):
        order = names[r % 3 :] + names[: r % 3]
        block = batches[args.warmup + r * args.block : args.warmup + (r + 1) * args.block]
        for name in order:
            start = time.perf_counter()
            for batch in block:
                runners[name](batch)
            rates[name].append(len(block) / (time.perf_counter() - start))

    print(
        f"training throughput, number task, batch {args.batch_size}, length {probe.length}, "
        f"{cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} head(s), {args.threads} thread(s); "
        f"HF attention: {new_model.config._attn_implementation}"
    )
    median = {name: statistics.median(values) for name, values in rates.items()}
    for name, values in rates.items():
        print(f"  {name:28s} {median[name]:6.2f} steps/s  (blocks: {', '.join(f'{v:.2f}' for v in values)})")
    new, old, bare = (median[n] for n in names)
    print(f"  headkit / bare Hugging Face: {new / bare:.2f}  (target >= 0.95)")
    print(f"  headkit / old TransformerLens loop: {new / old:.2f}  (target >= 1.4)")


if __name__ == "__main__":
    main()
