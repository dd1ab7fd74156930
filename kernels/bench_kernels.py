"""Bandwidth of the quantize/dequantize and few-bit kernels at one large tensor.

The planner prices these modes as memory traffic, so the figure that matters is GB/s
against the device's peak. On CUDA this times the Triton kernels; on CPU it times the
eager reference (the Triton interpreter is a correctness tool, not a speed one).

    python -m memcompile.kernels.bench_kernels [--mbytes 64] [--dtype bf16] [--peak-gbps X]
"""

import argparse
import time

import torch

from memcompile.kernels import fewbit as fb
from memcompile.kernels import quantize as qz
from memcompile.kernels import reference as ref
from memcompile.kernels._dispatch import TRITON_INTERPRET
from memcompile.kernels.sizes import fewbit_nbytes, quantized_nbytes

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _cuda_peak_gbps() -> float | None:
    """HBM/GDDR peak from the reported memory clock and bus width (double data rate)."""
    props = torch.cuda.get_device_properties(0)
    clock_khz = getattr(props, "memory_clock_rate", None)
    bus_bits = getattr(props, "memory_bus_width", None)
    if not clock_khz or not bus_bits:
        return None
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9


def _time_seconds(fn, on_cuda: bool) -> float:
    """Time of one call: triton's do_bench (median) on CUDA, best of 3 on CPU."""
    if on_cuda:
        from triton.testing import do_bench

        return do_bench(fn) * 1e-3
    fn()  # warm-up (allocator, lazy table build)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mbytes", type=int, default=64, help="input size in MiB (default 64)")
    parser.add_argument("--dtype", choices=tuple(_DTYPES), default="bf16")
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--peak-gbps", type=float, default=None,
                        help="device peak bandwidth; default: from CUDA properties")
    args = parser.parse_args()

    dtype = _DTYPES[args.dtype]
    on_cuda = torch.cuda.is_available()
    device = "cuda" if on_cuda else "cpu"
    numel = args.mbytes * 2**20 // dtype.itemsize
    g = args.group_size
    x = torch.randn(numel, device=device, dtype=dtype)
    e_bytes = numel * dtype.itemsize

    if on_cuda:
        quant = {fmt: (lambda fmt=fmt: qz.quantize(x, group_size=g, fmt=fmt))
                 for fmt in ("int8", "fp8")}
        fewbit_fwd = {bits: (lambda bits=bits: fb.fewbit_forward(x, bits=bits, kind="gelu"))
                      for bits in (2, 3)}
        peak = args.peak_gbps or _cuda_peak_gbps()
        copy_gbps = 2 * e_bytes / _time_seconds(lambda: x.clone(), True) / 1e9
        where = f"{torch.cuda.get_device_name(0)}, Triton kernels"
        if TRITON_INTERPRET:
            where += " (INTERPRETED: unset TRITON_INTERPRET for real figures)"
    else:
        quant = {"int8": lambda: ref.quantize_int8(x, g), "fp8": lambda: ref.quantize_fp8(x, g)}
        fewbit_fwd = {bits: (lambda bits=bits: ref.fewbit_forward(x, bits, "gelu"))
                      for bits in (2, 3)}
        peak = args.peak_gbps
        copy_gbps = 2 * e_bytes / _time_seconds(lambda: x.clone(), False) / 1e9
        where = f"CPU ({torch.get_num_threads()} threads), eager reference.py"

    print(f"{where}; input {args.mbytes} MiB {args.dtype} ({numel} elements), group {g}")
    print(f"x.clone(): {copy_gbps:.1f} GB/s" + (f"; peak {peak:.0f} GB/s" if peak else ""))
    rows = []
    for fmt, run_quant in quant.items():
        q, s = run_quant()
        packed = quantized_nbytes(numel, group_size=g, fmt=fmt)
        if on_cuda:
            run_dequant = lambda q=q, s=s: qz.dequantize(q, s, group_size=g, shape=x.shape,
                                                         out_dtype=dtype)
        else:
            run_dequant = lambda q=q, s=s: ref.dequantize(q, s, g, dtype)
        rows.append((f"quantize {fmt}", run_quant, e_bytes + packed))
        rows.append((f"dequantize {fmt}", run_dequant, packed + e_bytes))
    grad = torch.randn_like(x)
    for bits, run_fwd in fewbit_fwd.items():
        _, codes = run_fwd()
        packed = fewbit_nbytes(numel, bits=bits)
        if on_cuda:
            run_bwd = lambda codes=codes, bits=bits: fb.fewbit_backward(
                grad, codes, bits=bits, kind="gelu", shape=x.shape)
        else:
            run_bwd = lambda codes=codes, bits=bits: ref.fewbit_backward(grad, codes, bits, "gelu")
        rows.append((f"fewbit gelu fwd {bits}b", run_fwd, 2 * e_bytes + packed))
        rows.append((f"fewbit gelu bwd {bits}b", run_bwd, 2 * e_bytes + packed))

    print(f"{'op':<22}{'ms':>9}{'GB/s':>9}{'% copy':>8}" + (f"{'% peak':>8}" if peak else ""))
    for name, fn, moved_bytes in rows:
        seconds = _time_seconds(fn, on_cuda)
        gbps = moved_bytes / seconds / 1e9
        line = f"{name:<22}{seconds * 1e3:>9.3f}{gbps:>9.1f}{100 * gbps / copy_gbps:>7.0f}%"
        print(line + (f"{100 * gbps / peak:>7.0f}%" if peak else ""))


if __name__ == "__main__":
    main()
