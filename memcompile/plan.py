"""Plan: what the partitioner decided for one compiled graph, and what it predicts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import MemConfig
from memcompile.passes.planner.solution import PlanSolution
from memcompile.passes.simulate import Timeline


@dataclass(frozen=True, slots=True, kw_only=True)
class TensorDecision:
    name: str
    shape: tuple[int, ...]
    dtype: str
    bytes: int
    mode: str
    """"keep" (saved for the backward), "recompute" (rebuilt in the backward), "quantize" or "fewbit"
    (stored packed), "offload" (copied to host memory and prefetched) or "inplace" (not saved: its
    derivative reads the activation's output)."""
    added_seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    config: MemConfig
    graph_index: int
    budget_bytes: int | None
    """The byte budget the plan was held to (a fraction budget resolved to bytes), None without a budget."""
    baseline: Timeline
    """Simulated timeline of Inductor's default partition."""
    planned: Timeline
    """Simulated timeline of the partition handed to the compiler."""
    decisions: tuple[TensorDecision, ...]
    solution: PlanSolution | None
    min_peak_bytes: int | None
    """Smallest peak a plan reaches: simulated when that plan was built, else the planner model's figure."""
    planning_seconds: float
    source: str
    """"default" (Inductor's partition), "ilp", "ilp+local" (an ILP plan the local moves improved,
    planner/local.py), "all-recompute+local" (at the floor: the plan that recomputes all it can, improved by
    the same moves; "all-recompute" where none lowered it), "greedy", "torch" (torch's own partition at the same fraction, where no plan of
    memcompile's ran lower: planner/search.py, ``SearchInputs.reference``) or "fallback" (an error; see notes)."""
    notes: tuple[str, ...] = ()
    forward_code: str = ""
    backward_code: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def baseline_peak_bytes(self) -> int:
        return self.baseline.peak_bytes

    @property
    def predicted_peak_bytes(self) -> int:
        return self.planned.peak_bytes
