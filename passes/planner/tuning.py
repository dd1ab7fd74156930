"""Every constant the budget search (search.py) uses, each with the reason it has that value.

No constant here may be chosen because it makes one model's benchmark pass (docs/planner.md);
where a figure was measured, the measurement is in docs/BENCHMARKS.md, not here.
"""

REPAIR_ROUNDS = 6
"""Verify-and-re-solve rounds before the search settles for the lowest simulated peak it has built:
each round asks for strictly less than the last and costs one extraction (the most expensive planning
step), so the cap bounds planning time at a few times one solve."""

SOLVER_GAP_TIME = 0.01
"""Added time, as a share of the forward's recompute time, a byte-budget plan may spend to lower its
peak: CBC stops at a 1% gap (ilp._GAP_REL), so this only takes back what the gap may have left."""

LOWER_PEAK_TIME = 0.08
"""The same allowance for a fraction budget (TO BE REPLACED: swept on llama-small)."""

FRACTION_SLACK = 0.02
"""Share of the default's simulated peak a fraction plan may exceed its target by (TO BE REPLACED)."""
