"""Repeated layers solved once: candidates that play the same part in copies of one layer share a decision.

The adapter colours the joint graph's nodes (passes/repeats.py: same op, shape, dtype and wiring within
a radius); candidates of one colour are the same value in different layers. The ILP then ties them
(``solve_ilp(tied=...)``): its memory constraints still cover every step of the whole graph, so each
layer's position (how much of the stack is live above it, its place in the backward) is honoured,
but the binary decisions no longer grow with depth, which is what made CBC's time grow faster than
the graph. A class is split into ``groups`` runs of consecutive members, each with its own decision,
so a budget between two uniform plans can be met by recomputing a value in some of the layers only
(as the whole-graph plan does). docs/planner.md, "Repeated layers".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .problem import PlanProblem


def tie_classes(colours: Sequence[int | None], groups: int) -> dict[int, int]:
    """Candidate -> its representative: the members of each colour (``None``: untied), in candidate
    order, cut into ``groups`` runs of nearly equal length; each run's first member represents it.
    A colour with fewer members than ``groups`` leaves every member its own decision."""
    if groups < 1:
        raise ValueError(f"groups: expected a positive number of runs per class, got {groups}")
    members: dict[int, list[int]] = {}
    for i, colour in enumerate(colours):
        if colour is not None:
            members.setdefault(colour, []).append(i)
    tied: dict[int, int] = {}
    for ms in members.values():
        m = len(ms)
        if m <= groups:
            continue
        for g in range(groups):
            run = ms[g * m // groups:(g + 1) * m // groups]
            for i in run[1:]:
                tied[i] = run[0]
    return tied


def candidate_ties(problem: PlanProblem, colours: Mapping[str, int], groups: int) -> dict[int, int]:
    """``tie_classes`` over ``problem``'s candidates, with only candidates alike in what the ILP sees
    (storage bytes, whether they can be saved or recomputed, whether the backward reads them) sharing a class."""
    keys: list[int | None] = []
    for i, name in enumerate(problem.names):
        colour = colours.get(name)
        if colour is None:
            keys.append(None)
            continue
        s = problem.storage_of[i]
        keys.append(hash((colour, problem.storage_bytes[s] if s >= 0 else -1, problem.can_save[i],
                          problem.can_recompute[i], problem.needed[i])))
    return tie_classes(keys, groups)
