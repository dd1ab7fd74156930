"""Typed errors: every message names what was wrong, what was expected and what to do."""

from __future__ import annotations


class MemcompileError(RuntimeError):
    """Base class of memcompile's own errors."""


class MemoryBudgetError(MemcompileError):
    """No plan meets the byte budget.

    ``min_peak_bytes`` is the predicted (simulated) peak of the plan ``memory_budget=0.0`` runs on that graph
    with the same modes: a byte budget at or above it is met.
    """

    def __init__(self, message: str, *, budget_bytes: int, min_peak_bytes: int) -> None:
        super().__init__(message)
        self.budget_bytes = budget_bytes
        self.min_peak_bytes = min_peak_bytes


class UnsupportedGraphError(MemcompileError):
    """The joint graph holds something the planner cannot reason about."""
