"""Predicted against measured peak through Inductor, one zoo model and budget per process line.

    python examples/predicted_vs_measured.py --models hf-gpt2,resnet-bn --budgets 0.5,0.0

Prints, per (model, budget): the plan's predicted peak, the measured one (profiler method, after one
warm step), their difference, the plan's source and how many times the search re-solved. One thread,
Inductor's FX graph cache off, so every row is a fresh compile. Run from outside the repository root.
"""

from __future__ import annotations

import argparse
import time


def _row(name: str, budget: float) -> dict:
    import torch

    import memcompile
    from memcompile import zoo
    from memcompile.measure import live_bytes_of, measure_peak

    torch._dynamo.reset()
    torch.manual_seed(0)
    model, inputs = zoo.make(name)
    compiled = torch.compile(model, backend="memcompile", options={"memory_budget": budget})

    def step():
        compiled(*inputs).backward()

    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    (plan,) = memcompile.last_plans()
    measured = measure_peak(step, live_before_bytes=live_bytes_of(model, inputs)).peak_bytes
    model.zero_grad(set_to_none=True)
    return dict(model=name, budget=budget, predicted=plan.predicted_peak_bytes, measured=measured,
                source=plan.source, resolves=sum("re-solved" in n for n in plan.notes), seconds=seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="hf-gpt2,hf-llama,hf-bert,hf-t5,resnet-bn")
    parser.add_argument("--budgets", default="0.5,0.0")
    args = parser.parse_args(argv)

    import torch
    import torch._inductor.config as inductor_config

    torch.set_num_threads(1)
    inductor_config.fx_graph_cache = False
    print("| model | budget | predicted (MB) | measured (MB) | error | source | re-solves | first step (s) |")
    print("|---|---:|---:|---:|---:|---|---:|---:|")
    for name in args.models.split(","):
        for budget in (int(b) if b.isdigit() else float(b) for b in args.budgets.split(",")):
            r = _row(name, budget)
            err = (r["predicted"] - r["measured"]) / r["measured"]
            print(f"| {name} | {budget} | {r['predicted'] / 1e6:.2f} | {r['measured'] / 1e6:.2f} | {err:+.1%} "
                  f"| {r['source']} | {r['resolves']} | {r['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
