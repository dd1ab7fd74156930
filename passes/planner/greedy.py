"""A greedy planner with the ILP's signature: the fallback when CBC finds nothing in time.

Start from keeping every value the backward reads; then recompute storages (or replace them by
a mode option: quantize, few-bit, inplace, offload) in order of bytes freed per added second until the
model's peak meets the budget (or, for the "peak" objective, keep the prefix of that order with
the lowest peak). A move that would leave a plan invalid is skipped.
"""

from __future__ import annotations

import time

from .problem import PlanProblem, evaluate, is_valid, option_names
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
    for o, opt in enumerate(problem.options):
        freed = (problem.storage_bytes[opt.storage] if opt.storage >= 0 else 0) - opt.packed_bytes
        if freed > 0:
            moves.append((freed / (opt.seconds + 1e-9), "o", o))
    moves.sort(key=lambda m: -m[0])
    options: set[int] = set()
    current_peak = evaluate(problem, keep, recompute)[0]
    best = (current_peak, set(keep), set(recompute), set())
    for _, kind, i in moves:
        met = budget_bytes is not None and current_peak <= budget_bytes
        if (objective == TIME and met) or time.perf_counter() - start > time_limit_seconds:
            break
        if kind == "r":
            trial_keep, trial_rec, trial_options = set(keep) - {i}, set(recompute) | {i}, set(options)
            _close(problem, trial_keep, trial_rec)
        else:
            replaced = _replaced(problem, i)
            trial_keep, trial_rec, trial_options = keep - replaced, recompute - replaced, options | {i}
            required = problem.options[i].requires_kept
            if required >= 0 and all(problem.storage_of[j] != required for j in trial_keep):
                owner = problem.storage_owner[required]
                trial_keep.add(owner)
                trial_rec.discard(owner)
        if not is_valid(problem, trial_keep, trial_rec, trial_options):
            continue
        keep, recompute, options = trial_keep, trial_rec, trial_options
        current_peak = evaluate(problem, keep, recompute, options)[0]
        if current_peak < best[0]:
            best = (current_peak, set(keep), set(recompute), set(options))
    if objective == PEAK or budget_bytes is None or current_peak > budget_bytes:
        current_peak, keep, recompute, options = best
    peak = current_peak
    _, seconds = evaluate(problem, keep, recompute, options)
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
        **option_names(problem, options),
    )


def _replaced(problem: PlanProblem, o: int) -> set[int]:
    """Candidates an option takes over from keep/recompute: the storage's aliases (whole-storage options) or the value."""
    opt = problem.options[o]
    if opt.whole_storage:
        return {i for i in range(problem.n_candidates) if problem.storage_of[i] == opt.storage}
    return {opt.candidate}

