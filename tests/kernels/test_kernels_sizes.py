"""Planner-facing size and traffic formulas, checked against what the ops really store."""

import os
import subprocess
import sys

import pytest
import sympy
import torch

from memcompile.kernels import (
    fewbit_bytes_moved,
    fewbit_nbytes,
    quantize_bytes_moved,
    quantized_nbytes,
)
from memcompile.kernels import fewbit as fb
from memcompile.kernels import quantize as qz


@pytest.mark.parametrize("fmt", ["int8", "fp8"])
@pytest.mark.parametrize("group_size", [32, 256])
@pytest.mark.parametrize("numel", [0, 1, 255, 257, 4096])
def test_quantized_nbytes_is_what_quantize_returns(device, numel, group_size, fmt):
    q, s = qz.quantize(torch.randn(numel, device=device), group_size=group_size, fmt=fmt)
    assert quantized_nbytes(numel, group_size=group_size, fmt=fmt) == q.nbytes + s.nbytes


@pytest.mark.parametrize("bits", [2, 3])
@pytest.mark.parametrize("numel", [0, 1, 5, 4097])
def test_fewbit_nbytes_is_what_the_forward_saves(device, numel, bits):
    _, packed = fb.fewbit_silu_forward(torch.randn(numel, device=device), bits)
    assert fewbit_nbytes(numel, bits=bits) == packed.nbytes


def test_closed_forms_for_one_mebi_element_bf16_tensor():
    n = 1 << 20  # 2 MiB of bf16
    assert quantized_nbytes(n, group_size=128) == n + 4 * 8192
    # quantize: read 2n, write n + 32 KiB; dequantize: the reverse.
    assert quantize_bytes_moved(n, torch.bfloat16, group_size=128) == 4 * n + 2 * (n + 32768)
    assert fewbit_nbytes(n, bits=2) == n // 4
    assert fewbit_nbytes(n, bits=3) == n // 2
    # forward: read 2n, write 2n + codes; backward: read 2n + codes, write 2n.
    assert fewbit_bytes_moved(n, torch.bfloat16, bits=2) == 8 * n + 2 * (n // 4)


def test_formulas_accept_symbolic_numel():
    n = sympy.Symbol("n", integer=True, positive=True)
    expr = quantized_nbytes(n, group_size=128, fmt="fp8")
    assert expr.subs(n, 300) == quantized_nbytes(300, group_size=128, fmt="fp8") == 300 + 4 * 3
    assert fewbit_nbytes(n, bits=2).subs(n, 5) == 2


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: quantized_nbytes(10, group_size=48), "power of two"),
        (lambda: quantized_nbytes(10, fmt="int4"), "fmt"),
        (lambda: quantized_nbytes(-1), "numel"),
        (lambda: fewbit_nbytes(10, bits=1), "bits"),
    ],
)
def test_formulas_reject_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_everything_imports_and_runs_without_triton():
    # sys.modules["triton"] = None makes `import triton` raise ImportError, as on a
    # platform without wheels; TRITON_INTERPRET=1 must then not matter.
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "from memcompile.kernels import quantized_nbytes\n"
        "from memcompile.kernels import fewbit, quantize\n"
        "x = torch.randn(300, requires_grad=True)\n"
        "q, s = quantize.quantize(x.detach(), group_size=32)\n"
        "y = quantize.dequantize(q, s, group_size=32, shape=x.shape, out_dtype=x.dtype)\n"
        "assert (y - x).abs().max() < 0.05, 'reference round trip'\n"
        "fewbit.fewbit_gelu(x, 3).sum().backward()\n"
        "assert x.grad.shape == x.shape\n"
        "print(quantized_nbytes(300, group_size=32))\n"
    )
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(300 + 4 * 10)
