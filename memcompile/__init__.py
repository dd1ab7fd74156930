"""memcompile: plan activation memory for torch.compile training steps."""

__version__ = "0.1.0"

from ._errors import MemcompileError, MemoryBudgetError, UnsupportedGraphError
from .backend import clear_plans, last_plans, memcompile_backend
from .config import MemConfig
from .plan import Plan, TensorDecision

__all__ = [
    "MemConfig",
    "MemcompileError",
    "MemoryBudgetError",
    "Plan",
    "TensorDecision",
    "UnsupportedGraphError",
    "__version__",
    "clear_plans",
    "last_plans",
    "memcompile_backend",
]
