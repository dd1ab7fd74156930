"""What offloading one value costs, and where its copies go: pure functions over plain numbers.

A value offloaded to host memory pays two copies over the host link (device to host in the
forward, host to device in the backward), each on a side stream. A copy costs step time only
for the part the current stream's own work does not hide:

    exposed seconds = max(0, bytes / host_link_bandwidth - window seconds)

where the window is the predicted compute between the copy's issue and the wait that orders
the current stream after it (the sum of the predicted seconds of the steps in between).

Placement (the rewrite in rewrite/offload.py puts the ops exactly here; the planner charges
memory from the same indices). Steps are the forward's and the backward's compute nodes in
order, each side indexed from 0:

- the D2H copy is issued right after the producer (step ``produced_at``): the copy only reads
  the value, so it overlaps the value's own forward uses;
- the forward wait ("release") runs right after step ``release_step`` >= the last forward
  use: by default the first anchorable step whose window covers the transfer; the device
  bytes are held through that step (exactly as without offload when
  ``release_step == last_forward_use``);
- the H2D copy is issued right after backward step ``prefetch_step`` (its *anchor*), the
  latest anchorable step whose window to the first backward use covers ``lead_seconds``
  (the transfer time by default), never before ``earliest_prefetch``;
- the backward wait runs right before ``first_backward_use``; the device copy is held from the
  prefetch on.

"Anchorable" steps are those whose output the compiled graph materialises anyway (matmuls,
convolutions, attention, extern ops): passing one to the prefetch as its ``after`` input
costs nothing. Without anchorable flags every step is anchorable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferCost:
    transfer_seconds: float
    """bytes / host_link_bandwidth."""
    window_seconds: float
    """Predicted compute between the copy's issue and its wait."""
    exposed_seconds: float
    """max(0, transfer - window): what the step pays."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OffloadCost:
    device_to_host: TransferCost
    host_to_device: TransferCost
    overhead_seconds: float
    """Fixed cost of the four op calls (launches, events)."""

    @property
    def added_seconds(self) -> float:
        """What the planner charges: both exposed parts plus the fixed overhead."""
        return self.device_to_host.exposed_seconds + self.host_to_device.exposed_seconds + self.overhead_seconds


@dataclass(frozen=True, slots=True, kw_only=True)
class OffloadPlacement:
    issue_step: int
    """Forward step after which the D2H copy is issued (the producer)."""
    release_step: int
    """Forward step after which the forward waits for the copy; the device bytes are held through it."""
    prefetch_step: int | None
    """Backward step after which the H2D copy is issued (its anchor); None: right before the wait
    (no anchorable step in range)."""
    wait_step: int
    """Backward step that first reads the value; the wait runs just before it."""
    cost: OffloadCost

    @property
    def backward_held_from(self) -> int:
        """First backward step during which the device copy exists (allocated by the prefetch)."""
        return self.wait_step if self.prefetch_step is None else self.prefetch_step + 1


def transfer_seconds(nbytes: int | float, host_link_bandwidth: float) -> float:
    """Seconds to move ``nbytes`` over the host link."""
    if host_link_bandwidth <= 0:
        raise ValueError(f"host_link_bandwidth must be > 0 bytes/s, got {host_link_bandwidth!r}")
    if nbytes < 0:
        raise ValueError(f"nbytes must be >= 0, got {nbytes!r}")
    return float(nbytes) / host_link_bandwidth


def transfer_cost(nbytes: int | float, host_link_bandwidth: float, window_seconds: float) -> TransferCost:
    """One copy of ``nbytes`` with ``window_seconds`` of compute to hide behind."""
    if window_seconds < 0:
        raise ValueError(f"window_seconds must be >= 0, got {window_seconds!r}")
    seconds = transfer_seconds(nbytes, host_link_bandwidth)
    return TransferCost(
        transfer_seconds=seconds, window_seconds=float(window_seconds),
        exposed_seconds=max(0.0, seconds - window_seconds),
    )


def offload_cost(
    nbytes: int | float,
    *,
    host_link_bandwidth: float,
    offload_window_seconds: float,
    prefetch_window_seconds: float,
    overhead_seconds: float = 0.0,
) -> OffloadCost:
    """Both copies of one offloaded value; ``added_seconds`` is what the step pays."""
    return OffloadCost(
        device_to_host=transfer_cost(nbytes, host_link_bandwidth, offload_window_seconds),
        host_to_device=transfer_cost(nbytes, host_link_bandwidth, prefetch_window_seconds),
        overhead_seconds=overhead_seconds,
    )


def window_seconds(step_seconds: Sequence[float], after: int, before: int) -> float:
    """Predicted seconds of the steps strictly after ``after`` and strictly before ``before``.

    Step seconds are never negative, so a window only grows as its ends move apart; the
    placement functions below rely on it to find their step in one pass."""
    return float(sum(step_seconds[max(after + 1, 0):max(before, 0)]))


def release_step(
    step_seconds: Sequence[float],
    *,
    issue_step: int,
    last_use: int,
    anchorable: Sequence[bool] | None = None,
    hide_seconds: float = 0.0,
) -> int:
    """The first anchorable forward step >= ``last_use`` whose window from the issue covers
    ``hide_seconds`` (0: the first anchorable step at or after the last use); the last anchorable
    step when none does (the most overlap there is); ``last_use`` itself when no step from there
    on is anchorable."""
    n = len(step_seconds)
    if not 0 <= issue_step <= last_use < n:
        raise ValueError(f"need 0 <= issue_step ({issue_step}) <= last_use ({last_use}) < steps ({n})")
    ok = _flags(anchorable, n)
    window = window_seconds(step_seconds, issue_step, last_use)  # one pass: windows only grow
    last_anchor = None
    for step in range(last_use, n):
        window += step_seconds[step] if step > issue_step else 0.0
        if ok[step]:
            if window >= hide_seconds:
                return step
            last_anchor = step
    return last_use if last_anchor is None else last_anchor


def prefetch_step(
    step_seconds: Sequence[float],
    *,
    first_use: int,
    lead_seconds: float,
    earliest: int = 0,
    anchorable: Sequence[bool] | None = None,
) -> int | None:
    """The backward step after which to issue the prefetch: the latest anchorable step in
    ``[earliest, first_use)`` whose window to ``first_use`` covers ``lead_seconds``; the
    earliest anchorable one in that range when none does (the most overlap there is); None
    when the range has no anchorable step."""
    n = len(step_seconds)
    if not 0 <= first_use < n:
        raise ValueError(f"need 0 <= first_use ({first_use}) < steps ({n})")
    if lead_seconds < 0:
        raise ValueError(f"lead_seconds must be >= 0, got {lead_seconds!r}")
    ok = _flags(anchorable, n)
    window, earliest_anchor = 0.0, None  # walking up from the use: windows only grow
    for step in range(first_use - 1, max(earliest, 0) - 1, -1):
        if ok[step]:
            if window >= lead_seconds:
                return step
            earliest_anchor = step
        window += step_seconds[step]
    return earliest_anchor


def place_offload(
    nbytes: int | float,
    *,
    host_link_bandwidth: float,
    forward_seconds: Sequence[float],
    backward_seconds: Sequence[float],
    produced_at: int,
    last_forward_use: int,
    first_backward_use: int,
    earliest_prefetch: int = 0,
    forward_anchorable: Sequence[bool] | None = None,
    backward_anchorable: Sequence[bool] | None = None,
    lead_seconds: float | None = None,
    hide_offload: bool = True,
    overhead_seconds: float = 0.0,
) -> OffloadPlacement:
    """Where one value's four ops go and what it costs (see the module docstring).

    ``lead_seconds``: how much backward compute the prefetch should be issued ahead of the first
    use (default: the transfer time, i.e. just enough to hide it). ``hide_offload`` (default):
    hold the device bytes past the last forward use until the D2H copy is predicted done, so
    the forward never stalls where compute can hide it; False: the forward waits right after
    the last use (no extra device bytes) and pays what is not hidden. ``earliest_prefetch``: the
    first backward step the prefetch may follow.
    """
    seconds = transfer_seconds(nbytes, host_link_bandwidth)
    release = release_step(
        forward_seconds, issue_step=produced_at, last_use=last_forward_use,
        anchorable=forward_anchorable, hide_seconds=seconds if hide_offload else 0.0,
    )
    prefetch = prefetch_step(
        backward_seconds, first_use=first_backward_use, earliest=earliest_prefetch,
        anchorable=backward_anchorable, lead_seconds=seconds if lead_seconds is None else lead_seconds,
    )
    h2d_window = 0.0 if prefetch is None else window_seconds(backward_seconds, prefetch, first_backward_use)
    cost = offload_cost(
        nbytes, host_link_bandwidth=host_link_bandwidth,
        offload_window_seconds=window_seconds(forward_seconds, produced_at, release + 1),
        prefetch_window_seconds=h2d_window, overhead_seconds=overhead_seconds,
    )
    return OffloadPlacement(
        issue_step=produced_at, release_step=release, prefetch_step=prefetch,
        wait_step=first_backward_use, cost=cost,
    )


def queued_exposed_seconds(copies: Sequence[tuple[float, float, float]]) -> tuple[float, ...]:
    """Exposed seconds of copies that share one link (one side stream: they run one at a time).

    ``copies``: ``(issue_at, transfer_seconds, wait_at)`` per copy, times in seconds on the
    predicted timeline. In issue order, each copy starts when it is issued and the previous one
    has finished; the step pays ``max(0, end - wait_at)`` for it. Stalls are not fed back into
    later times, so this is an estimate for checking a chosen set: ``offload_cost`` prices each
    value alone, as if it had the link to itself.
    """
    order = sorted(range(len(copies)), key=lambda i: copies[i][0])
    exposed = [0.0] * len(copies)
    link_free_at = float("-inf")
    for i in order:
        issue_at, seconds, wait_at = copies[i]
        if seconds < 0 or wait_at < issue_at:
            raise ValueError(f"copy {i}: need transfer_seconds >= 0 and wait_at >= issue_at, got {copies[i]}")
        end = max(issue_at, link_free_at) + seconds
        link_free_at = end
        exposed[i] = max(0.0, end - wait_at)
    return tuple(exposed)


def _flags(anchorable: Sequence[bool] | None, n: int) -> Sequence[bool]:
    if anchorable is None:
        return (True,) * n
    if len(anchorable) != n:
        raise ValueError(f"anchorable has {len(anchorable)} flags for {n} steps")
    return anchorable
