"""Where a kernel call runs: Triton (CUDA, or the CPU interpreter) or the eager reference.

NOTE on TRITON_INTERPRET: triton itself reads the variable when ``@triton.jit`` decorates
a kernel (it then returns an interpreted function), so it must be set before this package
is imported. We read it once, here, so that dispatch agrees with how the kernels were built;
changing it later in the process has no effect on either.
"""

import os

import torch

TRITON_INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # e.g. macOS/Windows wheels: everything falls back to reference.py
    HAS_TRITON = False


def use_triton(t: torch.Tensor) -> bool:
    """True when the Triton kernel can run on ``t``: CUDA, or CPU under the interpreter."""
    return HAS_TRITON and (t.is_cuda or TRITON_INTERPRET)


def triton_has_fp8(t: torch.Tensor) -> bool:
    """Triton converts float8_e4m3fn natively from sm_89 (Ada, Hopper) on; the
    interpreter always can. Older GPUs take the reference path for fp8."""
    return not t.is_cuda or torch.cuda.get_device_capability(t.device) >= (8, 9)


def check_dtype(name: str, t: torch.Tensor, allowed: tuple[torch.dtype, ...]) -> None:
    """Raise TypeError naming the argument, the allowed dtypes and the one received."""
    if t.dtype not in allowed:
        names = ", ".join(str(d).removeprefix("torch.") for d in allowed)
        raise TypeError(f"{name} must have dtype in ({names}), got {t.dtype}; cast it first")
