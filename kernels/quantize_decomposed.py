"""Int8 per-group absmax quantize/dequantize written as plain ATen ops, for a compiler to fuse.

The Triton kernels of quantize.py reach Inductor as opaque calls: the activation they
quantize must be written to memory first and read back by the kernel (a full extra read of
the activation), and a dequantized copy is always written out whole before the backward
reads it. Written as ATen ops (abs, amax, div, round, clamp, casts, views), Inductor can
compute the codes inside the kernel that produces the activation when that producer is
pointwise or a reduction, and fold a dequantize into the pointwise backward kernels that
read it. An mm/addmm producer is an extern call on CPU (and has no epilogue fusion on CUDA
without max-autotune), so after a matmul the decomposed form is one more kernel, as the
Triton one is. Which form is faster is measured by ``bench_kernels.py --fusion``.

Same layout and formulas as the kernels and reference.py: groups of ``group_size``
consecutive elements of the row-major flattening, the last one zero-padded, fp32
``scale = absmax / 127`` (0 for an all-zero group, which divides by 1 instead),
``q = clamp(round_half_even(x / scale), -127, 127)``; ``dequantize = q * scale`` in fp32,
rounded once to the output dtype.

Numerics against the kernels:
- Inductor C++ (CPU): bit-identical. It keeps IEEE division (division by a constant is
  not turned into a reciprocal multiply on CPU) and rounds with ``nearbyint`` (half to
  even); the int8 cast of an integral value in range is exact. tests/kernels check it.
- Inductor Triton (CUDA): NOT bit-identical. Division by the constant 127 becomes a
  multiply by 1/127 (scale may differ by 1 ulp) and ``x / scale`` compiles to the
  approximate ``div.full`` unless ``torch._inductor.config.eager_numerics.division_rounding``
  is set, so a code may differ by one where ``x / scale`` lies within about 2 ulp of a
  .5 tie. The error bound is unchanged (half a code step, plus an ulp).
- A bf16/fp16 producer fused with the quantize (Inductor, either backend): the codes are
  those of the producer's fp32 value, before its rounding to the activation's dtype (unless
  ``torch._inductor.config.emulate_precision_casts``), so they may differ by one from the
  codes of the stored activation; they are as close or closer to the exact value.
- Eager (not compiled): identical to reference.py, but every op materialises an
  input-sized temporary (the fp32 groups, |x|, x / scale, ...), up to about 4x the
  input: this form is for torch.compile only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

INT8_QMAX = 127.0


def _grouped(flat: torch.Tensor, group_size: int) -> torch.Tensor:
    pad = -flat.numel() % group_size
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    return flat.view(-1, group_size)


def quantize_int8(x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes, scales)``: int8 codes of shape ``(groups, group_size)`` and one fp32 scale per group.

    ``codes.view(-1)[:x.numel()]`` and ``scales`` equal what ``memcompile::quantize_int8(x,
    group_size, False, 0)`` returns; the codes of the padding (at most ``group_size - 1``) are 0.
    The codes keep the grouped shape so that they are a buffer of their own, not a view of one
    (a saved view would keep its base alive and hide its bytes). ``x`` must be contiguous.
    """
    groups = _grouped(x.reshape(-1), group_size).float()
    scales = groups.abs().amax(dim=1) / INT8_QMAX
    safe = torch.where(scales > 0, scales, 1.0)
    codes = torch.round(groups / safe[:, None]).clamp(-INT8_QMAX, INT8_QMAX).to(torch.int8)
    return codes, scales


def dequantize(
    codes: torch.Tensor, scales: torch.Tensor, shape: Sequence[int], out_dtype: torch.dtype
) -> torch.Tensor:
    """``codes * scale`` in fp32, rounded once to ``out_dtype``, as a contiguous tensor of ``shape``
    (a view of the grouped result, padding dropped): ``memcompile::dequantize`` of the same codes."""
    numel = math.prod(shape)
    out = (codes.float() * scales[:, None]).to(out_dtype)
    return out.view(-1)[:numel].view(shape)
