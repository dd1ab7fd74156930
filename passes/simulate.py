"""The memory simulator: bytes live at every step of a compiled forward+backward.

The single source of truth for "how many bytes are live at step t": the planner's
repair loop, the report and the tests all call ``simulate_step``.

Model (what Inductor's generated code and AOT autograd's boxed calling convention do):
- the forward's inputs (parameters, batch) are held by the caller for the whole step;
- a value is allocated when its node runs and freed after the last node that reads it
  or any view of it; views and getitems of aliasing ops allocate nothing;
- the forward's user outputs (the loss) and the backward's outputs (the gradients) live
  to the end of the step; saved tensors live from their forward node to their last
  backward use; tangents are allocated when the backward starts;
- offload (nodes tagged ``meta["memcompile_offload"]`` by rewrite/offload.py): the host copy
  (``offload_wait``) and the handles are host memory and count nothing; the device copy a
  ``prefetch`` allocates counts from the prefetch on, although the graph sees it only from its
  ``prefetch_wait``. Only offload makes such nodes: on CUDA they hold pinned host memory; on CPU
  only the config's test hook ``_force_offload_on_cpu`` makes them, and the model then treats
  host memory as if it were separate, as on a GPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import fx

from .costs import scratch_bytes
from .lifetimes import BACKWARD, FORWARD, LifetimeTable, analyse

OFFLOAD_META = "memcompile_offload"
"""``node.meta`` key on the nodes rewrite/offload.py inserts ({"role", "source", "nbytes"}; roles there)."""
_HOST_ROLES = ("offload", "offload_wait", "prefetch")


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageInterval:
    root: str
    nbytes: int
    alloc_step: int
    free_step: int
    """Last step at which the storage is live (inclusive)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeline:
    steps: tuple[str, ...]
    """Node names in execution order (forward nodes, then backward nodes)."""
    sides: tuple[str, ...]
    live_bytes: tuple[int, ...]
    held_bytes: int
    """Bytes of the forward's inputs, live for the whole step."""
    backward_start: int
    """Index of the first backward step (== len(steps) when there is no backward)."""
    intervals: tuple[StorageInterval, ...]

    @property
    def peak_bytes(self) -> int:
        return max(self.live_bytes, default=self.held_bytes)

    @property
    def peak_index(self) -> int:
        return max(range(len(self.live_bytes)), key=self.live_bytes.__getitem__, default=0)

    def live_at(self, step: int) -> tuple[StorageInterval, ...]:
        """Storages live at ``step``, largest first."""
        live = [iv for iv in self.intervals if iv.alloc_step <= step <= iv.free_step]
        return tuple(sorted(live, key=lambda iv: (-iv.nbytes, iv.root)))


def simulate_step(
    fw: fx.GraphModule | fx.Graph,
    bw: fx.GraphModule | fx.Graph | None,
    *,
    num_fwd_outputs: int,
    model: str = "inductor",
) -> Timeline:
    """Live bytes over one forward (+ backward) of a partition; names tie the two graphs together.

    ``model="inductor"`` leaves out buffers Inductor fuses away (``TensorInfo.fusible``);
    ``model="eager"`` materialises every value.
    """
    fw_table = analyse(fw)
    bw_table = analyse(bw) if bw is not None else None
    offload = (offload_roles(fw), offload_roles(bw) if bw is not None else {})
    scratch = (scratch_bytes(fw, model=model), scratch_bytes(bw, model=model) if bw is not None else {})
    return simulate_tables(fw_table, bw_table, num_fwd_outputs=num_fwd_outputs, model=model, offload=offload,
                           scratch=scratch)


def _fused_away(table: LifetimeTable) -> frozenset[str]:
    """Fusible values (``TensorInfo.fusible``) Inductor computes inside their readers' kernels.

    A fusible value is given a buffer when one of its readers must wait for a non-fusible step (a
    matmul, an extern kernel) that itself depends on the value: no one kernel can hold that reader and
    the value's first readers. A reader that does not wait for such a step fuses with the others,
    wherever the graph's order puts it (Inductor fuses by dependence, not by position). A recompute
    chain through the residual stream makes such values (docs/planner.md)."""
    pos = {name: i for i, name in enumerate(table.order)}
    tensors = table.tensors

    def splits(name: str) -> bool:
        info = tensors[name]
        return not info.fusible and info.kind == "tensor" and info.producer != "placeholder" and info.nbytes_hint > 0

    away = set()
    for name, info in tensors.items():
        if not info.fusible:
            continue
        readers = {u for u in info.users if u in pos}
        if len(readers) < 2:
            away.add(name)
            continue
        last = max(pos[r] for r in readers)
        # descendants up to the last reader, each with whether its path from the value passed a split
        seen: set[tuple[str, bool]] = set()
        stack = [(name, False)]
        waits = False
        while stack and not waits:
            node, passed = stack.pop()
            for user in tensors[node].users:
                if user not in tensors or pos.get(user, last + 1) > last:
                    continue
                if passed and user in readers:
                    waits = True
                    break
                state = (user, passed or splits(user))
                if state not in seen:
                    seen.add(state)
                    stack.append(state)
        if not waits:
            away.add(name)
    return frozenset(away)


def offload_roles(gm: fx.GraphModule | fx.Graph) -> dict[str, tuple[str, str | None]]:
    """Per node the offload rewrite inserted: (role, the prefetch node of a ``prefetch_wait``, else None)."""
    graph = gm.graph if isinstance(gm, fx.GraphModule) else gm
    out = {}
    for node in graph.nodes:
        tag = node.meta.get(OFFLOAD_META)
        if tag:
            fetch = node.args[0] if tag["role"] == "prefetch_wait" else None
            out[node.name] = (tag["role"], fetch.name if isinstance(fetch, fx.Node) else None)
    return out


def simulate_tables(
    fw_table: LifetimeTable, bw_table: LifetimeTable | None, *, num_fwd_outputs: int, model: str = "inductor",
    offload: tuple[Mapping[str, tuple[str, str | None]], Mapping[str, tuple[str, str | None]]] = ({}, {}),
    scratch: tuple[Mapping[str, int], Mapping[str, int]] = ({}, {}),
) -> Timeline:
    """``offload``: ``offload_roles`` of the forward and of the backward graph; ``scratch``: bytes a node
    holds only while it runs (costs.scratch_bytes), per graph."""
    if model not in ("inductor", "eager"):
        raise ValueError(f"model: expected 'inductor' or 'eager', got {model!r}")
    fused = model == "inductor"
    fused_away = (_fused_away(fw_table), _fused_away(bw_table) if bw_table is not None else frozenset()) if fused else (frozenset(), frozenset())
    steps: list[str] = []
    sides: list[str] = []
    step_of: dict[tuple[int, str], int] = {}

    held_roots = {n for n, t in fw_table.tensors.items() if t.producer == "placeholder"}
    held_bytes = sum(fw_table.tensors[n].nbytes_hint for n in held_roots)

    for name in fw_table.order:
        if name in held_roots:
            continue
        step_of[(0, name)] = len(steps)
        steps.append(name)
        sides.append(FORWARD)
    backward_start = len(steps)

    root: dict[tuple[int, str], str] = {}
    nbytes: dict[str, int] = {}
    alloc: dict[str, int] = {}
    last: dict[str, int] = {}
    fw_host, bw_roles = offload
    for name, info in fw_table.tensors.items():
        root[(0, name)] = info.alias_root
        if info.alias_root == name:
            host = fw_host.get(name, ("",))[0] in _HOST_ROLES
            nbytes[name] = 0 if name in fused_away[0] or host else info.nbytes_hint
            alloc[name] = step_of.get((0, name), -1)

    tables = [(0, fw_table)]
    if bw_table is not None:
        for name in bw_table.order:
            info = bw_table.tensors[name]
            if info.producer == "placeholder" and name in fw_table.tensors:
                continue  # a saved value: the forward's storage
            step_of[(1, name)] = max(len(steps), backward_start) if info.producer == "placeholder" else len(steps)
            if info.producer != "placeholder":
                steps.append(name)
                sides.append(BACKWARD)
        for name in bw_table.order:  # execution order: a view's source is resolved before it
            info = bw_table.tensors[name]
            if info.producer == "placeholder" and name in fw_table.tensors:
                root[(1, name)] = fw_table.tensors[name].alias_root
            elif info.alias_root != name:
                root[(1, name)] = root[(1, info.alias_root)]
            else:
                key = name if name not in nbytes else f"bw:{name}"
                root[(1, name)] = key
                role, fetch = bw_roles.get(name, ("", None))
                host = role in _HOST_ROLES
                nbytes[key] = 0 if name in fused_away[1] or host else info.nbytes_hint
                # a prefetched copy exists from its prefetch on
                alloc[key] = step_of.get((1, fetch), step_of[(1, name)]) if role == "prefetch_wait" else step_of[(1, name)]
        tables.append((1, bw_table))

    end = len(steps) - 1
    for g, table in tables:
        for name, info in table.tensors.items():
            key = root[(g, name)]
            uses = [step_of[(g, u)] for u in info.users if (g, u) in step_of]
            own = step_of.get((g, name), -1)
            last[key] = max(last.get(key, -1), own, *uses)

    # Outputs that outlive their graph: the forward's user outputs and, with no backward, all of
    # its outputs; the backward's outputs (gradients).
    fw_outputs = fw_table.outputs
    keep_to_end = list(fw_outputs[:num_fwd_outputs] if bw_table is not None else fw_outputs)
    saved = [n for n in fw_outputs[num_fwd_outputs:] if n is not None] if bw_table is not None else []
    for name in keep_to_end:
        if name is not None:
            last[root[(0, name)]] = end
    for name in saved:
        key = root[(0, name)]
        # a saved value is live at least until the backward starts
        last[key] = max(last.get(key, -1), min(backward_start, end))
    if bw_table is not None:
        for name in bw_table.outputs:
            if name is not None:
                last[root[(1, name)]] = end

    intervals = []
    for key, size in nbytes.items():
        if key in held_roots or size == 0:
            continue
        a = max(alloc.get(key, 0), 0)
        intervals.append(StorageInterval(root=key, nbytes=size, alloc_step=a, free_step=max(last.get(key, a), a)))

    delta = [0] * (len(steps) + 1)
    for iv in intervals:
        delta[iv.alloc_step] += iv.nbytes
        delta[iv.free_step + 1] -= iv.nbytes
    live = []
    running = held_bytes
    transient = [scratch[side == BACKWARD].get(name, 0) for name, side in zip(steps, sides)]
    for i in range(len(steps)):
        running += delta[i]
        live.append(running + transient[i])
    return Timeline(
        steps=tuple(steps),
        sides=tuple(sides),
        live_bytes=tuple(live),
        held_bytes=held_bytes,
        backward_start=backward_start,
        intervals=tuple(intervals),
    )
