"""The result type every solver returns (ILP and greedy share it)."""

from __future__ import annotations

from dataclasses import dataclass

TIME, PEAK = "time", "peak"


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanSolution:
    status: str
    """PuLP's status string ("Optimal", "Infeasible", "Not Solved", ...) or "Greedy"."""
    solver: str
    objective: float
    keep: frozenset[str]
    recompute: frozenset[str]
    predicted_peak_bytes: int
    """Peak under the planner's memory model (the simulator's figure is in the Plan)."""
    added_seconds: float
    solve_seconds: float
    n_vars: int
    n_constraints: int
    time_limit_hit: bool = False
    """CBC stopped on ``time_limit_seconds`` with a plan it had not proven (which plan depends on the load)."""
    node_limit_hit: bool = False
    """CBC stopped on its node cap with a plan it had not proven (the same plan on every machine)."""
    nodes: int | None = None
    """Branch-and-bound nodes CBC enumerated (None: not reported)."""
    quantize: frozenset[str] = frozenset()
    """Storages (by owner name) stored as int8 codes and scales for the backward."""
    fewbit: frozenset[str] = frozenset()
    """GELU/SiLU inputs whose derivative is stored as a few-bit code."""
    inplace: frozenset[str] = frozenset()
    """Activation inputs not saved: their derivatives read the activation's output instead."""
    offload: frozenset[str] = frozenset()
    """Storages (by owner name) copied to host memory in the forward and prefetched for the backward."""

    @property
    def feasible(self) -> bool:
        return self.status in ("Optimal", "Feasible", "Greedy")
