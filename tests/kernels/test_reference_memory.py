"""reference.py allocates its outputs and chunk-sized temporaries only.

On CPU without Triton the custom ops run these functions inside a training step whose peak
the planner predicts from the ops' outputs. Measured with the profiler method of
memcompile/measure.py (8 MiB fp32 input, group 128; README "Lossy modes"): before chunking,
quantize_int8 held 32 MiB beyond its outputs (4x its input), fewbit_forward 70-141 MiB
(9-18x), fewbit_backward 24 MiB, dequantize 8 MiB; chunked, each holds 0.5-0.8 MiB
whatever the input size.
"""

import pytest
import torch
from kernel_asserts import assert_bitwise_equal

from memcompile.kernels import fewbit as fb
from memcompile.kernels import quantize as qz
from memcompile.kernels import reference as ref
from memcompile.measure import measure_peak

# Three fp32 chunk temporaries at most are live in any op, plus the chunk's bool/int32
# code scratch in the few-bit ones: 1 MiB covers them (measured 0.5-0.81 MiB). The input
# is 16x that, so a temporary of even 1/16 of the input fails the test.
FIXED_BYTES = 4 * ref.CHUNK_ELEMS * 4
INPUT_ELEMS = 4 * 2**20


def _ops(x: torch.Tensor):
    q, s = ref.quantize_int8(x, 128)
    _, packed = ref.fewbit_forward(x, 2, "gelu")
    grad = torch.randn_like(x)
    return {
        "quantize_int8": lambda: ref.quantize_int8(x, 128),
        "quantize_int8_stochastic": lambda: ref.quantize_int8(x, 128, stochastic=True, seed=3),
        "quantize_fp8": lambda: ref.quantize_fp8(x, 128),
        "dequantize": lambda: ref.dequantize(q, s, 128, x.dtype),
        "fewbit_forward_gelu_2": lambda: ref.fewbit_forward(x, 2, "gelu"),
        "fewbit_forward_silu_3": lambda: ref.fewbit_forward(x, 3, "silu"),
        "fewbit_backward": lambda: ref.fewbit_backward(grad, packed, 2, "gelu"),
        "fewbit_backward_expanded_grad": lambda: ref.fewbit_backward(
            torch.ones(()).expand(x.shape), packed, 2, "gelu"
        ),
    }


OP_NAMES = list(_ops(torch.zeros(1)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name", OP_NAMES)
def test_reference_op_holds_only_outputs_and_chunk_temporaries(name, dtype):
    x = torch.randn(INPUT_ELEMS, dtype=dtype)
    fn = _ops(x)[name]
    fn()  # warm-up: cached few-bit tables, allocator
    results = []
    peak = measure_peak(lambda: results.append(fn()), live_before_bytes=0).peak_bytes
    outputs = results[0] if isinstance(results[0], tuple) else (results[0],)
    output_bytes = sum(t.numel() * t.element_size() for t in outputs)
    extra = peak - output_bytes
    assert extra < FIXED_BYTES, (
        f"{name}: {extra / 2**20:.2f} MiB beyond its {output_bytes / 2**20:.2f} MiB of outputs "
        f"for a {x.nbytes / 2**20:.0f} MiB input"
    )


# Chunks smaller than these shapes, so every chunk boundary, a partial last chunk and a
# partial last group are crossed; the Triton kernel has no chunks, so equality shows that
# chunking changes no value.
@pytest.mark.parametrize("group_size", [32, 256, 1024])
@pytest.mark.parametrize("shape", [(257, 33), (3, 1024)])
def test_chunked_quantize_matches_kernel(kernel_device, monkeypatch, shape, group_size):
    monkeypatch.setattr(ref, "CHUNK_ELEMS", 1024)
    x = torch.randn(shape, dtype=torch.bfloat16, device=kernel_device)
    for fmt, quant_ref in (("int8", ref.quantize_int8), ("fp8", ref.quantize_fp8)):
        q, s = qz._launch_quantize(x, group_size, fmt, False, 0)
        q_ref, s_ref = quant_ref(x.cpu(), group_size)
        assert_bitwise_equal(q.cpu(), q_ref)
        assert_bitwise_equal(s.cpu(), s_ref)
        out = qz._launch_dequantize(q, s, group_size, torch.float16)
        assert_bitwise_equal(out.cpu(), ref.dequantize(q_ref, s_ref, group_size, torch.float16))


@pytest.mark.parametrize(("kind", "bits"), [("gelu", 2), ("gelu", 3), ("silu", 3)])
def test_chunked_fewbit_matches_kernel(kernel_device, monkeypatch, kind, bits):
    monkeypatch.setattr(ref, "CHUNK_ELEMS", 1024)
    x = torch.randn(257, 33, dtype=torch.bfloat16, device=kernel_device)
    _, packed = fb._launch_forward(x, bits, kind)
    _, packed_ref = ref.fewbit_forward(x.cpu(), bits, kind)
    assert_bitwise_equal(packed.cpu(), packed_ref)
    grad = torch.randn(33, 257, dtype=torch.bfloat16, device=kernel_device).t()  # strided
    grad_in = fb._launch_backward(grad, packed, bits, kind)
    assert_bitwise_equal(grad_in.cpu(), ref.fewbit_backward(grad.cpu(), packed_ref, bits, kind))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_fewbit_on_a_small_tensor_holds_a_fraction_of_its_input(dtype):
    """A tensor under FEWBIT_SPLIT chunks is split into FEWBIT_SPLIT: its temporaries (fp32 copy, int32
    intervals) stay under the input's own bytes, so a few-bit code of a small activation still saves
    memory. As one chunk, a 4,096-element bf16 SiLU held 53 KB beyond its outputs for an 8 KB input."""
    x = torch.randn(4096, dtype=dtype)
    _, packed = ref.fewbit_forward(x, 2, "silu")
    grad = torch.randn_like(x)
    for fn in (lambda: ref.fewbit_forward(x, 2, "silu"), lambda: ref.fewbit_backward(grad, packed, 2, "silu")):
        fn()
        results = []
        peak = measure_peak(lambda fn=fn: results.append(fn()), live_before_bytes=0).peak_bytes
        outputs = results[0] if isinstance(results[0], tuple) else (results[0],)
        extra = peak - sum(t.numel() * t.element_size() for t in outputs)
        assert extra < x.numel() * x.element_size(), (extra, x.numel() * x.element_size())
