"""Offload rewrite: a forward storage the backward reads goes to pinned host memory and comes back.

On the joint graph, before extraction, for every storage ``x`` the plan offloads
(kernels/offload.py has the ops and their stream rules; passes/offload_cost.py the placement):

- forward, right after ``x``'s producer: ``handle = memcompile::offload(x)`` (the D2H copy
  starts on a side stream and overlaps ``x``'s own forward uses);
- forward, right after the release step (the first materialised node at or after ``x``'s last
  forward use whose window hides the copy): ``host = memcompile::offload_wait(handle, x, after)``;
  ``x`` is an input, so it lives until here, and from here the current stream is ordered after
  the copy. ``host`` is what the partitioner then saves instead of ``x``;
- backward, right after the prefetch anchor (the latest materialised backward node that the
  first reader depends on and whose window to the first use covers the transfer):
  ``h2 = memcompile::prefetch(host, device, after=anchor)``;
- backward, just before the first backward read of any alias of ``x``:
  ``y = memcompile::prefetch_wait(h2, host, device)``; the alias ops that led from ``x`` to each
  value the backward reads are applied again to ``y`` (as in quantize.py) and the readers read
  those.

Why the placement survives extraction (rewrite/recompute.py, torch's
``_extract_fwd_bwd_modules`` + ``reordering_to_mimic_autograd_engine``): extraction copies the
nodes each side needs in joint-graph order, and every inserted node feeds a value the other
side or the output needs, so none is dropped. The reordering then walks the backward from the
first node that reads a tangent, in order, and inserts each node with its not yet placed
inputs just before it; nodes *before* that first tangent reader are not placed where they are
but pulled in front of their first reader. So a prefetch placed after the first tangent reader
stays where it was put (its inputs, ``host`` and its anchor, are placed already), and a
prefetch before it would be pulled down next to its wait; the placement therefore never goes
above the first tangent reader (``earliest_prefetch``). Recomputed nodes the reordering inserts
between prefetch and wait only widen the window.

Before inserting, the rewrite moves every forward node that sits among the backward nodes (the
tangent-free parts of derivative formulas, which the forward graph computes at its end) above
the first backward node (``forward_first``): each side keeps its order, so the extracted graphs
are unchanged, and a wait placed after any forward node then precedes every backward node.

Both waits return fresh tensors (no aliasing), and the handles are their inputs, so neither
FX's nor Inductor's dead-code elimination can drop an op and no scheduler can reorder a pair.
A scheduler may still move a prefetch anywhere between its anchor and its wait: only the
backward nodes the first reader depends on are counted in the window (``offload_schedule``),
and Inductor should compile these graphs with ``INDUCTOR_CONFIG`` (its peak-memory reordering
otherwise sinks prefetches onto their waits).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

import torch
import torch.fx as fx

from ..lifetimes import alias_source, is_tangent, size_hint
from ..offload_cost import OffloadPlacement, place_offload
from ..simulate import OFFLOAD_META
from ._lossy import LOSSY_META, backward_readers, call, fake_mode_of, redirect_readers
from .quantize import dense_order

# OFFLOAD_META (defined beside the simulator, which reads it): the ``node.meta`` key on the four
# nodes the rewrite inserts per storage: {"role", "source", "nbytes"}. Roles: "offload" and
# "offload_wait" (forward), "prefetch" and "prefetch_wait" (backward). The device copy of a
# prefetch exists from the "prefetch" node on although the graph sees it only from
# "prefetch_wait"; "offload_wait"'s value lives in host memory. Extraction keeps node.meta.

INDUCTOR_CONFIG = {"reorder_for_peak_memory": False}
"""Inductor config patch for graphs this rewrite touched. Inductor's peak-memory reordering
(on by default) sees a prefetch as an 8-byte op and, when its depth-first order wins, issues
it next to its wait, so no compute overlaps the copy (seen on torch 2.13, CPU). The plan
already chose the order and priced its memory, including the prefetched buffers Inductor
cannot see; with this patch Inductor keeps it."""

_aten = torch.ops.aten
# Ops whose output every backend materialises in memory (extern kernels or templates), so a
# prefetch can take one as its ``after`` input without forcing Inductor to realise a value it
# would otherwise have fused away.
MATERIALIZED_OPS = frozenset(
    getattr(_aten, name)
    for name in (
        "mm", "addmm", "bmm", "baddbmm", "convolution", "convolution_backward",
        "_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_backward",
        "_scaled_dot_product_efficient_attention", "_scaled_dot_product_efficient_attention_backward",
        "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_cudnn_attention_backward",
        "_flash_attention_forward", "_flash_attention_backward",
        "_efficient_attention_forward", "_efficient_attention_backward",
    )
    if hasattr(_aten, name)
)


@dataclass(frozen=True, slots=True, kw_only=True)
class OffloadSchedule:
    """Where one storage's four ops go, by node name (what ``offload_values`` inserts), and the
    same placement as step indices and cost (what the planner charges)."""

    source: str
    """The storage's node (the value offloaded)."""
    nbytes: int
    release_after: str
    """Forward node after which ``offload_wait`` goes (its ``after`` input unless it is ``source``)."""
    prefetch_after: str | None
    """Backward node after which ``prefetch`` goes (its ``after`` input); None: right before the wait."""
    first_reader: str
    """First backward node reading an alias of ``source``; ``prefetch_wait`` goes just before it."""
    placement: OffloadPlacement
    """The same placement as forward/backward step indices (see ``JointSteps``), with its cost."""


@dataclass(frozen=True, slots=True, kw_only=True)
class JointSteps:
    """The joint graph's compute nodes as the two step sequences placement works on."""

    forward: tuple[str, ...]
    backward: tuple[str, ...]
    earliest_prefetch: int
    """Index of the first backward step that reads a tangent (see the module docstring)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OffloadRewrite:
    """Same fields as ``_lossy.LossyRewrite`` (the partitioner reads those), plus the schedule used."""

    applied: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]
    backward_nodes: frozenset[str]
    """Names of the nodes added to the backward (prefetch, prefetch_wait, rebuilt aliases)."""
    forward_nodes: frozenset[str]
    """Names of the nodes added to the forward (offload, offload_wait)."""
    schedule: Mapping[str, OffloadSchedule]


_OFFLOAD_OPS = frozenset(f"memcompile::{op}" for op in ("offload", "offload_wait", "prefetch", "prefetch_wait"))


def has_offload(gm: fx.GraphModule) -> bool:
    """True when ``gm`` (an extracted forward or backward graph) calls the offload ops: Inductor
    should compile it with ``INDUCTOR_CONFIG``."""
    return any(
        n.op == "call_function" and (
            n.meta.get(OFFLOAD_META) or isinstance(n.target, torch._ops.OpOverload) and n.target.name() in _OFFLOAD_OPS
        )
        for n in gm.graph.nodes
    )


def is_materialized(node: fx.Node) -> bool:
    """True when ``node``'s tensor value is in memory whatever the backend fuses (see MATERIALIZED_OPS)."""
    if not isinstance(node.meta.get("val"), torch.Tensor):
        return False
    if node.op == "placeholder":
        return True
    if node.op != "call_function":
        return False
    source = node.args[0] if node.target is operator.getitem else node
    if not isinstance(source, fx.Node) or source.op != "call_function":
        return False
    target = source.target
    if getattr(target, "namespace", None) == "memcompile":
        return True
    return getattr(target, "overloadpacket", None) in MATERIALIZED_OPS


def why_not_offloadable(node: fx.Node, *, device_check: bool = True) -> str | None:
    """Why the storage ``node`` allocates may not be offloaded, or None.

    ``device_check``: refuse tensors that already live in host memory (nothing to gain); the
    rewrite itself works on CPU and its tests switch this off."""
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return "not a tensor"
    if node.op != "call_function":
        return "a graph input: its memory is not the graph's to free"
    source = alias_source(node)
    if source is not None:
        while alias_source(source) is not None:
            source = alias_source(source)
        return f"a view of {source.name}: offload the storage it shares"
    if device_check and val.device.type == "cpu":
        return "on cpu: it already lives in host memory, offloading frees nothing"
    if size_hint(val.numel()) == 0:
        return "empty"
    if dense_order(val) is None or size_hint(val.storage_offset()) != 0:
        return "not dense in memory (the host copy would not rebuild its views)"
    return None


def joint_steps(gm: fx.GraphModule, backward: Collection[str]) -> JointSteps:
    """The forward and backward compute nodes of the joint graph ``gm``, in graph order."""
    forward, back = [], []
    earliest = None
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if node.name in backward:
            if earliest is None and any(is_tangent(a) for a in node.all_input_nodes):
                earliest = len(back)
            back.append(node.name)
        else:
            forward.append(node.name)
    return JointSteps(forward=tuple(forward), backward=tuple(back), earliest_prefetch=earliest or 0)


def offload_schedule(
    gm: fx.GraphModule,
    roots: Collection[str],
    *,
    backward: Collection[str],
    host_link_bandwidth: float,
    node_seconds: Mapping[str, float] | Callable[[str], float] | None = None,
    lead_seconds: float | None = None,
    hide_offload: bool = True,
    overhead_seconds: float = 0.0,
    device_check: bool = True,
) -> tuple[dict[str, OffloadSchedule], tuple[tuple[str, str], ...]]:
    """Placement and cost of offloading each storage in ``roots`` on the joint graph ``gm``.

    ``node_seconds``: predicted seconds per node, a mapping (missing names count 0) or a function
    such as ``CostTable.seconds``;
    None counts every node that launches a kernel as 1 (views and getitems as 0), so
    ``lead_seconds`` is then a number of backward kernels (and must be given, as the transfer
    time is in seconds). Returns ``(schedule, skipped)``:
    ``skipped`` lists ``(name, reason)`` for roots that cannot be offloaded.
    """
    if node_seconds is None and lead_seconds is None:
        raise ValueError("offload_schedule: without node_seconds every node counts 1, so pass lead_seconds "
                         "as a number of backward nodes (or pass node_seconds)")
    nodes = {n.name: n for n in gm.graph.nodes}
    steps = joint_steps(gm, backward)
    fw_index = {name: i for i, name in enumerate(steps.forward)}
    bw_index = {name: i for i, name in enumerate(steps.backward)}

    def secs(name: str) -> float:
        if node_seconds is None:  # count kernels: views and getitems launch none
            node = nodes[name]
            return 0.0 if node.target is operator.getitem or alias_source(node) is not None else 1.0
        return float(node_seconds(name) if callable(node_seconds) else node_seconds.get(name, 0.0))

    fw_seconds = [secs(n) for n in steps.forward]
    bw_seconds = [secs(n) for n in steps.backward]
    fw_anchor = [is_materialized(nodes[n]) for n in steps.forward]
    bw_anchor = [is_materialized(nodes[n]) for n in steps.backward]
    output = next(iter(gm.graph.find_nodes(op="output")))
    groups = alias_groups(gm.graph)
    schedule: dict[str, OffloadSchedule] = {}
    skipped: list[tuple[str, str]] = []
    for name in roots:
        root = nodes.get(name)
        if root is None:
            skipped.append((name, "not in the graph"))
            continue
        if name not in fw_index:
            skipped.append((name, "not a forward value"))
            continue
        why = why_not_offloadable(root, device_check=device_check)
        if why is not None:
            skipped.append((name, why))
            continue
        closure = groups.get(root, [root])
        inside = set(closure)
        if any(output in a.users for a in closure if a.name not in backward):
            skipped.append((name, "a forward output aliases it: its memory stays alive anyway"))
            continue
        readers = [u for u, _ in backward_readers(closure, backward)]
        if not readers:
            skipped.append((name, "the backward reads no alias of it"))
            continue
        if any(u.name not in bw_index for u in readers):
            skipped.append((name, "the backward returns it as it is"))
            continue
        first = min(readers, key=lambda u: bw_index[u.name])
        fw_uses = [fw_index[u.name] for a in closure for u in a.users if u not in inside and u.name in fw_index]
        produced_at = fw_index[name]
        # Only backward nodes the first reader depends on are sure to run between the prefetch and its
        # wait whatever order the backend picks (Inductor moves weight-gradient matmuls, for one):
        # they alone count toward the window, and the anchor is one of them.
        needed = _backward_ancestors(first, backward)
        window_seconds = [s if n in needed else 0.0 for n, s in zip(steps.backward, bw_seconds)]
        anchorable = [ok and n in needed for n, ok in zip(steps.backward, bw_anchor)]
        val = root.meta["val"]
        nbytes = size_hint(val.numel()) * val.element_size()
        placement = place_offload(
            nbytes, host_link_bandwidth=host_link_bandwidth,
            forward_seconds=fw_seconds, backward_seconds=window_seconds,
            produced_at=produced_at, last_forward_use=max(fw_uses, default=produced_at),
            first_backward_use=bw_index[first.name], earliest_prefetch=steps.earliest_prefetch,
            forward_anchorable=fw_anchor, backward_anchorable=anchorable,
            lead_seconds=lead_seconds, hide_offload=hide_offload, overhead_seconds=overhead_seconds,
        )
        schedule[name] = OffloadSchedule(
            source=name, nbytes=nbytes,
            release_after=steps.forward[placement.release_step],
            prefetch_after=None if placement.prefetch_step is None else steps.backward[placement.prefetch_step],
            first_reader=first.name, placement=placement,
        )
    return schedule, tuple(skipped)


def alias_groups(graph: fx.Graph) -> dict[fx.Node, list[fx.Node]]:
    """Every storage-owning node with the nodes sharing its storage (itself first), in graph order:
    ``quantize.alias_closure`` for all storages in one pass."""
    owner: dict[fx.Node, fx.Node] = {}
    groups: dict[fx.Node, list[fx.Node]] = {}
    for node in graph.nodes:
        source = alias_source(node)
        root = node if source is None else owner.get(source, source)
        owner[node] = root
        groups.setdefault(root, []).append(node)
    return groups


def _backward_ancestors(node: fx.Node, backward: Collection[str]) -> set[str]:
    """Names of the backward nodes ``node`` depends on (itself excluded)."""
    seen: set[str] = set()
    stack = [a for a in node.all_input_nodes if a.name in backward]
    while stack:
        n = stack.pop()
        if n.name not in seen:
            seen.add(n.name)
            stack.extend(a for a in n.all_input_nodes if a.name in backward)
    return seen


def forward_first(gm: fx.GraphModule, backward: Collection[str]) -> None:
    """Move every forward node (not in ``backward``) above the first backward node, each side
    keeping its own order, so a node inserted after any forward node precedes every backward node.

    Valid because no forward node reads a backward one (a reader of a backward node is backward).
    Extraction copies each side in joint order, so the forward graph and the saved values do not
    change; only a tangent-free node the backward recomputes moves, and the autograd-order
    reordering then places it just before its first backward reader."""
    nodes = list(gm.graph.nodes)
    at = next((i for i, n in enumerate(nodes) if n.name in backward and n.op != "placeholder"), None)
    if at is None:
        return
    for node in nodes[at + 1:]:
        if node.name not in backward and node.op not in ("placeholder", "output"):
            nodes[at].prepend(node)


def offload_values(
    gm: fx.GraphModule,
    roots: Collection[str],
    *,
    backward: Collection[str],
    schedule: Mapping[str, OffloadSchedule] | None = None,
    host_link_bandwidth: float | None = None,
    node_seconds: Mapping[str, float] | Callable[[str], float] | None = None,
    lead_seconds: float | None = None,
    hide_offload: bool = True,
    seconds: Mapping[str, float] | None = None,
) -> OffloadRewrite:
    """Rewrite ``gm`` (a joint graph, in place) so the backward reads the storages ``roots`` through
    host copies. ``backward``: names of the joint graph's backward nodes.

    ``schedule``: the placement the planner priced (from ``offload_schedule`` on this graph, or a
    copy of it: names are what count); without it the placement is computed here from
    ``host_link_bandwidth``, ``node_seconds``, ``lead_seconds`` and ``hide_offload``, with the
    device check off (so the rewrite can be tested on CPU). ``seconds``: added seconds per root
    for the report (default: the schedule's cost).
    """
    import memcompile.kernels.offload  # noqa: F401 - registers the memcompile:: offload ops

    skipped: list[tuple[str, str]] = []
    if schedule is None:
        if host_link_bandwidth is None:
            raise ValueError("offload_values: pass schedule= (from offload_schedule) or host_link_bandwidth=")
        schedule, skip = offload_schedule(
            gm, roots, backward=backward, host_link_bandwidth=host_link_bandwidth, node_seconds=node_seconds,
            lead_seconds=lead_seconds, hide_offload=hide_offload, device_check=False,
        )
        skipped.extend(skip)
    ops = torch.ops.memcompile
    graph = gm.graph
    if any(name in schedule for name in roots):
        forward_first(gm, backward)
    nodes = {n.name: n for n in graph.nodes}
    mode = fake_mode_of(graph)
    groups = alias_groups(graph)  # inserted nodes alias their own values, never a root: computed once
    applied, added_fw, added_bw = [], set(), set()
    for name in roots:
        if any(s == name for s, _ in skipped):
            continue
        plan = schedule.get(name)
        if plan is None:
            skipped.append((name, "no placement in the schedule"))
            continue
        root, release_after, first = nodes[name], nodes[plan.release_after], nodes[plan.first_reader]
        anchor = nodes[plan.prefetch_after] if plan.prefetch_after is not None else None
        val = root.meta["val"]
        role = {"source": name, "nbytes": plan.nbytes}
        closure = groups.get(root, [root])
        inside = set(closure)
        readers = backward_readers(closure, backward)
        if not readers or first not in {u for u, _ in readers}:
            skipped.append((name, "the backward no longer reads it where the schedule says (rewritten already?)"))
            continue

        with graph.inserting_after(root):
            handle = call(graph, mode, ops.offload.default, root)
        # ``after`` pins the wait below the release step; the root itself is an input already
        pin = release_after if release_after is not root and isinstance(release_after.meta.get("val"), torch.Tensor) else None
        with graph.inserting_after(handle if release_after is root else release_after):
            host = call(graph, mode, ops.offload_wait.default, handle, root, pin)
        handle.meta[OFFLOAD_META] = {"role": "offload", **role}
        host.meta[OFFLOAD_META] = {"role": "offload_wait", **role}
        host.meta[LOSSY_META] = {"mode": "offload", "source": name,
                                 "seconds": (seconds or {}).get(name, plan.placement.cost.added_seconds)}
        added_fw |= {handle.name, host.name}

        if anchor is not None:
            with graph.inserting_after(anchor):
                fetch = call(graph, mode, ops.prefetch.default, host, val.device, anchor)
        else:  # nothing materialised in range: issue next to the wait, after a tensor the reader needs anyway
            fallback = next((a for a in first.all_input_nodes if a.name in backward
                             and isinstance(a.meta.get("val"), torch.Tensor) and a not in inside), None)
            with graph.inserting_before(first):
                fetch = call(graph, mode, ops.prefetch.default, host, val.device, fallback)
        with graph.inserting_before(first):
            y = call(graph, mode, ops.prefetch_wait.default, fetch, host, val.device)
            redirect_readers(graph, mode, closure, readers, {root: y}, added_bw)
        fetch.meta[OFFLOAD_META] = {"role": "prefetch", **role}
        y.meta[OFFLOAD_META] = {"role": "prefetch_wait", **role}
        added_bw |= {fetch.name, y.name}
        applied.append(name)
    graph.lint()
    gm.recompile()
    return OffloadRewrite(
        applied=tuple(applied), skipped=tuple(skipped), backward_nodes=frozenset(added_bw),
        forward_nodes=frozenset(added_fw), schedule=dict(schedule),
    )
