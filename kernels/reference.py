"""Eager PyTorch twins of every kernel in this package.

Used as the ground truth by tests/kernels and as the implementation the custom ops
dispatch to when Triton cannot run (CPU tensors without TRITON_INTERPRET=1, or no
triton installed). On that path they run inside a training step whose memory the planner
predicts from the ops' outputs alone, so they work like the kernels do: the outputs are
allocated once and filled chunk by chunk (``CHUNK_ELEMS`` elements, whole groups / whole
packed bytes), and every fp32 temporary is the size of one chunk, never of the input.

Numerics contract with the Triton kernels (what the tests rely on):
- group statistics are computed in fp32 from the flattened, row-major tensor;
- divisions are IEEE round-to-nearest (kernels use ``tl.math.div_rn``);
- int8 rounding is round-half-to-even (``torch.round``);
- fp8 rounding is PyTorch's round-to-nearest-even cast to ``torch.float8_e4m3fn``;
- few-bit codes come from comparing the fp32 input against fp32 breakpoints in x-space,
  so kernel and reference codes are bit-identical.
Chunking changes none of these: every value depends on its own group (or element) only.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .sizes import FEWBIT_BITS, fewbit_nbytes, num_groups, storage_bits

INT8_QMAX = 127.0  # symmetric: -128 is never produced, so negation is exact
FP8_E4M3_MAX = 448.0  # largest finite torch.float8_e4m3fn value (no inf in this format)

FEWBIT_KINDS = ("gelu", "silu")

CHUNK_ELEMS = 1 << 16
"""Elements per chunk: a multiple of every group size (<= 1024) and of every codes-per-byte
count (2, 4). Each fp32 temporary is then 256 KiB; an op holds at most three at once, so
its memory beyond its outputs stays under 1 MiB whatever the input size. At this size the
Python loop costs about 10 us per chunk against ~30 us of arithmetic (2 cores)."""


def _flat(t: torch.Tensor) -> torch.Tensor:
    # Groups and codes follow the row-major flattening. A contiguous input is viewed;
    # anything else is copied once, as the Triton launchers' .contiguous() does.
    return t.view(-1) if t.is_contiguous() else t.reshape(-1)


def _chunks(numel: int, size: int = CHUNK_ELEMS) -> Iterator[tuple[int, int]]:
    """(start, end) element ranges of ``size`` (default ``CHUNK_ELEMS``); only the last is shorter."""
    for start in range(0, numel, size):
        yield start, min(start + size, numel)


FEWBIT_SPLIT = 8
"""A few-bit op splits a tensor smaller than ``FEWBIT_SPLIT`` chunks into that many (of at least
``FEWBIT_MIN_CHUNK`` elements): its temporaries (an fp32 copy, int32 intervals: about 9 bytes per chunk
element) then stay a fraction of the tensor itself, so storing a small activation as a few-bit code still
saves memory (a 4,096-element bf16 SiLU held 53 KB of temporaries as one chunk, its input is 8 KB)."""
FEWBIT_MIN_CHUNK = 256


def _fewbit_chunk(numel: int) -> int:
    """Chunk size of a few-bit op over ``numel`` elements: a multiple of 4 (whole packed bytes)."""
    size = min(CHUNK_ELEMS, max(FEWBIT_MIN_CHUNK, -(-numel // FEWBIT_SPLIT)))
    return -(-size // 4) * 4


def _grouped_fp32(part: torch.Tensor, group_size: int) -> torch.Tensor:
    """One chunk as an fp32 (groups, group_size) tensor.

    fp32 input: a view (no copy). Only the last chunk can end inside a group; it is
    zero-padded, which never changes a group's absmax, and the padded codes are dropped.
    """
    part = part.float()
    pad = -part.numel() % group_size
    if pad:
        part = torch.nn.functional.pad(part, (0, pad))
    return part.view(-1, group_size)


def _absmax_scales(groups: torch.Tensor, qmax: float) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 scale per group (absmax / qmax) and the divisor: all-zero groups keep scale 0
    (dequantize gives exact zeros) and divide by 1 instead."""
    lo, hi = torch.aminmax(groups, dim=1)  # absmax without an |x| copy of the chunk
    # abs_ turns a -0.0 (all-zero group) into the +0.0 the kernel's max(|x|) gives.
    scales = torch.maximum(hi, -lo).abs_() / qmax
    return scales, torch.where(scales > 0, scales, torch.ones_like(scales))


def _quantize(
    x: torch.Tensor, group_size: int, q_dtype: torch.dtype, qmax: float, round_chunk
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shared loop of the quantizers: ``round_chunk(v)`` turns x / scale (fp32, may be
    overwritten) into values exactly representable in ``q_dtype``."""
    q = torch.empty(x.shape, dtype=q_dtype, device=x.device)
    scales = torch.empty(num_groups(x.numel(), group_size), dtype=torch.float32, device=x.device)
    flat, q_flat = _flat(x), q.view(-1)
    for start, end in _chunks(flat.numel()):
        groups = _grouped_fp32(flat[start:end], group_size)
        s, safe = _absmax_scales(groups, qmax)
        scales[start // group_size : start // group_size + s.numel()] = s
        v = torch.div(groups, safe[:, None])  # a new chunk: fp32 input groups are a view of x
        q_flat[start:end] = round_chunk(v).view(-1)[: end - start]
    return q, scales


def quantize_int8(
    x: torch.Tensor, group_size: int, stochastic: bool = False, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax int8 per group: q = round(x / (absmax / 127)).

    Stochastic rounding uses ``floor(v + u)``, u ~ U[0, 1) drawn chunk by chunk from one
    torch generator seeded with ``seed``; it is unbiased but NOT bit-identical to the
    kernel's ``tl.rand`` stream.
    """
    gen = torch.Generator(device=x.device).manual_seed(seed) if stochastic else None

    def round_chunk(v: torch.Tensor) -> torch.Tensor:
        if gen is not None:
            v.add_(torch.rand(v.shape, generator=gen, device=v.device, dtype=torch.float32)).floor_()
        else:
            v.round_()  # round half to even
        return v.clamp_(-INT8_QMAX, INT8_QMAX)  # integral and in range: the int8 store is exact

    return _quantize(x, group_size, torch.int8, INT8_QMAX, round_chunk)


def quantize_fp8(x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group scaled fp8 e4m3: q = fp8(x / (absmax / 448)); the store rounds to nearest even."""

    def round_chunk(v: torch.Tensor) -> torch.Tensor:
        return v.clamp_(-FP8_E4M3_MAX, FP8_E4M3_MAX)  # |x|/scale may exceed 448 by an ulp

    return _quantize(x, group_size, torch.float8_e4m3fn, FP8_E4M3_MAX, round_chunk)


def dequantize(
    q: torch.Tensor, scales: torch.Tensor, group_size: int, out_dtype: torch.dtype
) -> torch.Tensor:
    """out = q * scale[group] in fp32, rounded once to ``out_dtype`` (by the store)."""
    out = torch.empty(q.shape, dtype=out_dtype, device=q.device)
    flat, out_flat = _flat(q), out.view(-1)
    for start, end in _chunks(flat.numel()):
        groups = _grouped_fp32(flat[start:end], group_size)  # codes are never fp32: a copy
        g0 = start // group_size
        groups.mul_(scales[g0 : g0 + groups.shape[0], None])
        out_flat[start:end] = groups.view(-1)[: end - start]
    return out


# ---------------------------------------------------------------------------
# Few-bit backward (Novikov et al., "Few-Bit Backward: Quantized Gradients of
# Activation Functions for Memory Footprint Reduction", ICML 2023).
# ---------------------------------------------------------------------------


def gelu_derivative(x: torch.Tensor) -> torch.Tensor:
    """d/dx [x * Phi(x)] = Phi(x) + x * phi(x) (exact erf GELU)."""
    cdf = 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return cdf + x * pdf


def silu_derivative(x: torch.Tensor) -> torch.Tensor:
    """d/dx [x * sigmoid(x)] = s * (1 + x * (1 - s))."""
    s = torch.sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


_DERIVATIVES = {"gelu": gelu_derivative, "silu": silu_derivative}


@dataclass(frozen=True, slots=True, kw_only=True)
class FewBitTable:
    """Piecewise-constant approximation of f' with ``2**bits`` levels.

    ``breakpoints`` are sorted fp32-representable x values; interval i is
    ``[breakpoints[i-1], breakpoints[i])`` (open-ended at both extremes), i.e. the
    interval index of x is ``sum(x >= breakpoints)``, and its code is
    ``interval_codes[i]``. ``levels[code]`` is the derivative value used in backward.
    """

    kind: str
    bits: int
    levels: tuple[float, ...]
    """Lloyd-Max reconstruction levels (conditional means of f'(X)), ascending."""
    thresholds: tuple[float, ...]
    """Decision boundaries in derivative space (midpoints of adjacent levels)."""
    breakpoints: tuple[float, ...]
    """x values where f'(x) crosses a threshold, rounded to fp32."""
    interval_codes: tuple[int, ...]
    """Code of each of the ``len(breakpoints) + 1`` intervals."""
    rel_l2_error: float
    """sqrt(E[(f'(X) - level(X))^2] / E[f'(X)^2]) for X ~ N(0, 1), on the design grid."""

    @property
    def storage_bits(self) -> int:
        """Bits per code in the packed layout: 3-bit codes live in 4-bit nibbles."""
        return 2 if self.bits == 2 else 4


# Design grid: X ~ N(0,1) truncated to [-10, 10] (tail mass 1.5e-23, irrelevant in fp32).
# An even point count keeps the grid symmetric without a point at x = 0, where f'(0) = 1/2
# equals a threshold and would be an atom assigned to one side (biasing the symmetric levels).
_GRID_HALF_WIDTH = 10.0
_GRID_POINTS = 200_000
_LLOYD_ITERS = 500


@functools.lru_cache(maxsize=None)
def fewbit_table(kind: str, bits: int) -> FewBitTable:
    """Lloyd-Max quantiser of f'(X), X ~ N(0, 1), mapped back to x-space breakpoints.

    For fixed levels the MSE-optimal code of x is the level nearest to f'(x), so the
    optimum over all piecewise-constant functions of x with 2**bits values is the 1-D
    Lloyd-Max quantiser of the random variable f'(X). Because f' is not monotone, one
    threshold can map to several x breakpoints (GELU': 2-3 each).

    Lloyd converges in <= 42 iterations from the quantile start; 30 random restarts found
    no better optimum. Resulting tables (rounded to 4 digits; recomputed on first use, 0.1 s):
      gelu 2 bit: levels [-0.0464, 0.3127, 0.6873, 1.0464]   breakpoints [-0.499, 0, 0.499]
                  codes (0, 1, 2, 3)                                      rel L2 err 0.1325
      gelu 3 bit: levels [-0.0915, 0.0619, 0.2335, 0.4106, 0.5894, 0.7665, 0.9381, 1.0915]
                  breakpoints [-2.9151, -0.7873, -0.4757, -0.2269, 0, 0.2269, 0.4757,
                  0.7873, 2.9151]  codes (1, 0, 1, 2, 3, 4, 5, 6, 7, 6)   rel L2 err 0.0646
      silu 2 bit: levels [0.0336, 0.3445, 0.6555, 0.9664]    breakpoints [-0.6686, 0, 0.6686]
                  codes (0, 1, 2, 3)                                      rel L2 err 0.1442
      silu 3 bit: levels [-0.0407, 0.1135, 0.2681, 0.4227, 0.5773, 0.7319, 0.8865, 1.0407]
                  breakpoints [-1.127, -0.6642, -0.3144, 0, 0.3144, 0.6642, 1.127]
                  codes (0, 1, ..., 7)                                    rel L2 err 0.0714
    Both derivatives satisfy f'(x) + f'(-x) = 1, so the tables are symmetric about 1/2.
    """
    if kind not in _DERIVATIVES:
        raise ValueError(f"few-bit kind must be one of {FEWBIT_KINDS}, got {kind!r}")
    if bits not in FEWBIT_BITS:
        raise ValueError(f"few-bit bits must be one of {FEWBIT_BITS}, got {bits!r}")
    deriv = _DERIVATIVES[kind]
    x = torch.linspace(-_GRID_HALF_WIDTH, _GRID_HALF_WIDTH, _GRID_POINTS, dtype=torch.float64)
    w = torch.exp(-0.5 * x * x)
    w = w / w.sum()
    d = deriv(x)

    n_levels = 2**bits
    # Initialise at weighted quantiles of f'(X) so every cell starts non-empty.
    order = torch.argsort(d)
    cdf = torch.cumsum(w[order], 0)
    probs = (torch.arange(n_levels, dtype=torch.float64) + 0.5) / n_levels
    levels = d[order][torch.searchsorted(cdf, probs).clamp(max=d.numel() - 1)]
    for _ in range(_LLOYD_ITERS):
        thresholds = 0.5 * (levels[1:] + levels[:-1])
        cell = torch.bucketize(d, thresholds)
        mass = torch.zeros(n_levels, dtype=torch.float64).index_add_(0, cell, w)
        moment = torch.zeros(n_levels, dtype=torch.float64).index_add_(0, cell, w * d)
        new = torch.where(mass > 0, moment / mass.clamp_min(1e-300), levels)
        if torch.max(torch.abs(new - levels)) < 1e-13:
            levels = new
            break
        levels = new
    thresholds = 0.5 * (levels[1:] + levels[:-1])

    breakpoints = _crossings(deriv, x, d, thresholds)
    # Code of each interval, evaluated strictly inside it (tails: 1 unit beyond the ends).
    probes = [breakpoints[0] - 1.0] if breakpoints else [0.0]
    probes += [0.5 * (a + b) for a, b in zip(breakpoints[:-1], breakpoints[1:])]
    probes += [breakpoints[-1] + 1.0] if breakpoints else []
    probe_d = deriv(torch.tensor(probes, dtype=torch.float64))
    interval_codes = tuple(int(c) for c in torch.bucketize(probe_d, thresholds))

    # Error of the table exactly as the kernels apply it (fp32 breakpoints).
    bp = torch.tensor(breakpoints, dtype=torch.float64)
    codes = torch.tensor(interval_codes)[torch.bucketize(x, bp, right=True)]
    err = d - levels[codes]
    rel = math.sqrt(float((w * err * err).sum() / (w * d * d).sum()))
    return FewBitTable(
        kind=kind,
        bits=bits,
        levels=tuple(float(v) for v in levels.float()),
        thresholds=tuple(float(v) for v in thresholds),
        breakpoints=tuple(breakpoints),
        interval_codes=interval_codes,
        rel_l2_error=rel,
    )


def _crossings(deriv, x: torch.Tensor, d: torch.Tensor, thresholds: torch.Tensor) -> list[float]:
    """Sorted fp32 x where f'(x) = t for some threshold t: grid sign change, then bisection.

    80 float64 bisection steps shrink a 5e-5 bracket far below fp32 resolution.
    """
    lo_parts, hi_parts, t_parts = [], [], []
    for t in thresholds.tolist():
        s = torch.sign(d - t)
        idx = torch.nonzero(s[1:] != s[:-1]).flatten()
        lo_parts.append(x[idx])
        hi_parts.append(x[idx + 1])
        t_parts.append(torch.full((idx.numel(),), t, dtype=torch.float64))
    lo, hi, t = torch.cat(lo_parts), torch.cat(hi_parts), torch.cat(t_parts)
    lo_positive = deriv(lo) > t
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        same_side = (deriv(mid) > t) == lo_positive
        lo = torch.where(same_side, mid, lo)
        hi = torch.where(same_side, hi, mid)
    root = 0.5 * (lo + hi)
    # f'(0) = 1/2 is a threshold for both kinds; snap its float64 noise (~1e-15) to 0.
    root = torch.where(root.abs() < 1e-12, torch.zeros_like(root), root)
    return sorted(float(v) for v in root.float())


def packed_numel(numel: int, bits: int) -> int:
    """Bytes of the packed code buffer: ceil(numel * storage_bits / 8)."""
    return fewbit_nbytes(numel, bits=bits)


@functools.lru_cache(maxsize=None)
def _fewbit_tensors(
    kind: str, bits: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(breakpoints fp32, interval codes uint8, levels fp32) on ``device``, built once."""
    t = fewbit_table(kind, bits)
    return (
        torch.tensor(t.breakpoints, dtype=torch.float32, device=device),
        torch.tensor(t.interval_codes, dtype=torch.uint8, device=device),
        torch.tensor(t.levels, dtype=torch.float32, device=device),
    )


def _pack_chunk(xf: torch.Tensor, breakpoints: torch.Tensor, interval_codes: torch.Tensor,
                bits: int) -> torch.Tensor:
    """Packed codes of one fp32 chunk: the interval index of x is the number of breakpoints
    <= x (fp32 compares, as the kernel), its code ``interval_codes[interval]``. Little end
    first: element 4j+k (2-bit) sits at bits [2k, 2k+2) of byte j; 3-bit codes in nibbles."""
    interval = torch.zeros(xf.shape, dtype=torch.int32, device=xf.device)
    for b in breakpoints:  # <= 9 breakpoints
        interval += xf >= b
    codes = interval_codes.index_select(0, interval)
    sbits = storage_bits(bits)
    per_byte = 8 // sbits
    pad = -codes.numel() % per_byte  # only the last chunk; padding slots get code 0
    codes = torch.nn.functional.pad(codes, (0, pad)).view(-1, per_byte)
    packed = codes[:, 0].clone()
    for k in range(1, per_byte):  # fields do not overlap: OR of shifted codes
        packed |= codes[:, k] << (k * sbits)
    return packed


def fewbit_forward(x: torch.Tensor, bits: int, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """y = f(x) (computed in fp32, rounded to x.dtype) and the packed derivative codes."""
    breakpoints, interval_codes, _ = _fewbit_tensors(kind, bits, x.device)
    f = torch.nn.functional.gelu if kind == "gelu" else torch.nn.functional.silu
    per_byte = 8 // storage_bits(bits)
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    packed = torch.empty(packed_numel(x.numel(), bits), dtype=torch.uint8, device=x.device)
    flat, y_flat = _flat(x), y.view(-1)
    for start, end in _chunks(flat.numel(), _fewbit_chunk(flat.numel())):  # chunks hold whole bytes
        xf = flat[start:end].float()
        y_flat[start:end] = f(xf)
        packed[start // per_byte : start // per_byte + -(-(end - start) // per_byte)] = (
            _pack_chunk(xf, breakpoints, interval_codes, bits)
        )
    return y, packed


def fewbit_backward(
    grad_out: torch.Tensor, packed: torch.Tensor, bits: int, kind: str
) -> torch.Tensor:
    """grad_in = grad_out * levels[code] in fp32, rounded once to grad_out.dtype.

    grad_out is first copied into the (contiguous) output, which reads any strides,
    expanded ones included, without a temporary; it is then scaled in place, one code slot
    of the packed bytes at a time, by a per-byte table: the temporaries are an int32 index
    and an fp32 factor per packed byte (2 bytes per element at 2 bits), not int32 codes and
    fp32 factors per element (9), so a tensor smaller than a chunk adds little to the peak.
    For bf16/fp16 the copy is exact, so the product is still rounded once.
    """
    per_byte = 8 // storage_bits(bits)
    slot_levels = _fewbit_slot_levels(kind, bits, grad_out.device)
    grad_in = torch.empty(grad_out.shape, dtype=grad_out.dtype, device=grad_out.device)
    grad_in.copy_(grad_out)
    flat = grad_in.view(-1)
    for start, end in _chunks(flat.numel(), _fewbit_chunk(flat.numel())):
        b0, whole = start // per_byte, (end - start) // per_byte
        rows = flat[start : start + whole * per_byte].view(whole, per_byte)
        index = packed[b0 : b0 + whole].int()
        for k in range(per_byte):
            _scale_(rows[:, k], slot_levels[k].index_select(0, index))
        tail = end - start - whole * per_byte  # only the last chunk ends inside a byte
        if tail:
            index = packed[b0 + whole : b0 + whole + 1].int()
            for k in range(tail):
                _scale_(flat[end - tail + k : end - tail + k + 1], slot_levels[k].index_select(0, index))
    return grad_in


@functools.lru_cache(maxsize=None)
def _fewbit_slot_levels(kind: str, bits: int, device: torch.device) -> torch.Tensor:
    """fp32 (codes per byte, 256): the level of slot k's code in each byte value."""
    _, _, levels = _fewbit_tensors(kind, bits, device)
    sbits = storage_bits(bits)
    shifts = torch.arange(0, 8, sbits, device=device)
    codes = (torch.arange(256, device=device)[None, :] >> shifts[:, None]) & ((1 << sbits) - 1)
    # 3-bit codes sit in 4-bit nibbles: the 8 unused nibble values never occur; give them level 0
    padded = torch.cat([levels, levels.new_zeros((1 << sbits) - levels.numel())])
    return padded[codes]


def _scale_(dst: torch.Tensor, factor: torch.Tensor) -> None:
    """dst *= factor (fp32), rounded once to dst's dtype."""
    if dst.dtype == torch.float32:
        dst.mul_(factor)
    else:
        dst.copy_(factor.mul_(dst))
