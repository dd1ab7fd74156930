"""Planning time: memcompile's partitioner against torch's own budgeted min-cut + knapsack, same graph, one run.

    python examples/bench_planning.py --model gpt-24 --budgets 0.5,0.1 --repeat 3
    python examples/bench_planning.py --depths 6,12,24,48,96 --budgets 0.5   # growth with depth
    python examples/bench_planning.py --model hf-gpt2-small --modes recompute,inplace,quantize,fewbit
    python examples/bench_planning.py --model hf-gpt2-small --budgets 0.0 --compare-reuse   # reuse on vs off

The joint graph is captured once where Inductor hands it to its partitioner (decomposed as Inductor
decomposes it; the compile stops there); each partitioner then runs on a fresh copy of
it, under the lazy GraphModule mode Inductor itself uses, alternating between the two so
neither profits from warm caches the other paid for. One warm-up round on a small model
comes first (imports, first-call caches). Times are medians over ``--repeat`` rounds.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import statistics
import time
import warnings

import torch
from torch import fx

from memcompile.config import MemConfig
from memcompile.models import PRESETS, ModelArgs, Transformer, make
from memcompile.partitioner import MemPartitioner, _copy_graph

DEPTH_ARGS = ModelArgs(arch="llama", vocab_size=512, dim=128, n_heads=4, batch_size=2, seq_len=64, max_seq_len=64)
"""The Llama-like model of the depth sweep (d=128, batch 2x64); only ``n_layers`` changes."""


def make_deep(n_layers: int):
    args = dataclasses.replace(DEPTH_ARGS, n_layers=n_layers)
    torch.manual_seed(0)
    model = Transformer(args)
    idx = torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len))
    return model, (idx, torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len)))


GPT2_SMALL = "hf-gpt2-small"
"""Hugging Face GPT-2 small (124M parameters: 12 layers, d=768, vocab 50257), batch 4x256, dropout off."""


def make_gpt2_small():
    import transformers

    from memcompile.zoo import HFLoss

    config = transformers.GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False,
                                     attn_implementation="eager")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, config.vocab_size, (4, 256), generator=g)
    return HFLoss(model, "input_ids"), (idx, idx.clone())


class _Captured(Exception):
    """Raised by the capturing partitioner once it holds the joint graph: the compile stops there."""


try:  # where the hook's base class lives moved between torch releases (as in memcompile/partitioner.py)
    from torch._inductor.custom_graph_pass import CustomPartitionerFn
except ImportError:  # pragma: no cover - older torch
    from torch._inductor.custom_partitioner_fn import CustomPartitionerFn


class _Capture(CustomPartitionerFn):
    """A partitioner that keeps a copy of the joint graph it is handed and stops the compile."""

    def __init__(self):
        self.captured = {}

    def __call__(self, joint, inputs, **kw):
        self.captured.update(joint=fx.GraphModule(joint, _copy_graph(joint.graph)), inputs=inputs, kw=kw)
        raise _Captured

    def uuid(self):
        return None


def capture_joint(name: str | int):
    """(joint graph module, its inputs, the partition kwargs) of a preset, or of the depth sweep's model with
    ``name`` layers: the joint graph Inductor hands its partitioner (decomposed as Inductor decomposes it)."""
    model, inputs = (make_deep(name) if isinstance(name, int) else make_gpt2_small() if name == GPT2_SMALL
                     else make(name))
    capture = _Capture()
    torch._dynamo.reset()
    try:
        torch.compile(model, options={"custom_partitioner_fn": capture})(*inputs)
    except Exception:
        if "joint" not in capture.captured:
            raise
    torch._dynamo.reset()
    kw = dict(capture.captured["kw"])
    kw.pop("compiler", None)
    return capture.captured["joint"], capture.captured["inputs"], kw


def time_torch(joint, inputs, kw, budget: float, *, gc_off: bool = False) -> float:
    """torch's partitioner as it runs; with ``gc_off``, under memcompile's cyclic-GC pause too."""
    from torch._functorch import config as functorch_config
    from torch._functorch import partitioners as tp

    gm = fx.GraphModule(joint, _copy_graph(joint.graph))
    if gc_off:
        gc.disable()
    try:
        with functorch_config.patch(activation_memory_budget=budget):
            t0 = time.perf_counter()
            tp.min_cut_rematerialization_partition(gm, inputs, compiler="inductor", **kw)
            return time.perf_counter() - t0
    finally:
        gc.enable()


def time_memcompile(joint, inputs, kw, budget: float, modes: tuple[str, ...] | None = None, *, reuse: bool = True):
    """memcompile's planning, from a fresh start (no fake values memoised by an earlier run on this graph);
    ``reuse`` False: with the planning-time reuse of issue 19 off (built plans, fake values), for before/after."""
    from memcompile.passes.planner import search as search_module
    from memcompile.passes.rewrite import _lossy

    plans = []
    options = {"memory_budget": budget, **({"modes": modes} if modes else {})}
    partitioner = MemPartitioner(MemConfig.from_options(options), on_plan=plans.append)
    gm = fx.GraphModule(joint, _copy_graph(joint.graph))
    _lossy.forget_fake_values(joint.graph)  # gm's nodes share their fake values with joint's
    saved = search_module.REUSE_BUILT_PLANS, _lossy.MEMO_FAKE_VALUES
    search_module.REUSE_BUILT_PLANS = _lossy.MEMO_FAKE_VALUES = reuse
    try:
        t0 = time.perf_counter()
        partitioner(gm, inputs, compiler="inductor", **kw)
        return time.perf_counter() - t0, plans[-1]
    finally:
        search_module.REUSE_BUILT_PLANS, _lossy.MEMO_FAKE_VALUES = saved
        _lossy.forget_fake_values(joint.graph)


def same_plan(a, b) -> bool:
    """Whether two plans of one graph are the same: decisions, simulated peak, graphs' code."""
    return (a.decisions, a.planned.peak_bytes, a.forward_code, a.backward_code) == \
        (b.decisions, b.planned.peak_bytes, b.forward_code, b.backward_code)


def growth_exponent(sizes, seconds) -> float:
    """Least-squares slope of log(seconds) against log(size): 1 is linear, 2 quadratic."""
    xs, ys = [math.log(x) for x in sizes], [math.log(y) for y in seconds]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def depth_sweep(depths: list[int], budget: float, repeat: int) -> int:
    """Both partitioners on the depth sweep's model at each depth; prints seconds and growth exponents."""
    from torch.fx._lazy_graph_module import _use_lazy_graph_module

    rows = []
    with _use_lazy_graph_module(True):
        small = capture_joint("gpt-tiny")
        time_torch(*small, budget)
        time_memcompile(*small, budget)
        for depth in depths:
            joint, inputs, kw = capture_joint(depth)
            torch_s, ours_s, solve_s = [], [], []
            for _ in range(repeat):
                torch_s.append(time_torch(joint, inputs, kw, budget))
                seconds, plan = time_memcompile(joint, inputs, kw, budget)
                ours_s.append(seconds)
                solve_s.append(plan.extra.get("stage_seconds", {}).get("solve", 0.0))
            rows.append((depth, len(joint.graph.nodes), statistics.median(torch_s), statistics.median(ours_s),
                         statistics.median(solve_s)))
            print(f"  {depth} layers done", flush=True)
    print(f"depth sweep: Llama-like d={DEPTH_ARGS.dim}, batch {DEPTH_ARGS.batch_size}x{DEPTH_ARGS.seq_len}, budget "
          f"{budget}; torch {torch.__version__}; median of {repeat}; CPU threads {torch.get_num_threads()}")
    print()
    print("| layers | joint nodes | torch partition (s) | memcompile planning (s) | of which solve (s) | ratio |")
    print("|---:|---:|---:|---:|---:|---:|")
    for depth, nodes, torch_t, ours_t, solve_t in rows:
        print(f"| {depth} | {nodes:,} | {torch_t:.2f} | {ours_t:.2f} | {solve_t:.2f} | {ours_t / torch_t:.2f} |")
    if len(rows) >= 2:
        nodes = [r[1] for r in rows]
        print()
        print(f"growth exponent in joint nodes (seconds ~ nodes^k): torch k={growth_exponent(nodes, [r[2] for r in rows]):.2f}, "
              f"memcompile k={growth_exponent(nodes, [r[3] for r in rows]):.2f}, "
              f"its solve k={growth_exponent(nodes, [max(r[4], 1e-3) for r in rows]):.2f}")
    return 0


def _stages(plan) -> str:
    """Seconds per planning stage, with how many times it ran where more than once: "solve 8.99 (3x)"."""
    counts = plan.extra.get("stage_counts", {})
    return ", ".join(f"{k} {v:.2f}" + (f" ({counts[k]}x)" if counts.get(k, 0) > 1 else "")
                     for k, v in plan.extra.get("stage_seconds", {}).items())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt-24", choices=sorted(PRESETS) + [GPT2_SMALL])
    parser.add_argument("--modes", default=None,
                        help="comma-separated modes memcompile may use (default: the lossless ones), e.g. "
                        "recompute,inplace,quantize,fewbit")
    parser.add_argument("--budgets", default="0.5,0.1")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--compare-reuse", action="store_true",
                        help="also time memcompile with the planning-time reuse (built plans, fake values) off, "
                        "and check that both give the same plan")
    parser.add_argument("--depths", default=None,
                        help="comma-separated layer counts: time both partitioners on a Llama-like model of each "
                        "depth (first budget only) and print the growth exponents, instead of --model")
    args = parser.parse_args(argv)
    budgets = [float(b) for b in args.budgets.split(",")]
    modes = tuple(args.modes.split(",")) if args.modes else None
    warnings.filterwarnings("ignore")
    if args.depths:
        return depth_sweep([int(d) for d in args.depths.split(",")], budgets[0], args.repeat)
    from torch.fx._lazy_graph_module import _use_lazy_graph_module

    with _use_lazy_graph_module(True):
        small = capture_joint("gpt-tiny")
        time_torch(*small, 0.5)
        time_memcompile(*small, 0.5)
        joint, inputs, kw = capture_joint(args.model)
        n_nodes = len(joint.graph.nodes)
        rows = []
        for budget in budgets:
            torch_s, torch_nogc_s, ours_s, off_s, plan, same = [], [], [], [], None, True
            for _ in range(args.repeat):
                torch_s.append(time_torch(joint, inputs, kw, budget))
                torch_nogc_s.append(time_torch(joint, inputs, kw, budget, gc_off=True))
                if args.compare_reuse:
                    seconds, plan_off = time_memcompile(joint, inputs, kw, budget, modes, reuse=False)
                    off_s.append(seconds)
                seconds, plan = time_memcompile(joint, inputs, kw, budget, modes)
                ours_s.append(seconds)
                if args.compare_reuse:
                    same = same and same_plan(plan, plan_off)
            rows.append((budget, statistics.median(torch_s), statistics.median(torch_nogc_s),
                         statistics.median(ours_s), plan, statistics.median(off_s) if off_s else None, same,
                         plan_off if args.compare_reuse else None))

    print(f"model {args.model}: joint graph of {n_nodes} nodes; modes {', '.join(modes) if modes else 'lossless'}; "
          f"torch {torch.__version__}; "
          f"median of {args.repeat} runs; CPU threads {torch.get_num_threads()}")
    print()
    off = "memcompile, reuse off (s) | ratio | same plan | " if args.compare_reuse else ""
    print(f"| budget | torch min-cut + knapsack (s) | torch, cyclic GC off (s) | {off}memcompile (s) | ratio | "
          "ILP vars | plan source | memcompile stages (s) |")
    print("|---:|---:|---:|" + ("---:|---:|---|" if args.compare_reuse else "") + "---:|---:|---:|---|---|")
    for budget, torch_t, torch_nogc_t, ours_t, plan, off_t, same, _ in rows:
        stages = _stages(plan)
        n_vars = plan.solution.n_vars if plan.solution else 0
        off = f"{off_t:.2f} | {off_t / torch_t:.2f} | {'yes' if same else 'NO'} | " if args.compare_reuse else ""
        print(f"| {budget} | {torch_t:.2f} | {torch_nogc_t:.2f} | {off}{ours_t:.2f} | {ours_t / torch_t:.2f} | {n_vars} "
              f"| {plan.source} | {stages} |")
    for budget, *_, plan_off in rows:
        if plan_off is not None:
            stages = _stages(plan_off)
            print(f"\nbudget {budget}, reuse off, stages of the last run (s): {stages}")
    print()
    print("memcompile pauses Python's cyclic GC while it plans (the column 'torch, cyclic GC off' gives torch "
          "the same pause); ratio = memcompile / torch as torch runs."
          + (" 'reuse off': the same planning with issue 19's reuse of built plans and fake values off, in the "
             "same rounds; 'same plan': its decisions, simulated peak and graphs equal the plan with reuse."
             if args.compare_reuse else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
