"""Eager PyTorch twins of every kernel in this package.

Used as the ground truth by tests/kernels and as the implementation the custom ops
dispatch to when Triton cannot run (CPU tensors without TRITON_INTERPRET=1, or no
triton installed). Every function here is written for clarity, not speed: it upcasts
to fp32 and materialises padded copies.

Numerics contract with the Triton kernels (what the tests rely on):
- group statistics are computed in fp32 from the flattened, row-major tensor;
- divisions are IEEE round-to-nearest (kernels use ``tl.math.div_rn``);
- int8 rounding is round-half-to-even (``torch.round``);
- fp8 rounding is PyTorch's round-to-nearest-even cast to ``torch.float8_e4m3fn``;
- few-bit codes come from comparing the fp32 input against fp32 breakpoints in x-space,
  so kernel and reference codes are bit-identical.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from .sizes import FEWBIT_BITS, fewbit_nbytes, num_groups, storage_bits

INT8_QMAX = 127.0  # symmetric: -128 is never produced, so negation is exact
FP8_E4M3_MAX = 448.0  # largest finite torch.float8_e4m3fn value (no inf in this format)

FEWBIT_KINDS = ("gelu", "silu")


def _grouped_fp32(x: torch.Tensor, group_size: int) -> torch.Tensor:
    # Zero padding never changes a group's absmax and its codes are dropped afterwards.
    flat = x.reshape(-1).float()
    pad = num_groups(flat.numel(), group_size) * group_size - flat.numel()
    return torch.nn.functional.pad(flat, (0, pad)).view(-1, group_size)


def _scales(groups: torch.Tensor, qmax: float) -> tuple[torch.Tensor, torch.Tensor]:
    scales = groups.abs().amax(dim=1) / qmax  # fp32, one per group
    # All-zero groups keep scale 0 (dequantize gives exact zeros); divide by 1 instead.
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    return scales, safe


def quantize_int8(
    x: torch.Tensor, group_size: int, stochastic: bool = False, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax int8 per group: q = round(x / (absmax / 127)).

    Stochastic rounding uses ``floor(v + u)``, u ~ U[0, 1) from a torch generator seeded
    with ``seed``; it is unbiased but NOT bit-identical to the kernel's ``tl.rand`` stream.
    """
    groups = _grouped_fp32(x, group_size)
    scales, safe = _scales(groups, INT8_QMAX)
    v = groups / safe[:, None]
    if stochastic:
        gen = torch.Generator(device=x.device).manual_seed(seed)
        u = torch.rand(v.shape, generator=gen, device=x.device, dtype=torch.float32)
        r = torch.floor(v + u)
    else:
        r = torch.round(v)  # round half to even
    q = r.clamp(-INT8_QMAX, INT8_QMAX).to(torch.int8)
    return q.reshape(-1)[: x.numel()].reshape(x.shape), scales


def quantize_fp8(x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group scaled fp8 e4m3: q = fp8(x / (absmax / 448))."""
    groups = _grouped_fp32(x, group_size)
    scales, safe = _scales(groups, FP8_E4M3_MAX)
    v = (groups / safe[:, None]).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX)
    q = v.to(torch.float8_e4m3fn)
    return q.reshape(-1)[: x.numel()].reshape(x.shape), scales


def dequantize(
    q: torch.Tensor, scales: torch.Tensor, group_size: int, out_dtype: torch.dtype
) -> torch.Tensor:
    """out = q * scale[group] in fp32, rounded once to ``out_dtype``."""
    groups = _grouped_fp32(q, group_size)
    out = groups * scales[:, None]
    return out.reshape(-1)[: q.numel()].reshape(q.shape).to(out_dtype)


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


def fewbit_codes(x: torch.Tensor, kind: str, bits: int) -> torch.Tensor:
    """int64 code per element of x (flattened), from fp32 comparisons in x-space."""
    table = fewbit_table(kind, bits)
    bp = torch.tensor(table.breakpoints, dtype=torch.float32, device=x.device)
    interval = (x.reshape(-1).float()[:, None] >= bp[None, :]).sum(dim=1)
    return torch.tensor(table.interval_codes, device=x.device)[interval]


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Little-end-first packing: element 4j+k (2-bit) sits at bits [2k, 2k+2) of byte j."""
    sbits = storage_bits(bits)
    per_byte = 8 // sbits
    pad = packed_numel(codes.numel(), bits) * per_byte - codes.numel()
    c = torch.nn.functional.pad(codes.reshape(-1).to(torch.int32), (0, pad)).view(-1, per_byte)
    shifts = torch.arange(per_byte, device=codes.device, dtype=torch.int32) * sbits
    return (c << shifts).sum(dim=1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, numel: int, bits: int) -> torch.Tensor:
    """Inverse of ``pack_codes``: int64 codes of the first ``numel`` elements."""
    sbits = storage_bits(bits)
    per_byte = 8 // sbits
    shifts = torch.arange(per_byte, device=packed.device, dtype=torch.int32) * sbits
    c = (packed.to(torch.int32)[:, None] >> shifts) & ((1 << sbits) - 1)
    return c.reshape(-1)[:numel].long()


def fewbit_forward(x: torch.Tensor, bits: int, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """y = f(x) (computed in fp32, rounded to x.dtype) and the packed derivative codes."""
    xf = x.float()
    y = torch.nn.functional.gelu(xf) if kind == "gelu" else torch.nn.functional.silu(xf)
    return y.to(x.dtype), pack_codes(fewbit_codes(x, kind, bits), bits)


def fewbit_backward(
    grad_out: torch.Tensor, packed: torch.Tensor, bits: int, kind: str
) -> torch.Tensor:
    """grad_in = grad_out * levels[code] in fp32, rounded once to grad_out.dtype."""
    levels = torch.tensor(
        fewbit_table(kind, bits).levels, dtype=torch.float32, device=grad_out.device
    )
    codes = unpack_codes(packed, grad_out.numel(), bits)
    g = grad_out.reshape(-1).float() * levels[codes]
    return g.reshape(grad_out.shape).to(grad_out.dtype)
