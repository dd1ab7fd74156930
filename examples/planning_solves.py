"""Planning only, one zoo model and budget: every CBC solve of the search (variables, nodes, seconds, why
it stopped), the plan's simulated and model peaks, and a digest of its recompute set, so two runs can be
compared for the same plan.

    python examples/planning_solves.py --model hf-gpt2 --budget 0.0 [--solve-nodes 2000] [--refine-nodes 100]

Stops the partitioner after its search (no Inductor code generation; the compile then falls back, which
prints a warning). One thread. Run from outside the repository root.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import tempfile
import time


class _Stop(Exception):
    pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="hf-gpt2")
    parser.add_argument("--budget", type=float, default=0.0)
    parser.add_argument("--solve-nodes", type=int, default=None, help="tuning.SOLVE_NODES for this run")
    parser.add_argument("--refine-nodes", type=int, default=None, help="tuning.REFINE_NODES for this run")
    parser.add_argument("--quiet", action="store_true", help="print the summary line only")
    args = parser.parse_args(argv)

    import pulp
    import torch

    import memcompile.partitioner as partitioner
    from memcompile import zoo
    from memcompile.passes.planner import tuning

    torch.set_num_threads(1)
    if args.solve_nodes is not None:
        tuning.SOLVE_NODES = args.solve_nodes
    if args.refine_nodes is not None:
        tuning.REFINE_NODES = args.refine_nodes

    solves: list[dict] = []
    solve = pulp.LpProblem.solve

    def logged(self, solver=None, **kw):
        own_log = not solver.optionsDict.get("logPath")
        if own_log:
            fd, path = tempfile.mkstemp(suffix=".log")
            os.close(fd)
            solver.optionsDict["logPath"] = path
        path = solver.optionsDict["logPath"]
        start = time.perf_counter()
        result = solve(self, solver, **kw)
        seconds = time.perf_counter() - start
        with open(path) as f:
            text = f.read()
        if own_log:
            os.unlink(path)
        nodes = re.search(r"Enumerated nodes:\s+(\d+)", text)
        stop = re.search(r"Result - (.*)", text)
        solves.append(dict(variables=len(self.variables()), nodes=int(nodes.group(1)) if nodes else None,
                           seconds=round(seconds, 2), stop=stop.group(1).strip() if stop else None))
        if not args.quiet:
            print("  solve", solves[-1], flush=True)
        return result

    pulp.LpProblem.solve = logged
    found: dict = {}
    search = partitioner.search

    def stopping(inputs, **kw):
        start = time.perf_counter()
        result = search(inputs, **kw)
        sol = result.chosen.solution
        found.update(seconds=time.perf_counter() - start, peak=result.chosen.peak_bytes,
                     model_peak=None if sol is None else sol.predicted_peak_bytes, notes=result.notes,
                     recompute=sorted(sol.recompute) if sol is not None else [])
        raise _Stop

    partitioner.search = stopping
    model, inputs = zoo.make(args.model)
    compiled = torch.compile(model, backend="memcompile", options={"memory_budget": args.budget})
    try:
        compiled(*inputs).backward()
    except Exception:  # noqa: BLE001 - the compile falls back after _Stop; anything else is re-raised below
        if not found:
            raise
    if not found:
        raise SystemExit("the search did not run (no backward, or the partitioner was not called)")
    print(json.dumps(dict(
        model=args.model, budget=args.budget, search_seconds=round(found["seconds"], 1),
        simulated_peak=found["peak"], model_peak=found["model_peak"], solves=len(solves),
        max_nodes=max((s["nodes"] or 0 for s in solves), default=0),
        stops=sorted({s["stop"] for s in solves if s["stop"]}),
        recompute_digest=hashlib.md5(repr(found["recompute"]).encode()).hexdigest()[:8],
        notes=list(found["notes"]))))


if __name__ == "__main__":
    main()
