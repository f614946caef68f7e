"""Peak resident memory of loading a bf16 checkpoint: headkit's loaders vs Hugging Face, per architecture.

For each architecture (GPT-J, GPT-2, GPT-NeoX, Llama with grouped-query
attention) writes a random checkpoint of the given width (default d_model
4096, 16 heads, vocab 50400, 2 layers: about 0.8B parameters for GPT-J, 1.6 GB
in bfloat16) to a temporary directory, then loads it in separate
subprocesses, one per path, so that peaks do not mix:

- ``headkit``: ``load_pretrained(dir, dtype="bfloat16")`` (raw weights, the
  default; GPT-J goes through ``load_gptj``): header checks, Hugging Face's
  ``from_pretrained``, the copy out of the memory map, ``TransformerBridge`` wrapped in place;
- ``headkit_processed``: the same with fold_ln, center_writing_weights,
  center_unembed and fold_value_biases (TransformerLens's own processing);
- ``hugging_face``: ``AutoModelForCausalLM.from_pretrained(dir, dtype=bfloat16)``
  alone, the floor (its weights stay views of the memory-mapped file).

Each child reports ``ru_maxrss`` after its imports (baseline) and after
loading; the peak attributable to loading is the difference. Results are
printed as multiples of the checkpoint file size (issue 16's target: headkit
within 1.1x).

    python benchmarks/load_memory.py                 # full size, all four (~15 GB free needed)
    python benchmarks/load_memory.py --small         # d_model 1024, vocab 8192: seconds
    python benchmarks/load_memory.py --arch llama    # one architecture
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PATHS = ("headkit", "headkit_processed", "hugging_face")
PROCESSING = dict(fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True)


ARCHS = ("gptj", "gpt2", "neox", "llama")


def hf_config(arch: str, *, d_model: int, n_heads: int, n_layers: int, vocab: int):
    """A Hugging Face config of ``arch`` at the given width (Llama: grouped-query, 4 kv heads)."""
    import transformers as T

    common = dict(vocab_size=vocab, dtype="bfloat16")
    if arch == "gptj":
        d_head = d_model // n_heads
        return T.GPTJConfig(**common, n_positions=2048, n_embd=d_model, n_layer=n_layers, n_head=n_heads,
                            rotary_dim=64 if d_head >= 64 else d_head)
    if arch == "gpt2":
        return T.GPT2Config(**common, n_positions=1024, n_embd=d_model, n_layer=n_layers, n_head=n_heads)
    sizes = dict(**common, max_position_embeddings=2048, hidden_size=d_model, num_hidden_layers=n_layers,
                 num_attention_heads=n_heads, intermediate_size=4 * d_model)
    if arch == "neox":
        return T.GPTNeoXConfig(**sizes, rotary_pct=0.25)
    return T.LlamaConfig(**{**sizes, "intermediate_size": 11 * d_model // 4}, num_key_value_heads=max(1, n_heads // 4))


def write_checkpoint(directory: Path, arch: str, **sizes: int) -> int:
    """A random bf16 checkpoint of ``arch`` in HF layout, written tensor by tensor; returns its size."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = hf_config(arch, **sizes)
    config.save_pretrained(directory)
    with torch.device("meta"):  # names and shapes only; tied weights listed once
        skeleton = AutoModelForCausalLM.from_config(config)
    tensors = {}
    for name, p in skeleton.named_parameters():
        value = torch.randn(p.shape) * 0.02
        if name.endswith("weight") and p.dim() == 1:  # norm scales
            value += 1.0
        tensors[name] = value.to(torch.bfloat16)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return (directory / "model.safetensors").stat().st_size


def _status_bytes(field: str) -> int:
    """VmRSS (resident now) or VmHWM (peak resident) of this process, from /proc."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _load_headkit(directory: Path, processed: bool):
    from headkit.loading.pretrained import load_pretrained

    return load_pretrained(directory, dtype="bfloat16", device="cpu", **(PROCESSING if processed else {}))


def _load_hugging_face(directory: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16)


LOADERS = {
    "headkit": lambda d: _load_headkit(d, processed=False),
    "headkit_processed": lambda d: _load_headkit(d, processed=True),
    "hugging_face": _load_hugging_face,
}


def child(path: str, directory: Path) -> None:
    """Runs in a subprocess: import everything, then load once and report memory."""
    import torch

    torch.set_num_threads(1)
    import transformer_lens  # noqa: F401
    import transformers  # noqa: F401

    import headkit.loading  # noqa: F401

    # The import peak can exceed the RSS left after imports; reset it so that the
    # peak measured below belongs to loading. Without /proc/self/clear_refs, fall
    # back to ru_maxrss, whose baseline is then the import peak (an underestimate).
    reset = _reset_peak()
    if reset:
        baseline = _status_bytes("VmRSS")
    else:
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    model = LOADERS[path](directory)
    seconds = time.perf_counter() - start
    peak = _status_bytes("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    n_params = sum(p.numel() for p in model.parameters())
    print(json.dumps({
        "path": path, "baseline": baseline, "peak": peak, "after": _status_bytes("VmRSS"),
        "seconds": seconds, "n_params": n_params,
        "dtypes": sorted({str(p.dtype) for p in model.parameters()}),
    }))


def run_arch(arch: str, args: argparse.Namespace) -> dict[str, float]:
    """Write one checkpoint of ``arch`` and load it once per path; returns peak / checkpoint per path."""
    ratios: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix=f"{arch}-bench-") as tmp:
        directory = Path(tmp)
        size = write_checkpoint(
            directory, arch, d_model=args.d_model, n_heads=args.n_heads, n_layers=args.n_layers, vocab=args.vocab
        )
        print(f"{arch}: d_model {args.d_model}, {args.n_heads} heads, {args.n_layers} layers, "
              f"vocab {args.vocab}; model.safetensors {size / 2**30:.2f} GiB (bfloat16)")
        results = {}
        for path in args.paths:
            out = subprocess.run(
                [sys.executable, __file__, "--child", path, "--dir", str(directory)],
                capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
            )
            if out.returncode != 0:
                print(f"{path}: failed (exit {out.returncode})\n{out.stderr[-2000:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results[path] = r
            load_peak = r["peak"] - r["baseline"]
            ratios[path] = load_peak / size
            model_bytes = r["n_params"] * 2  # bf16: larger than the checkpoint when it stores tied embeddings once
            print(f"{path:>18}: peak during load {load_peak / 2**30:6.2f} GiB = {load_peak / size:4.2f}x "
                  f"checkpoint = {load_peak / model_bytes:4.2f}x the bf16 model; RSS after {(r['after'] - r['baseline']) / 2**30:5.2f} GiB above baseline; "
                  f"{r['seconds']:.1f} s; {r['n_params'] / 1e9:.3f}B params {r['dtypes']}")
        if "headkit" in results and "hugging_face" in results and results["hugging_face"]["peak"] > results["hugging_face"]["baseline"]:
            ours = results["headkit"]["peak"] - results["headkit"]["baseline"]
            floor = results["hugging_face"]["peak"] - results["hugging_face"]["baseline"]
            print(f"headkit / Hugging Face peak ratio: {ours / floor:.2f}")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="d_model 1024, 8 heads, vocab 8192")
    parser.add_argument("--arch", nargs="+", choices=ARCHS, default=list(ARCHS))
    parser.add_argument("--d-model", type=int, default=4096)
    parser.add_argument("--n-heads", type=int, default=16)
    parser.add_argument("--n-layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=50400)
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.dir)
        return
    if args.small:
        args.d_model, args.n_heads, args.vocab = 1024, 8, 8192
    table = {arch: run_arch(arch, args) for arch in args.arch}
    print("\npeak during load / checkpoint size")
    print(f"{'arch':>6} " + " ".join(f"{p:>18}" for p in args.paths))
    for arch, ratios in table.items():
        print(f"{arch:>6} " + " ".join(f"{ratios.get(p, float('nan')):>18.2f}" for p in args.paths))


if __name__ == "__main__":
    main()
