"""A greedy planner with the ILP's signature: the fallback when CBC finds nothing in time.

Start from keeping every value the backward reads; then recompute storages (or, with the
lossy modes, replace them by their lossy option) in order of bytes freed per added second
until the model's peak meets the budget (or, for the "peak" objective, keep the prefix of
that order with the lowest peak). A move that would leave a plan invalid is skipped.
"""

from __future__ import annotations

import time

from .problem import QUANTIZE, PlanProblem, evaluate, is_valid, lossy_names
from .solution import PEAK, TIME, PlanSolution


def _close(problem: PlanProblem, keep: set[int], recompute: set[int]) -> None:
    """Make every recomputed value's inputs available, keeping them where allowed."""
    stack = list(recompute)
    while stack:
        i = stack.pop()
        for j in problem.inputs[i]:
            if j in keep or j in recompute:
                continue
            if problem.can_save[j]:
                keep.add(j)
            else:
                recompute.add(j)
                stack.append(j)


def solve_greedy(
    problem: PlanProblem,
    *,
    budget_bytes: int | None,
    objective: str = TIME,
    time_limit_seconds: float = 20.0,
) -> PlanSolution:
    start = time.perf_counter()
    keep: set[int] = set()
    recompute: set[int] = set()
    for i in range(problem.n_candidates):
        if problem.needed[i]:
            (keep if problem.can_save[i] else recompute).add(i)
    _close(problem, keep, recompute)

    moves = [
        (problem.storage_bytes[problem.storage_of[i]] / (problem.recompute_seconds[i] + 1e-9), "r", i)
        for i in keep
        if problem.can_recompute[i] and problem.storage_of[i] >= 0 and problem.storage_owner[problem.storage_of[i]] == i
    ]
    for o, opt in enumerate(problem.lossy):
        freed = (problem.storage_bytes[opt.storage] if opt.storage >= 0 else 0) - opt.packed_bytes
        if freed > 0:
            moves.append((freed / (opt.seconds + 1e-9), "l", o))
    moves.sort(key=lambda m: -m[0])
    lossy: set[int] = set()
    current_peak = evaluate(problem, keep, recompute)[0]
    best = (current_peak, set(keep), set(recompute), set())
    for _, kind, i in moves:
        met = budget_bytes is not None and current_peak <= budget_bytes
        if (objective == TIME and met) or time.perf_counter() - start > time_limit_seconds:
            break
        if kind == "r":
            trial_keep, trial_rec, trial_lossy = set(keep) - {i}, set(recompute) | {i}, set(lossy)
            _close(problem, trial_keep, trial_rec)
        else:
            replaced = _replaced(problem, i)
            trial_keep, trial_rec, trial_lossy = keep - replaced, recompute - replaced, lossy | {i}
        if not is_valid(problem, trial_keep, trial_rec, trial_lossy):
            continue
        keep, recompute, lossy = trial_keep, trial_rec, trial_lossy
        current_peak = evaluate(problem, keep, recompute, lossy)[0]
        if current_peak < best[0]:
            best = (current_peak, set(keep), set(recompute), set(lossy))
    if objective == PEAK or budget_bytes is None or current_peak > budget_bytes:
        current_peak, keep, recompute, lossy = best
    peak = current_peak
    _, seconds = evaluate(problem, keep, recompute, lossy)
    ok = budget_bytes is None or objective == PEAK or peak <= budget_bytes
    return PlanSolution(
        status="Greedy" if ok else "Infeasible",
        solver="greedy",
        objective=seconds if objective == TIME else float(peak),
        keep=frozenset(problem.names[i] for i in keep),
        recompute=frozenset(problem.names[i] for i in recompute),
        predicted_peak_bytes=peak,
        added_seconds=seconds,
        solve_seconds=time.perf_counter() - start,
        n_vars=0,
        n_constraints=len(problem.constraints),
        **lossy_names(problem, lossy),
    )


def _replaced(problem: PlanProblem, o: int) -> set[int]:
    """Candidates a lossy option takes over from keep/recompute: the storage's aliases (quantize) or the value."""
    opt = problem.lossy[o]
    if opt.mode == QUANTIZE:
        return {i for i in range(problem.n_candidates) if problem.storage_of[i] == opt.storage}
    return {opt.candidate}

