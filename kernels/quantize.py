"""Per-group activation quantisation (int8 absmax, fp8 e4m3) for saved activations.

Groups are ``group_size`` contiguous elements of the row-major flattened tensor, the last
one possibly partial; one fp32 scale per group. Byte accounting per element, group size G,
input element size E (4 fp32, 2 bf16/fp16):

    quantize:   read E,     write 1 (codes) + 4/G (scales)   -> bf16, G=128: 2 B in, 1.03 B out
    dequantize: read 1 + 4/G,  write E

so a saved bf16 activation shrinks to 51.6% (G=128) and fp32 to 25.8%.

Layers (STYLE rule 8): ``_*_kernel`` (Triton) -> ``_launch_*`` (reshape, block choice,
launch) -> custom ops ``memcompile::quantize_int8`` / ``quantize_fp8`` / ``dequantize``
(eager dispatch + fake impl) -> public ``quantize`` / ``dequantize`` (validation).

NOTE on torch.library.triton_op: it is not used. Under TRITON_INTERPRET=1, ``wrap_triton``
returns the interpreted kernel unchanged, so triton_op's fake/functional tracing calls the
interpreter on FakeTensors and fails ("Cannot access data pointer of Tensor"; checked on
torch 2.13 CPU). ``torch.library.custom_op`` + ``register_fake`` traces everywhere; the
cost is that Inductor sees an opaque extern call instead of the Triton source.

NOTE on re-import: importing this file twice (``kernels.quantize`` from a source checkout
and ``memcompile.kernels.quantize`` when installed) re-registers the same ops; PyTorch
replaces the earlier definition, and both copies are the same code.
"""

import torch

from . import reference as ref
from ._dispatch import (
    HAS_TRITON,
    TRITON_INTERPRET,
    check_dtype,
    triton_has_fp8,
    use_triton,
)
from .sizes import QUANT_FORMATS, check_group_size

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_Q_DTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}

# Elements per program. On a GPU 4096 gives 16 KiB of fp32 loads per program: with 4 warps
# that is 32 elements per thread, enough bytes in flight to be bandwidth-bound without
# spilling. The CPU interpreter pays ~9 ms of Python per program whatever its size, so
# there we take 64 Ki elements (1823x781 fp32 to fp8: 13 s at 1024, 0.6 s at 65536).
_BLOCK_ELEMS = 65536 if TRITON_INTERPRET else 4096

TUNING: dict[str, int] = {"block_elems": _BLOCK_ELEMS, "num_warps": 4}
"""Elements per program and warps per program of every launch (``bench_kernels --sweep`` varies them)."""

if HAS_TRITON:
    import triton
    import triton.language as tl

    from ._tl_utils import cast_rne, round_half_even, round_to_e4m3

    @triton.jit
    def _load_groups(x_ptr, n_elements, GROUP: tl.constexpr, ROWS: tl.constexpr, OFF64: tl.constexpr):
        pid = tl.program_id(0)
        if OFF64:  # offsets reach 2**31 (set by the launch): 64-bit index arithmetic only then
            pid = pid.to(tl.int64)
        rows = pid * ROWS + tl.arange(0, ROWS)
        offs = rows[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
        mask = offs < n_elements  # masks the partial last group and the rows past the end
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        return rows, offs, mask, x

    @triton.jit
    def _quantize_int8_kernel(
        x_ptr, q_ptr, scale_ptr, n_elements, n_groups, seed,
        GROUP: tl.constexpr, ROWS: tl.constexpr, STOCHASTIC: tl.constexpr, OFF64: tl.constexpr,
    ):
        # Reads E*n bytes of x once; writes n int8 codes and 4*n/G bytes of scales.
        rows, offs, mask, x = _load_groups(x_ptr, n_elements, GROUP, ROWS, OFF64)
        # div_rn: IEEE division as in torch; plain `/` is approximate (div.full) on GPUs
        # and would move codes sitting on a .5 tie.
        scale = tl.math.div_rn(tl.max(tl.abs(x), axis=1), 127.0)
        safe = tl.where(scale > 0.0, scale, 1.0)  # all-zero group: codes 0, scale 0
        v = tl.math.div_rn(x, safe[:, None])
        if STOCHASTIC:
            # floor(v + u), u ~ U[0,1): E[q] = v. Philox keyed by (seed, element offset),
            # so the result does not depend on the block size.
            r = tl.floor(v + tl.rand(seed, offs))
        else:
            r = round_half_even(v)
        r = tl.minimum(tl.maximum(r, -127.0), 127.0)
        tl.store(q_ptr + offs, r.to(tl.int8), mask=mask)
        tl.store(scale_ptr + rows, scale, mask=rows < n_groups)

    @triton.jit
    def _quantize_fp8_kernel(
        x_ptr, q_ptr, scale_ptr, n_elements, n_groups,
        GROUP: tl.constexpr, ROWS: tl.constexpr, OFF64: tl.constexpr,
    ):
        # Same traffic as the int8 kernel: E*n in, n + 4*n/G out.
        rows, offs, mask, x = _load_groups(x_ptr, n_elements, GROUP, ROWS, OFF64)
        scale = tl.math.div_rn(tl.max(tl.abs(x), axis=1), 448.0)
        safe = tl.where(scale > 0.0, scale, 1.0)
        v = tl.math.div_rn(x, safe[:, None])
        v = tl.minimum(tl.maximum(v, -448.0), 448.0)  # |x|/scale may exceed 448 by an ulp
        tl.store(q_ptr + offs, round_to_e4m3(v).to(q_ptr.dtype.element_ty), mask=mask)
        tl.store(scale_ptr + rows, scale, mask=rows < n_groups)

    @triton.jit
    def _dequantize_kernel(
        q_ptr, scale_ptr, out_ptr, n_elements, n_groups,
        GROUP: tl.constexpr, ROWS: tl.constexpr, OFF64: tl.constexpr,
    ):
        # Reads n codes (int8 or fp8, both exact in fp32) + 4*n/G scale bytes; writes E*n.
        rows, offs, mask, q = _load_groups(q_ptr, n_elements, GROUP, ROWS, OFF64)
        scale = tl.load(scale_ptr + rows, mask=rows < n_groups, other=0.0)
        out = q * scale[:, None]  # one fp32 rounding, then one to out dtype, as reference
        tl.store(out_ptr + offs, cast_rne(out, out_ptr.dtype.element_ty), mask=mask)


def _tiling(n_groups: int, group_size: int) -> tuple[int, int]:
    """(groups per program, programs). Small tensors get a smaller tile, not idle lanes."""
    rows = min(max(TUNING["block_elems"] // group_size, 1), triton.next_power_of_2(n_groups))
    return rows, triton.cdiv(n_groups, rows)


def _off64(rows: int, programs: int, group_size: int) -> bool:
    """Whether the largest offset a program forms (a row past the end included) reaches 2**31."""
    return rows * programs * group_size >= 2**31


def _launch_quantize(
    x: torch.Tensor, group_size: int, fmt: str, stochastic: bool, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    # Groups are defined on the row-major flattening: strided inputs pay one copy here.
    x = x.contiguous()
    n = x.numel()
    n_groups = ref.num_groups(n, group_size)
    q = torch.empty(x.shape, dtype=_Q_DTYPES[fmt], device=x.device)
    scales = torch.empty(n_groups, dtype=torch.float32, device=x.device)
    if n == 0:
        return q, scales
    rows, programs = _tiling(n_groups, group_size)
    off64 = _off64(rows, programs, group_size)
    if fmt == "int8":
        _quantize_int8_kernel[(programs,)](
            x, q, scales, n, n_groups, seed,
            GROUP=group_size, ROWS=rows, STOCHASTIC=stochastic, OFF64=off64, num_warps=TUNING["num_warps"],
        )
    else:
        _quantize_fp8_kernel[(programs,)](x, q, scales, n, n_groups, GROUP=group_size, ROWS=rows, OFF64=off64,
                                          num_warps=TUNING["num_warps"])
    return q, scales


def _launch_dequantize(
    q: torch.Tensor, scales: torch.Tensor, group_size: int, out_dtype: torch.dtype
) -> torch.Tensor:
    q = q.contiguous()
    out = torch.empty(q.shape, dtype=out_dtype, device=q.device)
    n = q.numel()
    if n == 0:
        return out
    n_groups = scales.numel()
    rows, programs = _tiling(n_groups, group_size)
    _dequantize_kernel[(programs,)](
        q, scales.contiguous(), out, n, n_groups, GROUP=group_size, ROWS=rows,
        OFF64=_off64(rows, programs, group_size), num_warps=TUNING["num_warps"],
    )
    return out


# ---- custom ops: eager dispatch + fake impls (shapes only) so torch.compile can trace ----


@torch.library.custom_op("memcompile::quantize_int8", mutates_args=())
def _quantize_int8_op(
    x: torch.Tensor, group_size: int, stochastic: bool, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    if use_triton(x):
        return _launch_quantize(x, group_size, "int8", stochastic, seed)
    return ref.quantize_int8(x, group_size, stochastic, seed)


@_quantize_int8_op.register_fake
def _(x, group_size, stochastic, seed):
    n_groups = (x.numel() + group_size - 1) // group_size
    return x.new_empty(x.shape, dtype=torch.int8), x.new_empty((n_groups,), dtype=torch.float32)


@torch.library.custom_op("memcompile::quantize_fp8", mutates_args=())
def _quantize_fp8_op(x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    if use_triton(x) and triton_has_fp8(x):
        return _launch_quantize(x, group_size, "fp8", False, 0)
    return ref.quantize_fp8(x, group_size)


@_quantize_fp8_op.register_fake
def _(x, group_size):
    n_groups = (x.numel() + group_size - 1) // group_size
    return (
        x.new_empty(x.shape, dtype=torch.float8_e4m3fn),
        x.new_empty((n_groups,), dtype=torch.float32),
    )


@torch.library.custom_op("memcompile::dequantize", mutates_args=())
def _dequantize_op(
    q: torch.Tensor, scales: torch.Tensor, group_size: int, out_dtype: torch.dtype
) -> torch.Tensor:
    if use_triton(q) and (q.dtype == torch.int8 or triton_has_fp8(q)):
        return _launch_dequantize(q, scales, group_size, out_dtype)
    return ref.dequantize(q, scales, group_size, out_dtype)


@_dequantize_op.register_fake
def _(q, scales, group_size, out_dtype):
    return q.new_empty(q.shape, dtype=out_dtype)


# ---- public API ----


def quantize(
    x: torch.Tensor,
    *,
    group_size: int = 128,
    fmt: str = "int8",
    stochastic: bool = False,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise ``x`` per group of ``group_size`` flattened elements.

    Returns ``(q, scales)``: ``q`` has x's shape and dtype int8 (``fmt="int8"``) or
    float8_e4m3fn (``fmt="fp8"``), and
    ``scales`` is fp32 with ``ceil(x.numel() / group_size)`` entries, so that
    ``x ~= q * scales[group]``. ``stochastic=True`` (int8 only) rounds up with probability
    equal to the fractional part, seeded by ``seed``; the default rounds half to even.
    """
    check_dtype("x", x, _FLOAT_DTYPES)
    check_group_size(group_size)
    if fmt not in QUANT_FORMATS:
        raise ValueError(f"fmt must be one of {QUANT_FORMATS}, got {fmt!r}")
    if stochastic and fmt != "int8":
        raise ValueError("stochastic rounding is implemented for fmt='int8' only; "
                         f"got fmt={fmt!r}: use stochastic=False")
    if not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise ValueError(f"seed must be an int in [0, 2**31), got {seed!r}")
    if fmt == "int8":
        return torch.ops.memcompile.quantize_int8(x, group_size, stochastic, seed)
    return torch.ops.memcompile.quantize_fp8(x, group_size)


def dequantize(
    q: torch.Tensor,
    scales: torch.Tensor,
    *,
    group_size: int,
    shape: tuple[int, ...] | torch.Size,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Inverse of ``quantize``: ``q * scales[group]`` in fp32, rounded once to ``out_dtype``,
    reshaped to ``shape`` (q may be passed flattened)."""
    check_dtype("q", q, tuple(_Q_DTYPES.values()))
    check_dtype("scales", scales, (torch.float32,))
    check_group_size(group_size)
    if out_dtype not in _FLOAT_DTYPES:
        raise ValueError(f"out_dtype must be one of {_FLOAT_DTYPES}, got {out_dtype}")
    expected_groups = ref.num_groups(q.numel(), group_size)
    if scales.numel() != expected_groups:
        raise ValueError(
            f"scales has {scales.numel()} entries but q.numel()={q.numel()} with "
            f"group_size={group_size} needs {expected_groups}; pass the group_size used "
            "by quantize"
        )
    if q.shape.numel() != torch.Size(shape).numel():
        raise ValueError(f"shape {tuple(shape)} does not hold q's {q.numel()} elements")
    return torch.ops.memcompile.dequantize(q, scales, group_size, out_dtype).reshape(shape)
