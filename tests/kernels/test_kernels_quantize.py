"""Per-group int8/fp8 quantisation kernels versus reference.py and closed forms."""

import math

import pytest
import torch
from kernel_asserts import assert_bitwise_equal, assert_verbose_allclose, sqnr_db

from memcompile.kernels import quantize as qz
from memcompile.kernels import reference as ref

DTYPES = [
    pytest.param(torch.float32, id="float32"),
    pytest.param(torch.bfloat16, id="bfloat16"),
    pytest.param(torch.float16, id="float16"),
]
GROUP_SIZES = [32, 128, 256]
# Odd sizes: partial last group, fewer elements than one group, a single element, empty.
SMALL_SHAPES = [(3, 5, 7), (4096,), (1,), (257, 33), (0, 5)]


@pytest.mark.parametrize("group_size", GROUP_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SMALL_SHAPES)
def test_int8_matches_reference(kernel_device, shape, dtype, group_size):
    # Deterministic rounding: both sides divide with IEEE rounding (div_rn in the kernel)
    # and round half to even, so codes and scales are bit-identical, not "within 1 code".
    x = torch.randn(shape, dtype=dtype, device=kernel_device)
    assert qz.use_triton(x)
    q, s = qz.quantize(x, group_size=group_size, fmt="int8")
    q_ref, s_ref = ref.quantize_int8(x.cpu(), group_size)
    assert_bitwise_equal(q.cpu(), q_ref)
    assert_bitwise_equal(s.cpu(), s_ref)
    out = qz.dequantize(q, s, group_size=group_size, shape=shape, out_dtype=dtype)
    assert_bitwise_equal(out.cpu(), ref.dequantize(q_ref, s_ref, group_size, dtype))


@pytest.mark.parametrize("group_size", GROUP_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SMALL_SHAPES)
def test_fp8_matches_reference(kernel_device, shape, dtype, group_size):
    # Reference uses torch's RNE cast to float8_e4m3fn; the kernel rounds by hand
    # (_tl_utils.round_to_e4m3), so equality here checks that rounding bit for bit.
    x = torch.randn(shape, dtype=dtype, device=kernel_device)
    q, s = qz.quantize(x, group_size=group_size, fmt="fp8")
    q_ref, s_ref = ref.quantize_fp8(x.cpu(), group_size)
    assert_bitwise_equal(q.cpu(), q_ref)
    assert_bitwise_equal(s.cpu(), s_ref)
    out = qz.dequantize(q, s, group_size=group_size, shape=shape, out_dtype=dtype)
    assert_bitwise_equal(out.cpu(), ref.dequantize(q_ref, s_ref, group_size, dtype))


@pytest.mark.parametrize("fmt", ["int8", "fp8"])
def test_big_odd_shape_matches_reference(kernel_device, fmt):
    # The irregular 1823x781 of triton's softmax tutorial: 1_423_763 elements, not a
    # multiple of 128, many programs. bf16 in, bf16 out (exercises the RNE bf16 store).
    x = torch.randn(1823, 781, dtype=torch.bfloat16, device=kernel_device)
    q, s = qz.quantize(x, group_size=128, fmt=fmt)
    quant_ref = ref.quantize_int8 if fmt == "int8" else ref.quantize_fp8
    q_ref, s_ref = quant_ref(x.cpu(), 128)
    assert_bitwise_equal(q.cpu(), q_ref)
    assert_bitwise_equal(s.cpu(), s_ref)
    out = qz.dequantize(q, s, group_size=128, shape=x.shape, out_dtype=torch.bfloat16)
    assert_bitwise_equal(out.cpu(), ref.dequantize(q_ref, s_ref, 128, torch.bfloat16))


@pytest.mark.parametrize("group_size", GROUP_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_int8_sqnr(device, dtype, group_size):
    # Measured on 65536 randn elements: 43.0-45.5 dB (G=256..32; bf16 0.2 dB below fp32),
    # within 0.2 dB of the uniform-noise prediction 10 log10(E[x^2] / E[scale^2 / 12]).
    # We assert > 40 dB (3 dB margin: a lost bit costs 6 dB; the requirement is 30 dB) and
    # the prediction within 0.5 dB (a wrong scale or rounding rule moves it by >= 3 dB).
    x = torch.randn(1 << 16, dtype=dtype, device=device)
    q, s = qz.quantize(x, group_size=group_size)
    out = qz.dequantize(q, s, group_size=group_size, shape=x.shape, out_dtype=dtype)
    out32 = qz.dequantize(q, s, group_size=group_size, shape=x.shape, out_dtype=torch.float32)
    _, s_ref = ref.quantize_int8(x.cpu(), group_size)
    noise = (s_ref.double().repeat_interleave(group_size)[: x.numel()] ** 2 / 12).mean()
    predicted = 10 * math.log10(float(x.cpu().double().pow(2).mean() / noise))
    assert sqnr_db(x.cpu(), out.cpu()) > 40.0
    assert abs(sqnr_db(x.cpu(), out32.cpu()) - predicted) < 0.5


@pytest.mark.parametrize("group_size", GROUP_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fp8_sqnr(device, dtype, group_size):
    # Measured on 65536 randn elements: 31.6-32.4 dB (3 mantissa bits; small values fall
    # into e4m3 subnormals). Bound 30 dB: 1.6 dB margin; a lost mantissa bit costs 6 dB.
    x = torch.randn(1 << 16, dtype=dtype, device=device)
    q, s = qz.quantize(x, group_size=group_size, fmt="fp8")
    out = qz.dequantize(q, s, group_size=group_size, shape=x.shape, out_dtype=dtype)
    assert sqnr_db(x.cpu(), out.cpu()) > 30.0


def test_int8_rounds_half_to_even(device):
    # absmax 127 -> scale exactly 1, so v = x and the expected codes are torch.round's.
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 127.0], device=device)
    q, s = qz.quantize(x, group_size=32)
    assert s.tolist() == [1.0]
    assert q.tolist() == [0, 2, 2, 0, -2, -2, 126, 127]


def test_fp8_rounding_closed_form(device):
    # absmax 448 -> scale 1. e4m3 spacing is 2 in [16, 32), 4 in [32, 64), 2**-9 below
    # 2**-6: 17 and 19 are ties (-> even mantissa 16 and 20), 31.75 carries into the next
    # binade, 2**-10 ties between 0 and the smallest subnormal (-> 0), -0.0 keeps its sign.
    x = torch.tensor([448.0, 17.0, 19.0, 31.75, 2.0**-10, 3 * 2.0**-10, -0.0, -33.0],
                     device=device)
    q, _ = qz.quantize(x, group_size=32, fmt="fp8")
    expected = torch.tensor([448.0, 16.0, 20.0, 32.0, 0.0, 2.0**-8, -0.0, -32.0])
    assert_bitwise_equal(q.cpu(), expected.to(torch.float8_e4m3fn))


@pytest.mark.parametrize("fmt", ["int8", "fp8"])
def test_all_zero_groups_give_zero_scale_and_exact_zeros(device, fmt):
    x = torch.zeros(300, device=device)
    x[290] = 3.0  # last (partial) group non-zero, the others all zero
    q, s = qz.quantize(x, group_size=128, fmt=fmt)
    assert s.tolist()[:2] == [0.0, 0.0]
    out = qz.dequantize(q, s, group_size=128, shape=x.shape, out_dtype=torch.float32).cpu()
    expected = torch.zeros(300)
    expected[290] = 3.0
    # qmax * fl(3 / qmax) may differ from 3.0 by one fp32 rounding.
    assert_verbose_allclose(out, expected, atol=0.0, rtol=2**-23)


def test_non_contiguous_input_groups_follow_row_major_order(kernel_device):
    x = torch.randn(64, 96, device=kernel_device).t()
    q, s = qz.quantize(x, group_size=32)
    q_ref, s_ref = ref.quantize_int8(x.cpu().contiguous(), 32)
    assert_bitwise_equal(q.cpu(), q_ref)
    assert_bitwise_equal(s.cpu(), s_ref)


def test_stochastic_rounding_is_floor_or_ceil_and_seeded(device):
    x = torch.randn(4096, device=device)
    q1, s = qz.quantize(x, group_size=128, stochastic=True, seed=7)
    q2, _ = qz.quantize(x, group_size=128, stochastic=True, seed=7)
    q3, _ = qz.quantize(x, group_size=128, stochastic=True, seed=8)
    _, s_ref = ref.quantize_int8(x.cpu(), 128)
    v = x.cpu() / s_ref.repeat_interleave(128)  # unrounded code, scale > 0 for randn
    assert_bitwise_equal(s.cpu(), s_ref)
    assert ((q1.cpu().float() - v).abs() < 1.0).all()
    assert torch.equal(q1, q2)
    assert not torch.equal(q1, q3)


def _constant_groups(device: str) -> torch.Tensor:
    # Every group is [127, 0.3, 0.3, ...] -> scale 1, v = 0.3: deterministic rounding gives
    # all zeros, stochastic gives 1 with probability 0.3. Over 65024 draws the binomial
    # std of the mean is 0.0018, so |mean - 0.3| < 0.01 is a 5.5-sigma bound.
    x = torch.full((512, 128), 0.3, device=device)
    x[:, 0] = 127.0
    return x


def test_stochastic_rounding_is_unbiased(device):
    q, _ = qz.quantize(_constant_groups(device), group_size=128, stochastic=True, seed=1)
    assert abs(q[:, 1:].float().mean().item() - 0.3) < 0.01
    q_nearest, _ = qz.quantize(_constant_groups(device), group_size=128)
    assert q_nearest[:, 1:].float().mean().item() == 0.0  # the bias stochastic rounding removes


def test_reference_stochastic_rounding_is_unbiased():
    q, _ = ref.quantize_int8(_constant_groups("cpu"), 128, stochastic=True, seed=1)
    assert abs(q[:, 1:].float().mean().item() - 0.3) < 0.01


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        (dict(group_size=100), ValueError),
        (dict(group_size=8), ValueError),
        (dict(fmt="int4"), ValueError),
        (dict(fmt="fp8", stochastic=True), ValueError),
        (dict(seed=-1), ValueError),
    ],
)
def test_quantize_rejects_bad_arguments(kwargs, error):
    with pytest.raises(error):
        qz.quantize(torch.randn(64), **kwargs)


def test_quantize_rejects_integer_input():
    with pytest.raises(TypeError, match="float32"):
        qz.quantize(torch.ones(64, dtype=torch.int32))


def test_dequantize_rejects_mismatched_scales():
    q, s = qz.quantize(torch.randn(300), group_size=32)
    with pytest.raises(ValueError, match="group_size"):
        qz.dequantize(q, s, group_size=64, shape=(300,), out_dtype=torch.float32)


def _roundtrip(x):
    q, s = qz.quantize(x, group_size=64, fmt="int8")
    f, fs = qz.quantize(x, group_size=64, fmt="fp8")
    a = qz.dequantize(q, s, group_size=64, shape=x.shape, out_dtype=x.dtype)
    b = qz.dequantize(f, fs, group_size=64, shape=x.shape, out_dtype=x.dtype)
    return a * 2 + b


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_ops_compile_fullgraph(device, backend):
    torch.compiler.reset()
    x = torch.randn(33, 65, device=device)
    compiled = torch.compile(_roundtrip, backend=backend, fullgraph=True)
    assert_bitwise_equal(compiled(x), _roundtrip(x))


@pytest.mark.slow
def test_ops_compile_fullgraph_inductor(device):
    torch.compiler.reset()
    x = torch.randn(33, 65, device=device)
    compiled = torch.compile(_roundtrip, fullgraph=True)
    # a * 2 is exact, so a * 2 + b has a single rounding however Inductor fuses it.
    assert_bitwise_equal(compiled(x), _roundtrip(x))


# NOTE on opcheck and fp8 inputs: its test_schema compares inputs before and after the
# call with torch.allclose, which has no float8 kernel on CPU ("mul_cpu_reduced_float"
# not implemented, torch 2.13); dequantize of fp8 codes is checked without that test.
_ALL_OPCHECKS = ("test_schema", "test_autograd_registration", "test_faketensor",
                 "test_aot_dispatch_dynamic")


@pytest.mark.parametrize("stochastic", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck_quantize_int8(device, dtype, stochastic):
    x = torch.randn(5, 77, dtype=dtype, device=device)
    torch.library.opcheck(torch.ops.memcompile.quantize_int8.default, (x, 32, stochastic, 3))


def test_opcheck_quantize_fp8(device):
    x = torch.randn(5, 77, dtype=torch.bfloat16, device=device)
    torch.library.opcheck(torch.ops.memcompile.quantize_fp8.default, (x, 64))


@pytest.mark.parametrize("fmt", ["int8", "fp8"])
def test_opcheck_dequantize(device, fmt):
    q, s = qz.quantize(torch.randn(5, 77, device=device), group_size=32, fmt=fmt)
    test_utils = _ALL_OPCHECKS if fmt == "int8" else _ALL_OPCHECKS[1:]
    torch.library.opcheck(
        torch.ops.memcompile.dequantize.default, (q, s, 32, torch.float16), test_utils=test_utils
    )


@pytest.mark.cuda
@pytest.mark.parametrize("fmt", ["int8", "fp8"])
def test_cuda_kernel_matches_cpu_reference(fmt):
    # Whether this runs the native kernel depends on TRITON_INTERPRET (see conftest.py).
    x = torch.randn(1823, 781, device="cuda", dtype=torch.bfloat16)
    q, s = qz.quantize(x, group_size=128, fmt=fmt)
    quant_ref = ref.quantize_int8 if fmt == "int8" else ref.quantize_fp8
    q_ref, s_ref = quant_ref(x.cpu(), 128)
    assert_bitwise_equal(q.cpu(), q_ref)
    assert_bitwise_equal(s.cpu(), s_ref)
    out = qz.dequantize(q, s, group_size=128, shape=x.shape, out_dtype=torch.bfloat16)
    assert_bitwise_equal(out.cpu(), ref.dequantize(q_ref, s_ref, 128, torch.bfloat16))


def test_offsets_turn_64_bit_only_where_a_tile_reaches_2_to_the_31():
    """32-bit index arithmetic is used where every offset a program forms (its last tile's rows
    included) stays below 2**31; the kernels switch to int64 beyond."""
    off64 = qz._off64
    assert not off64(rows=32, programs=8192, group_size=128)  # 64 MiB of bf16
    assert not off64(rows=32, programs=2**31 // (32 * 128) - 1, group_size=128)
    assert off64(rows=32, programs=2**31 // (32 * 128), group_size=128)
