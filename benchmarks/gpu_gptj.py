"""Benchmark: headkit on a GPT-J-6B-shaped model on one GPU, or on N with torchrun.

Builds a random checkpoint of GPT-J-6B's shape (28 layers x 16 heads, d_model
4096, d_mlp 16384, vocab 50400, rotary_dim 64; bfloat16) in Hugging Face layout,
then measures, on each rank's GPU:

1. **load memory**: ``headkit.load_gptj(dir, dtype="bfloat16")`` of that
   checkpoint; the peak GPU memory allocated while loading
   (``torch.cuda.max_memory_allocated``) over the checkpoint's size on disk (on
   a CPU, the rise of the process's peak RSS instead);
2. **all-heads patching sweep**: every head's output (site ``z``, all positions,
   denoising) on ``--prompts`` clean/corrupted prompts, headkit's
   `activation_patching` against TransformerLens's
   ``transformer_lens.patching.get_act_patch_attn_head_out_all_pos`` (one full
   forward per head): both times, the ratio and the largest absolute difference;
3. **head census** (`head_census`) over ``--census-prompts`` (64) random prompts,
   composition off and ``--max-pairs`` swap pairs per prompt: its time.

Under ``torchrun --nproc_per_node N`` every rank loads a replica, headkit's sweeps
split their cells across the ranks (`headkit.distributed`, NCCL), TransformerLens
runs on rank 0 alone, and rank 0 also reruns headkit's sweeps in one process
(`headkit.distributed.local`) to report the N-rank speed-up and check that the
N-rank results equal the one-process ones. Only rank 0 prints and writes.

    python benchmarks/gpu_gptj.py                          # one GPU, GPT-J-6B shape, bf16 (~12 GB checkpoint)
    torchrun --nproc_per_node 8 benchmarks/gpu_gptj.py     # N GPUs
    python benchmarks/gpu_gptj.py --tiny                   # tiny shape, float32, CPU: a smoke run
    python benchmarks/gpu_gptj.py --shape 6,8,256,2048 --dtype float32 --device cpu   # any other shape
    torchrun --nproc_per_node 2 benchmarks/gpu_gptj.py --tiny   # the same on 2 gloo ranks

``--tiny`` uses float32 because bfloat16 matmuls crash some CPUs (this project's
CPU machine among them). ``--json FILE`` writes every number; ``--checkpoint
DIR`` reuses (or keeps) the checkpoint instead of a temporary one.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from headkit import distributed
from headkit.interventions.activation_patching import activation_patching
from headkit.io import write_json
from headkit.loading.gptj import expected_hf_shapes, load_gptj, read_gptj_config
from headkit.scores.census import head_census
from headkit.scores.positional_symbolic import ClassifyOptions


@dataclass(frozen=True)
class Shape:
    """A GPT-J shape (Hugging Face config names in comments)."""

    n_layers: int  # n_layer
    n_heads: int  # n_head
    d_model: int  # n_embd
    d_vocab: int  # vocab_size
    rotary_dim: int  # rotary_dim
    n_ctx: int  # n_positions


GPTJ_6B = Shape(n_layers=28, n_heads=16, d_model=4096, d_vocab=50400, rotary_dim=64, n_ctx=2048)
TINY = Shape(n_layers=2, n_heads=4, d_model=64, d_vocab=512, rotary_dim=8, n_ctx=128)


# --- the random checkpoint ----------------------------------------------------------------


def write_checkpoint(directory: Path, shape: Shape, *, dtype: torch.dtype, device: str, seed: int = 0) -> int:
    """A random GPT-J checkpoint in HF layout, one safetensors shard per layer; returns its bytes.

    Matrices ~ N(0, 0.02²) drawn on ``device`` (fast on a GPU), LayerNorm weights 1
    and biases 0; written shard by shard, so memory holds one layer at a time.
    """
    from safetensors.torch import save_file
    from transformers import GPTJConfig

    directory.mkdir(parents=True, exist_ok=True)
    config = GPTJConfig(
        vocab_size=shape.d_vocab, n_positions=shape.n_ctx, n_embd=shape.d_model, n_layer=shape.n_layers,
        n_head=shape.n_heads, rotary_dim=shape.rotary_dim, tie_word_embeddings=False,
    )  # fmt: skip
    config.save_pretrained(directory)
    gen = torch.Generator(device=device).manual_seed(seed)

    def tensor(name: str, size: tuple[int, ...]) -> torch.Tensor:
        if ".ln_" in name or name.startswith("transformer.ln_f"):
            fill = 1.0 if name.endswith("weight") else 0.0
            return torch.full(size, fill, dtype=dtype)
        return (torch.randn(size, generator=gen, device=device) * 0.02).to(dtype).cpu()

    shards: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, size in expected_hf_shapes(read_gptj_config(directory)).items():
        if name.startswith("transformer.h."):
            part = f"layer {name.split('.')[2]}"
        else:
            part = "embed" if name.startswith("transformer.wte") else "unembed"
        shards.setdefault(part, {})[name] = size
    weight_map, total = {}, 0
    for i, (part, names) in enumerate(shards.items()):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: tensor(n, s) for n, s in names.items()}, str(directory / file), metadata={"format": "pt"})
        total += (directory / file).stat().st_size
        weight_map |= {n: file for n in names}
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return total


# --- timing and memory ----------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _barrier() -> None:
    if distributed.world().size > 1:
        dist.barrier()


@dataclass(frozen=True)
class Timing:
    wall_s: float  # wall-clock seconds (ranks together)
    cpu_s: float  # CPU seconds of the busiest rank: the wall time on an idle CPU machine

    def __str__(self) -> str:
        return f"{self.wall_s:.2f} s (busiest rank's CPU time {self.cpu_s:.2f} s)"


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Timing, Any]:
    """Timing of ``fn()`` on every rank together (barriers around it) and its result."""
    _barrier()
    _sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    _sync(device)
    cpu = time.process_time() - cpu
    _barrier()
    wall = time.perf_counter() - start
    if distributed.world().size > 1:
        every = [None] * distributed.world().size
        dist.all_gather_object(every, cpu)
        cpu = max(every)
    return Timing(wall, cpu), result


def timed_local(fn: Callable[[], Any], device: torch.device) -> tuple[Timing, Any]:
    """Timing of ``fn()`` on this rank alone."""
    _sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    _sync(device)
    return Timing(time.perf_counter() - start, time.process_time() - cpu), result


def load_measured(directory: Path, *, dtype: torch.dtype, device: torch.device) -> tuple[Any, int]:
    """The model and the peak bytes its loading allocated (GPU) or added to the peak RSS (CPU)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        model = load_gptj(directory, dtype=dtype, device=str(device))
        return model, torch.cuda.max_memory_allocated(device) - before
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB
    model = load_gptj(directory, dtype=dtype, device=str(device))
    return model, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before


# --- the sweeps ---------------------------------------------------------------------------------


def patching_inputs(vocab: int, *, prompts: int, length: int, device: torch.device, seed: int = 0):
    """Random clean prompts, corrupted twins (second-to-last token changed) and a logit-difference metric."""
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, vocab, (prompts, length), generator=gen)
    corrupted = clean.clone()
    corrupted[:, -2] = (clean[:, -2] + torch.randint(1, vocab, (prompts,), generator=gen)) % vocab
    answers = torch.randint(0, vocab, (prompts,), generator=gen).to(device)
    wrong = (answers + 1) % vocab
    rows = torch.arange(prompts, device=device)

    def metric(logits: torch.Tensor) -> torch.Tensor:  # mean logit difference at the last position, float32
        last = logits[:, -1].float()  # [batch, d_vocab]
        return (last[rows, answers] - last[rows, wrong]).mean()

    return clean.to(device), corrupted.to(device), metric


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shape, float32, CPU (a smoke run)")
    parser.add_argument("--shape", default=None, help="N_LAYERS,N_HEADS,D_MODEL,VOCAB instead of GPT-J-6B's")
    parser.add_argument("--device", default=None, help="default: cuda (one GPU per rank) if available, else cpu")
    parser.add_argument("--dtype", default=None, help="default bfloat16 (float32 with --tiny)")
    parser.add_argument("--prompts", type=int, default=8, help="prompts of the patching sweep (default 8)")
    parser.add_argument("--length", type=int, default=32, help="tokens per prompt (default 32)")
    parser.add_argument("--batch-size", type=int, default=None, help="headkit rows per pass (prompts x heads)")
    parser.add_argument("--census-prompts", type=int, default=64)
    parser.add_argument("--max-pairs", type=int, default=32, help="swap pairs per census prompt (default 32)")
    parser.add_argument("--skip-tl", action="store_true", help="no TransformerLens sweep")
    parser.add_argument("--checkpoint", default=None, help="checkpoint directory to reuse or keep")
    parser.add_argument("--json", default=None, help="write every number to this JSON file")
    args = parser.parse_args()

    world = distributed.init_from_env()
    shape = TINY if args.tiny else GPTJ_6B
    if args.shape is not None:
        n_layers, n_heads, d_model, vocab = (int(x) for x in args.shape.split(","))
        shape = Shape(n_layers, n_heads, d_model, vocab, rotary_dim=min(64, d_model // n_heads), n_ctx=2048)
    dtype = getattr(torch, args.dtype or ("float32" if args.tiny else "bfloat16"))
    wanted = args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    device = torch.device(distributed.rank_device(wanted) if wanted == "cuda" else wanted)
    if device.type == "cpu":
        torch.set_num_threads(1 if world.size > 1 else torch.get_num_threads())
    say = print if world.rank == 0 else (lambda *a, **k: None)
    numbers: dict[str, Any] = dict(shape=vars(shape), dtype=str(dtype), device=str(device), ranks=world.size)
    say(f"GPT-J shape {shape}, {dtype}, {world.size} rank(s) on {device.type}"
        + ("" if device.type == "cpu" else f" ({torch.cuda.get_device_name(device)})"))

    # 1. checkpoint (rank 0 writes it) and load memory (every rank loads its replica)
    scratch = None
    directory = args.checkpoint
    if directory is None:
        scratch = tempfile.TemporaryDirectory(prefix="gpu_gptj_") if world.rank == 0 else None
        shared = [scratch.name if scratch else None]
        if world.size > 1:
            dist.broadcast_object_list(shared, src=0)
        directory = shared[0]
    directory = Path(directory)
    if world.rank == 0 and not (directory / "model.safetensors.index.json").is_file():
        start = time.perf_counter()
        write_checkpoint(directory, shape, dtype=dtype, device=str(device) if device.type == "cuda" else "cpu")
        say(f"wrote the checkpoint to {directory} in {time.perf_counter() - start:.1f} s")
    _barrier()
    size = sum(f.stat().st_size for f in directory.glob("*.safetensors"))
    load_t, (model, peak) = timed(lambda: load_measured(directory, dtype=dtype, device=device), device)
    what = "peak GPU memory allocated" if device.type == "cuda" else "rise of peak RSS"
    numbers |= dict(checkpoint_bytes=size, load_peak_bytes=peak, load_ratio=peak / size, load_s=load_t.wall_s)
    say(f"load: checkpoint {_size(size)}, {what} {_size(peak)} = "
        f"{peak / size:.2f}x the checkpoint, {load_t.wall_s:.1f} s")

    # 2. all-heads patching sweep
    clean, corrupted, metric = patching_inputs(
        shape.d_vocab, prompts=args.prompts, length=args.length, device=device
    )
    rows = args.batch_size or args.prompts * shape.n_heads

    def headkit_sweep() -> torch.Tensor:
        frame = activation_patching(model, clean, corrupted, metric, site="z", batch_size=rows)
        return torch.tensor(frame["value"].to_numpy()).reshape(shape.n_layers, shape.n_heads)

    with distributed.local():  # warm-up (kernels, allocator), one head on each rank
        activation_patching(model, clean, corrupted, metric, heads=[(0, 0)], batch_size=rows)
    hk_t, hk = timed(headkit_sweep, device)
    hk_s = hk_t.wall_s
    numbers |= dict(
        patch_prompts=args.prompts, patch_length=args.length, headkit_patch_s=hk_s, headkit_patch_cpu_s=hk_t.cpu_s
    )
    say(f"patching sweep, {shape.n_layers * shape.n_heads} heads, {args.prompts} prompts x {args.length} tokens:")
    say(f"  headkit activation_patching(site='z'), {world.size} rank(s): {hk_t}")
    if world.size > 1:
        one = None
        if world.rank == 0:
            with distributed.local():
                one_t, one = timed_local(headkit_sweep, device)
            equal = bool(torch.equal(one, hk))
            numbers |= dict(
                headkit_patch_one_rank_s=one_t.wall_s, headkit_patch_one_rank_cpu_s=one_t.cpu_s, ranks_equal=equal
            )
            say(f"  headkit in one process on rank 0: {one_t}; speed-up of {world.size} ranks "
                f"{one_t.wall_s / hk_s:.2f}x (CPU time: {one_t.cpu_s / hk_t.cpu_s:.2f}x); results equal: {equal}")
        _barrier()
    if not args.skip_tl:
        if world.rank == 0:
            from transformer_lens import patching

            def tl_sweep() -> torch.Tensor:
                with torch.no_grad():
                    _, clean_cache = model.run_with_cache(clean)
                    return patching.get_act_patch_attn_head_out_all_pos(model, corrupted, clean_cache, metric)

            tl_t, tl = timed_local(tl_sweep, device)
            tl_s = tl_t.wall_s
            diff = (tl.double().cpu() - hk.double()).abs().max().item()
            numbers |= dict(tl_patch_s=tl_s, tl_over_headkit=tl_s / hk_s, max_abs_diff=diff)
            say(f"  TransformerLens get_act_patch_attn_head_out_all_pos, 1 process: {tl_t}")
            say(f"  TransformerLens / headkit time: {tl_s / hk_s:.2f}x; max abs difference {diff:.3g}")
        _barrier()

    # 3. head census over the census prompts
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, shape.d_vocab, (args.census_prompts, args.length), generator=gen).to(device)

    def census() -> Any:
        return head_census(
            model, prompts, n_prompts=args.census_prompts, composition_kinds=(),
            classify_options=ClassifyOptions(max_pairs=args.max_pairs),
        )  # fmt: skip

    census_t, table = timed(census, device)
    numbers |= dict(
        census_prompts=args.census_prompts, census_s=census_t.wall_s, census_cpu_s=census_t.cpu_s,
        census_rows=len(table),
    )
    say(f"head census, {args.census_prompts} prompts x {args.length} tokens, {args.max_pairs} swap pairs each, "
        f"{world.size} rank(s): {census_t} ({len(table)} heads; labels "
        f"{table['label'].value_counts().to_dict()})")
    if world.size > 1:
        if world.rank == 0:
            with distributed.local():
                one_t, one_table = timed_local(census, device)
            same = one_table.equals(table)
            numbers |= dict(census_one_rank_s=one_t.wall_s, census_one_rank_cpu_s=one_t.cpu_s, census_equal=same)
            say(f"  in one process on rank 0: {one_t}; speed-up of {world.size} ranks "
                f"{one_t.wall_s / census_t.wall_s:.2f}x (CPU time: {one_t.cpu_s / census_t.cpu_s:.2f}x); "
                f"tables equal: {same}")
        _barrier()

    if args.json:
        write_json(args.json, numbers)  # rank 0 only (headkit.io)
    if scratch is not None and args.checkpoint is None:
        scratch.cleanup()
    distributed.shutdown()


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"




if __name__ == "__main__":
    sys.exit(main())
