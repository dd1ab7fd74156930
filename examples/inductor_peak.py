"""Where a plan's measured peak lies in Inductor's generated code, next to the simulator's live set.

    python examples/inductor_peak.py --model hf-bert --budget 0.0 [--top 12]

Compiles one zoo model at one budget through memcompile and Inductor, runs a step under the profiler
and finds the measured peak inside the compiled backward. The generated backward's allocations
(``empty_strided`` lines, with their ``reuse`` aliases and ``del`` lines) are matched in order against the
profiler's allocations (an allocation the code does not show, an extern fallback's output, is skipped),
which names the line at the measured peak and the buffers the code holds there. Printed beside them:
the simulator's peak step and its live set, the largest first. One thread, Inductor's FX graph cache
off. Run from outside the repository root. The method behind docs/planner.md, "Inductor's order".
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int64": 8, "int32": 4, "int16": 2,
             "int8": 1, "uint8": 1, "bool": 1, "float8_e4m3fn": 1, "float8_e5m2": 1}
_ALLOC = re.compile(r"(\w+) = empty_strided_\w+\(\(([^)]*)\), \(([^)]*)\), torch\.(\w+)\)")
_ALIAS = re.compile(r"(\w+) = (?:reinterpret_tensor\((\w+),|(\w+)$)")
_SOURCE = re.compile(r"# Topologically Sorted Source Nodes: \[([^\]]*)\]")


@dataclass(frozen=True)
class Allocation:
    """One ``empty_strided`` of the generated code: its buffer, bytes, the kernel comment before it, and
    the buffers (name -> bytes) live right after it."""

    buffer: str
    nbytes: int
    source: str
    live: dict[str, int]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def storage_bytes(sizes: list[int], strides: list[int], dtype: str) -> int:
    if any(s == 0 for s in sizes):
        return 0
    return (1 + sum((s - 1) * st for s, st in zip(sizes, strides))) * _ITEMSIZE.get(dtype, 4)


def allocations(code: str) -> list[Allocation]:
    """The generated module's ``call`` body, replayed: every allocation with what is live after it
    (buffers only: the graph's inputs are not counted)."""
    start = code.index("def call(")
    end = code.find("\ndef ", start + 1)
    body = code[start:end if end >= 0 else len(code)]
    storage: dict[str, int] = {}  # name -> storage id
    sizes: dict[int, int] = {}  # storage id -> bytes
    owner: dict[int, str] = {}
    refs: dict[int, int] = {}
    source = ""
    out: list[Allocation] = []
    for line in body.splitlines():
        line = line.strip()
        m = _SOURCE.match(line)
        if m:
            source = m.group(1)
            continue
        for stmt in line.split("#")[0].split("; "):
            stmt = stmt.strip()
            m = _ALLOC.match(stmt)
            if m:
                sid = len(owner) + 1
                storage[m.group(1)] = sid
                sizes[sid] = storage_bytes(_ints(m.group(2)), _ints(m.group(3)), m.group(4))
                owner[sid], refs[sid] = m.group(1), 1
                out.append(Allocation(m.group(1), sizes[sid], source,
                                      {owner[s]: b for s, b in sizes.items()}))
                continue
            m = _ALIAS.match(stmt)
            if m:
                base = m.group(2) or m.group(3)
                if base in storage:
                    storage[m.group(1)] = storage[base]
                    refs[storage[base]] += 1
                continue
            if stmt.startswith("del "):
                for name in stmt[4:].split(","):
                    sid = storage.pop(name.strip(), None)
                    if sid is not None:
                        refs[sid] -= 1
                        if refs[sid] == 0:
                            del sizes[sid]
    return out


def match(code_sizes: list[int], profiled_sizes: list[int]) -> list[int]:
    """For each profiled allocation, the index of the code's allocation it is (greedy, in order; -1 for
    one the code does not show). The code's allocations are all among the profiled ones."""
    out, i = [], 0
    for size in profiled_sizes:
        if i < len(code_sizes) and code_sizes[i] == size:
            out.append(i)
            i += 1
        else:
            out.append(-1)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="hf-bert")
    parser.add_argument("--budget", type=float, default=0.0)
    parser.add_argument("--top", type=int, default=12, help="live buffers to print on each side")
    parser.add_argument("--dump", default=None,
                        help="a folder to write the generated forward and backward code and the simulated steps into")
    args = parser.parse_args(argv)

    import torch
    import torch._inductor.config as inductor_config
    from torch._inductor.utils import run_and_get_code
    from torch.profiler import ProfilerActivity, profile

    import memcompile
    from memcompile import zoo
    from memcompile.measure import live_bytes_of

    torch.set_num_threads(1)
    inductor_config.fx_graph_cache = False
    torch.manual_seed(0)
    model, inputs = zoo.make(args.model)
    compiled = torch.compile(model, backend="memcompile", options={"memory_budget": args.budget})
    _, codes = run_and_get_code(lambda: compiled(*inputs).backward())
    (plan,) = memcompile.last_plans()
    timeline = plan.planned
    if args.dump:
        import pathlib

        folder = pathlib.Path(args.dump)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "fw_code.py").write_text(codes[0])
        (folder / "bw_code.py").write_text(codes[-1])
        (folder / "steps.txt").write_text("".join(f"{k} {s} {side} {b}\n" for k, (s, side, b)
                                                  in enumerate(zip(timeline.steps, timeline.sides, timeline.live_bytes))))
    model.zero_grad(set_to_none=True)
    live_before = live_bytes_of(model, inputs)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        compiled(*inputs).backward()
    events = list(prof.profiler.kineto_results.events())
    cpu = torch.autograd.DeviceType.CPU
    memory = sorted((e.start_ns(), int(e.nbytes())) for e in events
                    if e.name() == "[memory]" and e.device_type() == cpu and e.nbytes())
    running, peak, peak_at = 0, 0, 0
    for t, b in memory:
        running += b
        if running > peak:
            peak, peak_at = running, t
    print(f"{args.model} at {args.budget}: measured {live_before + peak:,} B, predicted "
          f"{plan.predicted_peak_bytes:,} B")
    spans = [(e.start_ns(), e.start_ns() + e.duration_ns()) for e in events if e.name() == "CompiledFunctionBackward"]
    span = next(((a, z) for a, z in spans if a <= peak_at <= z), None)
    if span is None:
        print("the measured peak is outside the compiled backward (the forward, or between the graphs)")
    else:
        profiled = [b for t, b in memory if span[0] <= t <= peak_at and b > 0]
        backward = allocations(codes[-1])
        index = [i for i in match([a.nbytes for a in backward], profiled) if i >= 0]
        if not index:
            print("no allocation of the generated backward matched the profiler's")
        else:
            at = backward[index[-1]]
            print(f"measured peak: after the backward's allocation {index[-1] + 1} of {len(backward)} "
                  f"({len(profiled)} profiled), {at.buffer} ({at.nbytes:,} B); the source-nodes comment before it: [{at.source[:160]}]")
            print(f"  buffers the code holds there: {sum(at.live.values()):,} B; the largest:")
            for name, nbytes in sorted(at.live.items(), key=lambda kv: -kv[1])[: args.top]:
                print(f"    {nbytes:>12,}  {name}")
            sources = [s.strip() for s in at.source.split(",") if s.strip()]
            step = next((k for k, s in enumerate(timeline.steps) if timeline.sides[k] == "backward"
                         and sources and s in (sources[-1], "bw:" + sources[-1])), None)
            if step is not None:
                print(f"  the simulator at that kernel's node (step {step}, {timeline.steps[step]}): "
                      f"{timeline.live_bytes[step]:,} B; the largest:")
                for interval in timeline.live_at(step)[: args.top]:
                    print(f"    {interval.nbytes:>12,}  {interval.root}")
                made = [iv for iv in timeline.live_at(step) if iv.alloc_step >= timeline.backward_start]
                print(f"  of which made in the backward (the code's buffers): {sum(iv.nbytes for iv in made):,} B in "
                      f"{len(made)}: " + ", ".join(f"{iv.root} {iv.nbytes:,}" for iv in made))
    i = timeline.peak_index
    print(f"simulated peak: step {i} {timeline.steps[i]} ({timeline.sides[i]}), {timeline.live_bytes[i]:,} B; "
          "the largest live values:")
    for interval in sorted(timeline.live_at(i), key=lambda iv: -iv.nbytes)[: args.top]:
        print(f"    {interval.nbytes:>12,}  {interval.root}")


if __name__ == "__main__":
    main()
