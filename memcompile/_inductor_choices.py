"""Inductor fusion choices that keep a planned graph's order (installed for graphs memcompile planned).

Inductor fuses two kernels that share an input even when nothing connects them ("horizontal"
fusion), wherever they sit in the graph. In a planned backward, two blocks' recomputations read the
same saved tensor (an attention mask, a norm's statistics), so Inductor computes the earlier block's
recomputation, and the matmuls feeding it, at the later block's kernel: a block's worth of buffers
live across the other block's backward, which the plan and its simulator never see (hf-gpt2 at
budget 0.0: 14.24 MB measured for 12.64 predicted; 13.20 MB with this rule). Inductor's own guard,
``Scheduler.are_long_distant_nodes``, refuses only fusions more than 64 nodes apart.

The rule here: no horizontal fusion across an extern kernel (a matmul, a convolution, a fallback op)
that lies between the two kernels in the graph's order. That is the simulator's model of what one
kernel can hold (passes/simulate.py, ``_readers_split``), so the two agree; fusions between neighbours
(a norm's two reductions, a pointwise op and its sibling) are untouched.

A vertical (producer into consumer) fusion runs after the consumer's latest input from outside the
pair. Where that input comes after an extern kernel that follows the producer, the producer moves down
across the extern kernel and holds its inputs until then: such fusions are refused too (a recomputed
softmax fused into its backward, after the matmul that makes the backward's other input, on hf-bert at
budget 0.0: 13.42 MB measured for 12.90 predicted; 12.90 with the rule). A fusion whose consumer's inputs
are all ready at the producer's place runs there and is kept: refusing every vertical fusion across an
extern kernel raised hf-gpt2 at 0.5 from 14.65 to 15.96 MB (a GELU recomputation's tanh realized).
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Iterator

try:
    from torch._inductor.choices import InductorChoices
except ImportError:  # pragma: no cover - an Inductor without pluggable choices
    InductorChoices = object  # type: ignore[misc,assignment]


def supported() -> bool:
    """This Inductor asks a choices object about horizontal fusion (torch >= 2.7)."""
    return InductorChoices is not object and hasattr(InductorChoices, "can_fuse_horizontal")


def extern_between(scheduler, node1, node2) -> bool:
    """An extern kernel of ``scheduler`` lies strictly between ``node1`` and ``node2`` in graph order."""
    after = _first_extern_after(scheduler, min(node1.max_order, node2.max_order))
    return after is not None and after < max(node1.min_order, node2.min_order)


def moves_producer_across_extern(scheduler, producer, consumer) -> bool:
    """Fused, the pair runs after the consumer's latest input from outside the pair; whether an extern
    kernel lies after the producer and at or before that input's node, so the producer would move down
    across it (and hold its own inputs until then)."""
    pair = {n.get_name() for group in (producer, consumer) for n in group.get_nodes()}
    latest = None
    for dep in consumer.read_writes.reads:
        buf = scheduler.name_to_buf.get(dep.name)
        op = getattr(buf, "defining_op", None)
        if op is None or op.get_name() in pair:
            continue
        order = getattr(op, "max_order", None)
        if order is not None and (latest is None or order > latest):
            latest = order
    if latest is None or latest <= producer.max_order:
        return False
    after = _first_extern_after(scheduler, producer.max_order)
    return after is not None and after <= latest


def _first_extern_after(scheduler, order: int) -> int | None:
    """The order of the first extern kernel of ``scheduler`` after ``order``, or None."""
    from torch._inductor.scheduler import ExternKernelSchedulerNode

    externs = _extern_orders(scheduler, ExternKernelSchedulerNode)
    i = bisect.bisect_right(externs, order)
    return externs[i] if i < len(externs) else None


def _extern_orders(scheduler, extern_type) -> list[int]:
    # extern kernels never fuse, so their orders are fixed for the scheduler's life: compute once
    cached = getattr(scheduler, "_memcompile_extern_orders", None)
    if cached is None:
        cached = sorted(n.min_order for n in scheduler.nodes if isinstance(n, extern_type))
        try:
            scheduler._memcompile_extern_orders = cached
        except AttributeError:  # pragma: no cover - a scheduler with __slots__
            pass
    return cached


class PlannedOrderChoices(InductorChoices):  # type: ignore[misc,valid-type]
    """Inductor's choices, less fusions across an extern kernel (module docstring)."""

    @staticmethod
    def can_fuse_horizontal(scheduler, node1, node2, shared_data_score) -> bool:
        if not InductorChoices.can_fuse_horizontal(scheduler, node1, node2, shared_data_score):
            return False
        return not extern_between(scheduler, node1, node2)

    @staticmethod
    def can_fuse_vertical(scheduler, node1, node2, shared_data_score) -> bool:
        if not InductorChoices.can_fuse_vertical(scheduler, node1, node2, shared_data_score):
            return False
        return not moves_producer_across_extern(scheduler, node1, node2)


KEEP_PLANNED_ORDER = True
"""Planned graphs compile with Inductor's ``reorder_for_peak_memory`` off. That pass reorders the scheduler's
nodes by Inductor's own estimate of memory, which does not see what the plan arranged: on hf-qwen2-gqa at 0.8
it computed every layer's recomputed rotary and grouped-query copies in the backward's first kernel, four
layers' 0.5 MB live from the backward's start (measured 16.92 MB, 5.9% over the plan's 15.93; 15.93 with the
pass off). The plan's order is already chosen for memory and the simulator follows it. Only where the modes
allow recompute (``planned_order(keep_order=...)``): the pass moves recomputations, and without them it placed
a keep-and-quantize plan's copies better than the plan did (gpt-small at 0.0: 68.1 MB of activations with it,
78.7 without, tests/e2e/test_lossy.py)."""


@contextlib.contextmanager
def planned_order(*, keep_order: bool = True) -> Iterator[None]:
    """Inductor compiles under ``PlannedOrderChoices`` inside this block (where supported), with its
    peak-memory reordering off where ``keep_order`` (``KEEP_PLANNED_ORDER``)."""
    from torch._inductor import config as inductor_config

    with contextlib.ExitStack() as stack:
        if keep_order and KEEP_PLANNED_ORDER and hasattr(inductor_config, "reorder_for_peak_memory"):
            stack.enter_context(inductor_config.patch(reorder_for_peak_memory=False))
        if supported():
            from torch._inductor.virtualized import V

            stack.enter_context(V.set_choices_handler(PlannedOrderChoices()))
        yield
