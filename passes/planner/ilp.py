"""The keep/recompute ILP (PuLP + CBC) over a PlanProblem.

Variables: keep[i], recompute[i] per candidate, kept[s] per storage, a continuous peak P.
- a value the backward reads is kept or recomputed: keep[i] + recompute[i] >= 1;
- a recomputed value's inputs are kept or recomputed: recompute[i] <= keep[j] + recompute[j];
- keeping any alias keeps the storage: kept[s] >= keep[i];
- each memory constraint: base + sum(bytes * kept) + sum(bytes * recompute[owner]) <= P.
Objective "time": min added seconds + a tie-break on P (so equal-time plans take the lower
peak), with P <= budget. Objective "peak": min P + a tie-break on seconds.
"""

from __future__ import annotations

import time

import pulp

from .problem import PlanProblem
from .solution import PEAK, TIME, PlanSolution

# Bytes enter the model in MiB so CBC's tolerances see numbers of a sane size.
_MIB = float(2**20)
# Tie-breaks: 1 MiB of peak is worth 1 ns of time (time objective) and 1 s of time is worth
# 1e-3 MiB (peak objective): small enough never to override the main objective in practice.
_PEAK_TIE_SECONDS_PER_MIB = 1e-9
_TIME_TIE_MIB_PER_SECOND = 1e-3


def solve_ilp(
    problem: PlanProblem,
    *,
    budget_bytes: int | None,
    objective: str = TIME,
    time_limit_seconds: float = 20.0,
) -> PlanSolution:
    start = time.perf_counter()
    n = problem.n_candidates
    model = pulp.LpProblem("memcompile", pulp.LpMinimize)
    keep = {i: pulp.LpVariable(f"k{i}", cat="Binary") for i in range(n) if problem.can_save[i]}
    rec = {i: pulp.LpVariable(f"r{i}", cat="Binary") for i in range(n) if problem.can_recompute[i]}
    kept = {s: pulp.LpVariable(f"s{s}", cat="Binary") for s in range(len(problem.storage_bytes))}
    peak = pulp.LpVariable("peak_mib", lowBound=0)

    def available(j: int) -> list[tuple[pulp.LpVariable, float]]:
        terms = []
        if j in keep:
            terms.append((keep[j], 1.0))
        if j in rec:
            terms.append((rec[j], 1.0))
        return terms

    n_rows = 0
    for i in range(n):
        if problem.needed[i]:
            terms = available(i)
            if not terms:
                return _infeasible(problem, start, f"{problem.names[i]} is read by the backward but can be neither saved nor recomputed")
            model += pulp.LpAffineExpression(terms) >= 1, f"need{i}"
            n_rows += 1
        if i in rec:
            for j in problem.inputs[i]:
                model += pulp.LpAffineExpression(available(j) + [(rec[i], -1.0)]) >= 0, f"in{i}_{j}"
                n_rows += 1
        s = problem.storage_of[i]
        if i in keep and s >= 0:
            model += kept[s] - keep[i] >= 0, f"alias{i}"
            n_rows += 1
    for k, c in enumerate(problem.constraints):
        terms = [(kept[s], problem.storage_bytes[s] / _MIB) for s in c.kept]
        terms += [
            (rec[problem.storage_owner[s]], problem.storage_bytes[s] / _MIB)
            for s in c.recomputed
            if problem.storage_owner[s] in rec
        ]
        terms.append((peak, -1.0))
        model += pulp.LpAffineExpression(terms) <= -c.base_bytes / _MIB, f"mem{k}"
        n_rows += 1

    seconds = pulp.LpAffineExpression([(rec[i], problem.recompute_seconds[i]) for i in rec])
    if objective == TIME:
        if budget_bytes is not None:
            model += peak <= budget_bytes / _MIB, "budget"
            n_rows += 1
        model += seconds + _PEAK_TIE_SECONDS_PER_MIB * peak
    elif objective == PEAK:
        model += peak + _TIME_TIE_MIB_PER_SECOND * seconds
    else:
        raise ValueError(f"objective: expected {TIME!r} or {PEAK!r}, got {objective!r}")

    # A 1% optimality gap: the cost model is not more accurate than that, and CBC proves the
    # last percent slowly.
    solver = pulp.PULP_CBC_CMD(msg=False, timeLimit=max(1, int(round(time_limit_seconds))), threads=1, gapRel=0.01)
    model.solve(solver)
    elapsed = time.perf_counter() - start
    status = pulp.LpStatus[model.status]
    sol_status = getattr(model, "sol_status", None)
    has_solution = sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible)
    time_limit_hit = sol_status == pulp.LpSolutionIntegerFeasible
    if not has_solution:
        return PlanSolution(
            status=status if status != "Optimal" else "Not Solved", solver="ilp", objective=float("nan"),
            keep=frozenset(), recompute=frozenset(), predicted_peak_bytes=0, added_seconds=0.0,
            solve_seconds=elapsed, n_vars=len(model.variables()), n_constraints=n_rows,
            time_limit_hit=elapsed >= time_limit_seconds,
        )
    keep_names = frozenset(problem.names[i] for i, v in keep.items() if (v.value() or 0) > 0.5)
    rec_names = frozenset(problem.names[i] for i, v in rec.items() if (v.value() or 0) > 0.5)
    added = sum(problem.recompute_seconds[i] for i, v in rec.items() if (v.value() or 0) > 0.5)
    return PlanSolution(
        status="Feasible" if time_limit_hit else "Optimal",
        solver="ilp",
        objective=float(pulp.value(model.objective) or 0.0),
        keep=keep_names,
        recompute=rec_names,
        predicted_peak_bytes=int(round((peak.value() or 0.0) * _MIB)),
        added_seconds=added,
        solve_seconds=elapsed,
        n_vars=len(model.variables()),
        n_constraints=n_rows,
        time_limit_hit=time_limit_hit,
    )


def _infeasible(problem: PlanProblem, start: float, why: str) -> PlanSolution:
    return PlanSolution(
        status=f"Infeasible: {why}", solver="ilp", objective=float("nan"), keep=frozenset(), recompute=frozenset(),
        predicted_peak_bytes=0, added_seconds=0.0, solve_seconds=time.perf_counter() - start,
        n_vars=0, n_constraints=0,
    )
