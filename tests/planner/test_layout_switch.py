"""A recomputed convolution turns the whole backward channels-last (Inductor decides the layout per graph),
which changes every convolution backward's oneDNN scratch: the problem's switch rows, the ILP's binary that
is on exactly when some convolution is recomputed, the exact account and ``evaluate`` agreeing on it, and
the scratch measured in the layout Inductor gives each graph."""

import pytest
import torch
from memcompile.passes.candidates import Candidate, CandidateSet
from memcompile.passes.planner import chains
from memcompile.passes.planner.ilp import solve_ilp
from memcompile.passes.planner.problem import build_problem, evaluate
from memcompile.passes.planner.solution import PEAK, TIME

from _planner_helpers import brute_force, decision, valid_plans

MB = 2**20
N = 4  # a0 (input) -> a1 (the convolution) -> a2 -> a3


def _problem(switch: tuple[int, ...]):
    cands = tuple(
        Candidate(name=f"a{i}", root=f"a{i}", nbytes=MB, recompute_seconds=1e-3, can_save=True,
                  can_recompute=i > 0, recompute_ban=None if i else "input", needed=True,
                  inputs=(f"a{i-1}",) if i else (), fw_step=i, fw_keep_from=i + 1, bw_first=N - 1 - i,
                  bw_last=N - 1 - i)
        for i in range(N)
    )
    return build_problem(CandidateSet(
        candidates=cands, fw_steps=tuple(c.name for c in cands), bw_steps=tuple(f"g{i}" for i in range(N)),
        fw_base_bytes=(MB,) * N, bw_base_bytes=(MB,) * N, switch_bytes=switch, switch_candidates=("a1",)))


def test_each_switch_step_gets_its_own_row_and_the_others_none():
    problem = _problem((0, 3 * MB, 0, -MB // 2))
    rows = {c.step: c.switch_bytes for c in problem.constraints if c.side == "backward" and c.switch_bytes}
    assert rows == {1: 3 * MB, 3: -MB // 2}
    assert problem.switch_candidates == (1,)
    assert problem.constraints[problem.bw_row_of_step[1]].switch_bytes == 3 * MB


@pytest.mark.parametrize("switch", [(0, 3 * MB, 0, 0), (0, -MB // 2, 0, -MB // 2)])
def test_evaluate_and_the_exact_account_count_the_switch_only_when_the_convolution_is_recomputed(switch):
    problem = _problem(switch)
    plain = _problem((0, 0, 0, 0))
    everything = set(range(N))
    for rec in (set(), {1}, {2}, {1, 2}):
        keep = everything - rec
        switched = 1 in rec
        expected = tuple(b + (s if switched else 0) for b, s in zip(chains.live_bytes(plain, keep, rec).bw_live, switch))
        assert chains.live_bytes(problem, keep, rec).bw_live == expected
        assert problem.switched(rec) == switched
        assert evaluate(problem, keep, rec)[0] >= max(expected)


@pytest.mark.parametrize("switch", [(0, 3 * MB, 0, 0), (0, -MB // 2, 0, -MB // 2), (0, 2 * MB, 0, -MB)])
@pytest.mark.parametrize("objective", [PEAK, TIME])
def test_the_ilp_prices_the_switch_as_the_brute_force_optimum_does(switch, objective):
    problem = _problem(switch)
    if objective == PEAK:
        sol = solve_ilp(problem, budget_bytes=None, objective=PEAK, time_limit_seconds=10)
        best = min(evaluate(problem, keep, rec)[0] for keep, rec in valid_plans(problem))
        assert sol.feasible and sol.predicted_peak_bytes == best
    else:
        budget = 4 * MB
        expected = brute_force(problem, budget)
        sol = solve_ilp(problem, budget_bytes=budget, objective=TIME, time_limit_seconds=10)
        assert sol.feasible == (expected is not None)
        if sol.feasible:
            keep, rec, options = decision(problem, sol)
            assert evaluate(problem, keep, rec, options)[0] == sol.predicted_peak_bytes <= budget
            assert evaluate(problem, keep, rec, options)[1] == pytest.approx(expected[0], rel=0.011)


def test_a_saving_switch_is_taken_only_with_a_recomputed_convolution():
    """Negative switch bytes lower the rows only through the binary, and the binary only through the
    convolution's recompute: the solver cannot take the saving for free."""
    problem = _problem((0, -MB // 2, 0, -MB // 2))
    sol = solve_ilp(problem, budget_bytes=None, objective=PEAK, time_limit_seconds=10)
    keep, rec, _ = decision(problem, sol)
    assert evaluate(problem, keep, rec)[0] == sol.predicted_peak_bytes
    assert (1 in rec) == problem.switched(rec)


mkldnn = pytest.mark.skipif(not (torch.backends.mkldnn.enabled and torch.backends.mkldnn.is_available()),
                            reason="Inductor optimizes a CPU graph's layout only with oneDNN")


@mkldnn
def test_a_depthwise_convolutions_backward_holds_more_scratch_channels_last_and_the_switch_says_so():
    """convnext's last stage, measured: oneDNN's depthwise backward on channels-last operands holds
    megabytes that the contiguous ones do not; ``layout_switch_bytes`` reports the difference for a
    backward that recomputes no convolution, and nothing for one that does (already channels-last)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from memcompile.passes.costs import layout_optimized, layout_switch_bytes, scratch_bytes

    c = 128
    w = torch.randn(c, 1, 7, 7)

    def fw(x):
        return torch.ops.aten.convolution.default(x, w, None, [1, 1], [3, 3], [1, 1], False, [0, 0], c)

    def bw(g, x):
        return torch.ops.aten.convolution_backward.default(g, x, w, [c], [1, 1], [3, 3], [1, 1], False, [0, 0], c,
                                                           [True, True, True])

    def bw_recomputing(g, x):
        y = fw(x)
        return bw(g + y, x)

    x = torch.randn(8, c, 4, 4)
    fw_gm, bw_gm, bw_rec = make_fx(fw)(x), make_fx(bw)(x, x), make_fx(bw_recomputing)(x, x)
    assert layout_optimized(fw_gm) and not layout_optimized(bw_gm) and layout_optimized(bw_rec)
    (name,) = [n.name for n in bw_gm.graph.nodes if n.target is torch.ops.aten.convolution_backward.default]
    contiguous = scratch_bytes(bw_gm, model="inductor").get(name, 0)
    switched = layout_switch_bytes(fw_gm, bw_gm)
    assert switched[name] > 1_000_000 > contiguous  # 6.4 MB against 0.1 MB on this machine's oneDNN
    assert layout_switch_bytes(fw_gm, bw_rec) == {}
