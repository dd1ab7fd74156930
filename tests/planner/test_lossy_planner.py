"""The lossy modes in the planner on synthetic problems (no torch.compile): ILP vs brute force,
never chosen without memory pressure, never slower than recompute alone, greedy validity."""

import dataclasses

import pytest

from _planner_helpers import assert_ilp_matches_brute_force, brute_force, decision
from memcompile.passes.candidates import Candidate, CandidateSet
from memcompile.passes.planner.greedy import solve_greedy
from memcompile.passes.planner.ilp import solve_ilp
from memcompile.passes.planner.problem import (
    FEWBIT,
    QUANTIZE,
    build_problem,
    evaluate,
    is_valid,
)
from memcompile.passes.planner.solution import PEAK, TIME

MB = 2**20


def chain(n: int, *, nbytes=8 * MB, seconds=1e-3, quantize=True, fewbit_at=(1, 3), lossy_seconds=2e-4) -> CandidateSet:
    """A chain a0 -> a1 -> ... read in reverse by the backward; each storage may be quantized (1/4 of
    its bytes) and some values stored as few-bit codes (1/16)."""
    cands = []
    for i in range(n):
        cands.append(
            Candidate(
                name=f"a{i}", root=f"a{i}", nbytes=nbytes, recompute_seconds=seconds * (i + 1),
                can_save=True, can_recompute=True, recompute_ban=None,
                needed=True, inputs=(f"a{i-1}",) if i else (), fw_step=i, fw_keep_from=i + 1,
                bw_first=n - 1 - i, bw_last=n - 1 - i,
                quantize_bytes=nbytes // 4 if quantize else 0, quantize_seconds=lossy_seconds,
                fewbit_bytes=nbytes // 16 if i in fewbit_at else 0, fewbit_seconds=lossy_seconds / 2,
            )
        )
    return CandidateSet(
        candidates=tuple(cands), fw_steps=tuple(c.name for c in cands), bw_steps=tuple(f"g{i}" for i in range(n)),
        fw_base_bytes=tuple(nbytes for _ in range(n)), bw_base_bytes=tuple(nbytes for _ in range(n)),
    )


def lossless(problem):
    """The same problem with the lossy options taken out (what modes=("keep", "recompute") plans)."""
    rows = tuple(dataclasses.replace(c, option_stored=(), option_expanded=()) for c in problem.constraints)
    return dataclasses.replace(problem, options=(), constraints=rows)


def test_options_are_built_per_storage_and_per_gelu_input():
    problem = build_problem(chain(5))
    modes = sorted((o.mode, problem.names[o.candidate]) for o in problem.options)
    assert modes == sorted([(QUANTIZE, f"a{i}") for i in range(5)] + [(FEWBIT, "a1"), (FEWBIT, "a3")])
    q = next(o for o in problem.options if o.mode == QUANTIZE)
    assert q.packed_bytes == 2 * MB and q.expanded_bytes == 8 * MB  # codes kept, full copy rebuilt in the backward
    f = next(o for o in problem.options if o.mode == FEWBIT)
    assert f.packed_bytes == MB // 2 and f.expanded_bytes == 0


@pytest.mark.parametrize("budget_mb", [48, 32, 24, 20, 17])
def test_ilp_matches_brute_force_with_lossy_options(budget_mb):
    assert_ilp_matches_brute_force(build_problem(chain(4, fewbit_at=(1,))), budget_mb * MB)


def test_no_lossy_mode_without_memory_pressure():
    problem = build_problem(chain(6))
    sol = solve_ilp(problem, budget_bytes=None, objective=TIME, time_limit_seconds=10)
    assert sol.feasible and not sol.quantize and not sol.fewbit and sol.added_seconds == 0


@pytest.mark.parametrize("budget_mb", [64, 48, 40, 32])
def test_lossy_plan_never_slower_than_recompute_alone(budget_mb):
    problem = build_problem(chain(6))
    lossy = solve_ilp(problem, budget_bytes=budget_mb * MB, objective=TIME, time_limit_seconds=10)
    plain = solve_ilp(lossless(problem), budget_bytes=budget_mb * MB, objective=TIME, time_limit_seconds=10)
    assert lossy.feasible
    if plain.feasible:
        assert lossy.added_seconds <= plain.added_seconds * 1.01 + 1e-12
    if plain.added_seconds > 0:  # memory pressure: a lossy option is cheaper than recomputing here
        assert lossy.quantize or lossy.fewbit
        assert lossy.added_seconds < plain.added_seconds


def test_lossy_modes_lower_the_smallest_peak():
    problem = build_problem(chain(6))
    with_lossy = solve_ilp(problem, budget_bytes=None, objective=PEAK, time_limit_seconds=10)
    without = solve_ilp(lossless(problem), budget_bytes=None, objective=PEAK, time_limit_seconds=10)
    assert with_lossy.predicted_peak_bytes < without.predicted_peak_bytes
    keep, rec, lossy = decision(problem, with_lossy)
    assert is_valid(problem, keep, rec, lossy)
    assert evaluate(problem, keep, rec, lossy)[0] == with_lossy.predicted_peak_bytes


def test_one_mode_per_storage():
    problem = build_problem(chain(6))
    sol = solve_ilp(problem, budget_bytes=None, objective=PEAK, time_limit_seconds=10)
    assert not (sol.quantize & sol.keep) and not (sol.quantize & sol.recompute)
    assert not (sol.fewbit & sol.keep) and not (sol.fewbit & sol.recompute) and not (sol.fewbit & sol.quantize)


def test_lossy_value_is_never_an_input_of_a_recompute():
    """a0 feeds a1; recomputing a1 needs a0 at full precision, so a0 may not be quantized then."""
    problem = build_problem(chain(2, fewbit_at=()))
    a0 = next(o for o, opt in enumerate(problem.options) if problem.names[opt.candidate] == "a0")
    assert not is_valid(problem, set(), {1}, {a0})
    assert is_valid(problem, {0}, {1}, set())


@pytest.mark.parametrize("budget_mb", [48, 32, 24])
def test_greedy_with_lossy_options_gives_valid_plans(budget_mb):
    problem = build_problem(chain(6))
    sol = solve_greedy(problem, budget_bytes=budget_mb * MB, objective=TIME)
    keep, rec, lossy = decision(problem, sol)
    assert is_valid(problem, keep, rec, lossy)
    peak, seconds = evaluate(problem, keep, rec, lossy)
    assert peak == sol.predicted_peak_bytes and seconds == pytest.approx(sol.added_seconds)
    if sol.feasible:
        assert peak <= budget_mb * MB
    ilp = solve_ilp(problem, budget_bytes=budget_mb * MB, objective=TIME, time_limit_seconds=10)
    assert ilp.added_seconds <= sol.added_seconds * 1.01 + 1e-12


def test_warm_start_accepts_a_lossy_greedy_plan():
    problem = build_problem(chain(6))
    sol = solve_ilp(problem, budget_bytes=24 * MB, objective=TIME, time_limit_seconds=10, warm_start=True)
    assert sol.feasible and sol.predicted_peak_bytes <= 24 * MB


@pytest.mark.parametrize("n", [6, 9])
def test_time_solve_started_from_the_floor_plan_is_as_good(n):
    """The partitioner hands the smallest-peak plan to the time solve at the floor as CBC's first
    incumbent: the result meets the same budget and is as fast, within CBC's 1% gap, as a cold solve."""
    problem = build_problem(chain(n))
    floor = solve_ilp(problem, budget_bytes=None, objective=PEAK, time_limit_seconds=10)
    assert floor.feasible
    cold = solve_ilp(problem, budget_bytes=floor.predicted_peak_bytes, objective=TIME, time_limit_seconds=10)
    warm = solve_ilp(problem, budget_bytes=floor.predicted_peak_bytes, objective=TIME, time_limit_seconds=10,
                     initial=floor)
    assert warm.feasible and cold.feasible
    assert warm.predicted_peak_bytes <= floor.predicted_peak_bytes
    assert is_valid(problem, *decision(problem, warm))
    assert warm.added_seconds <= min(cold.added_seconds, floor.added_seconds) * 1.01 + 1e-12


def test_a_start_plan_over_the_budget_is_ignored():
    problem = build_problem(chain(6))
    floor = solve_ilp(problem, budget_bytes=None, objective=PEAK, time_limit_seconds=10)
    loose = solve_ilp(problem, budget_bytes=None, objective=TIME, time_limit_seconds=10)  # keeps everything
    assert loose.predicted_peak_bytes > floor.predicted_peak_bytes
    sol = solve_ilp(problem, budget_bytes=floor.predicted_peak_bytes, objective=TIME, time_limit_seconds=10,
                    initial=loose)
    assert sol.feasible and sol.predicted_peak_bytes <= floor.predicted_peak_bytes


def fused_derivative(*, backward_only=True) -> CandidateSet:
    """x (8 MB, not recomputable: modes without "recompute", quantizable) feeds d (8 MB, a part of x's
    derivative that only the backward reads: free to move there, not quantizable); the forward
    holds 16 MB besides, the backward 4 MB."""
    x = Candidate(
        name="x", root="x", nbytes=8 * MB, recompute_seconds=1e-2, can_save=True, can_recompute=False,
        recompute_ban="recompute not enabled", needed=False, inputs=(), fw_step=0, fw_keep_from=1, bw_first=None, bw_last=None,
        quantize_bytes=2 * MB, quantize_seconds=2e-4,
    )
    d = Candidate(
        name="d", root="d", nbytes=8 * MB, recompute_seconds=0.0, can_save=True, can_recompute=True,
        recompute_ban=None, needed=True, inputs=("x",), fw_step=1, fw_keep_from=1, bw_first=1, bw_last=1,
        backward_only=backward_only,
    )
    return CandidateSet(
        candidates=(x, d), fw_steps=("x", "d"), bw_steps=("g0", "g1", "g2"),
        fw_base_bytes=(16 * MB, 16 * MB), bw_base_bytes=(4 * MB, 4 * MB, 4 * MB),
    )


def test_backward_only_value_is_recomputed_from_a_quantized_input():
    """GELU's decomposed derivative through Inductor: the part that reads x only may be rebuilt in the
    backward from x's dequantized copy, so x is stored as int8 codes and neither x nor d whole."""
    problem = build_problem(fused_derivative())
    (q,) = [o for o, opt in enumerate(problem.options) if opt.mode == QUANTIZE]
    assert (problem.options[q].bw_first, problem.options[q].bw_last) == (1, 1)  # d's read, not x's (it has none)
    assert is_valid(problem, set(), {1}, {q})
    sol = solve_ilp(problem, budget_bytes=None, objective=PEAK, time_limit_seconds=10)
    assert sol.quantize == {"x"} and sol.recompute == {"d"} and not sol.keep
    keep, rec, lossy = decision(problem, sol)
    # forward 16 + 2 (codes); backward 4 + 2 + 8 (dequantized x) + 8 (d): 22, against 24 keeping x or d
    assert evaluate(problem, keep, rec, lossy)[0] == sol.predicted_peak_bytes == 22 * MB
    for budget_mb in (24, 22, 21):
        expected = brute_force(problem, budget_mb * MB)
        got = solve_ilp(problem, budget_bytes=budget_mb * MB, objective=TIME, time_limit_seconds=10)
        if expected is None:
            assert budget_mb < 22 and not got.feasible
        else:
            assert got.added_seconds == pytest.approx(expected[0])


def test_a_value_the_forward_may_need_is_never_recomputed_from_a_quantized_input():
    problem = build_problem(fused_derivative(backward_only=False))
    options = [o for o, opt in enumerate(problem.options) if opt.mode == QUANTIZE]
    assert all(not is_valid(problem, set(), {1}, {o}) for o in options)
    sol = solve_ilp(problem, budget_bytes=None, objective=PEAK, time_limit_seconds=10)
    assert not sol.quantize and sol.predicted_peak_bytes == 24 * MB
