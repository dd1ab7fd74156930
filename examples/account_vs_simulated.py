"""Planning only: for every plan a search builds, the ILP's peak, the exact account's peak
(``chains.live_bytes``) and the simulated peak, and whether the account picks the simulator's lowest plan.

    python examples/account_vs_simulated.py --models toy-gpt,hf-gpt2,resnet-bn --budget 0.0

Stops the partitioner after its search (no Inductor code generation; the compile then falls back, which
is silenced here). One thread. Run from outside the repository root.
"""

from __future__ import annotations

import argparse
import warnings


class _Stop(Exception):
    pass


def _percent(a: int, b: int) -> float:
    return (a - b) / b * 100.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="toy-gpt")
    parser.add_argument("--budget", type=float, default=0.0)
    args = parser.parse_args(argv)

    import torch

    import memcompile.partitioner as partitioner
    from memcompile import zoo
    from memcompile.passes.planner.chains import live_bytes
    from memcompile.passes.planner.local import closure
    from memcompile.passes.planner.problem import option_indices

    torch.set_num_threads(1)
    original = partitioner.search
    print("| model | plans | ILP vs simulated (min / median / max) | account vs simulated (min / median / max) "
          "| lowest simulated (MB) | the account's pick, simulated (MB) |")
    print("|---|---:|---|---|---:|---:|")
    for name in args.models.split(","):
        rows: list[tuple[int, int, int]] = []

        def search(inputs, **kwargs):
            problem, verify = inputs.problem, kwargs["verify"]
            index = {n: i for i, n in enumerate(problem.names)}

            def verify_and_account(sol):
                built = verify(sol)
                options = option_indices(problem, sol)
                served = {i for o in options for i in problem.options[o].serves}
                closed = closure(problem, {index[n] for n in sol.recompute}, served)
                if closed is not None:
                    account = live_bytes(problem, *closed, options, fused=problem.fused, inlined=problem.inlined)
                    rows.append((sol.predicted_peak_bytes, account.peak_bytes, built.peak_bytes))
                return built

            kwargs["verify"] = verify_and_account
            original(inputs, **kwargs)
            raise _Stop

        partitioner.search = search
        torch._dynamo.reset()
        model, inputs = zoo.make(name)
        compiled = torch.compile(model, backend="memcompile", options={"memory_budget": args.budget})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                compiled(*inputs).backward()
            except Exception:  # noqa: BLE001 - the fallback after _Stop, or a model that does not compile
                pass
        partitioner.search = original
        if not rows:
            print(f"| {name} | 0 | | | | |")
            continue

        def spread(errors: list[float]) -> str:
            errors = sorted(errors)
            return f"{errors[0]:+.1f}% / {errors[len(errors) // 2]:+.1f}% / {errors[-1]:+.1f}%"

        lowest = min(r[2] for r in rows)
        pick = min(rows, key=lambda r: (r[1], r[2]))[2]
        print(f"| {name} | {len(rows)} | {spread([_percent(m, s) for m, _, s in rows])} "
              f"| {spread([_percent(a, s) for _, a, s in rows])} | {lowest / 1e6:.2f} | {pick / 1e6:.2f} |", flush=True)


if __name__ == "__main__":
    main()
