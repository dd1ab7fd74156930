"""Issue 18: plans with "inplace" (output-form activations, memory-sharing norms) against plans without
it, through Inductor, at the same fraction budgets.

    cd /tmp && python /work/main/examples/bench_inplace.py --models gpt-tiny,llama-tiny,hf-gpt2,hf-llama \
        --budgets 0.8,0.5,0.0 --json inplace.json
    cd /tmp && python /work/main/examples/bench_inplace.py --without-recompute --budgets 0.0 --json keep.json

Per model and budget, two compiles (modes ("keep", "recompute") and ("keep", "recompute", "inplace"), or
with --without-recompute ("keep",) and ("keep", "inplace")),
each in this process after ``torch._dynamo.reset()`` with Inductor's caches off (a cache hit would skip
the partitioner). Columns: bytes the plan keeps (its "keep" rows), tensors and bytes planned inplace,
predicted added seconds and peak, the measured peak of one step (memcompile.measure, CPU profiler), and
the largest gradient error against eager, max|g - g_eager| / max|g_eager| over the parameters.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from memcompile import zoo
from memcompile.backend import clear_plans, last_plans
from memcompile.measure import live_bytes_of, measure_peak
from memcompile.models import PRESETS, make

PLAIN = ("keep", "recompute")
WITH_INPLACE = ("keep", "recompute", "inplace")


class ActMLP(torch.nn.Module):
    """The issue's model written apart from this project: Linear layers, each followed by leaky_relu, elu,
    hardtanh, relu6 or threshold, and a squared-sum loss (batch 256 x 128)."""

    def __init__(self, dim: int = 128) -> None:
        super().__init__()
        from torch.nn import functional as F

        self.acts = (lambda t: F.leaky_relu(t, 0.1), F.elu, F.hardtanh, F.relu6, lambda t: F.threshold(t, 0.1, 0.0))
        self.layers = torch.nn.ModuleList(torch.nn.Linear(dim, dim) for _ in range(len(self.acts) + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer, act in zip(self.layers, self.acts):
            x = act(layer(x))
        return self.layers[-1](x).square().sum()


def build(name: str):
    if name == "act-mlp":
        torch.manual_seed(0)
        return ActMLP(), (torch.randn(256, 128),)
    if name in PRESETS:
        torch.manual_seed(0)
        return make(name)
    return zoo.make(name)


def grads(model) -> dict[str, torch.Tensor]:
    return {n.removeprefix("_orig_mod."): p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def run(name: str, budget: float, modes: tuple[str, ...], ref: dict[str, torch.Tensor]) -> dict:
    torch._dynamo.reset()
    clear_plans()
    model, inputs = build(name)
    compiled = torch.compile(model, backend="memcompile", options={"memory_budget": budget, "modes": modes})
    start = time.perf_counter()
    compiled(*inputs).backward()
    compile_seconds = time.perf_counter() - start
    got = grads(model)
    error = max(((got[k] - ref[k]).abs().max() / ref[k].abs().max().clamp_min(1e-30)).item() for k in ref)
    plans = last_plans()
    model.zero_grad(set_to_none=True)
    peak = measure_peak(lambda: compiled(*inputs).backward(), live_before_bytes=live_bytes_of(model, inputs)).peak_bytes
    rows = [d for p in plans for d in p.decisions]
    inplace = [d for d in rows if d.mode == "inplace"]
    return {
        "model": name, "budget": budget, "inplace_mode": "inplace" in modes,
        "budget_bytes": [p.budget_bytes for p in plans], "sources": [p.source for p in plans],
        "kept_bytes": sum(d.bytes for d in rows if d.mode == "keep"),
        "inplace_tensors": len(inplace), "inplace_bytes": sum(d.bytes for d in inplace),
        "inplace_names": [d.name for d in inplace],
        "added_seconds": sum(p.solution.added_seconds for p in plans if p.solution is not None),
        "predicted_peak_bytes": max(p.predicted_peak_bytes for p in plans),
        "measured_peak_bytes": peak, "grad_rel_error": error, "compile_seconds": compile_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gpt-tiny,llama-tiny,hf-gpt2,hf-llama",
                        help="memcompile.models presets, memcompile.zoo entries, or act-mlp")
    parser.add_argument("--budgets", default="0.5,0.0")
    parser.add_argument("--without-recompute", action="store_true",
                        help='compare ("keep",) with ("keep", "inplace"): the memory-sharing setting with no recompute')
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    pair = ((("keep",), ("keep", "inplace")) if args.without_recompute else (PLAIN, WITH_INPLACE))
    torch.set_num_threads(1)
    results = []
    with torch._inductor.config.patch(force_disable_caches=True):
        for name in args.models.split(","):
            model, inputs = build(name)
            model(*inputs).backward()
            ref = grads(model)
            for budget in (float(b) for b in args.budgets.split(",")):
                for modes in pair:
                    row = run(name, budget, modes, ref)
                    results.append(row)
                    print(f"{name:11s} {budget:4.2f} {'inplace' if row['inplace_mode'] else 'plain  '} "
                          f"kept {row['kept_bytes'] / 2**20:8.3f} MiB  inplace {row['inplace_tensors']:2d} "
                          f"({row['inplace_bytes'] / 2**20:6.3f} MiB)  added {row['added_seconds'] * 1e3:8.4f} ms  "
                          f"predicted {row['predicted_peak_bytes'] / 2**20:8.3f} MiB  "
                          f"measured {row['measured_peak_bytes'] / 2**20:8.3f} MiB  "
                          f"grad err {row['grad_rel_error']:.1e}  ({row['compile_seconds']:.0f} s)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
