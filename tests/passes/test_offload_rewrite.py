"""Offload: the cost and placement rules (passes/offload_cost.py, plain numbers) and the joint-graph
rewrite (passes/rewrite/offload.py) on a small MLP run through AOT autograd with torch's own
extraction, executed eagerly on CPU: gradients equal eager exactly, and the offload, wait and
prefetch nodes sit where the schedule says in the extracted forward and backward graphs."""

import operator

import pytest
import torch
import torch.nn.functional as F
from torch._functorch import partitioners as tp
from torch._functorch.aot_autograd import aot_function

from memcompile.passes.rewrite.recompute import storages_the_backward_reads
from memcompile.kernels import offload as off
from memcompile.partitioner import _prepare_joint
from memcompile.passes import offload_cost as oc
from memcompile.passes.lifetimes import alias_source
from memcompile.passes.rewrite.offload import (
    INDUCTOR_CONFIG,
    OFFLOAD_META,
    is_materialized,
    joint_steps,
    offload_schedule,
    offload_values,
    why_not_offloadable,
)
from memcompile.passes.rewrite.recompute import Extractor, saved_for

GB = 1e9

# ---------------------------------------------------------------- cost: plain numbers


@pytest.mark.parametrize("nbytes, window, exposed", [
    (2 * GB, 0.0, 0.2),     # nothing to hide behind: the whole transfer
    (2 * GB, 0.05, 0.15),   # partly hidden
    (2 * GB, 0.2, 0.0),     # exactly hidden
    (2 * GB, 1.0, 0.0),     # more compute than transfer: free
    (0, 0.0, 0.0),
])
def test_exposed_seconds_is_transfer_less_window_never_negative(nbytes, window, exposed):
    cost = oc.transfer_cost(nbytes, 10 * GB, window)
    assert cost.transfer_seconds == pytest.approx(nbytes / (10 * GB))
    assert cost.window_seconds == window
    assert cost.exposed_seconds == pytest.approx(exposed)


def test_offload_cost_adds_both_directions_and_the_overhead():
    cost = oc.offload_cost(GB, host_link_bandwidth=10 * GB, offload_window_seconds=0.04,
                           prefetch_window_seconds=0.09, overhead_seconds=1e-5)
    assert cost.device_to_host.exposed_seconds == pytest.approx(0.06)
    assert cost.host_to_device.exposed_seconds == pytest.approx(0.01)
    assert cost.added_seconds == pytest.approx(0.07001)


@pytest.mark.parametrize("kwargs, match", [
    ({"nbytes": 1, "host_link_bandwidth": 0.0, "window_seconds": 0.0}, "host_link_bandwidth"),
    ({"nbytes": -1, "host_link_bandwidth": 1.0, "window_seconds": 0.0}, "nbytes"),
    ({"nbytes": 1, "host_link_bandwidth": 1.0, "window_seconds": -1.0}, "window_seconds"),
])
def test_transfer_cost_rejects_impossible_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        oc.transfer_cost(**kwargs)


def test_window_is_the_steps_strictly_between():
    seconds = [1.0, 2.0, 4.0, 8.0, 16.0]
    assert oc.window_seconds(seconds, 0, 4) == 14.0
    assert oc.window_seconds(seconds, 1, 2) == 0.0
    assert oc.window_seconds(seconds, -1, 5) == 31.0


STEPS = [1.0] * 10


@pytest.mark.parametrize("hide, anchorable, expected", [
    (0.0, None, 3),                                      # right after the last use
    (0.0, [i in (5, 8) for i in range(10)], 5),          # first anchorable at or after it
    (4.0, None, 4),                                      # steps 1..4 cover 4 s
    (4.0, [i in (3, 8) for i in range(10)], 8),          # 3 covers only 3 s: the next anchor
    (50.0, [i in (3, 8) for i in range(10)], 8),         # nothing covers: the last anchor
    (0.0, [i < 3 for i in range(10)], 3),                # nothing anchorable after: the last use
])
def test_release_step(hide, anchorable, expected):
    assert oc.release_step(STEPS, issue_step=0, last_use=3, anchorable=anchorable, hide_seconds=hide) == expected


@pytest.mark.parametrize("hide, expected", [(0.0, 4), (1.0, 5), (3.0, 7)])
def test_release_step_never_counts_the_producer_itself(hide, expected):
    # a value only the backward reads: its last forward "use" is its producer at step 4
    assert oc.release_step(STEPS, issue_step=4, last_use=4, hide_seconds=hide) == expected


@pytest.mark.parametrize("lead, earliest, anchorable, expected", [
    (3.0, 0, None, 5),                               # 6, 7, 8 run between prefetch and the use at 9
    (3.0, 0, [i in (1, 4, 6) for i in range(10)], 4),  # latest anchor that still covers 3 s
    (20.0, 0, [i in (1, 4, 6) for i in range(10)], 1),  # none covers: the earliest anchor
    (20.0, 2, [i in (1, 4, 6) for i in range(10)], 4),  # ... not before ``earliest``
    (3.0, 0, [i == 9 for i in range(10)], None),     # no anchor before the use
    (0.0, 0, None, 8),                               # no lead: right before the use
])
def test_prefetch_step(lead, earliest, anchorable, expected):
    assert oc.prefetch_step(STEPS, first_use=9, lead_seconds=lead, earliest=earliest, anchorable=anchorable) == expected


def test_place_offload_prices_the_windows_it_places():
    fw = [1e-3] * 8
    bw = [2e-3] * 8
    p = oc.place_offload(
        10e6, host_link_bandwidth=1e9, forward_seconds=fw, backward_seconds=bw,  # 10 ms per copy
        produced_at=1, last_forward_use=3, first_backward_use=7,
    )
    assert p.release_step == 7  # the forward holds it to the end (6 ms) and still pays 4 ms
    assert p.cost.device_to_host.window_seconds == pytest.approx(6e-3)
    assert p.prefetch_step == 1  # 5 steps x 2 ms = 10 ms ahead of the use at 7
    assert p.cost.host_to_device.exposed_seconds == 0.0
    assert p.cost.added_seconds == pytest.approx(4e-3)
    assert p.backward_held_from == 2
    tight = oc.place_offload(
        10e6, host_link_bandwidth=1e9, forward_seconds=fw, backward_seconds=bw,
        produced_at=1, last_forward_use=3, first_backward_use=7, hide_offload=False,
        earliest_prefetch=4,
    )
    assert tight.release_step == 3 and tight.cost.device_to_host.exposed_seconds == pytest.approx(8e-3)
    assert tight.prefetch_step == 4 and tight.cost.host_to_device.exposed_seconds == pytest.approx(6e-3)


@pytest.mark.parametrize("copies, exposed", [
    ([(0.0, 1.0, 5.0), (1.0, 1.0, 5.0)], (0.0, 0.0)),          # back to back, both hidden
    ([(0.0, 3.0, 5.0), (1.0, 3.0, 5.0)], (0.0, 1.0)),          # the second waits for the link
    ([(1.0, 3.0, 5.0), (0.0, 3.0, 5.0)], (1.0, 0.0)),          # issue order, not list order
    ([(0.0, 1.0, 0.5), (4.0, 1.0, 10.0)], (0.5, 0.0)),         # an idle link starts at the issue
])
def test_queued_copies_share_the_link(copies, exposed):
    assert oc.queued_exposed_seconds(copies) == pytest.approx(exposed)
    alone = [oc.transfer_cost(s, 1.0, w - i).exposed_seconds for i, s, w in copies]
    assert all(q >= a - 1e-12 for q, a in zip(oc.queued_exposed_seconds(copies), alone))


# ---------------------------------------------------------------- the rewrite on a joint graph


def mlp(x, w1, w2, w3, w4):
    h1 = torch.relu(F.linear(x, w1))
    h2 = torch.tanh(F.linear(h1, w2))
    h3 = F.gelu(F.linear(h2, w3))
    return F.linear(h3, w4).pow(2).sum()


def mlp_args():
    torch.manual_seed(0)
    return [torch.randn(16, 24)] + [torch.randn(o, i, requires_grad=True)
                                     for o, i in ((32, 24), (40, 32), (48, 40), (8, 48))]


def run(pick_roots=storages_the_backward_reads, **rewrite_kwargs):
    """Gradients of ``mlp`` with the storages ``pick_roots`` offloaded, and what the partition made."""
    record = {}

    def partition(joint, joint_inputs, *, num_fwd_outputs, static_lifetime_input_indices=None, **_):
        joint = _prepare_joint(joint)
        info = tp.classify_nodes(joint, static_lifetime_input_indices or [], num_fwd_outputs)
        backward = {n.name for n in info.required_bw_nodes}
        roots = pick_roots(joint, backward)
        kwargs = dict(rewrite_kwargs)
        if isinstance(roots, tuple):  # (roots, more keyword arguments for the rewrite)
            roots, more = roots
            kwargs.update(more)
        record["steps"] = joint_steps(joint, backward)
        rewrite = offload_values(joint, roots, backward=backward, **kwargs)
        saved = saved_for(joint, backward | rewrite.backward_nodes, frozenset())
        fw, bw = Extractor(joint, info, num_fwd_outputs)(saved, joint=joint)
        record.update(roots=roots, rewrite=rewrite, fw=fw, bw=bw, saved=[n.name for n in saved])
        return fw, bw

    def boxed(gm, _inputs):
        gm.graph.set_codegen(torch.fx.graph._BoxedCodeGen())
        gm.recompile()
        return gm

    args = mlp_args()
    compiled = aot_function(mlp, fw_compiler=boxed, bw_compiler=boxed, partition_fn=partition)
    loss = compiled(*args)
    grads = torch.autograd.grad(loss, args[1:])
    return loss, grads, record


def eager():
    args = mlp_args()
    loss = mlp(*args)
    return loss, torch.autograd.grad(loss, args[1:])


BY_NODES = {"host_link_bandwidth": 1.0, "node_seconds": None, "lead_seconds": 3}


def _order(gm):
    return {n.name: i for i, n in enumerate(gm.graph.nodes)}


def _node_before(node):
    """The nearest node above ``node`` that the rewrite did not insert (siblings share anchors)."""
    node = node.prev
    while node.meta.get(OFFLOAD_META):
        node = node.prev
    return node


def _role(gm, role):
    return {n.meta[OFFLOAD_META]["source"]: n for n in gm.graph.nodes
            if n.meta.get(OFFLOAD_META, {}).get("role") == role}


def test_gradients_equal_eager_exactly_with_every_storage_offloaded():
    ref_loss, ref = eager()
    loss, grads, record = run(**BY_NODES)
    assert len(record["rewrite"].applied) >= 4, record["rewrite"]
    assert torch.equal(loss, ref_loss)
    for got, want in zip(grads, ref):
        assert torch.equal(got, want)
    assert off.pending_transfers() == 0  # every handle died with its graph's last use


def test_the_backward_saves_host_copies_instead_of_the_storages():
    _, _, record = run(**BY_NODES)
    applied = set(record["rewrite"].applied)
    waits = _role(record["fw"], "offload_wait")
    assert set(waits) == applied
    assert not applied & set(record["saved"])  # no offloaded storage is saved
    bw_inputs = {n.name for n in record["bw"].graph.find_nodes(op="placeholder")}
    assert {w.name for w in waits.values()} <= bw_inputs
    assert all(w.meta["val"].device.type == "cpu" for w in waits.values())


def test_forward_offload_follows_the_producer_and_the_wait_follows_the_last_use():
    _, _, record = run(**BY_NODES)
    fw = record["fw"]
    order = _order(fw)
    for source, handle in _role(fw, "offload").items():
        assert _node_before(handle).name == source  # issued right after the producer
        wait = _role(fw, "offload_wait")[source]
        assert wait.args[0] is handle and wait.args[1].name == source
        users = [u for u in fw.graph.nodes if u.op == "call_function" and u is not wait and u is not handle
                 and any(a.name == source for a in u.all_input_nodes)]
        assert all(order[u.name] < order[wait.name] for u in users), source  # x lives until the wait
        release = record["rewrite"].schedule[source].release_after
        assert _node_before(wait).name == release


def test_prefetch_is_issued_ahead_with_compute_between_it_and_its_wait():
    _, _, record = run(**BY_NODES)
    bw = record["bw"]
    order = _order(bw)
    nodes = list(bw.graph.nodes)
    prefetches, waits = _role(bw, "prefetch"), _role(bw, "prefetch_wait")
    schedule = record["rewrite"].schedule
    assert set(prefetches) == set(waits) == set(record["rewrite"].applied)
    for source, fetch in prefetches.items():
        wait = waits[source]
        assert wait.args[0] is fetch and order[fetch.name] < order[wait.name]
        plan = schedule[source]
        if plan.prefetch_after is not None:  # right after its anchor, which it takes as ``after``
            assert fetch.args[2].name == plan.prefetch_after
            assert _node_before(fetch).name == plan.prefetch_after
        assert order[wait.name] < order[plan.first_reader]
        # only rebuilt aliases of the copy come between the wait and the first reader
        for n in nodes[order[wait.name] + 1:order[plan.first_reader]]:
            assert alias_source(n) is not None or n.meta.get(OFFLOAD_META), n
    # the first layer's activation is read last: it comes back while two later layers' grads run
    last = max(schedule, key=lambda s: order[schedule[s].first_reader])
    between = nodes[order[prefetches[last].name] + 1:order[waits[last].name]]
    assert sum(n.target is torch.ops.aten.mm.default for n in between) >= 2


def _kernels_sure_to_run_between(bw, fetch, wait, reader):
    """Kernels (not views, not inserted nodes) between ``fetch`` and ``wait`` that ``reader`` needs."""
    needed, stack = set(), list(reader.all_input_nodes)
    while stack:
        n = stack.pop()
        if n not in needed:
            needed.add(n)
            stack.extend(n.all_input_nodes)
    order = _order(bw)
    nodes = list(bw.graph.nodes)[order[fetch.name] + 1:order[wait.name]]
    return sum(1 for n in nodes if n in needed and n.op == "call_function" and not n.meta.get(OFFLOAD_META)
               and n.target is not operator.getitem and alias_source(n) is None)


def test_placement_survives_extraction_with_the_window_it_was_priced_at():
    """In kernel-count mode the priced window is the number of kernels the first reader depends on
    between prefetch and wait: the extracted backward has exactly those there."""
    _, _, record = run(**BY_NODES)
    bw = record["bw"]
    by_name = {n.name: n for n in bw.graph.nodes}
    fetches, waits = _role(bw, "prefetch"), _role(bw, "prefetch_wait")
    windows = []
    for source, plan in record["rewrite"].schedule.items():
        found = _kernels_sure_to_run_between(bw, fetches[source], waits[source], by_name[plan.first_reader])
        assert found == plan.placement.cost.host_to_device.window_seconds, source
        windows.append(found)
    assert max(windows) >= BY_NODES["lead_seconds"]


def test_a_zero_lead_waits_right_after_the_prefetch():
    _, grads, record = run(host_link_bandwidth=1.0, node_seconds=None, lead_seconds=0)
    bw = record["bw"]
    order = _order(bw)
    for source, fetch in _role(bw, "prefetch").items():
        between = list(bw.graph.nodes)[order[fetch.name] + 1:order[_role(bw, "prefetch_wait")[source].name]]
        assert not [n for n in between if n.target is torch.ops.aten.mm.default]
    for got, want in zip(grads, eager()[1]):
        assert torch.equal(got, want)


def test_schedule_from_the_planner_is_what_the_rewrite_uses():
    calls = {}

    def pick(joint, backward):
        roots = storages_the_backward_reads(joint, backward)
        calls["schedule"], calls["skipped"] = offload_schedule(
            joint, roots, backward=backward, host_link_bandwidth=1.0, lead_seconds=3, device_check=False)
        return roots, {"schedule": calls["schedule"]}

    _, grads, record = run(pick)
    assert record["rewrite"].schedule == calls["schedule"] and not calls["skipped"]
    by_itself = run(**BY_NODES)[2]["rewrite"]
    assert {k: (v.release_after, v.prefetch_after, v.first_reader) for k, v in by_itself.schedule.items()} == {
        k: (v.release_after, v.prefetch_after, v.first_reader) for k, v in calls["schedule"].items()}
    for got, want in zip(grads, eager()[1]):
        assert torch.equal(got, want)


def test_fake_values_of_the_rewritten_joint_graph_are_consistent():
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    from memcompile.passes.rewrite._lossy import fake_mode_of

    seen = {}

    def pick(joint, backward):
        seen["joint"] = joint
        return storages_the_backward_reads(joint, backward)

    run(pick, **BY_NODES)
    gm = seen["joint"]
    stored = {n.name: n.meta["val"] for n in gm.graph.nodes if isinstance(n.meta.get("val"), torch.Tensor)}
    placeholders = [n.meta["val"] for n in gm.graph.find_nodes(op="placeholder")]
    FakeTensorProp(gm, fake_mode_of(gm.graph)).propagate_dont_convert_inputs(*placeholders)
    for node in gm.graph.nodes:
        if node.name in stored:
            old, new = stored[node.name], node.meta["val"]
            assert (old.shape, old.stride(), old.dtype, old.device) == (new.shape, new.stride(), new.dtype, new.device)


def test_what_cannot_be_offloaded_is_skipped_with_a_reason():
    def pick(joint, backward):
        roots = storages_the_backward_reads(joint, backward)
        view = next(n.name for n in joint.graph.nodes if alias_source(n) is not None and n.name not in backward)
        return roots[:1] + [view, "primals_1", "no_such_node"]

    ref_loss, ref = eager()
    loss, grads, record = run(pick, **BY_NODES)
    reasons = dict(record["rewrite"].skipped)
    assert len(record["rewrite"].applied) == 1
    assert "a view of" in next(r for n, r in reasons.items() if n not in ("primals_1", "no_such_node"))
    assert reasons["no_such_node"] == "not in the graph"
    assert "not a forward value" in reasons["primals_1"] or "graph input" in reasons["primals_1"]
    for got, want in zip(grads, ref):
        assert torch.equal(got, want)


def test_offload_is_not_offered_for_cpu_tensors():
    def pick(joint, backward):
        roots = storages_the_backward_reads(joint, backward)
        node = next(n for n in joint.graph.nodes if n.name == roots[0])
        pick.reason = why_not_offloadable(node)
        pick.without_check = why_not_offloadable(node, device_check=False)
        return []

    run(pick, **BY_NODES)
    assert pick.reason.startswith("on cpu") and pick.without_check is None


def test_materialized_nodes_are_matmuls_inputs_and_memcompile_ops():
    def pick(joint, backward):
        pick.flags = {n.name: is_materialized(n) for n in joint.graph.nodes}
        pick.targets = {n.name: n.target for n in joint.graph.nodes}
        return []

    run(pick, **BY_NODES)
    for name, flag in pick.flags.items():
        target = pick.targets[name]
        if target in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default) or name.startswith("primals"):
            assert flag, name
        if target in (torch.ops.aten.relu.default, torch.ops.aten.t.default, operator.getitem):
            assert not flag, name


def test_rewrite_needs_a_schedule_or_a_bandwidth():
    with pytest.raises(ValueError, match="host_link_bandwidth"):
        run(lambda joint, backward: storages_the_backward_reads(joint, backward))
    with pytest.raises(ValueError, match="lead_seconds"):
        run(host_link_bandwidth=1.0)


@pytest.mark.slow
def test_inductor_keeps_the_prefetch_ahead_of_the_matmuls_it_overlaps(no_compile_cache):
    """Through Inductor (CPU): gradients close to eager, and in the generated backward the prefetch,
    at least one matmul and the wait come in that order (no pass sank the prefetch onto its wait)."""
    from torch._inductor.compile_fx import compile_fx
    from torch._inductor.utils import run_and_get_code

    try:
        from torch._inductor.custom_graph_pass import CustomPartitionerFn
    except ImportError:  # pragma: no cover - older torch
        from torch._inductor.custom_partitioner_fn import CustomPartitionerFn

    class OffloadAll(CustomPartitionerFn):
        def uuid(self):
            return "memcompile-test-offload-all"

        def __call__(self, joint, joint_inputs, *, num_fwd_outputs, static_lifetime_input_indices=None, **_):
            joint = _prepare_joint(joint)
            info = tp.classify_nodes(joint, static_lifetime_input_indices or [], num_fwd_outputs)
            backward = {n.name for n in info.required_bw_nodes}
            rewrite = offload_values(joint, storages_the_backward_reads(joint, backward), backward=backward, **BY_NODES)
            saved = saved_for(joint, backward | rewrite.backward_nodes, frozenset())
            return Extractor(joint, info, num_fwd_outputs)(saved, joint=joint)

    def backend(gm, example_inputs):
        return compile_fx(gm, example_inputs, config_patches={"custom_partitioner_fn": OffloadAll(), **INDUCTOR_CONFIG})

    args = mlp_args()
    compiled = torch.compile(mlp, backend=backend)

    def step():
        loss = compiled(*args)
        return loss, torch.autograd.grad(loss, args[1:])

    (loss, grads), codes = run_and_get_code(step)
    ref_loss, ref = eager()
    # Inductor's fused GELU/tanh kernels round differently from eager (up to 4e-4 absolute on
    # gradients of magnitude ~30 here); a copy read too early or from the wrong buffer is off by O(1)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-3, atol=1e-3)
    for got, want in zip(grads, ref):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    backward_code = next(c for c in codes if "prefetch_wait" in c)
    assert "memcompile.offload" in "".join(codes)
    lines = backward_code.splitlines()
    fetch_lines = [i for i, line in enumerate(lines) if "memcompile.prefetch.default" in line]
    wait_lines = [i for i, line in enumerate(lines) if "memcompile.prefetch_wait.default" in line]
    mm_lines = [i for i, line in enumerate(lines) if "extern_kernels.mm(" in line or "aten.mm" in line]
    assert fetch_lines and len(fetch_lines) == len(wait_lines)
    overlapped = sum(any(f < m < w for m in mm_lines) for f, w in zip(sorted(fetch_lines), sorted(wait_lines)))
    assert overlapped >= 1, backward_code


def _aot_backend(pick_roots, record, **rewrite_kwargs):
    from torch._dynamo.backends.common import aot_autograd

    def partition(joint, joint_inputs, *, num_fwd_outputs, static_lifetime_input_indices=None, **_):
        joint = _prepare_joint(joint)
        info = tp.classify_nodes(joint, static_lifetime_input_indices or [], num_fwd_outputs)
        backward = {n.name for n in info.required_bw_nodes}
        rewrite = offload_values(joint, pick_roots(joint, backward), backward=backward, **rewrite_kwargs)
        record.append(rewrite)
        saved = saved_for(joint, backward | rewrite.backward_nodes, frozenset())
        return Extractor(joint, info, num_fwd_outputs)(saved, joint=joint)

    def boxed(gm, _inputs):
        gm.graph.set_codegen(torch.fx.graph._BoxedCodeGen())
        gm.recompile()
        return gm

    return aot_autograd(fw_compiler=boxed, bw_compiler=boxed, partition_fn=partition)


def test_alias_groups_are_quantize_alias_closures():
    from memcompile.models import make
    from memcompile.passes.rewrite.offload import alias_groups
    from memcompile.passes.rewrite.quantize import alias_closure

    checked = []

    def pick(joint, backward):
        for root, group in alias_groups(joint.graph).items():
            assert group == alias_closure(root), root.name
            checked.append(len(group))
        return []

    model, inputs = make("llama-tiny")
    torch.compile(model, backend=_aot_backend(pick, [], **BY_NODES))(*inputs).backward()
    assert max(checked) >= 4  # the fused QKV projection and its split views


@pytest.mark.parametrize("name", ["gpt-tiny", "llama-tiny"])
def test_toy_transformer_gradients_equal_eager_with_every_storage_offloaded(name):
    """Attention (fused QKV split into three views, SDPA), norms (multi-output ops), embeddings:
    every saved storage goes to host memory and back, and the gradients are eager's, bit for bit."""
    from memcompile.models import make

    model, inputs = make(name)
    ref_loss = model(*inputs)
    ref_loss.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    record = []
    compiled = torch.compile(model, backend=_aot_backend(storages_the_backward_reads, record, **BY_NODES))
    loss = compiled(*inputs)
    loss.backward()
    (rewrite,) = record
    assert len(rewrite.applied) >= 10, rewrite
    assert torch.equal(loss, ref_loss)
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, ref[n]), n
    assert off.pending_transfers() == 0
