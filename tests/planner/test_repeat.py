"""Repeated layers solved once (planner/repeat.py, passes/repeats.py): colours, ties, and the tied ILP
against the whole-graph ILP on synthetic stacks small enough for both."""

import pytest
import torch
from memcompile.passes.candidates import Candidate, CandidateSet
from memcompile.passes.planner import search as search_mod
from memcompile.passes.planner import tuning
from memcompile.passes.planner.ilp import solve_ilp
from memcompile.passes.planner.problem import build_problem, evaluate
from memcompile.passes.planner.repeat import candidate_ties, tie_classes
from memcompile.passes.planner.search import SearchInputs, Verified, search
from memcompile.passes.planner.solution import PEAK, TIME
from memcompile.passes.repeats import structural_colours
from memcompile.passes.simulate import Timeline
from torch.fx.experimental.proxy_tensor import make_fx

MB = 2**20
# (bytes, recompute seconds) of the values of one layer, each read by the next and by the backward
LAYER = ((8 * MB, 1e-3), (4 * MB, 3e-3), (2 * MB, 0.5e-3), (6 * MB, 2e-3))


def _stack(n_layers):
    """n_layers copies of LAYER chained one after the other; the backward reads them in reverse."""
    cands = []
    n = n_layers * len(LAYER)
    for k in range(n):
        nbytes, seconds = LAYER[k % len(LAYER)]
        cands.append(Candidate(
            name=f"v{k}", root=f"v{k}", nbytes=nbytes, recompute_seconds=seconds, can_save=True,
            can_recompute=k > 0, recompute_ban=None if k else "input", needed=True,
            inputs=(f"v{k - 1}",) if k else (), fw_step=k, fw_keep_from=k + 1, bw_first=n - 1 - k, bw_last=n - 1 - k))
    problem = build_problem(CandidateSet(
        candidates=tuple(cands), fw_steps=tuple(c.name for c in cands), bw_steps=tuple(f"g{k}" for k in range(n)),
        fw_base_bytes=(MB,) * n, bw_base_bytes=(MB,) * n))
    # colour = position in the layer, except the first and last layers (the boundary)
    colours = {f"v{k}": (k % len(LAYER)) if len(LAYER) <= k < n - len(LAYER) else 100 + k for k in range(n)}
    return problem, colours


def test_tie_classes_cuts_each_class_into_runs_of_consecutive_members():
    colours = [0, 0, 0, 0, 0, 0, 0, 0, None, 1, 1]
    assert tie_classes(colours, 4) == {1: 0, 3: 2, 5: 4, 7: 6}
    assert tie_classes(colours, 1) == {i: 0 for i in range(1, 8)} | {10: 9}


def test_tie_classes_refuses_no_runs():
    with pytest.raises(ValueError, match="groups"):
        tie_classes([0, 0], 0)


def test_candidates_unlike_in_bytes_are_not_tied():
    problem, colours = _stack(6)
    colours = {name: 0 for name in colours}  # one colour for all: only equal bytes may share a class
    ties = candidate_ties(problem, colours, 1)
    for i, r in ties.items():
        assert problem.storage_bytes[problem.storage_of[i]] == problem.storage_bytes[problem.storage_of[r]]
    assert ties


def _whole_and_tied(problem, ties, **kw):
    whole = solve_ilp(problem, time_limit_seconds=20, **kw)
    tied = solve_ilp(problem, time_limit_seconds=20, tied=ties, **kw)
    assert whole.feasible and tied.feasible
    return whole, tied


def test_a_tied_plan_takes_its_representatives_decisions():
    problem, colours = _stack(10)
    ties = candidate_ties(problem, colours, tuning.REPEAT_GROUPS)
    floor = solve_ilp(problem, budget_bytes=None, objective=PEAK)
    default = evaluate(problem, set(range(problem.n_candidates)), set())[0]
    sol = solve_ilp(problem, budget_bytes=(floor.predicted_peak_bytes + default) // 2, objective=TIME, tied=ties)
    for i, r in ties.items():
        assert (problem.names[i] in sol.recompute) == (problem.names[r] in sol.recompute)
        assert (problem.names[i] in sol.keep) == (problem.names[r] in sol.keep)


@pytest.mark.parametrize("share", [0.2, 0.4, 0.6, 0.8])
def test_tied_plan_within_2_percent_of_the_whole_graph_plan(share):
    """The reference: on a stack small enough for both, the tied plan's predicted peak and added time
    are within 2% of the whole-graph plan's (or within the whole-graph solve's own stopping gap,
    1% of the recompute time, when that is wider)."""
    problem, colours = _stack(16)
    ties = candidate_ties(problem, colours, tuning.REPEAT_GROUPS)
    assert len(ties) > problem.n_candidates // 2
    floor = solve_ilp(problem, budget_bytes=None, objective=PEAK).predicted_peak_bytes
    default = evaluate(problem, set(range(problem.n_candidates)), set())[0]
    budget = int(floor + share * (default - floor))
    whole, tied = _whole_and_tied(problem, ties, budget_bytes=budget, objective=TIME)
    assert tied.predicted_peak_bytes <= budget
    assert tied.predicted_peak_bytes == pytest.approx(whole.predicted_peak_bytes, rel=0.02)
    gap = 0.01 * sum(problem.recompute_seconds)
    assert abs(tied.added_seconds - whole.added_seconds) <= max(0.02 * whole.added_seconds, gap)


def test_tied_floor_within_2_percent_of_the_whole_graph_floor():
    problem, colours = _stack(12)
    whole, tied = _whole_and_tied(problem, candidate_ties(problem, colours, tuning.REPEAT_GROUPS),
                                  budget_bytes=None, objective=PEAK)
    assert tied.predicted_peak_bytes == pytest.approx(whole.predicted_peak_bytes, rel=0.02)


def _fake_timeline(peak):
    return Timeline(steps=("s",), sides=("forward",), live_bytes=(peak,), held_bytes=0, backward_start=1, intervals=())


@pytest.mark.parametrize("threshold, expect_tied", [(1, True), (10**9, False), (None, False)])
def test_search_ties_only_above_the_size_threshold(monkeypatch, threshold, expect_tied):
    problem, colours = _stack(8)
    monkeypatch.setattr(tuning, "REPEAT_MIN_CANDIDATES", threshold)
    seen = []

    def solve(problem, **kw):
        seen.append("tied" in kw)
        return solve_ilp(problem, **kw)

    default_peak = evaluate(problem, set(range(problem.n_candidates)), set())[0]
    inputs = SearchInputs(problem=problem, default=Verified(solution=None, timeline=_fake_timeline(default_peak),
                                                            source="default"),
                          default_model_peak_bytes=default_peak, default_saved_bytes=default_peak,
                          budget_bytes=default_peak * 3 // 4, colours=colours)
    result = search(inputs, verify=lambda sol: Verified(solution=sol, timeline=_fake_timeline(sol.predicted_peak_bytes),
                                                         source="ilp"), solve=solve)
    assert result.budget_met and seen and all(s == expect_tied for s in seen)
    assert search_mod.decomposes(problem) == expect_tied


def _blocks(x, *ws):
    for w in ws[:-1]:
        x = x + torch.relu(x @ w)
    return (x @ ws[-1]).sum()


def test_colours_match_the_same_op_in_repeated_blocks_and_set_the_ends_apart():
    ws = [torch.randn(8, 8) for _ in range(8)] + [torch.randn(8, 3)]
    gm = make_fx(_blocks)(torch.randn(4, 8), *ws)
    colours = structural_colours(gm.graph, rounds=2)
    mms = [n.name for n in gm.graph.nodes if n.target == torch.ops.aten.mm.default]
    relus = [n.name for n in gm.graph.nodes if n.target == torch.ops.aten.relu.default]
    assert len(mms) == 9 and len(relus) == 8
    inner = relus[2:-2]  # two rounds from either end of the stack
    assert len({colours[r] for r in inner}) == 1
    assert colours[relus[0]] != colours[relus[3]] and colours[relus[-1]] != colours[relus[3]]
    assert colours[mms[3]] != colours[relus[3]]
    assert colours[mms[-1]] != colours[mms[3]]  # the head: another shape
