"""Few-bit GELU/SiLU backward: kernels versus reference.py, exact derivatives, closed forms."""

import math

import pytest
import torch
import torch.nn.functional as F
from kernel_asserts import assert_bitwise_equal, assert_verbose_allclose, rel_l2

from memcompile.kernels import fewbit as fb
from memcompile.kernels import fewbit_nbytes
from memcompile.kernels import reference as ref

SMALL_SHAPES = [(3, 5, 7), (4096,), (1,), (257, 33), (0, 5)]
KINDS = ["gelu", "silu"]
BITS = [2, 3]
# (dtype, atol, rtol) for y = f(x) against torch's eager op: kernel and torch both compute
# in fp32 and round once, but erf/exp differ by an fp32 ulp or two, which can flip the
# final rounding: allow one ulp of the output dtype (2**-mantissa_bits relative, worst
# case at the bottom of a binade).
Y_TOLERANCES = [
    pytest.param(torch.float32, 1e-6, 1e-6, id="float32"),
    pytest.param(torch.bfloat16, 1e-6, 2**-7, id="bfloat16"),
    pytest.param(torch.float16, 1e-6, 2**-10, id="float16"),
]
EAGER = {"gelu": F.gelu, "silu": F.silu}

# Error of the few-bit derivative against the exact f'(x), x ~ N(0,1).
# Relative L2, design values (reference.fewbit_table, quadrature): gelu 0.1325 / 0.0646,
# silu 0.1442 / 0.0714 at 2 / 3 bits; measured on 65536 samples: 0.1326 / 0.0644,
# 0.1445 / 0.0716. Mean-squared error, measured on the same samples: gelu 8.00e-3 /
# 1.89e-3, silu 7.90e-3 / 1.94e-3 (E[f'(X)^2] is 0.455 for gelu, 0.378 for silu).
# Bounds leave ~5% for sampling noise. 3 bits must be strictly better: measured MSE ratio
# 3-bit / 2-bit is 0.236 (gelu) and 0.246 (silu); asserted < 0.3.
REL_ERR_BOUND = {("gelu", 2): 0.14, ("gelu", 3): 0.07, ("silu", 2): 0.152, ("silu", 3): 0.076}
MSE_BOUND = {("gelu", 2): 8.5e-3, ("gelu", 3): 2.0e-3, ("silu", 2): 8.4e-3, ("silu", 3): 2.05e-3}


def _exact_grad(x: torch.Tensor, kind: str, grad_out: torch.Tensor) -> torch.Tensor:
    """Autograd of torch's own gelu/silu in float64: independent of the code under test."""
    x64 = x.detach().double().requires_grad_(True)
    EAGER[kind](x64).backward(grad_out.double())
    return x64.grad


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("dtype", "atol", "rtol"), Y_TOLERANCES)
@pytest.mark.parametrize("shape", SMALL_SHAPES)
def test_forward_backward_match_reference(kernel_device, shape, dtype, atol, rtol, kind, bits):
    x = torch.randn(shape, dtype=dtype, device=kernel_device)
    assert fb.use_triton(x)
    y, packed = fb.fewbit_forward(x, bits=bits, kind=kind)
    y_ref, packed_ref = ref.fewbit_forward(x.cpu(), bits, kind)
    # Codes come from fp32 compares against the same fp32 breakpoints: bit-identical.
    assert_bitwise_equal(packed.cpu(), packed_ref)
    assert_verbose_allclose(y.cpu(), EAGER[kind](x.cpu()), atol=atol, rtol=rtol)
    assert_verbose_allclose(y.cpu(), y_ref, atol=atol, rtol=rtol)
    g = torch.randn(shape, dtype=dtype, device=kernel_device)
    grad_in = fb.fewbit_backward(g, packed, bits=bits, kind=kind, shape=shape)
    # One fp32 multiply by the same level, one rounding: bit-identical.
    assert_bitwise_equal(grad_in.cpu(), ref.fewbit_backward(g.cpu(), packed_ref, bits, kind))


@pytest.mark.parametrize(("kind", "bits"), [("gelu", 3), ("silu", 2)])
def test_big_odd_shape_matches_reference(kernel_device, kind, bits):
    x = torch.randn(1823, 781, dtype=torch.bfloat16, device=kernel_device)
    y, packed = fb.fewbit_forward(x, bits=bits, kind=kind)
    y_ref, packed_ref = ref.fewbit_forward(x.cpu(), bits, kind)
    assert_bitwise_equal(packed.cpu(), packed_ref)
    assert_verbose_allclose(y.cpu(), y_ref, atol=1e-6, rtol=2**-7)
    g = torch.randn_like(x)
    grad_in = fb.fewbit_backward(g, packed, bits=bits, kind=kind, shape=x.shape)
    assert_bitwise_equal(grad_in.cpu(), ref.fewbit_backward(g.cpu(), packed_ref, bits, kind))


@pytest.mark.parametrize("numel", [0, 1, 3, 4, 5, 7, 1000, 1023])
@pytest.mark.parametrize("bits", BITS)
def test_packed_size_is_ceil_numel_times_storage_bits(device, numel, bits):
    storage = {2: 2, 3: 4}[bits]  # 3-bit codes are stored in nibbles
    _, packed = fb.fewbit_gelu_forward(torch.randn(numel, device=device), bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == math.ceil(numel * storage / 8)
    assert packed.numel() == fewbit_nbytes(numel, bits=bits)


def test_packing_layout_closed_form_2bit(device):
    # gelu 2-bit intervals: x < -0.499 -> 0, [-0.499, 0) -> 1, [0, 0.499) -> 2, else 3;
    # element 4j+k sits at bits [2k, 2k+2) of byte j: 0 | 1<<2 | 2<<4 | 3<<6 = 228.
    x = torch.tensor([-2.0, -0.2, 0.2, 2.0, 2.0], device=device)
    _, packed = fb.fewbit_gelu_forward(x, 2)
    assert packed.tolist() == [228, 3]


def test_packing_layout_closed_form_3bit(device):
    # gelu 3-bit: x=-5 is left of -2.915 -> code 1 (f' ~ 0 sits above the -0.0148
    # threshold); x=-1 in [-2.915, -0.787) -> 0 (the dip of GELU'); x=5 beyond 2.915 -> 6;
    # x=1 in [0.787, 2.915) -> 7 (the bump). Nibbles: 1 | 0<<4 = 1, 6 | 7<<4 = 118.
    x = torch.tensor([-5.0, -1.0, 5.0, 1.0], device=device)
    _, packed = fb.fewbit_gelu_forward(x, 3)
    assert packed.tolist() == [1, 118]


def _coded_and_exact_derivative(device: str, kind: str, bits: int):
    x = torch.randn(1 << 16, device=device)
    _, packed = fb.fewbit_forward(x, bits=bits, kind=kind)
    ones = torch.ones_like(x)
    approx = fb.fewbit_backward(ones, packed, bits=bits, kind=kind, shape=x.shape)
    return approx.cpu(), _exact_grad(x.cpu(), kind, ones.cpu())


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("kind", KINDS)
def test_derivative_error_bound(device, kind, bits):
    approx, exact = _coded_and_exact_derivative(device, kind, bits)
    assert rel_l2(approx, exact) < REL_ERR_BOUND[(kind, bits)]
    assert (approx.double() - exact).pow(2).mean().item() < MSE_BOUND[(kind, bits)]


@pytest.mark.parametrize("kind", KINDS)
def test_three_bits_have_under_0p3_of_the_two_bit_mse(device, kind):
    # Same samples for both widths (the autouse fixture re-seeds per test, so draw here).
    torch.manual_seed(1)
    approx2, exact = _coded_and_exact_derivative(device, kind, 2)
    torch.manual_seed(1)
    approx3, _ = _coded_and_exact_derivative(device, kind, 3)
    mse2 = (approx2.double() - exact).pow(2).mean().item()
    mse3 = (approx3.double() - exact).pow(2).mean().item()
    assert mse3 < 0.3 * mse2


@pytest.mark.parametrize("kind", KINDS)
def test_three_bits_at_least_halve_the_design_error(kind):
    # Design-time numbers (quadrature over N(0,1)), no kernel involved.
    assert ref.fewbit_table(kind, 3).rel_l2_error < 0.5 * ref.fewbit_table(kind, 2).rel_l2_error


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("kind", KINDS)
def test_autograd_op_gradients_within_bound(device, kind, bits):
    x = torch.randn(64, 1024, device=device, requires_grad=True)
    w = torch.randn(64, 1024, device=device)
    y = {"gelu": fb.fewbit_gelu, "silu": fb.fewbit_silu}[kind](x, bits)
    (y * w).sum().backward()
    assert_verbose_allclose(y.detach().cpu(), EAGER[kind](x.detach().cpu()), atol=1e-6, rtol=1e-6)
    assert rel_l2(x.grad.cpu(), _exact_grad(x.cpu(), kind, w.cpu())) < REL_ERR_BOUND[(kind, bits)]


def test_default_is_two_bits(device):
    x = torch.randn(300, device=device, requires_grad=True)
    fb.fewbit_gelu(x).sum().backward()
    levels = set(ref.fewbit_table("gelu", 2).levels)
    assert set(x.grad.cpu().tolist()) <= levels


@pytest.mark.parametrize("bits", BITS)
def test_autograd_saves_only_the_packed_codes(device, bits):
    # The point of few-bit backward: nothing input-sized is kept for backward.
    saved = []
    x = torch.randn(1000, device=device, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fb.fewbit_silu(x, bits)
    assert [(t.dtype, t.numel()) for t in saved] == [(torch.uint8, ref.packed_numel(1000, bits))]


def test_double_backward_is_linear_in_grad_out(device):
    # grad_in = grad_out * level(x): its derivative w.r.t. grad_out is level(x) again.
    _, packed = fb.fewbit_gelu_forward(torch.randn(257, device=device), 3)
    grad_out = torch.randn(257, device=device, requires_grad=True)
    v = torch.randn(257, device=device)
    grad_in = fb.fewbit_backward(grad_out, packed, bits=3, kind="gelu", shape=(257,))
    (grad_in * v).sum().backward()
    expected = fb.fewbit_backward(v, packed, bits=3, kind="gelu", shape=(257,))
    assert_bitwise_equal(grad_out.grad, expected)


def _gelu_mlp(x, w):
    return (fb.fewbit_gelu(x @ w, 3) * 2).sum()


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_autograd_op_compiles_fullgraph(device, backend):
    torch.compiler.reset()
    x = torch.randn(48, 40, device=device)
    w = torch.randn(40, 56, device=device, requires_grad=True)
    torch.compile(_gelu_mlp, backend=backend, fullgraph=True)(x, w).backward()
    compiled_grad = w.grad.clone()
    w.grad = None
    _gelu_mlp(x, w).backward()
    torch.testing.assert_close(compiled_grad, w.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_autograd_op_compiles_fullgraph_inductor(device):
    torch.compiler.reset()
    x = torch.randn(48, 40, device=device)
    w = torch.randn(40, 56, device=device, requires_grad=True)
    torch.compile(_gelu_mlp, fullgraph=True)(x, w).backward()
    compiled_grad = w.grad.clone()
    w.grad = None
    _gelu_mlp(x, w).backward()
    torch.testing.assert_close(compiled_grad, w.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("op_name", ["fewbit_gelu", "fewbit_silu"])
def test_opcheck_forward_ops(device, op_name, bits):
    # requires_grad exercises the registered autograd (and aot_dispatch through backward).
    x = torch.randn(5, 77, device=device, requires_grad=True)
    torch.library.opcheck(getattr(torch.ops.memcompile, op_name).default, (x, bits))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_backward_op(device, dtype):
    _, packed = fb.fewbit_silu_forward(torch.randn(5, 77, device=device), 3)
    grad_out = torch.randn(5, 77, device=device, dtype=dtype, requires_grad=True)
    torch.library.opcheck(
        torch.ops.memcompile.fewbit_backward.default, (grad_out, packed, 3, "silu")
    )


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        (dict(bits=4, kind="gelu"), ValueError),
        (dict(bits=2, kind="relu"), ValueError),
    ],
)
def test_forward_rejects_bad_arguments(kwargs, error):
    with pytest.raises(error):
        fb.fewbit_forward(torch.randn(8), **kwargs)


def test_backward_rejects_packed_of_wrong_size():
    _, packed = fb.fewbit_gelu_forward(torch.randn(100), 2)
    with pytest.raises(ValueError, match="bits used in the forward"):
        fb.fewbit_backward(torch.randn(100), packed, bits=3, kind="gelu", shape=(100,))


@pytest.mark.cuda
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_kernel_matches_cpu_reference(kind):
    x = torch.randn(1823, 781, device="cuda")
    y, packed = fb.fewbit_forward(x, bits=3, kind=kind)
    y_ref, packed_ref = ref.fewbit_forward(x.cpu(), 3, kind)
    assert_bitwise_equal(packed.cpu(), packed_ref)
    assert_verbose_allclose(y.cpu(), y_ref, atol=1e-6, rtol=1e-5)
    g = torch.randn_like(x)
    grad_in = fb.fewbit_backward(g, packed, bits=3, kind=kind, shape=x.shape)
    assert_bitwise_equal(grad_in.cpu(), ref.fewbit_backward(g.cpu(), packed_ref, 3, kind))
