"""Few-Bit Backward for GELU and SiLU: save a 2/3-bit code of f'(x) instead of x.

The forward computes y = f(x) and, per element, the code of the piecewise-constant
approximation of f'(x) from ``reference.fewbit_table`` (Lloyd-Max optimal for x ~ N(0,1),
rel. L2 error of f' 13% at 2 bits, 6.5% at 3 bits). The code is found by comparing x with
fp32 breakpoints in x-space (no erf/exp needed for it) and packed into bytes:
2-bit codes 4 per byte; 3-bit codes in 4-bit nibbles, 2 per byte (simpler unpacking at
the cost of 1 wasted bit per element). Backward: grad_in = grad_out * levels[code].

Bytes per element, input element size E (4 fp32, 2 bf16/fp16), S = storage bits (2 or 4):

    forward:   read E,          write E (y) + S/8 (codes)
    backward:  read E + S/8,    write E
    saved for backward: S/8 instead of E -> fp32 16x (2-bit) / 8x (3-bit) smaller,
                                            bf16   8x / 4x.

Layers: ``_fewbit_*_kernel`` -> ``_launch_*`` -> custom ops ``memcompile::fewbit_gelu`` /
``fewbit_silu`` (return (y, packed); autograd saves only ``packed``) and
``memcompile::fewbit_backward`` -> public functions. See quantize.py for why these are
``custom_op`` rather than ``triton_op``. Double backward differentiates the coded
derivative, which is piecewise constant: d(grad_in)/d(grad_out) = level, and f'' = 0.
"""

import functools

import torch

from . import reference as ref
from ._dispatch import HAS_TRITON, TRITON_INTERPRET, check_dtype, use_triton

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Elements per program; same reasoning as quantize._BLOCK_ELEMS (GPU: 4096 elements keeps
# 16 KiB of fp32 in flight per program; interpreter: ~9 ms of Python per program).
_BLOCK_ELEMS = 65536 if TRITON_INTERPRET else 4096

if HAS_TRITON:
    import triton
    import triton.language as tl

    from ._tl_utils import cast_rne

    @triton.jit
    def _tile(n_elements, PER_BYTE: tl.constexpr, BLOCK_BYTES: tl.constexpr):
        # Element (byte j, slot k) is flat index j * PER_BYTE + k: each program owns whole
        # bytes, so no two programs write the same byte.
        pid = tl.program_id(0).to(tl.int64)
        byte_idx = pid * BLOCK_BYTES + tl.arange(0, BLOCK_BYTES)
        slot = tl.arange(0, PER_BYTE)
        offs = byte_idx[:, None] * PER_BYTE + slot[None, :]
        return byte_idx, slot, offs, offs < n_elements

    @triton.jit
    def _fewbit_fwd_kernel(
        x_ptr, y_ptr, packed_ptr, breaks_ptr, codes_ptr, n_elements, n_bytes,
        IS_GELU: tl.constexpr, NUM_BREAKS: tl.constexpr, CODE_BITS: tl.constexpr,
        PER_BYTE: tl.constexpr, BLOCK_BYTES: tl.constexpr,
    ):
        # Reads E*n; writes E*n (y) + n*CODE_BITS/8 (codes). Tables: <= 10 floats, cached.
        byte_idx, slot, offs, mask = _tile(n_elements, PER_BYTE, BLOCK_BYTES)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if IS_GELU:
            y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))  # exact-erf GELU
        else:
            y = x * tl.sigmoid(x)
        tl.store(y_ptr + offs, cast_rne(y, y_ptr.dtype.element_ty), mask=mask)
        # Interval index = number of breakpoints <= x; fp32 compares, bit-identical to
        # reference.fewbit_codes. NUM_BREAKS <= 9, unrolled.
        interval = tl.zeros_like(offs).to(tl.int32)
        for k in tl.static_range(NUM_BREAKS):
            interval += (x >= tl.load(breaks_ptr + k)).to(tl.int32)
        code = tl.load(codes_ptr + interval)
        code = tl.where(mask, code, 0)  # padding slots of the last byte are 0
        # Fields do not overlap, so the sum is a bitwise OR.
        byte = tl.sum(code << (slot[None, :] * CODE_BITS), axis=1)
        tl.store(packed_ptr + byte_idx, byte.to(tl.uint8), mask=byte_idx < n_bytes)

    @triton.jit
    def _fewbit_bwd_kernel(
        grad_out_ptr, packed_ptr, levels_ptr, grad_in_ptr, n_elements, n_bytes,
        CODE_BITS: tl.constexpr, PER_BYTE: tl.constexpr, BLOCK_BYTES: tl.constexpr,
    ):
        # Reads E*n (grad_out) + n*CODE_BITS/8 (codes); writes E*n (grad_in).
        byte_idx, slot, offs, mask = _tile(n_elements, PER_BYTE, BLOCK_BYTES)
        byte = tl.load(packed_ptr + byte_idx, mask=byte_idx < n_bytes, other=0).to(tl.int32)
        code = (byte[:, None] >> (slot[None, :] * CODE_BITS)) & ((1 << CODE_BITS) - 1)
        level = tl.load(levels_ptr + code)  # gather from a 4/8-entry fp32 table
        g = tl.load(grad_out_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(grad_in_ptr + offs, cast_rne(g * level, grad_in_ptr.dtype.element_ty), mask=mask)


@functools.lru_cache(maxsize=None)
def _device_tables(
    kind: str, bits: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(breakpoints fp32, interval codes int32, levels fp32) on ``device``, built once."""
    t = ref.fewbit_table(kind, bits)
    return (
        torch.tensor(t.breakpoints, dtype=torch.float32, device=device),
        torch.tensor(t.interval_codes, dtype=torch.int32, device=device),
        torch.tensor(t.levels, dtype=torch.float32, device=device),
    )


def _tiling(n_bytes: int, per_byte: int) -> tuple[int, int]:
    block_bytes = min(_BLOCK_ELEMS // per_byte, triton.next_power_of_2(n_bytes))
    return block_bytes, triton.cdiv(n_bytes, block_bytes)


def _launch_forward(x: torch.Tensor, bits: int, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.contiguous()  # codes follow the row-major flattening
    n = x.numel()
    n_bytes = ref.packed_numel(n, bits)
    y = torch.empty_like(x)
    packed = torch.empty(n_bytes, dtype=torch.uint8, device=x.device)
    if n == 0:
        return y, packed
    breaks, codes, _ = _device_tables(kind, bits, x.device)
    code_bits = ref.storage_bits(bits)
    block_bytes, programs = _tiling(n_bytes, 8 // code_bits)
    _fewbit_fwd_kernel[(programs,)](
        x, y, packed, breaks, codes, n, n_bytes,
        IS_GELU=kind == "gelu", NUM_BREAKS=breaks.numel(), CODE_BITS=code_bits,
        PER_BYTE=8 // code_bits, BLOCK_BYTES=block_bytes,
    )
    return y, packed


def _launch_backward(
    grad_out: torch.Tensor, packed: torch.Tensor, bits: int, kind: str
) -> torch.Tensor:
    grad_out = grad_out.contiguous()  # autograd often hands over expanded (stride-0) grads
    grad_in = torch.empty_like(grad_out)
    n = grad_out.numel()
    if n == 0:
        return grad_in
    _, _, levels = _device_tables(kind, bits, grad_out.device)
    code_bits = ref.storage_bits(bits)
    block_bytes, programs = _tiling(packed.numel(), 8 // code_bits)
    _fewbit_bwd_kernel[(programs,)](
        grad_out, packed, levels, grad_in, n, packed.numel(),
        CODE_BITS=code_bits, PER_BYTE=8 // code_bits, BLOCK_BYTES=block_bytes,
    )
    return grad_in


def _forward_impl(x: torch.Tensor, bits: int, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    if use_triton(x):
        return _launch_forward(x, bits, kind)
    return ref.fewbit_forward(x, bits, kind)


def _forward_fake(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    n_bytes = (x.numel() * ref.storage_bits(bits) + 7) // 8
    return torch.empty_like(x), x.new_empty((n_bytes,), dtype=torch.uint8)


# ---- custom ops ----


@torch.library.custom_op("memcompile::fewbit_backward", mutates_args=())
def _fewbit_backward_op(
    grad_out: torch.Tensor, packed: torch.Tensor, bits: int, kind: str
) -> torch.Tensor:
    if use_triton(grad_out):
        return _launch_backward(grad_out, packed, bits, kind)
    return ref.fewbit_backward(grad_out, packed, bits, kind)


@_fewbit_backward_op.register_fake
def _(grad_out, packed, bits, kind):
    return torch.empty_like(grad_out)


def _setup_backward_context(ctx, inputs, output):
    _, packed, ctx.bits, ctx.kind = inputs
    ctx.save_for_backward(packed)


def _backward_of_backward(ctx, grad_grad_in):
    # grad_in is linear in grad_out with the same per-element factor levels[code].
    (packed,) = ctx.saved_tensors
    grad_grad_out = torch.ops.memcompile.fewbit_backward(grad_grad_in, packed, ctx.bits, ctx.kind)
    return grad_grad_out, None, None, None


_fewbit_backward_op.register_autograd(_backward_of_backward, setup_context=_setup_backward_context)


@torch.library.custom_op("memcompile::fewbit_gelu", mutates_args=())
def _fewbit_gelu_op(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward_impl(x, bits, "gelu")


@torch.library.custom_op("memcompile::fewbit_silu", mutates_args=())
def _fewbit_silu_op(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward_impl(x, bits, "silu")


def _register_autograd(op, kind: str) -> None:
    def setup_context(ctx, inputs, output):
        _, bits = inputs
        _, packed = output
        ctx.bits = bits
        ctx.save_for_backward(packed)  # the only tensor kept alive for backward

    def backward(ctx, grad_y, _grad_packed):
        (packed,) = ctx.saved_tensors
        return torch.ops.memcompile.fewbit_backward(grad_y, packed, ctx.bits, kind), None

    op.register_fake(_forward_fake)
    op.register_autograd(backward, setup_context=setup_context)


_register_autograd(_fewbit_gelu_op, "gelu")
_register_autograd(_fewbit_silu_op, "silu")

_FORWARD_OPS = {"gelu": "fewbit_gelu", "silu": "fewbit_silu"}


# ---- public API ----


def _check(x: torch.Tensor, bits: int, kind: str) -> None:
    check_dtype("x", x, _FLOAT_DTYPES)
    if bits not in ref.FEWBIT_BITS:
        raise ValueError(f"bits must be one of {ref.FEWBIT_BITS}, got {bits!r}")
    if kind not in ref.FEWBIT_KINDS:
        raise ValueError(f"kind must be one of {ref.FEWBIT_KINDS}, got {kind!r}")


def fewbit_forward(x: torch.Tensor, *, bits: int, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(f(x), packed codes of f'(x))``; ``packed`` is uint8 of ``packed_numel(x.numel())``."""
    _check(x, bits, kind)
    return getattr(torch.ops.memcompile, _FORWARD_OPS[kind])(x, bits)


def fewbit_gelu_forward(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact-erf GELU plus the packed code of its derivative."""
    return fewbit_forward(x, bits=bits, kind="gelu")


def fewbit_silu_forward(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SiLU plus the packed code of its derivative."""
    return fewbit_forward(x, bits=bits, kind="silu")


def fewbit_backward(
    grad_out: torch.Tensor,
    packed: torch.Tensor,
    *,
    bits: int,
    kind: str,
    shape: tuple[int, ...] | torch.Size,
) -> torch.Tensor:
    """grad_in = grad_out * levels[code], shaped ``shape``, dtype of ``grad_out``."""
    _check(grad_out, bits, kind)
    check_dtype("packed", packed, (torch.uint8,))
    n = torch.Size(shape).numel()
    if grad_out.numel() != n:
        raise ValueError(f"grad_out has {grad_out.numel()} elements, shape {tuple(shape)} has {n}")
    expected = ref.packed_numel(n, bits)
    if packed.numel() != expected:
        raise ValueError(
            f"packed has {packed.numel()} bytes, {n} elements at {bits} bits need {expected}; "
            "pass the bits used in the forward"
        )
    grad_out = grad_out.reshape(shape)
    return torch.ops.memcompile.fewbit_backward(grad_out, packed, bits, kind)


def fewbit_gelu(x: torch.Tensor, bits: int = 2) -> torch.Tensor:
    """Differentiable GELU whose backward uses only the ``bits``-bit derivative code."""
    _check(x, bits, "gelu")
    return torch.ops.memcompile.fewbit_gelu(x, bits)[0]


def fewbit_silu(x: torch.Tensor, bits: int = 2) -> torch.Tensor:
    """Differentiable SiLU whose backward uses only the ``bits``-bit derivative code."""
    _check(x, bits, "silu")
    return torch.ops.memcompile.fewbit_silu(x, bits)[0]
