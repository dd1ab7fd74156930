"""Asynchronous device <-> pinned host copies for the offload mode, as ``memcompile::`` custom ops.

Four ops, two per direction, each pair joined by a *handle* (a one-element int64 CPU tensor):

    forward:   handle = offload(x)                      # D2H copy starts on a side stream
               host   = offload_wait(handle, x, after)  # current stream waits for it; x may be freed
    backward:  handle = prefetch(host, device, after)   # H2D copy starts on the side stream
               y      = prefetch_wait(handle, host, device)  # current stream waits; y is the copy

Why a handle and a separate wait, rather than one op returning the copy:
- overlap: the copy runs on a side stream between the two calls, while the current stream
  computes; only the wait orders the current stream after it (``Stream.wait_event``, which
  blocks the GPU queue, never the host);
- lifetime: ``offload_wait`` takes ``x`` as an input, so the graph (and Inductor's buffer
  reuse, which ``record_stream`` does not see) keeps ``x`` until the current stream has
  waited for the copy that reads it. torch's own activation offloading (torch 2.13,
  ``torch/_functorch/_activation_offloading/offload_ops.py``) keeps the source alive the
  same way and advises against ``record_stream`` (blocks it marks wait for everything
  queued on the side stream, later copies included). Only a handle dropped without its wait
  falls back to ``record_stream`` (``_release``), so no use of the ops can free a buffer a
  copy still touches;
- ordering under Inductor: every op returns a value its successor reads, so no pass can drop
  or reorder them (no side-effect registration is needed). ``after`` (any tensor, unused at
  run time) gives a lower bound: ``prefetch`` cannot be hoisted above the node that
  produces ``after``. The real device buffer of a prefetch is allocated inside ``prefetch``
  and Inductor sees only the 8-byte handle, so its peak-memory reordering would otherwise
  be free to issue every prefetch at the start of the backward.
  The waits return the full tensor, so Inductor sees those bytes from the wait on.

Stream rules (CUDA): one side stream per device, created on first use. Before each copy
the side stream waits for the current stream (the producer of ``x`` has run; the freshly
allocated device buffer of a prefetch may still be in use by queued work on the current
stream, whose allocator it came from). The device buffer of a prefetch is allocated on the
current stream, so when it is freed no cross-stream bookkeeping is needed: the current
stream waited for the copy before any later use. Pinned host buffers come from PyTorch's
caching host allocator, which records an event on the copying stream itself.

On CPU tensors the ops are plain synchronous copies (correct, nothing to gain: the planner
does not offer offload there). Not supported: CUDA graph capture and Inductor's C++
wrapper / AOTInductor (the handle state lives in Python).

NOTE on the handle registry: a handle's value is a key into ``_TRANSFERS``; the entry lives
exactly as long as the handle tensor (``weakref.finalize``), so a graph that dies half way
leaks nothing, and a clone of a handle (``torch.library.opcheck`` clones inputs) still
finds its transfer while the original lives. A wait does not consume its handle.
"""

import itertools
import weakref
from dataclasses import dataclass
from typing import Optional

import torch

_SIDE_STREAMS: dict[torch.device, "torch.cuda.Stream"] = {}


@dataclass(slots=True)
class _Transfer:
    result: torch.Tensor
    """The destination of the copy (pinned host tensor for offload, device tensor for prefetch)."""
    source: torch.Tensor
    """The tensor copied from, held until the handle dies (see ``_release``)."""
    done: "torch.cuda.Event | None"
    """Recorded on the side stream after the copy; None for synchronous (CPU) copies."""
    stream: "torch.cuda.Stream | None"
    """The side stream the copy runs on; None for CPU copies."""
    waited: bool = False
    """Set by the wait: the current stream is ordered after the copy."""


_TRANSFERS: dict[int, _Transfer] = {}
_KEYS = itertools.count(1)


def pending_transfers() -> int:
    """Number of transfers whose handle is still alive (0 between training steps)."""
    return len(_TRANSFERS)


def _new_handle(transfer: _Transfer) -> torch.Tensor:
    key = next(_KEYS)
    handle = torch.tensor([key], dtype=torch.int64)
    _TRANSFERS[key] = transfer
    weakref.finalize(handle, _release, key)
    return handle


def _release(key: int) -> None:
    """Drop a transfer when its handle dies. A copy nobody waited for may still be running: its
    device tensors then go back to the allocator through ``record_stream``, which holds their
    blocks until the side stream's work is done (on the normal path the wait already ordered the
    current stream after the copy, and no bookkeeping is needed)."""
    transfer = _TRANSFERS.pop(key, None)
    if transfer is None or transfer.waited or transfer.stream is None:
        return
    for t in (transfer.result, transfer.source):
        if t.is_cuda:
            t.record_stream(transfer.stream)


def _transfer_of(handle: torch.Tensor, op: str) -> _Transfer:
    key = int(handle.reshape(-1)[0]) if handle.numel() == 1 else None
    transfer = _TRANSFERS.get(key) if key is not None else None
    if transfer is None:
        raise RuntimeError(
            f"memcompile::{op}: the handle {handle!r} belongs to no pending transfer; pass the tensor "
            f"that memcompile::{'offload' if op == 'offload_wait' else 'prefetch'} returned, while it is alive"
        )
    return transfer


def _side_stream(device: torch.device) -> "torch.cuda.Stream":
    index = device.index if device.index is not None else torch.cuda.current_device()
    key = torch.device("cuda", index)
    stream = _SIDE_STREAMS.get(key)
    if stream is None:
        stream = _SIDE_STREAMS[key] = torch.cuda.Stream(device=key)
    return stream


def _start_copy(dst: torch.Tensor, src: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``dst.copy_(src)`` on ``device``'s side stream once the current stream's queued work has run
    (synchronously on CPU); returns the handle of the transfer."""
    if device.type != "cuda":
        dst.copy_(src)
        return _new_handle(_Transfer(result=dst, source=src, done=None, stream=None))
    side = _side_stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        dst.copy_(src, non_blocking=True)
        done = torch.cuda.Event()
        done.record(side)
    return _new_handle(_Transfer(result=dst, source=src, done=done, stream=side))


def _wait(transfer: _Transfer, device: torch.device) -> torch.Tensor:
    if transfer.done is not None:
        torch.cuda.current_stream(device).wait_event(transfer.done)
    transfer.waited = True
    return transfer.result


# ---- custom ops: eager implementations + fake impls (shapes only) so torch.compile can trace ----
# (typing.Optional, not ``X | None``, and no postponed annotations in this file: torch.library
# reads these signatures to build the op schemas, and older releases parse only the plain forms)
# empty_like keeps the strides of a dense (non-overlapping) tensor and falls back to
# contiguous otherwise, identically for real and fake tensors, so the fake impls' layouts
# are the real ones.


@torch.library.custom_op("memcompile::offload", mutates_args=())
def _offload_op(x: torch.Tensor) -> torch.Tensor:
    host = torch.empty_like(x, device="cpu", pin_memory=x.is_cuda)
    return _start_copy(host, x, x.device)


@_offload_op.register_fake
def _(x):
    return torch.empty(1, dtype=torch.int64, device="cpu")


@torch.library.custom_op("memcompile::offload_wait", mutates_args=())
def _offload_wait_op(handle: torch.Tensor, x: torch.Tensor, after: Optional[torch.Tensor] = None) -> torch.Tensor:
    return _wait(_transfer_of(handle, "offload_wait"), x.device)


@_offload_wait_op.register_fake
def _(handle, x, after=None):
    return torch.empty_like(x, device="cpu")


@torch.library.custom_op("memcompile::prefetch", mutates_args=())
def _prefetch_op(host: torch.Tensor, device: torch.device, after: Optional[torch.Tensor] = None) -> torch.Tensor:
    out = torch.empty_like(host, device=device)
    return _start_copy(out, host, out.device)


@_prefetch_op.register_fake
def _(host, device, after=None):
    return torch.empty(1, dtype=torch.int64, device="cpu")


@torch.library.custom_op("memcompile::prefetch_wait", mutates_args=())
def _prefetch_wait_op(handle: torch.Tensor, host: torch.Tensor, device: torch.device) -> torch.Tensor:
    transfer = _transfer_of(handle, "prefetch_wait")
    return _wait(transfer, transfer.result.device)


@_prefetch_wait_op.register_fake
def _(handle, host, device):
    return torch.empty_like(host, device=device)


# ---- public API ----


def offload(x: torch.Tensor) -> torch.Tensor:
    """Start copying ``x`` to (pinned) host memory; returns the handle ``offload_wait`` takes.

    Keep ``x`` alive, unmodified, until ``offload_wait(handle, x)`` has returned."""
    _check_tensor("x", x)
    return torch.ops.memcompile.offload(x)


def offload_wait(handle: torch.Tensor, x: torch.Tensor, *, after: torch.Tensor | None = None) -> torch.Tensor:
    """The host copy of ``x`` started by ``offload``; from here on the current stream is ordered
    after the copy, so ``x`` may be freed or overwritten."""
    return torch.ops.memcompile.offload_wait(handle, x, after)


def prefetch(host: torch.Tensor, device: torch.device | str, *, after: torch.Tensor | None = None) -> torch.Tensor:
    """Start copying ``host`` to ``device``; returns the handle ``prefetch_wait`` takes.

    ``after``: a tensor the compiled graph must produce before the copy is issued (unused at
    run time; it pins where Inductor may schedule the prefetch)."""
    _check_tensor("host", host)
    return torch.ops.memcompile.prefetch(host, torch.device(device), after)


def prefetch_wait(handle: torch.Tensor, host: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """The device copy of ``host`` started by ``prefetch``, safe to read on the current stream."""
    return torch.ops.memcompile.prefetch_wait(handle, host, torch.device(device))


def _check_tensor(name: str, t: object) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_sparse or t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense strided tensor, got layout {t.layout}; offload dense tensors only")
