"""The forward's fixed live bytes (``fw_base_bytes``) count only what runs in every plan.

A value the forward's outputs do not need (a part of a derivative that the joint graph places after
the whole forward) runs in the forward only when the plan keeps it: its reads must not keep their
inputs live through the forward in every plan, and its keep is charged from where they would
otherwise die."""

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from memcompile.passes.candidates import build_candidates
from memcompile.passes.costs import DeviceProfile, estimate_costs
from memcompile.passes.lifetimes import analyse
from memcompile.passes.simulate import Timeline

aten = torch.ops.aten
N = 64
NBYTES = N * N * 4
PROFILE = DeviceProfile(name="test", peak_flops=1e12, memory_bandwidth=1e10, host_link_bandwidth=1e10,
                        kernel_overhead_seconds=1e-5)


def _candidates(transient=(), intervals=()):
    def f(x, w):
        a = aten.mm.default(x, w)          # the forward needs it (for s)
        s = aten.sum.default(a)            # a forward output: a's last use in every plan
        t = aten.mm.default(x, w)          # more forward work, after a is dead
        o = aten.sum.default(t)
        u = aten.mul.Tensor(a, a)          # read only by the backward: runs in the forward only if kept
        return s, o, u

    gm = make_fx(f)(torch.randn(N, N), torch.randn(N, N))
    table = analyse(gm)
    calls = [n.name for n in gm.graph.nodes if n.op == "call_function"]
    a, s, t, o, u = calls
    timeline = Timeline(steps=(*calls, "g"), sides=("forward",) * len(calls) + ("backward",), live_bytes=(0,) * 6,
                        held_bytes=0, backward_start=len(calls), intervals=tuple(intervals),
                        transient_bytes=tuple(transient))
    cset = build_candidates(gm, table=table, forward_nodes=set(calls), backward_nodes=set(), forward_only={a, s, t, o},
                            default_timeline=timeline, costs=estimate_costs(gm, table, PROFILE, fused=True))
    return cset, dict(zip("asotu", (a, s, o, t, u)))


def test_a_read_that_only_a_kept_backward_value_makes_does_not_hold_its_input_in_every_plan():
    cset, names = _candidates()
    pos = {n: i for i, n in enumerate(cset.fw_steps)}
    # at t's step a is dead unless u is kept: only t's own output is live there
    assert cset.fw_base_bytes[pos[names["t"]]] == NBYTES
    assert cset.fw_base_bytes[pos[names["u"]]] == 0  # u itself is the plan's to place


def test_keeping_that_value_is_charged_from_where_its_input_would_die():
    cset, names = _candidates()
    pos = {n: i for i, n in enumerate(cset.fw_steps)}
    u = cset.by_name()[names["u"]]
    assert u.fw_keep_from == pos[names["s"]] + 1


def test_what_an_op_holds_while_it_runs_counts_at_its_step_in_every_plan():
    """An op's scratch (oneDNN's, measured by costs.scratch_bytes) is in the simulator's live bytes at its
    step; the ILP's fixed rows count it there too, forward and backward (convnext: a depthwise
    convolution's backward holds 6.5 MB, which the model missed)."""
    plain, names = _candidates()
    transient = (0, 0, 5, 0, 0, 7)  # scratch at t's step and at the backward's one step
    cset, _ = _candidates(transient=transient)
    pos = {n: i for i, n in enumerate(cset.fw_steps)}
    for name, i in pos.items():
        assert cset.fw_base_bytes[i] - plain.fw_base_bytes[i] == (5 if name == names["t"] else 0)
    assert [b - p for b, p in zip(cset.bw_base_bytes, plain.bw_base_bytes)] == [7]


def test_a_layout_copy_counts_through_the_whole_forward_and_into_the_backward():
    from memcompile.passes.simulate import LAYOUT_PREFIX, StorageInterval

    plain, _ = _candidates()
    copy = StorageInterval(root=LAYOUT_PREFIX + "x", nbytes=11, alloc_step=0, free_step=5)
    cset, _ = _candidates(intervals=(copy,))
    assert [b - p for b, p in zip(cset.fw_base_bytes, plain.fw_base_bytes)] == [11] * len(cset.fw_steps)
    assert [b - p for b, p in zip(cset.bw_base_bytes, plain.bw_base_bytes)] == [11]
