"""Train a toy GPT for a few steps under a memory budget; print its peak beside the baselines.

    python examples/demo.py --model gpt-small --budget 0.3 --steps 3
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from memcompile.models import PRESETS, make
from memcompile.backend import clear_plans, last_plans
from memcompile.measure import live_bytes_of, measure_peak


def train(model, step_fn, inputs, steps: int, *, device: str = "cpu") -> tuple[float, int, float]:
    """(final loss, peak bytes of one more step, median seconds per step after the first).

    The first step compiles; the peak is measured on an extra step of its own because the
    profiler slows the step it watches.
    """
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    times = []
    for i in range(steps):
        opt.zero_grad(set_to_none=True)
        _sync(device)
        t = time.perf_counter()
        _step(step_fn, inputs)
        _sync(device)
        if i:
            times.append(time.perf_counter() - t)
        opt.step()
    opt.zero_grad(set_to_none=True)
    box = {}
    peak = measure_peak(lambda: box.setdefault("loss", _step(step_fn, inputs)),
                        live_before_bytes=live_bytes_of(model, inputs), device=device).peak_bytes
    opt.step()
    return float(box["loss"]), peak, statistics.median(times) if times else float("nan")


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _step(step_fn, inputs):
    loss = step_fn(*inputs)
    loss.backward()
    return loss.detach()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt-small", choices=sorted(PRESETS))
    parser.add_argument("--budget", type=float, default=0.3, help="fraction in [0, 1] (torch's activation_memory_budget scale)")
    parser.add_argument("--steps", type=int, default=3, help="training steps per method (at least 2)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps: at least 2 (the first step compiles and is not timed)")
    if not 0.0 <= args.budget <= 1.0:
        parser.error(f"--budget: a fraction in [0, 1], got {args.budget}")
    torch.manual_seed(0)
    # Said once per compile because the caches are off on purpose (see run()).
    warnings.filterwarnings("ignore", message="dynamo_pgo force disabled")

    rows = []

    def run(label, build):
        torch._dynamo.reset()
        clear_plans()
        model, inputs = make(args.model, device=args.device)
        # Inductor's caches would serve a partition planned for other settings: plan afresh.
        with torch._inductor.config.patch(force_disable_caches=True), build() as step_fn_factory:
            step_fn = step_fn_factory(model)
            loss, peak, step_s = train(model, step_fn, inputs, args.steps, device=args.device)
        rows.append((label, peak))
        print(f"  {label:<42} peak {peak / 1e6:8.2f} MB   loss {loss:.4f}   step {step_s * 1e3:8.1f} ms", flush=True)

    from contextlib import contextmanager

    @contextmanager
    def eager():
        yield lambda m: m

    @contextmanager
    def inductor():
        yield lambda m: torch.compile(m)

    @contextmanager
    def torch_budget():
        with torch._functorch.config.patch(activation_memory_budget=args.budget):
            yield lambda m: torch.compile(m)

    @contextmanager
    def memcompile_budget():
        yield lambda m: torch.compile(m, backend="memcompile", options={"memory_budget": args.budget})

    print(f"{args.model}: {args.steps} SGD steps, then the peak of one more step ({'CUDA allocator' if args.device == 'cuda' else 'CPU profiler method'}); "
          f"step time is the median after the first (compiling) step")
    run("eager", eager)
    run("inductor (default partition)", inductor)
    run(f"torch activation_memory_budget={args.budget}", torch_budget)
    run(f"memcompile memory_budget={args.budget}", memcompile_budget)
    (_, ours), others = rows[-1], rows[:-1]
    print("\nmemcompile's peak is " + ", ".join(f"{ours / peak:.0%} of {label}'s" for label, peak in others))
    plans = last_plans()
    if plans:
        plan = plans[0]
        print(f"\nmemcompile plan: predicted peak {plan.predicted_peak_bytes / 1e6:.2f} MB "
              f"(default partition {plan.baseline_peak_bytes / 1e6:.2f} MB), "
              f"{sum(d.mode == 'recompute' for d in plan.decisions)} tensors recomputed, "
              f"{sum(d.mode == 'keep' for d in plan.decisions)} kept, planned in {plan.planning_seconds:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
