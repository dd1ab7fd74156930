"""Planning only, on the model zoo: the plan every budget gets and its simulated peak, in minutes, no step run.

    python examples/plan_zoo.py                                   # every zoo model, six fractions
    python examples/plan_zoo.py --models hf-gpt2,toy-gpt --fractions 0.5,0.0 --byte-budgets 15MB
    python examples/plan_zoo.py --byte-budgets grid --json after.jsonl --compare before.jsonl

Each model's joint graph is captured once, where memcompile's backend hands it to its partitioner (the
decompositions the backend picks for a budget included, so it is the graph a compile plans); the compile stops
there. Every budget is then planned on a fresh copy of that graph in this process, as a compile would plan it
(``MemPartitioner`` with the budget's config), and the row records the simulated peak of the plan that would run,
its source, its predicted added time and the planning seconds. A budget no plan meets records the error.

What this is for: a planner change is first judged on these rows (which plans move, and whether the simulated
peaks still never rise as the budget falls and keep every byte budget), and only the rows it moves are then
measured through Inductor with ``examples/bench_zoo.py``, whose measured peaks are the figures that count. The
simulated peak is the prediction bench_zoo reports, so the rows here equal bench_zoo's predictions where a plan is
deterministic; convolution scratch is measured in-process (``costs._measured_scratch``), so conv models' rows
can differ from a separate compile's by a few percent.

``--byte-budgets grid`` takes each model's byte budgets from docs/bench_zoo_grid.json (its memcompile rows).
``--compare`` prints, per (model, budget) in both files, the simulated peaks and the change.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling script, when imported by tests
from bench_planning import time_memcompile  # noqa: E402
from bench_zoo import FRACTIONS, _at_most  # noqa: E402 - the grid's fractions and its 1% noise bound

GRID = Path(__file__).resolve().parent.parent / "docs" / "bench_zoo_grid.json"


class _Captured(Exception):
    """Raised once the partitioner holds the joint graph: the compile stops there."""


def capture_joint(name: str, options: dict):
    """(joint graph module, its inputs, the partition kwargs) of zoo model ``name`` as memcompile's backend hands
    them to its partitioner under ``options``."""
    import torch
    from torch import fx

    from memcompile import zoo
    from memcompile.partitioner import MemPartitioner, _copy_graph

    model, inputs = zoo.make(name)
    captured = {}

    def capture(self, joint, joint_inputs, **kw):
        captured.update(joint=fx.GraphModule(joint, _copy_graph(joint.graph)), inputs=joint_inputs, kw=kw)
        raise _Captured

    original = MemPartitioner.__call__
    MemPartitioner.__call__ = capture
    torch._dynamo.reset()
    try:
        torch.compile(model, backend="memcompile", options=options)(*inputs)
    except Exception:
        if "joint" not in captured:
            raise
    finally:
        MemPartitioner.__call__ = original
        torch._dynamo.reset()
    kw = dict(captured["kw"])
    kw.pop("compiler", None)
    return captured["joint"], captured["inputs"], kw


def plan_budget(joint, inputs, kw, budget) -> dict:
    """One budget planned on a copy of ``joint`` (``bench_planning.time_memcompile``, as a compile plans it: under the
    joint's fake mode): the row (simulated peak, source, added seconds, seconds, error)."""
    import contextlib

    from torch._guards import detect_fake_mode

    plan, error = None, ""
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(), detect_fake_mode(inputs) or contextlib.nullcontext():
            warnings.simplefilter("ignore")
            _, plan = time_memcompile(joint, inputs, kw, budget)
    except Exception as exc:  # noqa: BLE001 - recorded: a refused byte budget is a row too
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    row = {"budget": budget, "seconds": round(time.perf_counter() - start, 3), "error": error}
    if plan is not None:
        row.update(simulated_peak_bytes=plan.planned.peak_bytes, source=plan.source,
                   min_peak_bytes=plan.min_peak_bytes,
                   added_seconds=sum(d.added_seconds for d in plan.decisions), notes=list(plan.notes))
    return row


def grid_byte_budgets(name: str, path: Path = GRID) -> list[int]:
    rows = json.loads(path.read_text())["models"].get(name, {}).get("rows", [])
    return [int(r["budget"]) for r in rows if r["method"] == "memcompile" and r["budget"] > 1.0]


def check(rows: Sequence[dict]) -> list[str]:
    """What the simulated peaks break: a lower fraction more than 1% above a higher one, a byte budget's plan
    more than 1% above it (bench_zoo's checks and noise bound, on the simulated peaks)."""
    failures = []
    fractions = sorted((r for r in rows if r["budget"] <= 1.0 and "simulated_peak_bytes" in r),
                       key=lambda r: -r["budget"])
    for high, low in zip(fractions, fractions[1:]):
        if not _at_most(low["simulated_peak_bytes"], high["simulated_peak_bytes"]):
            failures.append(f"{low['budget']:g} simulates {_mb(low['simulated_peak_bytes'])} MB, above "
                            f"{high['budget']:g}'s {_mb(high['simulated_peak_bytes'])}")
    for r in rows:
        if r["budget"] > 1.0 and "simulated_peak_bytes" in r and not _at_most(r["simulated_peak_bytes"], r["budget"]):
            failures.append(f"byte budget {_mb(r['budget'])} MB simulates {_mb(r['simulated_peak_bytes'])}")
    return failures


def _mb(nbytes) -> str:
    return f"{nbytes / 1e6:.2f}"


def _label(budget) -> str:
    return f"{budget:g}" if budget <= 1.0 else f"{_mb(budget)} MB"


def compare(before: Path, after: Path) -> None:
    def load(path):
        return {(r["model"], r["budget"]): r for r in map(json.loads, path.read_text().splitlines()) if r}

    a, b = load(before), load(after)
    print("| model | budget | simulated before (MB) | after (MB) | change | source before / after |")
    print("|---|---|---:|---:|---:|---|")
    for key in sorted(a.keys() & b.keys(), key=lambda k: (k[0], k[1] > 1.0, -k[1])):
        x, y = a[key], b[key]
        sx, sy = x.get("simulated_peak_bytes"), y.get("simulated_peak_bytes")
        change = f"{100 * (sy - sx) / sx:+.2f}%" if sx and sy else "—"
        print(f"| {key[0]} | {_label(key[1])} | {_mb(sx) if sx else x['error'][:30]} | "
              f"{_mb(sy) if sy else y['error'][:30]} | {change} | {x.get('source')} / {y.get('source')} |")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="all", help="'all' (default) or a comma-separated subset of memcompile.zoo.NAMES")
    parser.add_argument("--fractions", default=",".join(map(str, FRACTIONS)))
    parser.add_argument("--byte-budgets", default="", help="comma-separated sizes (15MB,12MB), or 'grid': each "
                        "model's byte budgets in docs/bench_zoo_grid.json; none by default")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1, as bench_zoo's rows)")
    parser.add_argument("--json", metavar="PATH", help="append one JSON line per (model, budget)")
    parser.add_argument("--compare", metavar="PATH", help="with --json: print the rows' change against this file's")
    args = parser.parse_args(argv)

    import torch

    from memcompile import zoo
    from memcompile.config import parse_bytes

    torch.set_num_threads(args.threads)
    names = zoo.NAMES if args.models == "all" else tuple(n.strip() for n in args.models.split(",") if n.strip())
    unknown = [n for n in names if n not in zoo.NAMES]
    if unknown:
        raise SystemExit(f"plan_zoo: --models: unknown {unknown}; zoo names: {', '.join(zoo.NAMES)}")
    fractions = [float(f) for f in args.fractions.split(",") if f.strip()]
    out = Path(args.json) if args.json else None
    all_failures = {}
    for name in names:
        byte_budgets = (grid_byte_budgets(name) if args.byte_budgets == "grid" else
                        [parse_bytes(b.strip()) for b in args.byte_budgets.split(",") if b.strip()])
        # any budget: the backend's decompositions depend only on whether there is one (and on the modes)
        joint, inputs, kw = capture_joint(name, {"memory_budget": 0.5})
        rows = []
        for budget in [*fractions, *byte_budgets]:
            row = {"model": name, **plan_budget(joint, inputs, kw, budget)}
            rows.append(row)
            what = (f"{_mb(row['simulated_peak_bytes'])} MB simulated, {row['source']}" if "simulated_peak_bytes" in row
                    else "no plan")
            print(f"[{name}] {_label(budget)}: {what}{'; ' + row['error'] if row['error'] else ''} "
                  f"({row['seconds']:.1f} s)", flush=True)
            if out is not None:
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
        all_failures[name] = check(rows)
    print()
    print("| model | checks on the simulated peaks |")
    print("|---|---|")
    for name, failures in all_failures.items():
        print(f"| {name} | {'; '.join(failures) if failures else 'pass'} |")
    if args.compare and out is not None:
        print()
        compare(Path(args.compare), out)
    return 1 if any(all_failures.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
