"""``memcompile`` command line: ``memcompile inspect FILE.py:FACTORY [--budget 0.5|6GiB]``."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from collections.abc import Sequence


class _UsageError(Exception):
    """A bad command line or user file: printed as one line, exit code 2."""


def _load_factory(spec: str):
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise _UsageError(f"memcompile: expected FILE.py:FACTORY, got {spec!r}")
    if not os.path.isfile(path):
        raise _UsageError(f"memcompile: no such file: {path}")
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    sys.path.insert(0, os.getcwd())
    module_spec = importlib.util.spec_from_file_location("_memcompile_user_module", path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module  # dataclasses in the user's file look their module up
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's file: one line, no traceback
        raise _UsageError(f"memcompile: importing {path} failed: {type(exc).__name__}: {exc}") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise _UsageError(f"memcompile: {path} has no callable {name!r}")
    return factory


def _budget(text: str | None):
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return text  # a byte string such as "6GiB"; MemConfig validates it
    # "0.5" or "1" is a fraction; a larger number is a byte count
    return value if value <= 1.0 else text


def inspect_command(args: argparse.Namespace) -> int:
    import torch

    from .backend import clear_plans, last_plans
    from .config import MemConfig

    options = {"memory_budget": _budget(args.budget), "inner": "eager"}
    try:
        MemConfig.from_options(options)
    except (TypeError, ValueError) as exc:
        print(f"memcompile: {exc}", file=sys.stderr)
        return 2
    factory = _load_factory(args.target)
    try:
        built = factory()
        model, example_inputs = built
    except Exception as exc:  # noqa: BLE001 - the user's factory: report, do not trace back
        print(f"memcompile: {args.target} must return (model, example_inputs); it raised or returned something else: {exc}",
              file=sys.stderr)
        return 2
    clear_plans()
    compiled = torch.compile(model, backend="memcompile", options=options)
    compiled(*example_inputs)  # traces and plans; no backward step is run
    plans = last_plans()
    report = [_plan_dict(p) for p in plans]
    for p in plans:
        print(_summary(p))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report if len(report) != 1 else report[0], f, indent=2)
    return 0


def _plan_dict(plan) -> dict:
    sol = plan.solution
    return {
        "budget_bytes": plan.budget_bytes,
        "baseline_peak_bytes": plan.baseline_peak_bytes,
        "predicted_peak_bytes": plan.predicted_peak_bytes,
        "solver": {
            "status": sol.status if sol else plan.source,
            "seconds": sol.solve_seconds if sol else 0.0,
            "objective": sol.objective if sol else 0.0,
        },
        "tensors": [
            {"name": d.name, "shape": list(d.shape), "dtype": d.dtype, "bytes": d.bytes, "mode": d.mode,
             "added_seconds": d.added_seconds}
            for d in plan.decisions
        ],
    }


def _summary(plan) -> str:
    lines = [f"graph {plan.graph_index}: source={plan.source}"]
    lines.append(f"{'name':<24} {'shape':<22} {'dtype':<9} {'bytes':>12} {'mode':<10} {'added ms':>9}")
    for d in plan.decisions:
        lines.append(f"{d.name:<24} {str(tuple(d.shape)):<22} {d.dtype:<9} {d.bytes:>12,} {d.mode:<10} {d.added_seconds * 1e3:>9.3f}")
    kept = sum(d.bytes for d in plan.decisions if d.mode == "keep")
    lines.append(f"kept {kept:,} bytes in {sum(d.mode == 'keep' for d in plan.decisions)} tensors; "
                 f"{sum(d.mode == 'recompute' for d in plan.decisions)} recomputed")
    budget = f"{plan.budget_bytes:,}" if plan.budget_bytes else "none"
    lines.append(f"budget {budget} bytes; default-partition peak {plan.baseline_peak_bytes:,}; "
                 f"predicted peak {plan.predicted_peak_bytes:,}; planned in {plan.planning_seconds:.2f} s")
    for note in plan.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="memcompile", description="Plan activation memory for torch.compile.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="plan a model's training step and print what is kept and recomputed")
    p.add_argument("target", help="FILE.py:FACTORY where FACTORY() returns (model, example_inputs)")
    p.add_argument("--budget", help="fraction in [0, 1] or bytes such as 6GiB / 800MB")
    p.add_argument("--json", help="write the plan as JSON to this path")
    p.set_defaults(func=inspect_command)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except _UsageError as exc:
        print(exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
