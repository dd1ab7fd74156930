"""Step time and peak of memcompile's modes on a GPU, against Inductor with no budget, in one process.

    python examples/bench_gpu_modes.py                      # d=1024, 4 layers, batch 8x1024, bf16
    python examples/bench_gpu_modes.py --dtype float32 --dim 256 --seq 256 --steps 5   # gradient check

Variants (each compiled through Inductor, one after another, ``torch._dynamo.reset()`` between):
- ``inductor``: ``torch.compile(model)``, no budget: the lossless step every ratio is taken against;
- ``memcompile``: budget ``--budget`` (default 0.0), the default modes (keep, recompute, inplace);
- ``quantize``: modes keep + quantize at the same budget: the quantized-activation step (target:
  at most 1.05x the lossless step);
- ``offload``: modes keep + offload at ``--offload-budget`` (default 0.5; with keep and offload only,
  every byte under the budget must go to host memory; target: at most 1.10x the no-budget step,
  copies overlapped): a ``torch.profiler`` summary of the copies follows the table;
- ``all``: every mode at the budget.
``NAME@B`` runs a variant at budget B instead (``quantize@0.5``).

Columns: step ms = median of ``--steps`` timed steps (CUDA-synchronised), x inductor = that over
inductor's median, peak MB = ``max_memory_allocated`` over one step (parameters and batch included),
grad rel = ||g - g_inductor|| / ||g_inductor|| over all parameters after the first step (lossless
variants: float reordering only), modes = the plan's decisions per mode.

Needs a CUDA device (on CPU the figures answer no GPU question); exits 1 without one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter

import torch

import memcompile
from memcompile.models import ModelArgs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # its sibling script, when imported by tests
from bench_offload import copy_overlap_summary, run_variant  # noqa: E402

VARIANTS = ("inductor", "memcompile", "quantize", "offload", "all")


def _options(variant: str, args) -> dict | None:
    """Options of a variant; ``NAME@B`` runs NAME at budget B (offload's budget too)."""
    name, _, at = variant.partition("@")
    budget = {"memory_budget": float(at) if at else args.budget}
    offload_budget = float(at) if at else args.offload_budget
    return {
        "inductor": None,
        "memcompile": budget,
        "quantize": {**budget, "modes": ("keep", "quantize")},
        "offload": {"memory_budget": offload_budget, "modes": ("keep", "offload"), "on_infeasible": "best_effort"},
        "all": {**budget, "modes": ("keep", "recompute", "quantize", "fewbit", "offload", "inplace"),
                "on_infeasible": "best_effort"},
    }[name]


def _compile_fn(options):
    if options is None:
        return torch.compile
    from memcompile.backend import memcompile_backend  # the callable: works without the entry point too

    return lambda model: torch.compile(model, backend=memcompile_backend, options=options)


def _modes() -> str:
    counts = Counter(d.mode for plan in memcompile.last_plans() for d in plan.decisions)
    return " ".join(f"{m}:{n}" for m, n in sorted(counts.items())) or "-"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--arch", default="gpt", choices=("gpt", "llama"))
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--budget", type=float, default=0.0)
    p.add_argument("--offload-budget", type=float, default=0.5)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", default=None, help="append one JSON line per variant to this file")
    p.add_argument("--cpu-dry-run", action="store_true", help="run the plumbing on the CPU (no figures)")
    args = p.parse_args(argv)
    device = "cpu" if args.cpu_dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("examples/bench_gpu_modes.py needs a CUDA device (step time and GPU peak); none is visible", file=sys.stderr)
        return 1
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted({v.partition("@")[0] for v in variants} - set(VARIANTS))
    if unknown:
        p.error(f"--variants: unknown {unknown}; choose from {VARIANTS}")
    model_args = ModelArgs(vocab_size=args.vocab, dim=args.dim, n_layers=args.layers, n_heads=args.heads,
                           max_seq_len=args.seq, batch_size=args.batch, seq_len=args.seq, arch=args.arch)
    dtype = getattr(torch, args.dtype)
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU dry run"
    print(f"# {name}, torch {torch.__version__}, {args.arch} d={args.dim} L={args.layers} "
          f"batch {args.batch}x{args.seq} V={args.vocab} {args.dtype}; budget {args.budget}, offload budget "
          f"{args.offload_budget}; median of {args.steps} steps", flush=True)
    print("| variant | step ms | x inductor | peak MB | grad rel | modes |\n|---|---|---|---|---|---|", flush=True)
    base_ms = base_grads = None
    for variant in variants:
        memcompile.clear_plans()
        try:
            row, step, grads = run_variant(variant, args, model_args, device, dtype, _compile_fn(_options(variant, args)))
        except Exception as exc:  # one variant failing must not hide the others' figures
            print(f"| {variant} | error: {type(exc).__name__}: {str(exc).splitlines()[0][:300]} | | | | |", flush=True)
            continue
        if variant == "inductor":
            base_ms, base_grads = row["step_ms"], grads
        rel = None
        if base_grads is not None:
            num = sum(float((g - b).norm() ** 2) for g, b in zip(grads, base_grads)) ** 0.5
            den = sum(float(b.norm() ** 2) for b in base_grads) ** 0.5
            rel = num / den
        row.update(ratio=None if base_ms is None else row["step_ms"] / base_ms, grad_rel=rel, modes=_modes())
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.3f}"
        rel_text = "-" if rel is None else f"{rel:.2e}"
        print(f"| {variant} | {row['step_ms']:.2f} | {ratio} | {'-' if row['peak_mb'] is None else round(row['peak_mb'], 1)} | {rel_text} | {row['modes']} |",
              flush=True)
        if variant.partition("@")[0] in ("offload", "all"):
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
            with profile(activities=activities) as prof:
                for _ in range(3):
                    step()
                if device == "cuda":
                    torch.cuda.synchronize()
            summary = copy_overlap_summary(prof)
            row["copies"] = summary
            for c in summary:
                print(f"#   {variant} copies {c['direction']}: {c['copies']} over 3 steps, {c['copy_ms']:.2f} ms, "
                      f"{c['overlapped_ms']:.2f} ms ({c['overlapped_pct']:.0f}%) while a kernel ran on another stream",
                      flush=True)
            if not summary:
                print(f"#   {variant}: no host copies in the profile", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps({k: v for k, v in row.items()}) + "\n")
        del step
        if device == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
