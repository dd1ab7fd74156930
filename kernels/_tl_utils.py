"""Triton device helpers shared by the kernels: rounding that is exact on GPU and interpreter.

NOTE on the CPU interpreter (triton 3.9, TRITON_INTERPRET=1), found while testing against
reference.py: ``libdevice.rint`` returns None, fp32->bf16 casts truncate (ignoring
``fp_downcast_rounding="rtne"``), and fp32->fp8e4nv casts drop the carry when rounding
crosses a binade (31.75 -> 16). The helpers below round in fp32/integer arithmetic so that
the final cast is exact, which gives torch's round-to-nearest-even on both backends. On a
GPU they cost a handful of integer ops per element in bandwidth-bound kernels.
Only finite inputs are supported (NaN payloads may turn into inf).
"""

import triton
import triton.language as tl


@triton.jit
def round_half_even(v):
    """fp32 -> nearest integer, ties to even (torch.round). Exact for |v| < 2**23."""
    f = tl.floor(v)
    diff = v - f  # exact: v and floor(v) share a binade or diff is exactly representable
    odd = (f - 2.0 * tl.floor(f * 0.5)) != 0.0
    return tl.where((diff > 0.5) | ((diff == 0.5) & odd), f + 1.0, f)


@triton.jit
def round_to_e4m3(v):
    """fp32 with |v| <= 448 -> nearest float8_e4m3fn value (ties to even), still fp32.

    e4m3: 3 mantissa bits, min normal exponent -6 (below it the spacing stays 2**-9).
    """
    bits = v.to(tl.int32, bitcast=True)
    e = tl.maximum(((bits >> 23) & 0xFF) - 127, -6)
    ulp = ((e - 3 + 127) << 23).to(tl.float32, bitcast=True)  # 2**(e-3), exact
    inv_ulp = ((127 - (e - 3)) << 23).to(tl.float32, bitcast=True)
    r = round_half_even(tl.abs(v) * inv_ulp) * ulp
    # copysign via the sign bit keeps -0.0 as -0.0, as torch's cast does.
    return (r.to(tl.int32, bitcast=True) | (bits & -2147483648)).to(tl.float32, bitcast=True)


@triton.jit
def cast_rne(v, DTYPE: tl.constexpr):
    """fp32 -> DTYPE with round-to-nearest-even (bf16 rounded by hand, see module NOTE)."""
    if DTYPE == tl.bfloat16:
        b = v.to(tl.uint32, bitcast=True)
        b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
        v = b.to(tl.float32, bitcast=True)  # now bf16-representable: the cast is exact
    return v.to(DTYPE)
