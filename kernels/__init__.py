"""Kernels for the lossy storage modes: per-group int8/fp8 quantisation and few-bit backward.

Only the size/traffic arithmetic is imported here, so the planner can price the modes
without triton and without registering ops. The ops themselves live in
``memcompile.kernels.quantize`` and ``memcompile.kernels.fewbit``; importing either
registers its ``memcompile::`` custom ops.
"""

from .sizes import (
    FEWBIT_BITS,
    QUANT_FORMATS,
    fewbit_bytes_moved,
    fewbit_nbytes,
    quantize_bytes_moved,
    quantized_nbytes,
)

__all__ = [
    "FEWBIT_BITS",
    "QUANT_FORMATS",
    "fewbit_bytes_moved",
    "fewbit_nbytes",
    "quantize_bytes_moved",
    "quantized_nbytes",
]
