"""torch's own plan at a fraction (search.SearchInputs.reference), built by the adapter: it is the partition torch's
``activation_memory_budget`` makes of the same joint graph, and a fraction's plan never simulates above it. The
partitioner is called on a traced joint graph directly (no Inductor compile)."""

import threading

import pytest
from memcompile.passes.lifetimes import partition_saved
from memcompile.passes.planner import search as search_module
from torch import fx
from torch._functorch import config as functorch_config
from torch._functorch import partitioners as tp

from memcompile import partitioner as partitioner_module
from _planner_helpers import traced_joint
from memcompile import MemoryBudgetError
from memcompile.config import MemConfig
from memcompile.partitioner import MemPartitioner, _copy_graph


@pytest.fixture(scope="module")
def gpt_tiny_joint():
    return traced_joint("gpt-tiny")


@pytest.fixture
def searched(monkeypatch):
    """The SearchInputs of the partitioner's last search, recorded as it calls the real search."""
    seen = {}

    def recording_search(search_inputs, **kwargs):
        seen["inputs"] = search_inputs
        return search_module.search(search_inputs, **kwargs)

    monkeypatch.setattr(partitioner_module, "search", recording_search)
    return seen


def _copy(joint):
    return fx.GraphModule(joint, _copy_graph(joint.graph))


@pytest.mark.parametrize("fraction", [0.8, 0.5])
def test_the_reference_is_torchs_partition_and_the_plan_never_simulates_above_it(gpt_tiny_joint, searched, fraction):
    joint, inputs, kw = gpt_tiny_joint
    plans = []
    MemPartitioner(MemConfig.from_options({"memory_budget": fraction, "inner": "eager"}), on_plan=plans.append)(
        _copy(joint), inputs, compiler="inductor", **kw)
    reference = searched["inputs"].reference
    assert reference is not None
    built = reference(fraction)
    assert built is not None and built.source == "torch" and built.solution is None

    with functorch_config.patch(activation_memory_budget=fraction):
        fw, bw = tp.min_cut_rematerialization_partition(_copy(joint), inputs, compiler="inductor", **kw)
    assert sorted(partition_saved(*built.artifact)) == sorted(partition_saved(fw, bw))
    assert plans[-1].planned.peak_bytes <= built.peak_bytes
    # the time it adds in the planner's model: the forward values torch's backward computes again
    problem = searched["inputs"].problem
    again = {n.name for n in bw.graph.nodes if n.op == "call_function"} & set(problem.names)
    assert again  # gpt-tiny's budgets recompute
    assert built.added_seconds == pytest.approx(sum(problem.recompute_seconds[problem.names.index(n)] for n in again))


def test_a_byte_budget_under_the_floor_runs_what_a_fraction_of_0_runs(gpt_tiny_joint, searched):
    """A byte budget no plan meets runs the search a fraction of 0.0 runs (a fresh solve, torch's references
    included), so it runs, and names in its error, the very peak a budget of 0.0 runs (its own rounds may have
    built another plan of that peak first, which then stays)."""
    joint, inputs, kw = gpt_tiny_joint
    zero, low = [], []
    MemPartitioner(MemConfig.from_options({"memory_budget": 0.0, "inner": "eager"}), on_plan=zero.append)(
        _copy(joint), inputs, compiler="inductor", **kw)
    with pytest.warns(RuntimeWarning, match="cannot be met"):
        budget = zero[-1].planned.peak_bytes - 1
        MemPartitioner(MemConfig.from_options({"memory_budget": budget, "inner": "eager", "on_infeasible": "best_effort"}),
                       on_plan=low.append)(_copy(joint), inputs, compiler="inductor", **kw)
    assert searched["inputs"].budget_bytes is not None and searched["inputs"].reference is not None
    assert low[-1].planned.peak_bytes == zero[-1].planned.peak_bytes == low[-1].min_peak_bytes
    # raised, it names that peak, and a budget of that peak is met
    with pytest.raises(MemoryBudgetError) as info:
        MemPartitioner(MemConfig.from_options({"memory_budget": budget, "inner": "eager"}))(
            _copy(joint), inputs, compiler="inductor", **kw)
    assert info.value.min_peak_bytes == zero[-1].planned.peak_bytes
    at = []
    MemPartitioner(MemConfig.from_options({"memory_budget": info.value.min_peak_bytes, "inner": "eager"}),
                   on_plan=at.append)(_copy(joint), inputs, compiler="inductor", **kw)
    assert at[-1].planned.peak_bytes <= info.value.min_peak_bytes


def test_a_torch_partition_that_fails_leaves_the_plan_and_says_so(gpt_tiny_joint, monkeypatch):
    joint, inputs, kw = gpt_tiny_joint
    choose = tp.choose_saved_values_set

    def failing(graph, node_info, memory_budget=1.0):
        if memory_budget != 1.0:
            raise RuntimeError("knapsack broke")
        return choose(graph, node_info, memory_budget=memory_budget)

    monkeypatch.setattr(partitioner_module.tp, "choose_saved_values_set", failing)
    plans = []
    MemPartitioner(MemConfig.from_options({"memory_budget": 0.8, "inner": "eager"}), on_plan=plans.append)(
        _copy(joint), inputs, compiler="inductor", **kw)
    (plan,) = plans
    assert plan.source in ("ilp", "ilp+local")
    assert any("could not be built (RuntimeError: knapsack broke)" in n for n in plan.notes)


def test_no_reference_where_the_modes_forbid_recompute(gpt_tiny_joint, searched):
    """torch's plan recomputes: with modes ("keep",) (or keep and lossy modes only) it is never run."""
    joint, inputs, kw = gpt_tiny_joint
    plans = []
    MemPartitioner(MemConfig.from_options({"memory_budget": 0.0, "inner": "eager", "modes": ("keep", "inplace")}),
                   on_plan=plans.append)(_copy(joint), inputs, compiler="inductor", **kw)
    assert searched["inputs"].reference is None
    assert not any(d.mode == "recompute" and d.added_seconds > 0 for d in plans[-1].decisions)


def test_a_reference_that_rebuilds_a_random_op_is_refused_and_attention_without_dropout_is_not():
    """partitioner._unsafe_recompute: the planner's own test for random ops (candidates.draws_random), less its
    ban on attention without dropout."""
    import torch
    from torch.fx.experimental.proxy_tensor import make_fx

    from memcompile.partitioner import _unsafe_recompute

    x = torch.randn(2, 2, 4, 8)
    dropped = make_fx(lambda a: torch.nn.functional.dropout(a, 0.1, training=True))(x)
    names = {n.name for n in dropped.graph.nodes if n.op == "call_function"}
    assert _unsafe_recompute(dropped, names) is not None
    assert _unsafe_recompute(dropped, set()) is None  # computed in the backward only: nothing is rebuilt
    attention = make_fx(lambda q: torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, q, q, 0.0)[0])(x)
    names = {n.name for n in attention.graph.nodes if n.op == "call_function"}
    assert _unsafe_recompute(attention, names) is None


def test_references_at_two_fractions_share_the_min_cuts_that_do_not_depend_on_the_fraction(gpt_tiny_joint, searched,
                                                                                           monkeypatch):
    """Below the anchor fraction the search builds torch's plan at the fraction and at the anchor; the min-cuts
    torch solves before its knapsack (and the default partition's) are solved once per graph, and each reference
    is still exactly torch's partition."""
    from memcompile.passes.planner import tuning

    joint, inputs, kw = gpt_tiny_joint
    solve = tp.solve_min_cut
    calls = []

    def counting(*args, **kwargs):
        calls.append(args)
        return solve(*args, **kwargs)

    monkeypatch.setattr(tp, "solve_min_cut", counting)
    fraction, anchor = 0.1, tuning.MONOTONE_ANCHOR
    MemPartitioner(MemConfig.from_options({"memory_budget": fraction, "inner": "eager"}))(
        _copy(joint), inputs, compiler="inductor", **kw)
    reference = searched["inputs"].reference
    built = {f: reference(f) for f in (fraction, anchor)}  # both built during the search already
    shared = len(calls)

    unshared = []
    for f in (1.0, fraction, anchor):  # what the default partition and the two references solve, each on its own
        calls.clear()
        with functorch_config.patch(activation_memory_budget=f):
            fw, bw = tp.min_cut_rematerialization_partition(_copy(joint), inputs, compiler="inductor", **kw)
        unshared.append(len(calls))
        if f != 1.0:
            assert sorted(partition_saved(*built[f].artifact)) == sorted(partition_saved(fw, bw))
    assert shared < sum(unshared)


def test_a_copied_joint_graph_still_says_which_inputs_the_forward_mutates(gpt_tiny_joint):
    """AOT autograd describes the joint graph's outputs in its output node's meta, and lifetimes.mutated_inputs
    reads the mutated inputs from it; a copy without it would bar every value that reads a graph input from
    recompute (80 of toy-gpt's 339 candidates)."""
    from memcompile.passes.lifetimes import mutated_inputs

    joint, _, _ = gpt_tiny_joint
    copy = _copy_graph(joint.graph)
    assert mutated_inputs(joint.graph) is not None
    assert mutated_inputs(copy) == mutated_inputs(joint.graph)


def test_a_plan_records_its_stages_seconds_and_counts(gpt_tiny_joint):
    """The Plan says where planning went: seconds per stage (the local moves included) and how many solves
    and builds it took."""
    joint, inputs, kw = gpt_tiny_joint
    plans = []
    MemPartitioner(MemConfig.from_options({"memory_budget": 0.0, "inner": "eager"}), on_plan=plans.append)(
        _copy(joint), inputs, compiler="inductor", **kw)
    seconds, counts = plans[-1].extra["stage_seconds"], plans[-1].extra["stage_counts"]
    assert {"solve", "extract", "simulate", "local"} <= set(seconds)
    assert counts["solve"] >= 1 and counts["extract"] >= 2  # the default partition, then at least one plan
    assert counts["extract"] == counts["simulate"]


@pytest.mark.parametrize("fraction", [0.3, 0.0])
def test_references_built_ahead_on_a_worker_give_the_same_plan(gpt_tiny_joint, monkeypatch, fraction):
    """torch's plans (at the fraction and at the anchor) built on a worker while the search solves: the same plan,
    notes and stages as built when asked for; the planner runs under the joint's fake mode, as a compile runs it."""
    from torch._guards import detect_fake_mode

    joint, inputs, kw = gpt_tiny_joint
    fake = detect_fake_mode(inputs)
    threads = []
    build = partitioner_module.References.__init__

    def recording_init(self, builder, **options):
        def recorded(f):
            threads.append((f, threading.current_thread().name))
            return builder(f)
        build(self, recorded, **options)

    monkeypatch.setattr(partitioner_module.References, "__init__", recording_init)
    plans = {}
    for ahead in (False, True):
        monkeypatch.setattr(partitioner_module, "REFERENCES_AHEAD", ahead)
        got = []
        with fake:
            MemPartitioner(MemConfig.from_options({"memory_budget": fraction, "inner": "eager"}), on_plan=got.append)(
                _copy(joint), inputs, compiler="inductor", **kw)
        plans[ahead] = got[-1]
    before, after = plans[False], plans[True]
    assert (before.decisions, before.planned.peak_bytes, before.notes, before.backward_code) == \
        (after.decisions, after.planned.peak_bytes, after.notes, after.backward_code)
    main = threading.current_thread().name
    assert threads == [(fraction, main), (0.5, main), (fraction, "memcompile-torch-reference"),
                       (0.5, "memcompile-torch-reference")]
    assert after.extra["stage_counts"]["reference"] == 2
