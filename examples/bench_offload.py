"""Offload on a GPU: a toy transformer's step time and peak with and without offload, and a profiler
summary of how much of the copies' time overlapped compute.

    python examples/bench_offload.py                       # d=2048, 8 layers, batch 8x1024, bf16
    python examples/bench_offload.py --layers 4 --seq 512 --all --trace offload_trace.json

Needs a CUDA device: on a CPU there is nothing to offload to (the tensors already live in host
memory), and the script exits with status 1 saying so. ``--cpu-dry-run`` runs the plumbing on a
tiny model on the CPU instead (no figures; for checking the script itself).

The script chooses the storages itself (not the planner, which prices offload with
``modes=(..., "offload")``), so the cost of a copy that overlaps compute is measured on its own,
inside a partitioner hook that mirrors memcompile's (Inductor's joint graph, torch's extraction):
- every storage the backward reads is saved (no recomputation), so the variants differ only in
  where the saved bytes live;
- ``offload_schedule`` places and prices each storage with the measured host-link bandwidth
  and the roofline costs of ``passes/costs.py``;
- "offload (fits the link)" takes storages largest first while the copies, queued on the one
  link (``queued_exposed_seconds``), are predicted to add at most ``--max-added`` of the
  predicted step; "offload all" (``--all``) takes every one;
- every variant compiles through Inductor with ``INDUCTOR_CONFIG`` (the order the schedule chose).

Columns: step ms = median of ``--steps`` timed steps (forward + backward, CUDA-synchronised);
peak MB = ``max_memory_allocated`` over one step, parameters and batch included; offloaded MB =
device bytes that spend the gap between forward and backward in pinned host memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
import warnings

import torch

from memcompile.models import ModelArgs, Transformer
from memcompile.passes.rewrite.recompute import storages_the_backward_reads

MB = 1e6


def _require_cuda() -> None:
    if torch.cuda.is_available():
        return
    print(
        "examples/bench_offload.py needs a CUDA device: offload copies device memory to pinned host "
        "memory and back, and on this CPU-only machine the tensors already live in host memory, so "
        "there is nothing to measure (the planner never offers offload on CPU). Run it on a GPU "
        "machine, or pass --cpu-dry-run to check the script's plumbing without figures.",
        file=sys.stderr,
    )
    raise SystemExit(1)


# ---------------------------------------------------------------- link bandwidth


def measure_host_link_bandwidth(nbytes: int = 256 * 2**20, reps: int = 5) -> tuple[float, float]:
    """(device-to-host, host-to-device) bytes/s of pinned copies, best of ``reps``."""
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)

    def best(copy) -> float:
        copy()
        seconds = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            copy()
            end.record()
            end.synchronize()
            seconds.append(start.elapsed_time(end) / 1e3)
        return nbytes / min(seconds)

    return best(lambda: host.copy_(dev, non_blocking=True)), best(lambda: dev.copy_(host, non_blocking=True))


# ---------------------------------------------------------------- the partitioner hook


def pick_fitting(schedule, steps, seconds, budget_seconds) -> list[str]:
    """Storages, largest first, while the copies queued on one link add at most ``budget_seconds``."""
    from memcompile.passes.offload_cost import queued_exposed_seconds

    fw_end, bw_end = _ends([seconds(n) for n in steps.forward]), _ends([seconds(n) for n in steps.backward])

    def added(names) -> float:
        d2h, h2d = [], []
        for name in names:
            p = schedule[name].placement
            t = p.cost.device_to_host.transfer_seconds
            d2h.append((fw_end[p.issue_step], t, fw_end[p.release_step]))
            wait_at = bw_end[p.wait_step - 1] if p.wait_step else 0.0
            issue_at = bw_end[p.prefetch_step] if p.prefetch_step is not None else wait_at
            h2d.append((issue_at, t, wait_at))
        return sum(queued_exposed_seconds(d2h)) + sum(queued_exposed_seconds(h2d))

    chosen: list[str] = []
    for name in sorted(schedule, key=lambda n: -schedule[n].nbytes):
        if added(chosen + [name]) <= budget_seconds:
            chosen.append(name)
    return chosen


def _ends(seconds: list[float]) -> list[float]:
    out, total = [], 0.0
    for s in seconds:
        total += s
        out.append(total)
    return out


def make_partitioner(policy: str, host_link_bandwidth: float, max_added: float, *, device_check: bool = True):
    from torch._functorch import partitioners as tp

    try:
        from torch._inductor.custom_graph_pass import CustomPartitionerFn
    except ImportError:  # older torch
        from torch._inductor.custom_partitioner_fn import CustomPartitionerFn

    from memcompile.partitioner import _prepare_joint  # the same clean-up memcompile's partitioner does
    from memcompile.passes.costs import DeviceProfile, estimate_costs
    from memcompile.passes.lifetimes import analyse
    from memcompile.passes.rewrite.offload import joint_steps, offload_schedule, offload_values
    from memcompile.passes.rewrite.recompute import Extractor, saved_for

    class OffloadPartitioner(CustomPartitionerFn):
        def __init__(self) -> None:
            self.records: list[dict] = []

        def uuid(self) -> str:
            return f"bench-offload-{policy}-{host_link_bandwidth:.4g}-{max_added}"

        def __call__(self, joint, joint_inputs, *, num_fwd_outputs, static_lifetime_input_indices=None, **_):
            joint = _prepare_joint(joint)
            info = tp.classify_nodes(joint, static_lifetime_input_indices or [], num_fwd_outputs)
            backward = {n.name for n in info.required_bw_nodes}
            device = next(n.meta["val"].device for n in joint.graph.nodes if isinstance(n.meta.get("val"), torch.Tensor))
            profile = dataclasses.replace(DeviceProfile.for_device(device), host_link_bandwidth=host_link_bandwidth)
            costs = estimate_costs(joint, analyse(joint), profile)
            schedule, _skipped = offload_schedule(
                joint, storages_the_backward_reads(joint, backward), backward=backward,
                host_link_bandwidth=host_link_bandwidth, node_seconds=costs.seconds,
                overhead_seconds=4 * profile.kernel_overhead_seconds, device_check=device_check,
            )
            steps = joint_steps(joint, backward)
            predicted_step = sum(costs.seconds(n) for n in steps.forward + steps.backward)
            if policy == "none":
                chosen = []
            elif policy == "all":
                chosen = list(schedule)
            else:
                chosen = pick_fitting(schedule, steps, costs.seconds, max_added * predicted_step)
            rewrite = offload_values(joint, chosen, backward=backward, schedule=schedule)
            saved = saved_for(joint, backward | rewrite.backward_nodes, frozenset())
            fw, bw = Extractor(joint, info, num_fwd_outputs)(saved, joint=joint)
            self.records.append({
                "offloaded": len(rewrite.applied),
                "candidates": len(schedule),
                "offloaded_bytes": sum(schedule[n].nbytes for n in rewrite.applied),
                "predicted_added_s": sum(schedule[n].placement.cost.added_seconds for n in rewrite.applied),
                "predicted_step_s": predicted_step,
            })
            return fw, bw

    return OffloadPartitioner()


# ---------------------------------------------------------------- running a variant


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_variant(label, args, model_args, device, dtype, compile_fn):
    """Compile, warm up, time, measure the peak; returns a row dict and the step function."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Transformer(model_args).to(device=device, dtype=dtype)
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, model_args.vocab_size, (model_args.batch_size, model_args.seq_len), generator=g).to(device)
    targets = torch.randint(0, model_args.vocab_size, (model_args.batch_size, model_args.seq_len), generator=g).to(device)
    compiled = compile_fn(model)

    def step():
        for p in model.parameters():
            p.grad = None
        loss = compiled(idx, targets)
        loss.backward()
        return loss.detach()

    loss = step()
    # On the host: copies kept on the device would count in every later peak (this variant's and the
    # next ones'; docs/BENCHMARKS.md "GPU").
    first_grads = [p.grad.detach().float().cpu() for p in model.parameters()]
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    peak = None
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    row = {"variant": label, "step_ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3,
           "peak_mb": None if peak is None else peak / MB, "loss": float(loss)}
    return row, step, first_grads


# ---------------------------------------------------------------- profiler summary


def _ns(event, which: str) -> int:
    fn = getattr(event, f"{which}_ns", None)
    if fn is not None:
        return int(fn())
    return int(getattr(event, f"{which}_us")() * 1000)


def copy_overlap_summary(prof) -> list[dict]:
    """Per copy direction: count, MB, copy time, and the time during which a kernel ran on another stream."""
    cuda = torch.autograd.DeviceType.CUDA
    copies, kernels = [], []
    for e in prof.profiler.kineto_results.events():
        if e.device_type() != cuda:
            continue
        name = e.name()
        interval = (_ns(e, "start"), _ns(e, "end"), e.device_resource_id())
        if name.startswith("Memcpy"):
            direction = "DtoH" if "DtoH" in name else "HtoD" if "HtoD" in name else None
            if direction is not None:
                copies.append((direction, *interval))
        elif not name.startswith("Memset"):
            kernels.append(interval)
    rows = []
    for direction in ("DtoH", "HtoD"):
        mine = [c for c in copies if c[0] == direction]
        if not mine:
            continue
        copy_ns = overlap_ns = 0
        for _, start, end, stream in mine:
            copy_ns += end - start
            busy = _union([(s, e) for s, e, st in kernels if st != stream and e > start and s < end])
            overlap_ns += sum(min(e, end) - max(s, start) for s, e in busy)
        rows.append({
            "direction": direction, "copies": len(mine), "copy_ms": copy_ns / 1e6, "overlapped_ms": overlap_ns / 1e6,
            "overlapped_pct": 100.0 * overlap_ns / copy_ns if copy_ns else 0.0,
            "copy_streams": sorted({c[3] for c in mine}),
            "kernel_streams": sorted({k[2] for k in kernels}),
        })
    return rows


def _union(intervals):
    out = []
    for s, e in sorted(intervals):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


# ---------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after the compiling one")
    parser.add_argument("--max-added", type=float, default=0.05,
                        help="predicted added time the fitting set may cost, as a fraction of the predicted step")
    parser.add_argument("--all", action="store_true", help="also run with every saved storage offloaded")
    parser.add_argument("--trace", help="write the offload variant's Chrome trace here")
    parser.add_argument("--cpu-dry-run", action="store_true", help="run the plumbing on a tiny CPU model (no figures)")
    args = parser.parse_args(argv)
    if args.cpu_dry_run:
        device, dtype = "cpu", torch.float32
        model_args = ModelArgs(vocab_size=64, dim=32, n_layers=2, n_heads=2, max_seq_len=16, batch_size=2, seq_len=16)
        d2h = h2d = 10e9
        args.steps, args.warmup = min(args.steps, 2), min(args.warmup, 1)
    else:
        _require_cuda()
        device, dtype = "cuda", getattr(torch, args.dtype)
        model_args = ModelArgs(vocab_size=args.vocab, dim=args.dim, n_layers=args.layers, n_heads=args.heads,
                               max_seq_len=args.seq, batch_size=args.batch, seq_len=args.seq)
        d2h, h2d = measure_host_link_bandwidth()
    link = min(d2h, h2d)
    warnings.filterwarnings("ignore", message="dynamo_pgo force disabled")
    from torch._inductor.compile_fx import compile_fx

    from memcompile.passes.rewrite.offload import INDUCTOR_CONFIG

    def with_partitioner(partitioner):
        def backend(gm, example_inputs):
            return compile_fx(gm, example_inputs, config_patches={"custom_partitioner_fn": partitioner, **INDUCTOR_CONFIG})

        return lambda model: torch.compile(model, backend=backend)

    name = "cpu dry run" if args.cpu_dry_run else torch.cuda.get_device_name()
    print(f"{name}; torch {torch.__version__}; {args.dtype if device == 'cuda' else 'float32'}; "
          f"d={model_args.dim} L={model_args.n_layers} h={model_args.n_heads} batch {model_args.batch_size}x{model_args.seq_len} "
          f"V={model_args.vocab_size}; pinned link D2H {d2h / 1e9:.1f} GB/s, H2D {h2d / 1e9:.1f} GB/s")

    variants = [("inductor (default partition)", lambda: (lambda m: torch.compile(m)), None)]
    for label, policy in [("save all (no offload)", "none"), ("offload (fits the link)", "fit")] + (
            [("offload all", "all")] if args.all else []):
        part = make_partitioner(policy, link, args.max_added, device_check=not args.cpu_dry_run)
        variants.append((label, (lambda p=part: with_partitioner(p)), part))

    rows, steps, grads = [], {}, {}
    with torch._inductor.config.patch(force_disable_caches=True):
        for label, build, part in variants:
            row, step, first = run_variant(label, args, model_args, device, dtype, build())
            if part is not None and part.records:
                rec = part.records[-1]
                row.update(offloaded=rec["offloaded"], candidates=rec["candidates"],
                           offloaded_mb=rec["offloaded_bytes"] / MB, predicted_added_ms=rec["predicted_added_s"] * 1e3,
                           predicted_step_ms=rec["predicted_step_s"] * 1e3)
            rows.append(row)
            steps[label], grads[label] = step, first
            print(f"  {label:<30} step {row['step_ms']:8.2f} ms", flush=True)

    base = rows[1]
    print("\n| variant | step ms | min ms | x save-all | peak MB | offloaded (of) | offloaded MB | predicted added ms | loss | grads = save-all |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        pairs = list(zip(grads[row["variant"]], grads[base["variant"]]))
        worst = max(float((a - b).abs().max()) for a, b in pairs)
        same = "exact" if all(torch.equal(a, b) for a, b in pairs) else f"max abs diff {worst:.2e}"
        peak = "n/a" if row["peak_mb"] is None else f"{row['peak_mb']:.0f}"
        print(f"| {row['variant']} | {row['step_ms']:.2f} | {row['min_ms']:.2f} | {row['step_ms'] / base['step_ms']:.3f} | "
              f"{peak} | {row.get('offloaded', '-')} ({row.get('candidates', '-')}) | {row.get('offloaded_mb', 0):.0f} | "
              f"{row.get('predicted_added_ms', 0):.2f} | {row['loss']:.5f} | {same} |")

    if device != "cuda":
        print("\n(cpu dry run: no profiler summary)")
        return 0
    label = "offload (fits the link)"
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(2):
            steps[label]()
        torch.cuda.synchronize()
    if args.trace:
        prof.export_chrome_trace(args.trace)
    summary = copy_overlap_summary(prof)
    print(f"\nProfiler, 2 steps of '{label}': copies (Memcpy events) and the time a kernel ran on another stream meanwhile")
    print("| direction | copies | copy ms | overlapped ms | overlapped % | copy streams | kernel streams |")
    print("|---|---|---|---|---|---|---|")
    for r in summary:
        print(f"| {r['direction']} | {r['copies']} | {r['copy_ms']:.2f} | {r['overlapped_ms']:.2f} | {r['overlapped_pct']:.0f} | "
              f"{r['copy_streams']} | {r['kernel_streams']} |")
    if not summary:
        print("(no device/host copies recorded: nothing was offloaded)")
    if args.trace:
        print(f"\nChrome trace: {args.trace} (open in chrome://tracing or https://ui.perfetto.dev)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
