"""Typed errors: every message names what was wrong, what was expected and what to do."""

from __future__ import annotations


class MemcompileError(RuntimeError):
    """Base class of memcompile's own errors."""


class MemoryBudgetError(MemcompileError):
    """No plan meets the byte budget.

    ``min_peak_bytes`` is the smallest predicted peak any plan of the enabled modes reaches.
    """

    def __init__(self, message: str, *, budget_bytes: int, min_peak_bytes: int) -> None:
        super().__init__(message)
        self.budget_bytes = budget_bytes
        self.min_peak_bytes = min_peak_bytes


class UnsupportedGraphError(MemcompileError):
    """The joint graph holds something the planner cannot reason about."""
