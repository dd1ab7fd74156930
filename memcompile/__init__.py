"""memcompile: plan activation memory for torch.compile training steps."""

__version__ = "0.1.0"

from ._errors import MemcompileError, MemoryBudgetError, UnsupportedGraphError
from .backend import clear_plans, last_plans, last_report, memcompile_backend
from .config import MemConfig
from .plan import Plan, TensorDecision
from .report import Report, inspect

__all__ = [
    "MemConfig",
    "MemcompileError",
    "MemoryBudgetError",
    "Plan",
    "Report",
    "TensorDecision",
    "UnsupportedGraphError",
    "__version__",
    "clear_plans",
    "inspect",
    "last_plans",
    "last_report",
    "memcompile_backend",
]
