"""The inplace mode in the planner on synthetic problems (no torch.compile): the option's model (the
activation's output kept, its lifetime extended to the derivative), ILP vs brute force, no added
time, exclusivity with the other modes, greedy validity."""

import dataclasses

import pytest

from _planner_helpers import assert_ilp_matches_brute_force, brute_force, decision
from memcompile.passes.candidates import Candidate, CandidateSet
from memcompile.passes.planner.greedy import solve_greedy
from memcompile.passes.planner.ilp import solve_ilp
from memcompile.passes.planner.problem import (
    INPLACE,
    QUANTIZE,
    build_problem,
    evaluate,
    is_valid,
)
from memcompile.passes.planner.solution import PEAK, TIME

MB = 2**20


def mlp(n: int, *, nbytes=4 * MB, inplace=True, quantize=False, recompute=True, gap=0, output_read=True) -> CandidateSet:
    """n layers x_i = linear(y_{i-1}), y_i = act(x_i). The backward runs the layers in reverse: the
    weight gradient of layer i+1 reads y_i (unless not ``output_read``), then ``gap`` other steps,
    then act's derivative reads x_i (which may read y_i instead: inplace)."""
    cands, bw_steps = [], []
    per_layer = 2 + gap
    for i in range(n):
        bw_y = (n - 1 - i) * per_layer
        bw_x = bw_y + 1 + gap
        cands.append(Candidate(
            name=f"x{i}", root=f"x{i}", nbytes=nbytes, recompute_seconds=1e-3,
            can_save=True, can_recompute=recompute, recompute_ban=None if recompute else "recompute not enabled",
            needed=True, inputs=(f"y{i-1}",) if i else (), fw_step=2 * i, fw_keep_from=2 * i + 2,
            bw_first=bw_x, bw_last=bw_x, inplace_output=f"y{i}" if inplace else None,
            quantize_bytes=nbytes // 4 if quantize else 0, quantize_seconds=2e-4,
        ))
        cands.append(Candidate(
            name=f"y{i}", root=f"y{i}", nbytes=nbytes, recompute_seconds=1e-5 if recompute else 0.0,
            can_save=True, can_recompute=recompute, recompute_ban=None if recompute else "recompute not enabled",
            needed=output_read, inputs=(f"x{i}",), fw_step=2 * i + 1, fw_keep_from=2 * i + 3,
            bw_first=bw_y if output_read else None, bw_last=bw_y if output_read else None,
        ))
    bw_steps = tuple(f"g{t}" for t in range(n * per_layer))
    return CandidateSet(
        candidates=tuple(cands), fw_steps=tuple(c.name for c in cands), bw_steps=bw_steps,
        fw_base_bytes=tuple(nbytes for _ in cands), bw_base_bytes=tuple(nbytes for _ in bw_steps),
    )


def test_option_per_activation_input_keeps_the_output_and_extends_it_to_the_derivative():
    problem = build_problem(mlp(3, gap=2))
    options = [o for o in problem.options if o.mode == INPLACE]
    assert sorted(problem.names[o.candidate] for o in options) == ["x0", "x1", "x2"]
    for o in options:
        x = problem.names[o.candidate]
        y = problem.names.index("y" + x[1:])
        assert o.requires_kept == problem.storage_of[y] and o.serves == (o.candidate,)
        assert o.packed_bytes == 0 and o.seconds == 0.0
        # y's last read is the weight gradient; the derivative reads it 3 steps later
        assert o.expanded_bytes == 4 * MB and o.bw_last - o.bw_first == 2


def test_no_extension_when_the_output_outlives_the_derivative():
    cset = mlp(2)
    # y0 is also read after x0's derivative (say by a later weight gradient): nothing to extend
    cands = tuple(dataclasses.replace(c, bw_last=c.bw_last + 3) if c.name == "y0" else c for c in cset.candidates)
    problem = build_problem(dataclasses.replace(cset, candidates=cands, bw_base_bytes=cset.bw_base_bytes + (4 * MB,) * 3,
                                                bw_steps=cset.bw_steps + ("h0", "h1", "h2")))
    (x0,) = [o for o in problem.options if problem.names[o.candidate] == "x0"]
    assert x0.expanded_bytes == 0


def test_no_option_when_the_output_cannot_be_kept():
    cset = mlp(2)
    cands = tuple(dataclasses.replace(c, can_save=False) if c.name == "y1" else c for c in cset.candidates)
    problem = build_problem(dataclasses.replace(cset, candidates=cands))
    assert [problem.names[o.candidate] for o in problem.options] == ["x0"]


def test_the_output_must_be_kept():
    problem = build_problem(mlp(2))
    x0, y0, x1, y1 = (problem.names.index(n) for n in ("x0", "y0", "x1", "y1"))
    o = next(o for o, opt in enumerate(problem.options) if opt.candidate == x0)
    o1 = next(o for o, opt in enumerate(problem.options) if opt.candidate == x1)
    assert is_valid(problem, {y0, x1, y1}, set(), {o})
    assert not is_valid(problem, {x1, y1}, {y0}, {o})  # y0 recomputed from x0, which nobody keeps
    assert not is_valid(problem, {x0, y0, x1, y1}, set(), {o})  # x0 kept and served by the option: two modes
    assert is_valid(problem, {y0, y1}, set(), {o, o1})


@pytest.mark.parametrize("budget_mb", [24, 20, 16])
def test_output_nothing_else_reads_is_kept_for_the_derivative(budget_mb):
    """y feeds ops whose backward does not read it: inplace must keep it from the forward to the derivative."""
    problem = build_problem(mlp(2, output_read=False))
    # y1 is read by nothing in the backward: kept, it lives from the backward's start to x1's derivative
    (o1,) = [o for o in problem.options if problem.names[o.candidate] == "x1"]
    assert o1.expanded_bytes == 4 * MB and (o1.bw_first, o1.bw_last) == (0, 1)
    expected = brute_force(problem, budget_mb * MB)
    sol = solve_ilp(problem, budget_bytes=budget_mb * MB, objective=TIME, time_limit_seconds=10)
    assert sol.feasible == (expected is not None)
    if sol.feasible:
        keep, rec, options = decision(problem, sol)
        assert is_valid(problem, keep, rec, options)
        assert {f"y{problem.names[problem.options[o].candidate][1:]}" for o in options} <= sol.keep
        assert sol.added_seconds == pytest.approx(expected[0], rel=0.011, abs=1e-12)


def test_extension_is_charged_in_the_model():
    """With inplace on x0, y0 lives from its weight gradient to x0's derivative: the rows in between
    count y0 once more than keeping x0 would (x0 and y0 are the same size)."""
    problem = build_problem(mlp(1, gap=2))
    x0, y0 = problem.names.index("x0"), problem.names.index("y0")
    (o,) = range(len(problem.options))
    keep_both, _ = evaluate(problem, {x0, y0}, set())
    with_inplace, seconds = evaluate(problem, {y0}, set(), {o})
    # backward: base 4 MB; y0 kept to step 0, x0 to step 3; inplace: y0 to step 3, no x0
    assert seconds == 0.0
    assert with_inplace == keep_both - 4 * MB
    rows = [c for c in problem.constraints if c.side == "backward" and o in c.option_expanded]
    assert rows and all(c.step >= 1 for c in rows)


@pytest.mark.parametrize("budget_mb", [40, 32, 28, 24, 20, 16])
def test_ilp_matches_brute_force(budget_mb):
    assert_ilp_matches_brute_force(build_problem(mlp(3, gap=1)), budget_mb * MB)


def test_inplace_lowers_the_peak_with_no_added_time():
    with_inplace = build_problem(mlp(4, recompute=False))
    without = build_problem(mlp(4, recompute=False, inplace=False))
    low = solve_ilp(with_inplace, budget_bytes=None, objective=PEAK, time_limit_seconds=10)
    plain = solve_ilp(without, budget_bytes=None, objective=PEAK, time_limit_seconds=10)
    assert low.predicted_peak_bytes < plain.predicted_peak_bytes
    assert low.added_seconds == 0.0 and not low.recompute
    assert low.inplace == {"x0", "x1", "x2", "x3"}
    assert {"y0", "y1", "y2", "y3"} <= low.keep


def test_inplace_replaces_recompute_where_it_pays():
    """A budget keep-all misses: recompute alone pays for it, inplace meets it for free."""
    budget = 30 * MB
    assert evaluate(build_problem(mlp(4)), set(range(8)), set())[0] > budget
    plain = solve_ilp(build_problem(mlp(4, inplace=False)), budget_bytes=budget, objective=TIME, time_limit_seconds=10)
    mixed = solve_ilp(build_problem(mlp(4)), budget_bytes=budget, objective=TIME, time_limit_seconds=10)
    assert plain.feasible and plain.added_seconds > 0
    assert mixed.feasible and mixed.added_seconds == 0.0 and mixed.inplace
    assert mixed.predicted_peak_bytes <= budget


def test_no_inplace_without_memory_pressure_changes_nothing():
    sol = solve_ilp(build_problem(mlp(3)), budget_bytes=None, objective=TIME, time_limit_seconds=10)
    assert sol.feasible and sol.added_seconds == 0.0 and not sol.recompute


@pytest.mark.parametrize("budget_mb", [40, 30, 24, 20])
def test_every_needed_value_takes_exactly_one_mode(budget_mb):
    """All modes in one ILP: keep, recompute, quantize (storage-wide) and inplace on the same values."""
    problem = build_problem(mlp(3, quantize=True))
    assert {o.mode for o in problem.options} == {INPLACE, QUANTIZE}
    sol = solve_ilp(problem, budget_bytes=budget_mb * MB, objective=TIME, time_limit_seconds=10)
    assert sol.feasible
    keep, rec, options = decision(problem, sol)
    assert is_valid(problem, keep, rec, options)
    for i in range(problem.n_candidates):
        modes = [i in keep, i in rec, *(i in problem.options[o].serves for o in options)]
        assert sum(modes) == 1, (problem.names[i], sol)
    assert not (sol.inplace & sol.quantize)


def test_inplace_and_quantize_of_the_same_value_conflict():
    problem = build_problem(mlp(1, quantize=True))
    y0 = problem.names.index("y0")
    q = next(o for o, opt in enumerate(problem.options) if opt.mode == QUANTIZE and problem.names[opt.candidate] == "x0")
    i = next(o for o, opt in enumerate(problem.options) if opt.mode == INPLACE)
    assert is_valid(problem, {y0}, set(), {i}) and is_valid(problem, {y0}, set(), {q})
    assert not is_valid(problem, {y0}, set(), {i, q})


@pytest.mark.parametrize("budget_mb", [32, 28, 20])
def test_greedy_with_inplace_gives_valid_plans(budget_mb):
    problem = build_problem(mlp(4))
    sol = solve_greedy(problem, budget_bytes=budget_mb * MB, objective=TIME)
    keep, rec, options = decision(problem, sol)
    assert is_valid(problem, keep, rec, options)
    peak, seconds = evaluate(problem, keep, rec, options)
    assert peak == sol.predicted_peak_bytes and seconds == pytest.approx(sol.added_seconds)
    assert sol.inplace  # the free move comes first
    ilp = solve_ilp(problem, budget_bytes=budget_mb * MB, objective=TIME, time_limit_seconds=10, warm_start=True)
    assert ilp.feasible and ilp.added_seconds <= sol.added_seconds * 1.01 + 1e-12
