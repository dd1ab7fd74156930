"""What the planner tests share: reading a solution back as index sets, and the brute-force optimum
the ILP is checked against on small synthetic problems."""

import itertools

from memcompile.passes.planner.problem import evaluate, is_valid, option_indices


def decision(problem, sol):
    """(kept, recomputed, option) index sets of a PlanSolution on ``problem``."""
    return ({problem.names.index(n) for n in sol.keep}, {problem.names.index(n) for n in sol.recompute},
            option_indices(problem, sol))


def brute_force(problem, budget):
    """(seconds, peak) of the cheapest valid plan within ``budget`` (the lower peak among equally fast
    ones), or None: every candidate none/keep/recompute, every option on or off."""
    best = None
    for modes in itertools.product((0, 1, 2), repeat=problem.n_candidates):
        keep = {i for i, m in enumerate(modes) if m == 1}
        rec = {i for i, m in enumerate(modes) if m == 2}
        for chosen in itertools.product((0, 1), repeat=len(problem.options)):
            options = {o for o, on in enumerate(chosen) if on}
            if not is_valid(problem, keep, rec, options):
                continue
            peak, seconds = evaluate(problem, keep, rec, options)
            if peak <= budget and (best is None or (seconds, peak) < best):
                best = (seconds, peak)
    return best
