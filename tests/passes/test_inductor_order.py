"""The order Inductor runs a planned graph in: its addmm rewrite (simulated) and the fusion rule that keeps
the plan's order (memcompile/_inductor_choices.py)."""

import types

import pytest
import torch
from memcompile.passes.lifetimes import analyse, inductor_order
from memcompile.passes.simulate import simulate_step
from torch import fx
from torch.fx.experimental.proxy_tensor import make_fx

N = 256
BYTES = N * N * 4
aten = torch.ops.aten


def _graph(fn, *args) -> fx.GraphModule:
    return make_fx(fn)(*args)


def _tied_gradient(g, h, x, w1, w2, e):
    """A tied weight's gradient: the matmul reads the big g early in the graph, its sum with the other
    part comes last; the work between allocates."""
    part = torch.mm(g.t(), h)  # (N, N), read only by the final add
    y = torch.mm(torch.mm(x, w1), w2)  # intermediate work, two N x N buffers
    return part + e, y


def _args(dtype=torch.float32):
    return [torch.randn(N, N, dtype=dtype) for _ in range(6)]


def _measured_peak(fn, inputs) -> int:
    """``fn`` compiled by Inductor, run once to warm it, then its step's measured peak bytes beyond its inputs."""
    from memcompile.measure import measure_peak

    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="inductor")
    compiled(*inputs)
    measured = measure_peak(lambda: compiled(*inputs), live_before_bytes=sum(t.nbytes for t in inputs)).peak_bytes
    torch._dynamo.reset()
    return measured


def test_inductor_runs_an_mm_read_only_by_an_add_at_the_add():
    gm = _graph(_tied_gradient, *_args())
    nodes = [n for n in gm.graph.nodes if n.op != "output"]
    order, merged = inductor_order(nodes)
    mms = [n for n in nodes if n.target == aten.mm.default]
    add = next(n for n in nodes if n.target == aten.add.Tensor)
    first = mms[0]  # mm(g.t(), h)
    assert first in merged and len(merged) == 1
    assert order.index(first) == order.index(add) - 1
    assert sorted(order, key=nodes.index) == nodes  # a permutation of the same nodes


def test_the_simulator_holds_the_addmm_inputs_until_the_add():
    gm = _graph(_tied_gradient, *_args())
    graph_order = simulate_step(gm, None, num_fwd_outputs=2, model="eager")
    inductor = simulate_step(gm, None, num_fwd_outputs=2, model="inductor")
    table = analyse(gm, schedule="inductor")
    add = next(n.name for n in gm.graph.nodes if n.target == aten.add.Tensor)
    mm = next(n for n in gm.graph.nodes if n.target == aten.mm.default)
    # g (through its view g.t()) is read at the add's place now; the product has no buffer
    assert table.tensors[mm.args[0].name].last_use == table.tensors[add].index - 1
    assert analyse(gm).tensors[mm.args[0].name].last_use < table.tensors[add].index - 1
    assert table.tensors[mm.name].nbytes_hint == 0
    # in graph order the product is live across the two intermediate matmuls; in Inductor's it is not
    assert inductor.peak_bytes == graph_order.peak_bytes - BYTES


@pytest.mark.parametrize("case", ["two readers", "dtype", "shape"])
def test_an_mm_inductor_does_not_fold_stays_in_place(case):
    def two_readers(a, b, c):
        m = torch.mm(a, b)
        return m + c, m.sum()

    def mixed(a, b, c):
        return torch.mm(a, b) + c.double()

    def wide(a, b, c):
        return torch.mm(a, b) + c.expand(2, N, N)

    fn = {"two readers": two_readers, "dtype": mixed, "shape": wide}[case]
    gm = _graph(fn, *_args()[:3])
    nodes = [n for n in gm.graph.nodes if n.op != "output"]
    order, merged = inductor_order(nodes)
    assert order == nodes and not merged


def test_a_bias_vector_is_folded_as_inductor_folds_it():
    gm = _graph(lambda a, b, c: torch.mm(a, b) + c, torch.randn(N, N), torch.randn(N, N), torch.randn(N))
    _, merged = inductor_order([n for n in gm.graph.nodes if n.op != "output"])
    assert len(merged) == 1


def test_analyse_rejects_an_unknown_schedule():
    gm = _graph(lambda a: a * 2, torch.randn(2))
    with pytest.raises(ValueError, match="schedule"):
        analyse(gm, schedule="fifo")


# --- the fusion rule ---------------------------------------------------------------------------------

choices = pytest.importorskip("memcompile._inductor_choices")


def _scheduler(extern_orders, n):
    from torch._inductor.scheduler import ExternKernelSchedulerNode

    nodes = []
    for i in range(n):
        node = object.__new__(ExternKernelSchedulerNode) if i in extern_orders else types.SimpleNamespace()
        node.min_order = node.max_order = i
        nodes.append(node)
    return types.SimpleNamespace(nodes=nodes), nodes


def _group(lo, hi):
    return types.SimpleNamespace(min_order=lo, max_order=hi)


@pytest.mark.skipif(not choices.supported(), reason="this Inductor has no pluggable horizontal-fusion choice")
def test_no_horizontal_fusion_across_an_extern_kernel():
    scheduler, _ = _scheduler({5}, 10)
    assert choices.extern_between(scheduler, _group(2, 3), _group(7, 8))  # the matmul at 5 lies between
    assert choices.extern_between(scheduler, _group(7, 8), _group(2, 3))  # either way round
    assert not choices.extern_between(scheduler, _group(0, 1), _group(3, 4))  # neighbours before it
    assert not choices.extern_between(scheduler, _group(6, 6), _group(9, 9))  # and after it
    # a group that already spans the matmul (fused around it) does not make every later fusion refused
    assert not choices.extern_between(scheduler, _group(4, 6), _group(7, 7))


def _kernel(name, order, reads=()):
    node = types.SimpleNamespace(min_order=order, max_order=order, read_writes=types.SimpleNamespace(
        reads=[types.SimpleNamespace(name=r) for r in reads]))
    node.get_name = lambda: name
    node.get_nodes = lambda: [node]
    return node


@pytest.mark.skipif(not choices.supported(), reason="this Inductor has no pluggable horizontal-fusion choice")
def test_no_producer_is_moved_into_a_late_consumer_across_an_extern_kernel():
    """A fused pair runs after the consumer's latest input: a recomputed softmax (at 2) fused into its
    backward (at 7), which reads the matmul's output (at 5), would run at 7 and hold the scores until
    then (hf-bert at 0.0). A consumer whose inputs are ready at the producer's place is fused there."""
    scheduler, _ = _scheduler({5}, 10)
    producer = _kernel("softmax", 2)
    defs = {"probs": producer, "grad": _kernel("bmm", 5), "early": _kernel("early", 1), "before": _kernel("before", 4)}
    scheduler.name_to_buf = {name: types.SimpleNamespace(defining_op=op) for name, op in defs.items()}
    rule = choices.PlannedOrderChoices
    assert not rule.can_fuse_vertical(scheduler, producer, _kernel("softmax_bw", 7, ("probs", "grad")), 1)
    assert rule.can_fuse_vertical(scheduler, producer, _kernel("tanh_bw", 7, ("probs", "early")), 1)
    assert rule.can_fuse_vertical(scheduler, producer, _kernel("c", 7, ("probs", "before")), 1)  # no extern crossed
    assert rule.can_fuse_vertical(scheduler, producer, _kernel("c", 7, ("probs", "a_graph_input")), 1)


@pytest.mark.skipif(not choices.supported(), reason="this Inductor has no pluggable horizontal-fusion choice")
def test_the_rule_is_installed_only_inside_the_block():
    from torch._inductor.virtualized import V

    with choices.planned_order():
        assert isinstance(V.choices, choices.PlannedOrderChoices)
    assert not isinstance(V.choices, choices.PlannedOrderChoices)


# --- which values Inductor inlines into each reader -------------------------------------------------


def _mul_read_twice(x, w1, w2, w):
    a, b = torch.mm(x, w1), torch.mm(x, w2)
    t = a * b  # cheap, read by two kernels with a matmul between them that depends on it
    m = torch.mm(t * 2, w)
    return (t * m).sum()


def test_a_cheap_value_read_across_a_matmul_is_inlined_and_keeps_its_inputs():
    """Inductor computes a * b in both kernels (no buffer), so a and b live until the last one: one buffer
    more at the matmul than if a * b had one of its own (the rule before)."""
    inputs = [torch.randn(N, N) for _ in range(4)]
    gm = _graph(_mul_read_twice, *inputs)
    tl = simulate_step(gm, None, num_fwd_outputs=1, model="inductor")
    mul = next(n.name for n in gm.graph.nodes if n.target == aten.mul.Tensor)
    assert mul not in {iv.root for iv in tl.intervals}
    mms = [n.name for n in gm.graph.nodes if n.target == aten.mm.default]
    last_mm = tl.steps.index(mms[2])
    assert {mms[0], mms[1]} <= {iv.root for iv in tl.live_at(last_mm)}

    measured = _measured_peak(_mul_read_twice, inputs)
    assert abs(tl.peak_bytes - measured) <= 64, (tl.peak_bytes, measured)


def _written_in_place(x, w1):
    a = torch.mm(x, w1)
    return torch.tanh(a) * 3  # a dies here: Inductor writes the result into a's buffer


def test_a_kernel_writes_its_output_into_an_input_that_dies_there():
    inputs = [torch.randn(N, N) for _ in range(2)]
    gm = _graph(_written_in_place, *inputs)
    tl = simulate_step(gm, None, num_fwd_outputs=1, model="inductor")
    assert tl.peak_bytes == 3 * BYTES  # the two inputs and one buffer: a's, then the result's
    measured = _measured_peak(_written_in_place, inputs)
    assert abs(tl.peak_bytes - measured) <= 64, (tl.peak_bytes, measured)


def _written_in_place_through_a_reshape(x, w1):
    a = torch.mm(x, w1).view(4, N // 4, N)  # a GELU derivative reads the matmul's output as (batch, seq, hidden)
    return torch.tanh(a) * 3


@pytest.mark.parametrize("rule", [True, False])
def test_a_kernel_writes_its_output_into_an_input_it_reads_through_a_reshape(monkeypatch, rule):
    from memcompile.passes import simulate

    monkeypatch.setattr(simulate, "RESHAPES_IN_PLACE", rule)  # off by default (simulate.py says why)
    gm = _graph(_written_in_place_through_a_reshape, *[torch.randn(N, N) for _ in range(2)])
    tl = simulate_step(gm, None, num_fwd_outputs=1, model="inductor")
    assert tl.peak_bytes == (3 if rule else 4) * BYTES


@pytest.mark.slow
def test_inductor_writes_into_the_buffer_it_reads_through_a_reshape():
    inputs = [torch.randn(N, N) for _ in range(2)]
    measured = _measured_peak(_written_in_place_through_a_reshape, inputs)
    assert abs(measured - 3 * BYTES) <= 64, measured


def _accumulated(x1, h1, x2, h2):
    """A shared weight's gradient summed over two uses (an unrolled RNN's, a tied embedding's): one product is a
    buffer of its own, the add with the other is folded into an addmm that reads it."""
    return torch.mm(x1.t(), h1) + torch.mm(x2.t(), h2)


@pytest.mark.parametrize("rule", [True, False])
def test_an_add_folded_into_an_addmm_writes_a_buffer_of_its_own(monkeypatch, rule):
    from memcompile.passes import lifetimes

    monkeypatch.setattr(lifetimes, "FOLDED_ADDS_EXTERN", rule)
    gm = _graph(_accumulated, *_args()[:4])
    tl = simulate_step(gm, None, num_fwd_outputs=1, model="inductor")
    # the four inputs, the product, and the addmm's output beside it (without the rule the add took the product's
    # buffer, as a pointwise kernel takes a dying input's)
    assert tl.peak_bytes == (6 if rule else 5) * BYTES


@pytest.mark.slow
def test_inductor_writes_an_addmm_into_a_new_buffer():
    inputs = _args()[:4]
    gm = _graph(_accumulated, *inputs)
    predicted = simulate_step(gm, None, num_fwd_outputs=1, model="inductor").peak_bytes
    measured = _measured_peak(_accumulated, inputs)
    assert abs(measured - 6 * BYTES) <= 64 and abs(predicted - measured) <= 64, (predicted, measured)


def _tanh_read_after_a_matmul(x, w):
    """A tanh-GELU's shape: ``t`` feeds the matmul's input at once and, through ``1 - t * t`` (inlined into the last
    product), a product with the matmul's output."""
    t = torch.tanh(x)
    y = torch.mm(x * (1 + t), w)
    return y * (1 - t * t)


@pytest.mark.parametrize("rule", [True, False])
def test_a_value_read_by_an_inlined_reader_after_a_matmul_keeps_its_buffer(monkeypatch, rule):
    from memcompile.passes import simulate

    monkeypatch.setattr(simulate, "INLINED_READERS_RUN_LATE", rule)
    gm = _graph(_tanh_read_after_a_matmul, *_args()[:2])
    tanh = next(n.name for n in gm.graph.nodes if n.target == aten.tanh.default)
    away, _ = simulate.fused_values(analyse(gm, schedule="inductor"))
    assert (tanh not in away) == rule


@pytest.mark.slow
def test_inductor_keeps_the_tanh_until_the_product_after_the_matmul():
    inputs = _args()[:2]
    gm = _graph(_tanh_read_after_a_matmul, *inputs)
    predicted = simulate_step(gm, None, num_fwd_outputs=1, model="inductor").peak_bytes
    measured = _measured_peak(_tanh_read_after_a_matmul, inputs)
    assert abs(predicted - measured) <= 64, (predicted, measured)


# ----------------------------------------------------------------------------- lazy realization

def _sum_read_late(a, b, x, w, w2, *, fold=False):
    """t = c1 * c2 is read only by the last matmul; the graph computes it before unrelated work."""
    c1 = torch.mm(a, b)
    c2 = torch.mm(b, a)
    t = c1 + c2 if fold else c1 * c2  # add(mm, c) is folded into an addmm: an extern kernel
    y = torch.mm(x, w)
    return torch.mm(t, w2), y


def test_a_pointwise_value_read_only_by_a_matmul_runs_just_before_it():
    gm = _graph(lambda a, b, x, w, w2: _sum_read_late(a, b, x, w, w2), *_args()[:5])
    nodes = [n for n in gm.graph.nodes if n.op != "output"]
    order, _ = inductor_order(nodes)
    mul = next(n for n in nodes if n.target == aten.mul.Tensor)
    last_mm = [n for n in nodes if n.target == aten.mm.default][-1]
    assert order.index(mul) == order.index(last_mm) - 1
    assert nodes.index(mul) < nodes.index(last_mm) - 1  # the graph put it earlier
    assert sorted(order, key=nodes.index) == nodes


def test_the_simulator_holds_a_lazily_realized_values_inputs_until_its_reader():
    gm = _graph(lambda a, b, x, w, w2: _sum_read_late(a, b, x, w, w2), *_args()[:5])
    graph_order = simulate_step(gm, None, num_fwd_outputs=2, model="eager")
    inductor = simulate_step(gm, None, num_fwd_outputs=2, model="inductor")
    y = [n.name for n in gm.graph.nodes if n.target == aten.mm.default][2]

    def at_y(tl):
        return tl.live_bytes[tl.steps.index(y)]

    # across the unrelated matmul the graph's order holds t, Inductor c1 and c2
    assert at_y(inductor) == at_y(graph_order) + BYTES


def test_a_view_between_the_value_and_its_matmul_moves_with_it():
    def fn_view(a, b, x, w, w2):
        t = torch.mm(a, b) * 2
        y = torch.mm(x, w)
        return torch.mm(t.t(), w2), y

    gm = _graph(fn_view, *_args()[:5])
    nodes = [n for n in gm.graph.nodes if n.op != "output"]
    order, _ = inductor_order(nodes)
    mul = next(n for n in nodes if n.target == aten.mul.Tensor)
    view = next(iter(mul.users))
    reader = next(iter(view.users))
    assert reader.target == aten.mm.default
    assert order.index(mul) == order.index(view) - 1 == order.index(reader) - 2


def test_an_add_folded_into_an_addmm_stays_at_its_place():
    gm = _graph(lambda a, b, x, w, w2: _sum_read_late(a, b, x, w, w2, fold=True), *_args()[:5])
    nodes = [n for n in gm.graph.nodes if n.op != "output"]
    order, merged = inductor_order(nodes)
    add = next(n for n in nodes if n.target == aten.add.Tensor)
    assert len(merged) == 1 and order.index(add) < order.index(next(n for n in nodes if n.name == "mm_2"))


@pytest.mark.parametrize("case", ["two readers", "read by a reduction", "read by a pointwise op"])
def test_these_pointwise_values_stay_where_the_graph_puts_them(case):
    def fn(a, b, x, w, w2):
        t = torch.mm(a, b) * 2
        y = torch.mm(x, w)
        if case == "two readers":
            return torch.mm(t, w2), torch.mm(w2, t), y
        if case == "read by a reduction":
            return t.sum(0), y
        return torch.tanh(t), y

    gm = _graph(fn, *_args()[:5])
    nodes = [n for n in gm.graph.nodes if n.op != "output"]
    order, _ = inductor_order(nodes)
    assert order == nodes


# ------------------------------------------------------------------ row reductions join their pointwise kernels
def _softmax_backward(g, p, a, b, c):
    """A softmax backward's pattern (a cross-entropy's too): ``gp`` is read by its row sum and by the pointwise
    after it; it loads five buffers, more than Inductor inlines into two readers, so it is realized unless its
    readers share its kernel."""
    gp = g * p * a * b * c
    return gp - p * gp.sum(dim=-1, keepdim=True)


def _column_backward(g, p, a, b, c):
    """The same, with the sum down the columns (a bias gradient's reduction), which Triton cannot put in one
    kernel with a pointwise over the whole matrix."""
    gp = g * p * a * b * c
    return gp - p * gp.sum(dim=0, keepdim=True)


def _gp(gm):
    return next(n.name for n in gm.graph.nodes if n.op == "call_function" and len(n.users) == 2)


@pytest.mark.parametrize("fuse", [True, False])
def test_a_row_reduction_joins_the_kernel_of_the_value_it_reduces(monkeypatch, fuse):
    from memcompile.passes import simulate

    monkeypatch.setattr(simulate, "ROW_REDUCTIONS_FUSE", fuse)
    gm = _graph(_softmax_backward, *_args()[:5])
    away, _ = simulate.fused_values(analyse(gm))
    assert (_gp(gm) in away) == fuse


def test_a_column_reduction_still_parts_its_readers():
    from memcompile.passes import simulate

    gm = _graph(_column_backward, *_args()[:5])
    away, _ = simulate.fused_values(analyse(gm))
    assert _gp(gm) not in away


@pytest.mark.slow
def test_inductor_gives_the_row_reduced_value_no_buffer():
    """What the rule mirrors, read from Inductor's generated code: no N x N buffer besides the result."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    _, (code,) = run_and_get_code(torch.compile(_softmax_backward), *_args()[:5])
    torch._dynamo.reset()
    assert code.count(f"empty_strided_cpu(({N}, {N})") == 1


# ------------------------------------------------------------------ constants read by scatters
def _rotary_backward(a, b, c, d, e):
    """A rotary embedding's backward: one zeros tensor, scattered into by every layer."""
    z = torch.zeros(N, N)
    outs = [torch.slice_scatter(z, t[:, : N // 2], 1, 0, N // 2) for t in (a, b, c, d, e)]
    return sum(outs)


def _constant_into_a_matmul(a):
    z = torch.ones(N, N)
    return torch.mm(a, z) + z


def test_a_constant_read_only_by_scatters_and_pointwise_ops_has_no_buffer():
    from memcompile.passes import simulate

    gm = _graph(_rotary_backward, *_args()[:5])
    table = analyse(gm)
    zeros = next(n.name for n in gm.graph.nodes if n.target == aten.zeros.default)
    assert len(table.tensors[zeros].users) == 5  # more readers than a pointwise value is inlined into
    away, inlined = simulate.fused_values(table)
    assert zeros in away and zeros in inlined
    gm = _graph(_constant_into_a_matmul, *_args()[:1])
    ones = next(n.name for n in gm.graph.nodes if n.target == aten.ones.default)
    assert not analyse(gm).tensors[ones].fusible  # a matmul reads a buffer


def _constant_read_twice(a, b, w):
    """A constant read by two pointwise ops whose results two matmuls read: more readers than one kernel."""
    z = torch.full((N, N), 0.5)
    return torch.mm(a * z, w) + torch.mm(b + z, w)


@pytest.mark.parametrize("inline", [True, False])
def test_a_constant_read_by_pointwise_ops_is_inlined_into_them(monkeypatch, inline):
    from memcompile.passes import lifetimes, simulate

    monkeypatch.setattr(lifetimes, "CONSTANTS_INLINE", inline)
    gm = _graph(_constant_read_twice, *_args()[:3])
    full = next(n.name for n in gm.graph.nodes if n.target == aten.full.default)
    away, inlined = simulate.fused_values(analyse(gm))
    assert (full in inlined) == inline


@pytest.mark.slow
def test_inductor_gives_a_constant_read_by_pointwise_ops_no_buffer():
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    _, (code,) = run_and_get_code(torch.compile(_constant_read_twice), *_args()[:3])
    torch._dynamo.reset()
    # the constant is computed inside both readers' kernels and has no buffer: the two pointwise results (the
    # second reusing the first's) and the two matmuls' (the last sum folded into an addmm)
    assert "cpp_fused_full_mul_0(" in code and "cpp_fused_add_full_1(" in code
    assert code.count(f"empty_strided_cpu(({N}, {N})") == 3


@pytest.mark.slow
def test_inductor_gives_a_scattered_constant_no_buffer():
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    _, (code,) = run_and_get_code(torch.compile(_rotary_backward), *_args()[:5])
    torch._dynamo.reset()
    assert code.count(f"empty_strided_cpu(({N}, {N})") == 1  # the result only


def _embedding_gradients(i1, v1, i2, v2):
    """Two embeddings' gradients scattered into one zeros tensor (an embedding backward's decomposition)."""
    z = torch.zeros(N, N)
    first = aten._unsafe_masked_index_put_accumulate(z, (i1 >= 0).unsqueeze(-1), [i1], v1)
    return first, aten.index_put(z, [i2], v2, True)


def _embedding_args():
    return torch.randint(0, N, (N,)), torch.randn(N, N), torch.randint(0, N, (N,)), torch.randn(N, N)


@pytest.mark.parametrize("cloned", [True, False])
def test_a_constant_an_index_put_copies_has_no_buffer(monkeypatch, cloned):
    from memcompile.passes import lifetimes, simulate

    monkeypatch.setattr(lifetimes, "CONSTANTS_CLONED", cloned)
    gm = _graph(_embedding_gradients, *_embedding_args())
    zeros = next(n.name for n in gm.graph.nodes if n.target == aten.zeros.default)
    away, inlined = simulate.fused_values(analyse(gm))
    assert (zeros in inlined) == cloned
    # the same constant as what the scatter writes (its values) is a load, not a copy
    assert not lifetimes._clones_first(next(n for n in gm.graph.nodes if n.target == aten.index_put.default),
                                       next(n for n in gm.graph.nodes if n.target == aten.ge.Scalar))


@pytest.mark.slow
def test_inductor_copies_the_constant_into_each_scatter():
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    _, (code,) = run_and_get_code(torch.compile(_embedding_gradients), *_embedding_args())
    torch._dynamo.reset()
    assert code.count(f"empty_strided_cpu(({N}, {N})") == 2  # the two results only


# ------------------------------------------------------------------ reductions that meet in one kernel
_B = 4


def _shared_bias_gradient(g1, p1, g2, p2, w, wb):
    """Two attention layers' score gradients (a softmax backward each) summed over the batch into one shared
    bias's gradient, as T5's relative-position bias is: each layer's batch sum is lowered before the batched
    matmul that realizes the layer's gradient (through a view), so the sum computes the gradient again from
    its inputs, and both sums run with their add in one kernel after the second layer."""
    outs, sums = [], []
    for g, p in ((g1, p1), (g2, p2)):
        gg, pp = torch.mm(g, w), torch.mm(p, w)
        ds = gg * pp - pp * (gg * pp).sum(1, keepdim=True)
        sums.append(ds.view(_B, N // _B, N).sum(0))
        outs.append(torch.bmm(ds.view(_B, N // _B, N), wb))
    return sums[0] + sums[1], outs[0], outs[1]


def _shared_args():
    return [torch.randn(N, N) for _ in range(5)] + [torch.randn(_B, N, N)]


@pytest.mark.parametrize("rules", [True, False])
def test_reductions_that_meet_in_an_add_run_there_with_what_they_recompute(monkeypatch, rules):
    from memcompile.passes import simulate

    monkeypatch.setattr(simulate, "REDUCTIONS_TOGETHER", rules)
    monkeypatch.setattr(simulate, "EARLY_INLINE", rules)
    gm = _graph(_shared_bias_gradient, *_shared_args())
    table = analyse(gm, schedule="inductor")
    fusion = simulate._fusion(table, simulate._inputs_of(table))
    batch_sums = [n.name for n in gm.graph.nodes if n.target == aten.sum.dim_IntList and n.args[1] == [0]]
    add = next(n.name for n in gm.graph.nodes if n.target == aten.add.Tensor)
    first_mms = [n.name for n in gm.graph.nodes if n.target == aten.mm.default][:2]  # layer 1's gg and pp
    timeline = simulate_step(gm, None, num_fwd_outputs=3)
    ends = {iv.root: iv.free_step for iv in timeline.intervals}
    if rules:
        assert fusion.together == {name: add for name in batch_sums}
        assert set(fusion.early) == {n.name for n in gm.graph.nodes if n.target == aten.sub.Tensor}
        assert all(ends[mm] == timeline.steps.index(add) for mm in first_mms)
        assert not set(batch_sums) & set(ends)  # the sums have no buffer
    else:
        assert not fusion.together and not fusion.early
        assert all(ends[mm] < timeline.steps.index(add) - 10 for mm in first_mms)


def test_a_reduction_alone_or_of_another_shape_runs_at_its_place():
    from memcompile.passes import simulate

    def two_shapes(a, b):
        return a.sum(0) + b.view(2, N // 2, N).sum(0).sum(0), a.sum(1)

    gm = _graph(two_shapes, *_args()[:2])
    table = analyse(gm)
    assert not simulate._fusion(table, simulate._inputs_of(table)).together


@pytest.mark.slow
def test_inductor_runs_both_batch_sums_after_the_second_layer_from_the_first_layers_inputs():
    import re

    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    _, (code,) = run_and_get_code(torch.compile(_shared_bias_gradient), *_shared_args())
    torch._dynamo.reset()
    mms = re.findall(r"extern_kernels\.mm\(.*out=(buf\d+)\)", code)
    assert len(mms) == 4
    (kernel,) = [line for line in code.splitlines() if re.match(r"\s*cpp_fused_add\w*sum\w*\(", line)]
    args = re.findall(r"buf\d+", kernel)
    # layer 1's two matmul outputs are read by the last kernel, after layer 2's matmuls
    assert mms[0] in args and mms[1] in args and mms[2] in args
    assert code.index(kernel.strip()) > code.index(f"out={mms[3]})")


# ------------------------------------------------------------------ a pointwise value read by a gather
def _loss_of_logits(logits, index):
    """A cross-entropy's forward: log_softmax's output is read only by the loss's gather."""
    m = torch.amax(logits, 1, keepdim=True)
    shifted = logits - m
    lsm = shifted - torch.log(torch.exp(shifted).sum(1, keepdim=True))
    return -torch.gather(lsm, 1, index).sum()


def _index_by_value(x, w):
    """A pointwise value used as the gather's index is a load of a buffer, not an expression."""
    idx = (x * 3).long()
    return torch.gather(w, 1, idx)


def test_a_pointwise_value_only_a_gather_reads_has_no_buffer(monkeypatch):
    from memcompile.passes import lifetimes, simulate

    logits = torch.randn(N, N)
    index = torch.randint(0, N, (N, 1))
    gm = _graph(_loss_of_logits, logits, index)
    gather = next(n for n in gm.graph.nodes if n.target == aten.gather.default)
    source = gather.args[0].name
    monkeypatch.setattr(lifetimes, "GATHERS_FUSE", False)  # the default: a gather is an extern read
    assert not analyse(gm).tensors[source].fusible
    monkeypatch.setattr(lifetimes, "GATHERS_FUSE", True)
    table = analyse(gm)
    assert table.tensors[source].fusible and table.tensors[gather.name].fusible
    assert source in simulate.fused_values(table)[0]
    gm = _graph(_index_by_value, torch.rand(N, 1), torch.randn(N, N))
    gather = next(n for n in gm.graph.nodes if n.target == aten.gather.default)
    assert not analyse(gm).tensors[gather.args[2].name].fusible  # an index is loaded, not inlined


@pytest.mark.slow
def test_inductor_gives_the_gathered_log_softmax_no_buffer():
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    logits = torch.randn(N, N)
    _, (code,) = run_and_get_code(torch.compile(_loss_of_logits), logits, torch.randint(0, N, (N, 1)))
    torch._dynamo.reset()
    assert f"empty_strided_cpu(({N}, {N})" not in code


@pytest.mark.parametrize("keep", [True, False])
def test_a_planned_graph_compiles_without_inductors_peak_memory_reordering(monkeypatch, keep):
    from torch._inductor import config as inductor_config

    monkeypatch.setattr(choices, "KEEP_PLANNED_ORDER", keep)
    before = inductor_config.reorder_for_peak_memory
    with choices.planned_order():
        assert inductor_config.reorder_for_peak_memory == (before and not keep)
    assert inductor_config.reorder_for_peak_memory == before


@pytest.mark.parametrize("budget, keep_order", [(1.0, False), (0.5, True), ("1GB", True)])
def test_a_fraction_of_one_keeps_inductors_reordering(monkeypatch, budget, keep_order):
    """1.0 runs Inductor's default partition: Inductor's own peak-memory reordering kept there, and the
    planned-order fusion choices (which the simulator follows) everywhere a budget is set."""
    import torch._inductor.compile_fx as compile_fx_module

    from memcompile import backend

    seen = {}
    monkeypatch.setattr(compile_fx_module, "compile_fx", lambda gm, inputs, inner_compile, **kw: seen.update(
        inner_compile.keywords))
    x = torch.randn(4, 4, requires_grad=True)
    gm = _graph(lambda a: (a * 2).sum(), x)
    backend.memcompile_backend(gm, [x], options={"memory_budget": budget})
    assert seen["planned"] is True and seen["keep_order"] is keep_order


def test_without_recompute_inductors_reordering_stays():
    """A plan with no recompute (keep and lossy modes) leaves the reordering on: it placed the quantize
    copies better than the plan (tests/e2e/test_lossy.py)."""
    from torch._inductor import config as inductor_config

    before = inductor_config.reorder_for_peak_memory
    with choices.planned_order(keep_order=False):
        assert inductor_config.reorder_for_peak_memory == before


# ------------------------------------------------------------------ a mask read through a view, broadcast
H = 4


def _mask_read_by_heads(a, b, c, d, e, s1, s2, v1, v2):
    """An attention mask (hf-mistral-gqa's): a boolean chain over several inputs, read through an ``expand`` by a
    ``where``, which two layers' scores read broadcast over their heads."""
    keep = (a[:, None] <= b[None, :]) & (c[:, None] == d[None, :]) & (e[None, :] >= 0)
    mask = torch.where(keep.expand(N, N), 0.0, -1e9)
    x1 = torch.bmm(torch.softmax(s1 + mask, -1), v1)
    x2 = torch.bmm(torch.softmax(s2 + mask, -1), v2)
    return x1, x2


def _mask_args():
    return [torch.randn(N) for _ in range(5)] + [torch.randn(H, N, N) for _ in range(4)]


@pytest.mark.parametrize("views", [True, False])
@pytest.mark.parametrize("broadcast", [True, False])
def test_a_mask_read_through_a_view_and_broadcast_keeps_its_buffer(monkeypatch, views, broadcast):
    """The boolean chain is inlined into the ``where`` through the view, so the ``where`` loads more buffers than
    Inductor inlines into two readers and is realized; its readers read it broadcast, so no reader's kernel takes
    it in, and it keeps its buffer. Either rule alone leaves it without one."""
    from memcompile.passes import lifetimes, simulate

    monkeypatch.setattr(lifetimes, "VIEWS_INLINE", views)
    monkeypatch.setattr(simulate, "BROADCAST_SPLITS", broadcast)
    gm = _graph(_mask_read_by_heads, *_mask_args())
    where = next(n.name for n in gm.graph.nodes if n.target == aten.where.self)
    table = analyse(gm)
    expand = next(n for n in gm.graph.nodes if n.target == aten.expand.default)
    away, inlined = simulate.fused_values(table)
    assert (expand.args[0].name in inlined) == views  # the chain's last value, which only the view reads
    assert (where not in away) == (views and broadcast)


@pytest.mark.slow
def test_inductor_gives_the_broadcast_mask_a_buffer_and_its_boolean_chain_none():
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    _, (code,) = run_and_get_code(torch.compile(_mask_read_by_heads), *_mask_args())
    torch._dynamo.reset()
    assert code.count(f"empty_strided_cpu(({N}, {N}), ({N}, 1), torch.float32)") == 1  # the mask
    assert "torch.bool)" not in code  # the boolean chain: inlined into the mask's kernel


B = 2


def _gathered_mask(pos, seg, bi, qi, s1, s2, v1, v2):
    """hf-mistral-gqa's causal mask as its graph builds it: four gathers (``aten.index``) of two small buffers at
    indices read from two more, combined into a float mask that two layers' scores read broadcast over their heads.
    Four buffers, seven loads: each gather loads its source at indices of its own, and ``qi`` is read at two."""
    b3, qa, qb = bi[:, None, None], qi[None, :, None], qi[None, None, :]
    keep = (pos[b3, qb] <= pos[b3, qa]) & (seg[b3, qb] == seg[b3, qa])
    mask = torch.where(keep[:, None], 0.0, -1e9)
    x1 = torch.softmax(s1 + mask, -1) @ v1
    x2 = torch.softmax(s2 + mask, -1) @ v2
    return x1, x2


def _gathered_mask_args():
    pos = torch.arange(N).expand(B, N).contiguous()
    seg = torch.zeros(B, N, dtype=torch.int64)
    return [pos, seg, torch.arange(B), torch.arange(N)] + [torch.randn(B, H, N, N) for _ in range(4)]


@pytest.mark.parametrize("by_index", [True, False])
def test_a_mask_of_gathers_loads_one_buffer_per_index_and_keeps_its_buffer(monkeypatch, by_index):
    """Counted per buffer, the mask loads four and is inlined into both layers (Inductor inlines an expression read
    twice up to ``realize_reads_threshold`` loads); counted per buffer and index, as Inductor counts, it loads seven
    and is realized, and its broadcast readers leave it its buffer."""
    from memcompile.passes import simulate

    monkeypatch.setattr(simulate, "READS_BY_INDEX", by_index)
    gm = _graph(_gathered_mask, *_gathered_mask_args())
    gathers = [n.name for n in gm.graph.nodes if n.target == aten.index.Tensor]
    where = next(n.name for n in gm.graph.nodes if n.target == aten.where.self)
    assert len(gathers) == 4
    away, inlined = simulate.fused_values(analyse(gm))
    assert set(gathers) <= set(inlined)  # each gather is an expression of its readers
    assert (where not in away) == by_index


@pytest.mark.slow
def test_inductor_gives_the_mask_of_gathers_a_buffer():
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    _, (code,) = run_and_get_code(torch.compile(_gathered_mask), *_gathered_mask_args())
    torch._dynamo.reset()
    assert code.count(f"empty_strided_cpu(({B}, 1, {N}, {N}),") == 1  # the mask (a size-1 dim's stride varies)


# ------------------------------------------------------------------ a value read through a view by several ops
def _view_read_twice(a, b, c, d, e, w):
    """A five-load expression read only through a transpose, which an op before a matmul and a product after it read
    (a product: an add of the matmul would be folded into an addmm, an extern kernel that reads ``p`` from memory)."""
    v = a * b + c * d - e
    p = v.t()
    return torch.mm(p * 2, w) * p


@pytest.mark.parametrize("views", [True, False])
def test_a_view_read_by_several_ops_makes_its_value_reused(monkeypatch, views):
    from memcompile.passes import simulate

    monkeypatch.setattr(simulate, "VIEW_READERS", views)
    gm = _graph(_view_read_twice, *_args())
    v = next(n.name for n in gm.graph.nodes if n.target == aten.sub.Tensor)
    away, inlined = simulate.fused_values(analyse(gm, schedule="inductor"))
    # with the rule: over the reads threshold and read across the matmul, so it keeps a buffer
    assert (v not in away) == views and (v in inlined) != views


@pytest.mark.slow
def test_inductor_gives_a_value_read_through_a_view_by_several_ops_a_buffer():
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    _, (code,) = run_and_get_code(torch.compile(_view_read_twice), *_args())
    torch._dynamo.reset()
    # the value, the doubled transpose, the product: three N x N buffers (the add is folded into an addmm)
    assert code.count(f"empty_strided_cpu(({N}, {N})") == 3


# ------------------------------------------------------------------ a convolution backward's operand strides
def _depthwise_backward(go, x, w):
    return aten.convolution_backward(go, torch.relu(x), w, [0], [1, 1], [3, 3], [1, 1], False, [0, 0], 8,
                                     [True, True, False])[:2]


def _depthwise_args():
    return (torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last),
            torch.randn(8, 1, 7, 7))


def test_a_convolution_backward_runs_on_the_strides_inductors_lowering_gives_it():
    from memcompile.passes.costs import backward_conv_operands

    go, x, w = _depthwise_args()
    gm = _graph(_depthwise_backward, go, x, w)
    names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    (conv,) = [n.name for n in gm.graph.nodes if n.target == aten.convolution_backward.default]
    # the input arrives channels-last (a saved value of a layout-optimized forward); the depthwise weight's gradient
    # is channels-last, whose order (ties between the channel and the width) puts the input in (N, H, C, W)
    g_spec, x_spec, w_spec = backward_conv_operands(gm.graph, {names[1]: tuple(x.stride())})[conv]
    assert g_spec.stride == (128, 16, 4, 1) and x_spec.stride == (128, 4, 32, 1)
    # arriving contiguous, all three stay contiguous
    g_spec, x_spec, w_spec = backward_conv_operands(gm.graph, {names[1]: (128, 16, 4, 1)})[conv]
    assert x_spec.stride == (128, 16, 4, 1) and g_spec.stride == (128, 16, 4, 1)


@pytest.mark.slow
def test_inductor_gives_the_depthwise_backward_those_strides():
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    _, (code,) = run_and_get_code(torch.compile(_depthwise_backward), *_depthwise_args())
    torch._dynamo.reset()
    assert "empty_strided_cpu((2, 8, 4, 4), (128, 4, 32, 1)" in code  # the input, (N, H, C, W)
    assert "empty_strided_cpu((2, 8, 4, 4), (128, 16, 4, 1)" in code  # the gradient, contiguous


def test_a_layout_optimized_forward_gives_its_convolution_chain_channels_last():
    from memcompile.passes.costs import forward_output_strides

    def net(img, w1, w2, s):
        h = torch.relu(torch.nn.functional.conv2d(img, w1, padding=1) * s)
        out = torch.nn.functional.conv2d(h, w2, padding=1)
        return out * 2, h

    gm = _graph(net, torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3), torch.randn(6, 6, 3, 3), torch.randn(1, 6, 1, 1))
    strides = forward_output_strides(gm)
    convs = [n.name for n in gm.graph.nodes if n.target == aten.convolution.default]
    relu = next(n.name for n in gm.graph.nodes if n.target == aten.relu.default)
    last = next(n.name for n in gm.graph.nodes if n.target == aten.mul.Tensor and n.args[1] == 2)
    assert strides[convs[0]] == strides[relu] == (384, 1, 48, 6) and convs[1] in strides
    assert last not in strides  # after the last convolution Inductor's propagation stops
    assert "img_1" in strides  # the image's channels-last copy
