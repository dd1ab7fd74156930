"""MemConfig: the validated options of the memcompile backend (one frozen dataclass)."""

from __future__ import annotations

import os

import dataclasses
import hashlib
import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

LOSSLESS_MODES = ("keep", "recompute", "inplace")
"""Modes the planner may use without being asked (they give eager's gradients; inplace's ELU rule up to
one rounding, README "In-place mode")."""

ALL_MODES = ("keep", "recompute", "quantize", "fewbit", "offload", "inplace")
"""Every mode of the design; the ones not in IMPLEMENTED_MODES are refused with a clear error."""

IMPLEMENTED_MODES = ("keep", "recompute", "quantize", "fewbit", "offload", "inplace")

LOSSY_MODES = ("quantize", "fewbit")
"""Modes that change the gradients (within stated bounds, README "Lossy modes"): used only when named."""

INNER_COMPILERS = ("inductor", "eager")
ON_INFEASIBLE = ("raise", "best_effort")

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_BYTES_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str) -> int:
    """'6GiB' -> 6442450944, '800MB' -> 800000000, '1.5e9' -> 1500000000.

    Raises ValueError naming the accepted forms when ``text`` does not parse.
    """
    match = _BYTES_RE.match(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(
            f"memory_budget: cannot parse {text!r} as a byte count; expected a number with an optional unit "
            f"({', '.join(u for u in ('B', 'KB', 'MB', 'GB', 'TB', 'KiB', 'MiB', 'GiB', 'TiB'))}), "
            "for example '6GiB', '800MB' or '1.5e9'"
        )
    value = float(match.group(1)) * _UNITS[unit]
    if not math.isfinite(value) or value < 1:
        raise ValueError(f"memory_budget: {text!r} must be a byte count of at least 1 byte")
    return int(value)


def parse_budget(budget: Any, *, option: str = "memory_budget") -> tuple[float | None, int | None]:
    """``(fraction, bytes)`` of a budget, one of them None (both for no budget); the one parser of the
    ``memory_budget`` option and of the CLI's ``--budget`` (``option`` names it in errors).

    A float in [0, 1] is a fraction; an int is bytes; a string with a unit ("6GiB", "800MB", "512B")
    is bytes. A string that is a bare number reads as the CLI reads it: in [0, 1] a fraction ("0.5"),
    above 1 a whole number of bytes ("1e9", "800000000"); anything else raises ValueError.
    """
    if budget is None:
        return None, None
    if isinstance(budget, str):
        return _parse_budget_text(budget, option)
    try:
        return _parse_budget(budget)
    except (TypeError, ValueError) as exc:
        if option == "memory_budget":
            raise
        raise type(exc)(str(exc).replace("memory_budget:", f"{option}:", 1)) from None


def _parse_budget_text(text: str, option: str) -> tuple[float | None, int | None]:
    try:
        value = float(text)
    except ValueError:
        try:
            return None, parse_bytes(text)
        except ValueError as exc:
            raise ValueError(str(exc).replace("memory_budget:", f"{option}:", 1)) from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"{option}: expected a fraction in [0, 1], a whole number of bytes or a size such as '6GiB', got {text!r}"
        )
    if value <= 1.0:
        return value, None
    if value != int(value):
        raise ValueError(
            f"{option}: {text!r} is neither a fraction in [0, 1] nor a whole number of bytes; "
            "write bytes with a unit, such as '2.5GB'"
        )
    return None, int(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class MemConfig:
    """Options of ``torch.compile(model, backend="memcompile", options={...})``."""

    memory_budget: float | int | str | None = None
    """None: default partition, analysis only. A float in [0, 1]: fraction between the smallest reachable
    peak (0.0) and the default partition's peak (1.0), the same scale as torch's activation_memory_budget.
    An int or a string such as "6GiB": cap on the predicted peak bytes of the step, inputs included.
    A bare number in a string means what the CLI's --budget means (``parse_budget``): "0.5" is the
    fraction 0.5, "800000000" is bytes."""
    modes: tuple[str, ...] = LOSSLESS_MODES
    """Modes the planner may choose from; "keep" is always allowed. By default the lossless ones: "recompute"
    and "inplace" (an activation's derivative reads its output, so its input is not saved). The lossy ones
    ("quantize": int8 per-group storage; "fewbit": a 2-bit code of a GELU/SiLU derivative) and "offload"
    (a saved storage copied to pinned host memory in the forward and prefetched for the backward; device
    tensors only) are used only when named here."""
    inner: str = "inductor"
    """Compiler for the rewritten graphs: "inductor" or "eager" (debugging)."""
    solver_time_limit: float = 20.0
    """Seconds CBC may spend per solve; on time-out the best plan found (or a greedy plan) is used."""
    on_infeasible: str = "raise"
    """What a byte budget no plan meets does: "raise" MemoryBudgetError, or "best_effort" (warn, smallest peak)."""
    report_dir: str | None = None
    """If set (a non-empty path), a JSON report (and a PNG when matplotlib is installed) is written per
    compiled graph; the directory is created when missing."""
    _force_offload_on_cpu: bool = False
    """TEST HOOK, not a user option (left out of the README and of the accepted-keys message): offer
    offload for CPU tensors too, as if host memory were separate from the device's. The copies are then
    plain CPU copies that free nothing, and the simulator counts no host copy, so predicted peaks fall
    while measured ones do not. It exists so that CPU tests can make the planner choose offload and
    check the rewritten graphs' gradients; leave it False."""
    budget_fraction: float | None = field(init=False, default=None)
    budget_bytes: int | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        fraction, nbytes = parse_budget(self.memory_budget)
        object.__setattr__(self, "budget_fraction", fraction)
        object.__setattr__(self, "budget_bytes", nbytes)
        modes = self.modes
        if isinstance(modes, str):
            modes = (modes,)
        if not isinstance(modes, (tuple, list)) or not all(isinstance(m, str) for m in modes):
            raise TypeError(f"modes: expected a tuple of mode names from {ALL_MODES}, got {self.modes!r}")
        unknown = [m for m in modes if m not in ALL_MODES]
        if unknown:
            raise ValueError(f"modes: unknown mode(s) {unknown}; accepted: {ALL_MODES}")
        missing = [m for m in modes if m not in IMPLEMENTED_MODES]
        if missing:
            raise ValueError(
                f"modes: {missing} not available in this version of memcompile; available now: {IMPLEMENTED_MODES}"
            )
        modes = tuple(dict.fromkeys(("keep", *modes)))
        object.__setattr__(self, "modes", modes)
        if self.inner not in INNER_COMPILERS:
            raise ValueError(f"inner: expected one of {INNER_COMPILERS}, got {self.inner!r}")
        if isinstance(self.solver_time_limit, bool) or not isinstance(self.solver_time_limit, (int, float)):
            raise TypeError(f"solver_time_limit: expected seconds as a number, got {self.solver_time_limit!r}")
        if not (self.solver_time_limit > 0 and math.isfinite(self.solver_time_limit)):
            raise ValueError(
                f"solver_time_limit: expected a positive number of seconds, got {self.solver_time_limit!r}; "
                "it must be finite: CBC needs a limit (the default is 20)"
            )
        if not isinstance(self._force_offload_on_cpu, bool):
            raise TypeError(f"_force_offload_on_cpu: expected a bool, got {self._force_offload_on_cpu!r}")
        if self.on_infeasible not in ON_INFEASIBLE:
            raise ValueError(f"on_infeasible: expected one of {ON_INFEASIBLE}, got {self.on_infeasible!r}")
        if self.report_dir is not None:
            if not isinstance(self.report_dir, (str, os.PathLike)):
                raise TypeError(f"report_dir: expected a directory path (str or os.PathLike), got {self.report_dir!r}")
            object.__setattr__(self, "report_dir", os.fspath(self.report_dir))
            if not self.report_dir.strip():
                raise ValueError(
                    "report_dir: got an empty path; pass the directory to write the reports to, "
                    "or leave report_dir unset (None) for no reports"
                )

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> "MemConfig":
        """Build from ``torch.compile(..., options=...)``; unknown keys raise ValueError listing the known ones."""
        if options is None:
            return cls()
        if isinstance(options, MemConfig):
            return options
        if not isinstance(options, Mapping):
            raise TypeError(f"options: expected a dict of memcompile options, got {type(options).__name__}")
        known = [f.name for f in dataclasses.fields(cls) if f.init]
        unknown = sorted(set(options) - set(known))
        if unknown:
            public = [k for k in known if not k.startswith("_")]
            raise ValueError(f"options: unknown key(s) {unknown}; accepted keys: {public}")
        return cls(**dict(options))

    @property
    def has_budget(self) -> bool:
        return self.budget_fraction is not None or self.budget_bytes is not None

    def cache_key(self) -> str:
        """A stable digest of every option (part of the partitioner's uuid)."""
        items = [(f.name, repr(getattr(self, f.name))) for f in dataclasses.fields(self)]
        return hashlib.sha256(repr(items).encode()).hexdigest()


def _parse_budget(budget: Any) -> tuple[float | None, int | None]:
    if budget is None:
        return None, None
    if isinstance(budget, bool):
        raise TypeError("memory_budget: expected a float in [0, 1], an int of bytes or a string like '6GiB', got a bool")
    if isinstance(budget, numbers.Integral):  # int and numpy integers
        if budget in (0, 1):
            # int 0 / 1 read as bytes are caps no step can meet; the fraction was almost surely meant
            raise ValueError(
                f"memory_budget: {budget!r} is an int, which means a byte cap of {int(budget)}; "
                f"for the fraction write {float(budget)!r} (a float), for bytes a number such as 800_000_000 or '800MB'"
            )
        if budget < 0:
            raise ValueError(f"memory_budget: a byte budget must be a positive int, got {budget!r}")
        return None, int(budget)
    if isinstance(budget, numbers.Real):  # float, numpy.float32, ...
        if not math.isfinite(budget) or not 0.0 <= budget <= 1.0:
            raise ValueError(
                f"memory_budget: a float budget is a fraction in [0, 1], got {budget!r}; "
                "for a byte budget pass an int or a string such as '800MB'"
            )
        return float(budget), None
    raise TypeError(
        f"memory_budget: expected a float in [0, 1], an int of bytes or a string like '6GiB', got {type(budget).__name__}"
    )
