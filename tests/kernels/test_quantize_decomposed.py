"""The ATen form of int8 quantize/dequantize (quantize_decomposed.py) against the kernels.

Same codes, scales and dequantized values, bit for bit: eagerly, and compiled by Inductor's
C++ backend (the form exists to be fused there). Under Inductor's CUDA codegen it is not
bit-identical (reciprocal multiply, div.full; see the module docstring), which is not tested.
"""

import math

import pytest
import torch
from kernel_asserts import assert_bitwise_equal

from memcompile.kernels import quantize as qz
from memcompile.kernels import quantize_decomposed as qd
from memcompile.kernels import reference as ref

DTYPES = [
    pytest.param(torch.float32, id="float32"),
    pytest.param(torch.bfloat16, id="bfloat16"),
    pytest.param(torch.float16, id="float16"),
]
# Partial last group, fewer elements than a group, a whole number of groups.
SHAPES = [(3, 5, 7), (257, 33), (16, 256)]


def _input(shape, dtype, device="cpu"):
    x = torch.randn(shape, dtype=dtype, device=device) * 3
    x.view(-1)[:32] = 0.0  # an all-zero group at every group size tested: scale 0, codes 0
    return x


def _codes_of(codes: torch.Tensor, numel: int) -> torch.Tensor:
    return codes.reshape(-1)[:numel]


@pytest.mark.parametrize("group_size", [32, 128])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_aten_form_matches_reference(shape, dtype, group_size):
    x = _input(shape, dtype)
    codes, scales = qd.quantize_int8(x, group_size)
    q_ref, s_ref = ref.quantize_int8(x, group_size)
    assert codes.shape == (math.ceil(x.numel() / group_size), group_size)
    assert_bitwise_equal(_codes_of(codes, x.numel()).view(shape), q_ref)
    assert (codes.reshape(-1)[x.numel():] == 0).all()  # the padding
    assert_bitwise_equal(scales, s_ref)
    out = qd.dequantize(codes, scales, shape, dtype)
    assert out.is_contiguous()
    assert_bitwise_equal(out, ref.dequantize(q_ref, s_ref, group_size, dtype))


def test_aten_form_rounds_half_to_even():
    # absmax 127 -> scale exactly 1, so the codes are torch.round's of the inputs.
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 127.0] + [0.0] * 24)
    codes, scales = qd.quantize_int8(x, 32)
    assert scales.tolist() == [1.0]
    assert codes.view(-1)[:8].tolist() == [0, 2, 2, 0, -2, -2, 126, 127]


@pytest.mark.parametrize("dtype", DTYPES)
def test_aten_form_matches_kernel(kernel_device, dtype):
    x = _input((257, 33), dtype, kernel_device)
    codes, scales = qd.quantize_int8(x, 32)
    q, s = qz.quantize(x, group_size=32)
    assert_bitwise_equal(_codes_of(codes, x.numel()).view(x.shape).cpu(), q.cpu())
    assert_bitwise_equal(scales.cpu(), s.cpu())
    out = qz.dequantize(q, s, group_size=32, shape=x.shape, out_dtype=dtype)
    assert_bitwise_equal(qd.dequantize(codes, scales, x.shape, dtype).cpu(), out.cpu())


def _roundtrip(x):
    codes, scales = qd.quantize_int8(x * 2, 32)
    return codes, scales, qd.dequantize(codes, scales, x.shape, x.dtype)


@pytest.mark.slow
def test_aten_form_compiled_by_inductor_cpp_is_bit_identical():
    # One C++ compile (10-25 s on 2 shared cores): a producer fused with the quantize, partial last group, bf16
    # out (a single RNE rounding of the fp32 product). The producer is exact (x * 2): Inductor
    # quantizes a fused producer's fp32 value before its rounding to bf16 (module docstring),
    # so with a GELU the codes would be those of the unrounded GELU.
    torch.compiler.reset()
    x = _input((257, 33), torch.bfloat16)
    codes, scales, out = torch.compile(_roundtrip, fullgraph=True, dynamic=False)(x)
    y = x * 2
    q_ref, s_ref = ref.quantize_int8(y, 32)
    assert_bitwise_equal(_codes_of(codes, x.numel()).view(x.shape), q_ref)
    assert_bitwise_equal(scales, s_ref)
    assert_bitwise_equal(out, ref.dequantize(q_ref, s_ref, 32, torch.bfloat16))
