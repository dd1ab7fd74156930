"""Assertions that report what differs (counts, worst element, NaN/Inf), not just False.

Module name is unique on purpose: tests/kernels has no __init__.py, so pytest's default
"prepend" import mode puts this folder on sys.path and imports by basename.
"""

import math

import torch


def _describe(actual: torch.Tensor, expected: torch.Tensor, bad: torch.Tensor) -> str:
    a, e = actual.double(), expected.double()
    n_bad = int(bad.sum())
    lines = [f"{n_bad} / {bad.numel()} elements differ"]
    if n_bad:
        idx = int(torch.nonzero(bad.reshape(-1))[0])
        lines.append(f"first at flat index {idx}: got {a.reshape(-1)[idx].item()!r}, "
                     f"expected {e.reshape(-1)[idx].item()!r}")
        finite = torch.isfinite(a) & torch.isfinite(e)
        if finite.any():
            lines.append(f"max |diff| = {(a - e)[finite].abs().max().item():.3e}")
    for name, t in (("actual", a), ("expected", e)):
        lines.append(f"{name}: {int(torch.isnan(t).sum())} NaN, {int(torch.isinf(t).sum())} Inf")
    return "\n".join(lines)


def assert_bitwise_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Same shape, dtype and bytes (so -0.0 != 0.0 and fp8 codes compare exactly)."""
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != {expected.dtype}"
    if actual.numel() == 0:
        return
    as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[actual.element_size()]
    bad = actual.contiguous().view(as_int) != expected.contiguous().view(as_int)
    assert not bad.any(), _describe(actual.float(), expected.float(), bad)


def assert_verbose_allclose(
    actual: torch.Tensor, expected: torch.Tensor, *, atol: float, rtol: float
) -> None:
    """torch.allclose semantics (NaN never equal), with a mismatch report."""
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.double(), expected.double()
    bad = ~((a - e).abs() <= atol + rtol * e.abs())
    assert not bad.any(), _describe(a, e, bad)


def sqnr_db(signal: torch.Tensor, approx: torch.Tensor) -> float:
    """10 log10(||signal||^2 / ||signal - approx||^2), computed in float64."""
    s, a = signal.double(), approx.double()
    return 10.0 * math.log10(float(s.pow(2).sum()) / float((s - a).pow(2).sum()))


def rel_l2(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """||approx - exact|| / ||exact||, in float64."""
    a, e = approx.double(), exact.double()
    return float((a - e).norm() / e.norm())
