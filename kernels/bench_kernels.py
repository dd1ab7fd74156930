"""Bandwidth of the quantize/dequantize and few-bit kernels at one large tensor, and (``--fusion``)
the two forms of int8 quantize/dequantize through torch.compile.

The planner prices these modes as memory traffic, so the figure that matters is GB/s
against the device's peak. On CUDA this times the Triton kernels; on CPU it times the
eager reference (the Triton interpreter is a correctness tool, not a speed one).

``--fusion`` compiles small programs with Inductor in which an activation is produced (by an
addmm, a GELU, a residual add) and quantized, or dequantized and read by a pointwise op,
once with the custom ops (``memcompile::quantize_int8`` / ``dequantize``: the Triton kernels
on CUDA, reference.py on CPU, an opaque call either way) and once with the ATen form of
quantize_decomposed.py, which Inductor may fuse into the producer or the reader; it prints
each program's time and what each form adds to the program without quantization.

    python -m memcompile.kernels.bench_kernels [--mbytes 64] [--dtype bf16] [--peak-gbps X]
    python -m memcompile.kernels.bench_kernels --fusion [--mbytes 16] [--dtype fp32]
    python -m memcompile.kernels.bench_kernels --memory [--mbytes 8] [--dtype fp32]

``--memory`` measures what each reference.py op holds beyond its outputs (CPU profiler
method of memcompile/measure.py): the temporaries a plan cannot see on CPU without Triton.
"""

import argparse
import time

import torch

from memcompile.kernels import fewbit as fb
from memcompile.kernels import quantize as qz
from memcompile.kernels import quantize_decomposed as qd
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


def _time_seconds(fn, on_cuda: bool, repeats: int = 3) -> float:
    """Time of one call: triton's do_bench (median) on CUDA, best of ``repeats`` on CPU."""
    if on_cuda:
        from triton.testing import do_bench

        return do_bench(fn) * 1e-3
    fn()  # warm-up (allocator, lazy table build)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mbytes", type=int, default=None,
                        help="input size in MiB (default 64; 16 with --fusion)")
    parser.add_argument("--dtype", choices=tuple(_DTYPES), default=None,
                        help="default bf16 (fp32 with --fusion on CPU)")
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--peak-gbps", type=float, default=None,
                        help="device peak bandwidth; default: from CUDA properties")
    parser.add_argument("--fusion", action="store_true",
                        help="time the custom-op and ATen forms of quantize/dequantize through torch.compile")
    parser.add_argument("--memory", action="store_true",
                        help="peak of each reference.py op beyond its outputs (CPU)")
    parser.add_argument("--sweep", action="store_true",
                        help="CUDA: also time int8 quantize/dequantize per tile size and warp count")
    parser.add_argument("--rounds", type=int, default=20,
                        help="--fusion: interleaved timing rounds, best of each (default 20)")
    args = parser.parse_args()
    if args.fusion:
        fusion_table(args)
    elif args.memory:
        memory_table(args)
    else:
        bandwidth_table(args)


def bandwidth_table(args: argparse.Namespace) -> None:
    """GB/s of each kernel (Triton on CUDA, reference.py on CPU) at one large tensor."""
    args.mbytes = args.mbytes or 64
    args.dtype = args.dtype or "bf16"
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

    # On CUDA a second set of columns replays the call from a CUDA graph: the kernel's own time,
    # without the Python dispatch and launch of each call (which a 64 MiB kernel does not hide).
    graph = f"{'graph ms':>10}{'GB/s':>9}{'% copy':>8}" + (f"{'% peak':>8}" if peak else "") if on_cuda else ""
    print(f"{'op':<22}{'ms':>9}{'GB/s':>9}{'% copy':>8}" + (f"{'% peak':>8}" if peak else "") + graph)
    for name, fn, moved_bytes in rows:
        line = ""
        for seconds in (_time_seconds(fn, on_cuda), _graph_seconds(fn) if on_cuda else None):
            if seconds is None:
                continue
            gbps = moved_bytes / seconds / 1e9
            width = 9 if not line else 10
            line += (f"{name:<22}" if not line else "") + f"{seconds * 1e3:>{width}.3f}{gbps:>9.1f}"
            line += f"{100 * gbps / copy_gbps:>7.0f}%" + (f"{100 * gbps / peak:>7.0f}%" if peak else "")
        print(line)
    if on_cuda and args.sweep:
        sweep_table(x, g, dtype, copy_gbps)


def _graph_seconds(fn) -> float | None:
    """Time of one call replayed from a CUDA graph (triton.testing.do_bench_cudagraph); None, with
    the reason printed, where the call cannot be captured."""
    from triton.testing import do_bench_cudagraph

    try:
        return do_bench_cudagraph(fn) * 1e-3
    except Exception as exc:  # a capture failure must not lose the table's other figures
        print(f"  (CUDA graph: {type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
        return None


def sweep_table(x: torch.Tensor, g: int, dtype: torch.dtype, copy_gbps: float) -> None:
    """int8 quantize and dequantize per (elements per program, warps), kernel time from a CUDA graph."""
    numel, e_bytes = x.numel(), x.numel() * x.element_size()
    packed = quantized_nbytes(numel, group_size=g, fmt="int8")
    saved = dict(qz.TUNING)
    print(f"{'elems/program':>14}{'warps':>6}{'quantize GB/s':>15}{'dequantize GB/s':>17}{'% copy (q, dq)':>16}")
    try:
        for block in (2048, 4096, 8192, 16384):
            for warps in (2, 4, 8):
                qz.TUNING.update(block_elems=block, num_warps=warps)
                q, s = qz.quantize(x, group_size=g, fmt="int8")
                tq = _graph_seconds(lambda: qz.quantize(x, group_size=g, fmt="int8"))
                td = _graph_seconds(lambda: qz.dequantize(q, s, group_size=g, shape=x.shape, out_dtype=dtype))
                if tq is None or td is None:
                    return
                gq, gd = (e_bytes + packed) / tq / 1e9, (e_bytes + packed) / td / 1e9
                print(f"{block:>14}{warps:>6}{gq:>15.1f}{gd:>17.1f}{100 * gq / copy_gbps:>9.0f}%, {100 * gd / copy_gbps:.0f}%")
    finally:
        qz.TUNING.clear()
        qz.TUNING.update(saved)


# ---- --fusion: custom op against the ATen form, both through Inductor ----

_MATMUL_K = 64
"""Inner dimension of the addmm producer: small, so the matmul does not drown the quantize."""


def _quantize_forms(group_size: int) -> dict:
    return {
        "custom op": lambda y: torch.ops.memcompile.quantize_int8(y, group_size, False, 0),
        "ATen": lambda y: qd.quantize_int8(y, group_size),
    }


def _dequantize_forms(group_size: int, shape: tuple[int, ...], dtype: torch.dtype) -> dict:
    # q: the grouped codes of qd.quantize_int8 (the same bytes as the kernel's, shape aside)
    return {
        "custom op": lambda q, s: torch.ops.memcompile.dequantize(q.view(shape), s, group_size, dtype),
        "ATen": lambda q, s: qd.dequantize(q, s, shape, dtype),
    }


def _fusion_programs(rows: int, cols: int, dtype: torch.dtype, device: str, group_size: int):
    """(name, inputs, program without quantization, {form: program}) for each producer/reader."""
    gen = torch.Generator(device=device).manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device, dtype=dtype)

    a, w, bias = randn(rows, _MATMUL_K), randn(_MATMUL_K, cols), randn(cols)
    x, r = randn(rows, cols), randn(rows, cols)
    q, s = qd.quantize_int8(x, group_size)
    grad = randn(rows, cols)
    producers = {
        f"addmm (K={_MATMUL_K}) -> quantize": ((a, w, bias), lambda a, w, b: torch.addmm(b, a, w)),
        "gelu -> quantize": ((x,), torch.nn.functional.gelu),
        "residual add -> quantize": ((x, r), torch.add),
    }
    programs = []
    for name, (inputs, produce) in producers.items():
        forms = {
            form: (lambda *t, produce=produce, quant=quant: (lambda y: (y, *quant(y)))(produce(*t)))
            for form, quant in _quantize_forms(group_size).items()
        }
        programs.append((name, inputs, produce, forms))
    # The backward side: a pointwise op (here gelu's backward) reads the dequantized copy.
    forms = {
        form: (lambda g, q, s, deq=deq: torch.ops.aten.gelu_backward(g, deq(q, s)))
        for form, deq in _dequantize_forms(group_size, (rows, cols), dtype).items()
    }
    programs.append(("dequantize -> gelu_backward", (grad, q, s),
                     lambda g, q, s: torch.ops.aten.gelu_backward(g, x), forms))
    return programs


def _keep_freed_memory_mapped() -> None:
    """NOTE on CPU timings: glibc returns a freed block of many MiB to the OS (munmap, or a
    trim of the heap top), so the next step's output buffer is faulted in page by page again:
    4096 faults for 16 MiB, several ms, more than the kernels themselves, and whether it
    happens varies from call to call (docs/BENCHMARKS.md, "Kernels"). A training
    step's caching is not what is measured here, so we ask glibc to keep freed memory
    (mallopt M_MMAP_THRESHOLD and M_TRIM_THRESHOLD to 1 GiB). Process-wide; this script only."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallopt"):
        print("note: no glibc mallopt; CPU times include page faults of fresh buffers")
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 1 << 30)


def fusion_table(args: argparse.Namespace) -> None:
    """Times of the custom-op and ATen forms of quantize/dequantize, each compiled by Inductor."""
    on_cuda = torch.cuda.is_available()
    device = "cuda" if on_cuda else "cpu"
    args.mbytes = args.mbytes or 16
    args.dtype = args.dtype or ("bf16" if on_cuda else "fp32")
    dtype = _DTYPES[args.dtype]
    g = args.group_size
    cols = 1024
    rows = args.mbytes * 2**20 // dtype.itemsize // cols
    if not on_cuda:
        _keep_freed_memory_mapped()
    if on_cuda:
        where = f"{torch.cuda.get_device_name(0)}: custom op = Triton kernel, ATen form = Inductor Triton"
    else:
        impl = "Triton INTERPRETER (not a speed path)" if TRITON_INTERPRET else "reference.py"
        where = (f"CPU ({torch.get_num_threads()} threads): custom op = {impl}, "
                 "ATen form = Inductor C++")
    print(f"{where}; activation {rows}x{cols} {args.dtype} ({args.mbytes} MiB), group {g}")
    print(f"{'program':<34}{'none ms':>9}{'custom op ms':>14}{'ATen ms':>9}"
          f"{'custom op adds':>16}{'ATen adds':>11}  faster")
    for name, inputs, plain, forms in _fusion_programs(rows, cols, dtype, device, g):
        compiled = {}
        for label, fn in (("none", plain), *forms.items()):
            torch.compiler.reset()
            compiled[label] = torch.compile(fn, fullgraph=True, dynamic=False)
            compiled[label](*inputs)  # compile and warm up
        # Interleaved rounds, best of each: on a shared CPU the load moves between rounds.
        times = {label: float("inf") for label in compiled}
        for _ in range(args.rounds):
            for label, fn in compiled.items():
                times[label] = min(times[label], _time_seconds(lambda: fn(*inputs), on_cuda, repeats=1))
        added = {k: times[k] - times["none"] for k in forms}
        faster = min(forms, key=times.__getitem__)
        print(f"{name:<34}{times['none'] * 1e3:>9.3f}{times['custom op'] * 1e3:>14.3f}"
              f"{times['ATen'] * 1e3:>9.3f}{added['custom op'] * 1e3:>16.3f}"
              f"{added['ATen'] * 1e3:>11.3f}  {faster}")



def memory_table(args: argparse.Namespace) -> None:
    """Bytes each reference.py op holds at its peak beyond its outputs, at one input size."""
    from memcompile.measure import measure_peak

    args.mbytes = args.mbytes or 8
    args.dtype = args.dtype or "fp32"
    dtype = _DTYPES[args.dtype]
    g = args.group_size
    x = torch.randn(args.mbytes * 2**20 // dtype.itemsize, dtype=dtype)
    q, s = ref.quantize_int8(x, g)
    _, packed = ref.fewbit_forward(x, 2, "gelu")
    grad = torch.randn_like(x)
    ops = {
        "quantize_int8": lambda: ref.quantize_int8(x, g),
        "quantize_fp8": lambda: ref.quantize_fp8(x, g),
        "dequantize": lambda: ref.dequantize(q, s, g, dtype),
        "fewbit_forward gelu 2b": lambda: ref.fewbit_forward(x, 2, "gelu"),
        "fewbit_forward silu 3b": lambda: ref.fewbit_forward(x, 3, "silu"),
        "fewbit_backward": lambda: ref.fewbit_backward(grad, packed, 2, "gelu"),
    }
    print(f"reference.py on CPU; input {args.mbytes} MiB {args.dtype}, group {g}, "
          f"chunk {getattr(ref, 'CHUNK_ELEMS', 'none')} elements")
    print(f"{'op':<24}{'peak MiB':>10}{'outputs MiB':>13}{'extra MiB':>11}{'extra / input':>15}")
    for name, fn in ops.items():
        fn()  # warm-up: cached few-bit tables
        results = []
        peak = measure_peak(lambda fn=fn: results.append(fn()), live_before_bytes=0).peak_bytes
        outputs = results[0] if isinstance(results[0], tuple) else (results[0],)
        out_bytes = sum(t.numel() * t.element_size() for t in outputs)
        print(f"{name:<24}{peak / 2**20:>10.2f}{out_bytes / 2**20:>13.2f}"
              f"{(peak - out_bytes) / 2**20:>11.2f}{(peak - out_bytes) / x.nbytes:>14.2f}x")


if __name__ == "__main__":
    main()
