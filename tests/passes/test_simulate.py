"""The simulator's Inductor model on small FX graphs: which pointwise values get a buffer."""

import pytest
import torch
from memcompile.passes.simulate import simulate_step
from torch import fx
from torch.fx.experimental.proxy_tensor import make_fx

N = 256
BYTES = N * N * 4


def _graph(fn, *shapes) -> fx.GraphModule:
    return make_fx(fn)(*(torch.randn(*s) for s in shapes))


def _live_roots(gm: fx.GraphModule) -> dict[str, int]:
    tl = simulate_step(gm, None, num_fwd_outputs=1, model="inductor")
    return {iv.root: iv.nbytes for iv in tl.intervals}


def test_a_pointwise_value_read_again_after_a_matmul_that_depends_on_it_gets_a_buffer():
    # t is read by u (before the mm) and by the final add (after the mm, which reads u): no one kernel holds both readers
    def fn(a, w):
        t = torch.tanh(a)
        u = t * 2
        m = torch.mm(u, w)
        return (t + m).sum()

    gm = _graph(fn, (N, N), (N, N))
    tanh = next(n.name for n in gm.graph.nodes if n.target == torch.ops.aten.tanh.default)
    assert _live_roots(gm).get(tanh) == BYTES


def test_a_pointwise_value_whose_readers_share_a_kernel_gets_none():
    # the matmul between t's readers does not depend on t: Inductor can fuse both readers with t
    def fn(a, b, w):
        t = torch.tanh(a)
        u = t * 2
        m = torch.mm(b, w)
        return (u + t + m).sum()

    gm = _graph(fn, (N, N), (N, N), (N, N))
    tanh = next(n.name for n in gm.graph.nodes if n.target == torch.ops.aten.tanh.default)
    assert tanh not in _live_roots(gm)


def test_a_pointwise_value_read_after_a_matmul_by_a_reader_that_does_not_wait_for_it_gets_none():
    # the graph puts v's second reader after the mm, but that reader does not depend on the mm: Inductor
    # fuses it with v's first reader (a quantized GELU derivative computed in the forward is such a reader)
    def fn(a, w):
        t = torch.tanh(a)
        u = t * 2
        m = torch.mm(u, w)
        d = t * t
        return m.sum() + d.sum()

    gm = _graph(fn, (N, N), (N, N))
    nodes = list(gm.graph.nodes)
    tanh = next(n for n in nodes if n.target == torch.ops.aten.tanh.default)
    mm = next(n for n in nodes if n.target == torch.ops.aten.mm.default)
    assert max(nodes.index(u) for u in tanh.users) > nodes.index(mm)  # the graph's order puts a reader after the mm
    assert tanh.name not in _live_roots(gm)


@pytest.mark.slow
def test_the_simulated_peak_of_a_recomputing_plan_is_measured_on_hf_gpt2(no_compile_cache):
    """A model the planner was never tuned on, at 0.0: the recompute chain through the residual stream, two
    blocks' recomputations that read one mask (Inductor would fuse them: memcompile/_inductor_choices.py)
    and the tied embedding's gradient (an addmm Inductor runs at the backward's end:
    lifetimes.inductor_order) each moved the measured peak away from the predicted one."""
    pytest.importorskip("transformers")
    import memcompile
    from memcompile import zoo
    from memcompile.measure import live_bytes_of, measure_peak

    torch.manual_seed(0)
    model, inputs = zoo.make("hf-gpt2")
    compiled = torch.compile(model, backend="memcompile", options={"memory_budget": 0.0})

    def step():
        compiled(*inputs).backward()

    step()
    model.zero_grad(set_to_none=True)
    (plan,) = memcompile.last_plans()
    assert plan.source == "ilp", plan.notes
    measured = measure_peak(step, live_before_bytes=live_bytes_of(model, inputs)).peak_bytes
    # 3%: issue 15's bound (the buffer rule over-counts values Inductor inlines into both readers: docs/planner.md)
    assert abs(plan.predicted_peak_bytes - measured) <= 0.03 * measured, (plan.predicted_peak_bytes, measured)
