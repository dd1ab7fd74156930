"""Measured peak memory of one training step (CUDA allocator stats, or the CPU profiler method).

CPU: a dispatch-mode tracker misses Inductor's own allocations, so we run the step
under ``torch.profiler.profile(profile_memory=True)``, take the ``[memory]`` events
from the kineto results, sort them by time and keep the running maximum of the
summed byte deltas, then add the bytes already live before the step.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True, kw_only=True)
class PeakMeasurement:
    peak_bytes: int
    """Bytes live at the step's peak, counting what was live before it (parameters, batch)."""
    live_before_bytes: int
    """Bytes live when the step started (what the caller holds: parameters, inputs, old grads)."""
    device: str


def tensor_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views counted once)."""
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            continue
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in seen or storage.nbytes() == 0:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


def live_bytes_of(model: torch.nn.Module, inputs) -> int:
    """Parameters, buffers, existing grads and tensor inputs: what is live before a step."""
    tensors = list(model.parameters()) + list(model.buffers())
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    tensors += [t for t in inputs if isinstance(t, torch.Tensor)]
    return tensor_bytes(tensors)


def measure_peak(step: Callable[[], object], *, live_before_bytes: int, device: str | torch.device = "cpu") -> PeakMeasurement:
    """Run ``step()`` once and return its peak live bytes (including ``live_before_bytes``)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        # memory_allocated already counts what was live before; report on the same footing as CPU.
        return PeakMeasurement(peak_bytes=int(peak), live_before_bytes=int(base), device=str(device))
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False)
    with _quiet_stderr():
        prof.__enter__()
    try:
        step()
    finally:
        with _quiet_stderr():
            prof.__exit__(None, None, None)
    deltas = _cpu_memory_deltas(prof)
    running = 0
    peak_delta = 0
    for _, nbytes in sorted(deltas, key=lambda e: e[0]):
        running += nbytes
        peak_delta = max(peak_delta, running)
    return PeakMeasurement(
        peak_bytes=int(live_before_bytes + peak_delta), live_before_bytes=int(live_before_bytes), device="cpu"
    )


@contextlib.contextmanager
def _quiet_stderr():
    """Kineto prints a "profiler_start" / "profiler_stop" line to file descriptor 2 on every start and
    stop, and no setting of this torch build turns it off: silence fd 2 around those two calls only,
    never around the user's step."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no usable fd 2 (an embedded interpreter): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_memory_deltas(prof) -> list[tuple[int, int]]:
    """(time_ns, bytes) of every CPU allocation (+) and free (-) the profiler saw."""
    results = prof.profiler.kineto_results
    out: list[tuple[int, int]] = []
    for ev in results.events():
        if ev.name() != "[memory]":
            continue
        if ev.device_type() != torch.autograd.DeviceType.CPU:
            continue
        nbytes = int(ev.nbytes())
        if nbytes:
            out.append((int(ev.start_ns()), nbytes))
    return out
