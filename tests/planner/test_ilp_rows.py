"""build_memory_rows: the ILP's memory constraints written once per problem and reused by later solves."""

import pytest
from memcompile.passes.candidates import Candidate, CandidateSet
from memcompile.passes.planner.ilp import build_memory_rows, solve_ilp
from memcompile.passes.planner.problem import build_problem
from memcompile.passes.planner.solution import PEAK, TIME

MB = 2**20


def _problem(n=12):
    cands = tuple(
        Candidate(name=f"a{i}", root=f"a{i}", nbytes=(1 + i % 3) * MB, recompute_seconds=1e-3 * (1 + i % 4),
                  can_save=True, can_recompute=i > 0, recompute_ban=None if i else "input", needed=True,
                  inputs=(f"a{i-1}",) if i else (), fw_step=i, fw_keep_from=i + 1, bw_first=n - 1 - i, bw_last=n - 1 - i)
        for i in range(n)
    )
    return build_problem(CandidateSet(candidates=cands, fw_steps=tuple(c.name for c in cands),
                                      bw_steps=tuple(f"g{i}" for i in range(n)), fw_base_bytes=(MB,) * n,
                                      bw_base_bytes=(MB,) * n))


def test_rows_cover_every_constraint_with_running_sums():
    problem = _problem()
    rows = build_memory_rows(problem)
    assert len(rows) == len(problem.constraints)
    assert not rows[0].incremental and any(r.incremental for r in rows)


@pytest.mark.parametrize("objective, budget", [(PEAK, None), (TIME, 14 * MB), (TIME, 18 * MB)])
def test_a_solve_with_the_rows_given_is_the_solve_without(objective, budget):
    problem = _problem()
    plain = solve_ilp(problem, budget_bytes=budget, objective=objective)
    reused = solve_ilp(problem, budget_bytes=budget, objective=objective, memory_rows=build_memory_rows(problem))
    assert plain.feasible and reused.feasible
    assert (reused.keep, reused.recompute, reused.predicted_peak_bytes) == (plain.keep, plain.recompute,
                                                                            plain.predicted_peak_bytes)
