"""Which forward values the planner decides about, and what each decision may cost (FX -> plain data).

A candidate is a value the forward computes (or could compute) that the backward reads,
directly or through a recomputed value. Each candidate may be kept (saved), recomputed in
the backward, or neither (when nothing in the backward needs it). With the lossy modes
enabled, a storage may also be quantized (int8 codes and scales; rewrite/quantize.py) and a
GELU/SiLU input stored as a few-bit derivative code (rewrite/fewbit.py): their legality,
packed bytes and added seconds are recorded here. With "inplace", an activation's input whose
backward reads can all read the activation's output instead (rewrite/inplace.py) records that
output. With "offload", every storage the backward reads that may go to host memory
(rewrite/offload.py: a device tensor, dense, not a view or graph input) is placed and priced
once (``offload_schedule``: the step through which the forward still holds it, the backward step
from which its prefetched copy is held, the transfer time the compute around it cannot hide);
the schedule travels with the set so the rewrite inserts the copies exactly where the planner
charged them. Everything here is keyed by node name so the planner never sees an FX node.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

from .costs import CostTable
from .lifetimes import LifetimeTable, size_hint, writes_in_place
from .simulate import LAYOUT_PREFIX, Timeline


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    name: str
    root: str
    """Name of the candidate that owns the storage (itself unless a view or getitem of a view)."""
    nbytes: int
    """Storage bytes if this candidate owns its storage, else 0."""
    recompute_seconds: float
    """Added time if the backward recomputes it (0 for views, getitems, and values the forward never needs)."""
    can_save: bool
    can_recompute: bool
    recompute_ban: str | None
    """Why it may not be recomputed (random op, side effect, ...), for the report."""
    needed: bool
    """A backward node reads it directly: it must be kept or recomputed."""
    inputs: tuple[str, ...]
    """Candidate inputs: what must be kept or recomputed to recompute it (primals are always there)."""
    fw_step: int
    fw_keep_from: int
    """First forward step from which keeping it costs memory it would not cost anyway."""
    bw_first: int | None
    bw_last: int | None
    """First and last backward step that reads it directly (None if none does)."""
    quantize_bytes: int = 0
    """Bytes of int8 codes and scales if the storage this candidate owns may be quantized, else 0."""
    quantize_seconds: float = 0.0
    """Added time of quantizing it in the forward and dequantizing it in the backward."""
    fewbit_bytes: int = 0
    """Bytes of the packed derivative code if the backward reads this value only as a GELU/SiLU
    input (so a few-bit code can replace it), else 0."""
    fewbit_seconds: float = 0.0
    """Added time of the few-bit pack (forward) and unpack (backward) kernels."""
    inplace_output: str | None = None
    """Name of the forward op's output y that every backward read of this value may read instead
    (mode "inplace": the derivative in its output form), else None."""
    offload_seconds: float | None = None
    """Added time of offloading the storage this candidate owns (the parts of its two copies the
    compute around them cannot hide, plus the op overhead), None when it may not be offloaded."""
    offload_transfer_seconds: float = 0.0
    """One copy's time over the host link (bytes / host_link_bandwidth), for the link's capacity."""
    offload_release_step: int = -1
    """Last forward step through which the device storage is held when offloaded (the copy's wait
    follows it; at or after the storage's last forward use)."""
    offload_held_from: int | None = None
    """First backward step at which the prefetched device copy exists (None: its first backward read)."""
    offload_copies: tuple[tuple[float, float, float], ...] = ()
    """(issue_at, transfer_seconds, wait_at) of the D2H copy (forward seconds) and the H2D copy
    (backward seconds), to check a chosen set's copies queued on one link."""
    backward_only: bool = False
    """The forward's outputs do not need it and only backward nodes read it (a part of a derivative
    that reads forward values only, e.g. GELU's decomposed ``cdf + x * pdf``): recomputing it moves
    it into the backward, where it may read a quantized input's dequantized copy."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CandidateSet:
    candidates: tuple[Candidate, ...]
    fw_steps: tuple[str, ...]
    bw_steps: tuple[str, ...]
    fw_base_bytes: tuple[int, ...]
    """Live bytes at each forward step that no decision changes (inputs, transient forward values)."""
    bw_base_bytes: tuple[int, ...]
    """Live bytes at each backward step that no decision changes (inputs, gradients, backward temporaries)."""
    link_seconds: tuple[float, float] = (math.inf, math.inf)
    """Predicted compute seconds of the forward and of the backward: how long the host link may be
    busy per phase (offload copies share one link, one copy at a time)."""
    offload_schedule: Mapping[str, Any] = field(default_factory=dict)
    """rewrite.offload.OffloadSchedule per offloadable storage (by owner name): what the rewrite inserts."""
    offload_skipped: tuple[tuple[str, str], ...] = ()
    """(storage, reason) for each storage the backward reads that may not be offloaded (with "offload")."""
    switch_bytes: tuple[int, ...] = ()
    """Per backward step: the scratch its op adds (negative: saves) when a recomputed convolution turns the
    backward channels-last (costs.layout_switch_bytes); empty where no plan switches it."""
    switch_candidates: tuple[str, ...] = ()
    """The convolutions whose recomputation switches the backward's layout (when ``switch_bytes`` is set)."""

    def by_name(self) -> Mapping[str, Candidate]:
        return {c.name: c for c in self.candidates}


_LOSSY = {"quantize", "fewbit"}
_RANDOM_TARGET_NAMES = ("inductor_random", "inductor_seeds", "inductor_lookup_seed", "philox", "rng")


def draws_random(node: fx.Node) -> bool:
    """``node``'s op draws random numbers (its tag, or one of Inductor's and philox's random ops): rebuilt in
    the backward, it would draw another sample than the forward's."""
    target = node.target
    return (torch.Tag.nondeterministic_seeded in getattr(target, "tags", ())
            or any(s in str(target) for s in _RANDOM_TARGET_NAMES))


def recompute_ban(node: fx.Node) -> str | None:
    """Why ``node`` must not be recomputed, or None.

    A random op recomputed in the backward would draw a new mask (pytorch issue 190758),
    so random ops are always saved; so are ops with side effects, ops that write into an
    argument (state updates such as ``copy_`` or BatchNorm's non-functional form: running them
    twice updates twice) and tagged must-save values.
    """
    if draws_random(node):
        return "random op"
    if node.is_impure() if hasattr(node, "is_impure") else False:
        return "side effect"
    recompute_tag = node.meta.get("recompute")
    if recompute_tag is not None and "MUST_SAVE" in str(recompute_tag):
        return "tagged must-save"
    if writes_in_place(node):
        return "writes into its arguments in place"
    return None


def overwritten_input_ban(node: fx.Node, table: LifetimeTable) -> str | None:
    """Why ``node`` must not be rebuilt in the backward because it reads state the forward overwrites.

    A graph input whose storage the forward mutates (``x.mul_(2)``, an EMA or counter buffer,
    BatchNorm's running statistics, an in-place op on a view of any of these) holds the new value
    by the time the backward runs: a value rebuilt from it there would differ from the forward's
    (wrong gradients, or autograd's "modified by an inplace operation" error). Such a value is kept,
    or rebuilt from kept values computed before the mutation. When the graph does not say which
    inputs are mutated (``LifetimeTable.mutated_inputs`` is None), any input may be: nothing that
    reads one is rebuilt. docs/correctness.md states the rule.
    """
    for arg in node.all_input_nodes:
        info = table.tensors.get(arg.name)
        root = table.tensors.get(info.alias_root) if info is not None else None
        if root is None or root.producer != "placeholder" or root.is_tangent:
            continue
        if table.mutated_inputs is None:
            return f"reads graph input {root.name}, and the graph does not say which inputs the forward mutates"
        if root.name in table.mutated_inputs:
            return f"reads {root.name}, which the forward mutates in place (the backward would see the new value)"
    return None


def build_candidates(
    joint: fx.GraphModule,
    *,
    table: LifetimeTable,
    forward_nodes: Collection[str],
    backward_nodes: Collection[str],
    forward_only: Collection[str],
    default_timeline: Timeline,
    costs: CostTable,
    modes: Collection[str] = ("keep", "recompute"),
    fused: bool = True,
    offload_device_check: bool = True,
    layout_switch: Mapping[str, int] | None = None,
) -> CandidateSet:
    """Candidates of a joint graph.

    ``forward_nodes``: call_function nodes the planner may place in the forward (what the forward
    must compute, plus values only the backward reads). ``forward_only``: the subset the forward's
    own outputs need (re-running one of them in the backward is added time; the others are moved,
    not repeated). ``backward_nodes``: nodes that depend on a tangent. ``default_timeline``: the
    default partition's simulated timeline, whose backward order and backward temporaries we keep.
    ``modes``: the modes the plan may use. Without "recompute" only what costs no time may be
    rebuilt in the backward (views, getitems, values the forward never needs); "quantize",
    "fewbit" and "offload" are off unless named. ``offload_device_check``: False offers offload
    for CPU tensors too (the config's test hook ``_force_offload_on_cpu``; nothing is gained there).
    """
    graph = joint.graph
    nodes = {n.name: n for n in graph.nodes}
    fw_steps = tuple(n for n in table.order if n in forward_nodes)
    fw_pos = {n: i for i, n in enumerate(fw_steps)}
    bw_steps = default_timeline.steps[default_timeline.backward_start :]
    bw_pos = {n: i for i, n in enumerate(bw_steps) if n in backward_nodes}

    def root_of(name: str) -> str:
        return table.tensors[name].alias_root

    groups: dict[str, list[str]] = {}
    for name in fw_steps:
        groups.setdefault(root_of(name), []).append(name)

    runs_anyway = set(forward_only)

    def fw_last(root: str) -> int:
        """Last forward step that reads the storage in every plan: a reader the forward's outputs do
        not need (a part of a derivative the joint graph places after the whole forward) runs in the
        forward only when the plan keeps it, and that extension is charged to its keep (below)."""
        members = groups.get(root, [root])
        uses = [fw_pos[u] for m in members for u in table.tensors[m].users if u in fw_pos and u in runs_anyway]
        return max([fw_pos.get(root, 0), *uses])

    # A kept value the forward's outputs do not need is computed at its place in the joint graph,
    # after the whole forward: its inputs live until then. Its keep is charged from where they would
    # otherwise die (its own bytes stand for theirs: the same for a pointwise op, the common case).
    inputs_die: dict[str, int] = {}
    for name in fw_steps:
        if name in runs_anyway:
            continue
        ends = [fw_last(root_of(a.name)) + 1 if a.name in runs_anyway else inputs_die.get(a.name, fw_pos[a.name] + 1)
                for a in nodes[name].all_input_nodes if a.name in fw_pos]
        inputs_die[name] = min(ends, default=fw_pos[name] + 1)

    candidates = []
    # Through Inductor a pointwise value is computed in the kernel of its producers (vertical fusion),
    # so a kept one is live from there: for a value the forward's outputs do not need, which the joint
    # graph places after the whole forward (GELU's decomposed derivative), that is its layer's step,
    # not the forward's end. (Values the forward needs sit next to their producers already.) Only
    # where the plan may store values lossily: there this charge decides between a full copy and
    # codes (gpt-small, quantize alone: 80.6 -> 68.1 MB of activations). In a lossless plan it moves
    # those values into the backward instead, where Inductor holds more at once than the simulator
    # counts (gpt-small at 0.0: 80.04 -> 87.40 MB measured for the same prediction), so there they
    # keep the joint graph's place.
    early = fused and bool(_LOSSY & set(modes))
    computed_at: dict[str, int] = {}
    for name in fw_steps:
        node = nodes[name]
        info = table.tensors[name]
        pos = fw_pos[name]
        if early and info.fusible and name not in forward_only:
            pos = min(pos, max((computed_at[a.name] for a in node.all_input_nodes if a.name in computed_at), default=pos))
        computed_at[name] = pos
        bw_users = [bw_pos[u] for u in info.users if u in bw_pos]
        ban = recompute_ban(node) or overwritten_input_ban(node, table)
        root = root_of(name)
        owns = root == name and info.kind == "tensor"
        if ban is None and any(a.op == "placeholder" and "tangents" in str(a.target) for a in node.all_input_nodes):
            ban = "reads a tangent"
        nbytes = info.nbytes_hint if owns else 0
        keep_from = computed_at[name] if fused and info.fusible else fw_last(root) + 1
        if name in inputs_die:
            keep_from = min(keep_from, inputs_die[name])
        seconds = costs.recompute_seconds(name) if name in forward_only else 0.0
        if ban is None and seconds > 0.0 and "recompute" not in modes:
            ban = "recompute not enabled"
        options = _lossy_prices(node, info, owns=owns, has_storage=root in fw_pos, backward=backward_nodes,
                              modes=modes, costs=costs) if _LOSSY & set(modes) else {}
        if "inplace" in modes and bw_users and info.kind == "tensor":
            options["inplace_output"] = _inplace_output(node, backward_nodes, table, fw_pos)
        candidates.append(
            Candidate(
                name=name,
                root=root if root in fw_pos else name,
                nbytes=nbytes,
                recompute_seconds=seconds,
                can_save=info.kind in ("tensor", "symint"),
                can_recompute=ban is None,
                recompute_ban=ban,
                needed=bool(bw_users),
                inputs=tuple(a.name for a in node.all_input_nodes if a.name in fw_pos),
                fw_step=fw_pos[name],
                fw_keep_from=keep_from,
                bw_first=min(bw_users) if bw_users else None,
                bw_last=max(bw_users) if bw_users else None,
                backward_only=name not in forward_only and bool(info.users) and all(u in backward_nodes for u in info.users),
                **options,
            )
        )

    # Inductor's channels-last copies of graph inputs (simulate.layout_copies) live from the forward's
    # start, in every plan: through the whole forward, and into the backward by the default timeline
    layout = sum(iv.nbytes for iv in default_timeline.intervals if iv.root.startswith(LAYOUT_PREFIX))
    fw_base = _sweep(
        len(fw_steps),
        default_timeline.held_bytes + layout,
        (
            (fw_pos[r], fw_last(r), 0 if fused and table.tensors[r].fusible else table.tensors[r].nbytes_hint)
            for r in groups
            if r in fw_pos and table.tensors[r].kind == "tensor" and r in runs_anyway
        ),
    )
    # what an op holds only while it runs (oneDNN scratch: a depthwise convolution's backward on convnext
    # holds 6.5 MB) at the step of every op that runs in every plan: the default timeline's steps
    transient = default_timeline.transient_bytes
    if transient:
        at = {name: transient[i] for i, name in enumerate(default_timeline.steps[: default_timeline.backward_start])}
        fw_base = tuple(b + at.get(name, 0) for b, name in zip(fw_base, fw_steps))
    start = default_timeline.backward_start
    bw_base = _sweep(
        len(bw_steps),
        default_timeline.held_bytes,
        (
            (max(iv.alloc_step - start, 0), iv.free_step - start, iv.nbytes)
            for iv in default_timeline.intervals
            # saved and recomputed forward values are the planner's to place; the rest is fixed
            if iv.free_step >= start and iv.root.removeprefix("bw:") not in fw_pos
        ),
    )
    if transient:
        bw_base = tuple(b + transient[start + i] for i, b in enumerate(bw_base))
    switch_bytes: tuple[int, ...] = ()
    switch_candidates: tuple[str, ...] = ()
    if layout_switch:
        convs = tuple(c.name for c in candidates if c.can_recompute
                      and nodes[c.name].target is torch.ops.aten.convolution.default)
        if convs:
            switch_bytes = tuple(layout_switch.get(name, 0) for name in bw_steps)
            switch_candidates = convs
    offload: dict[str, Any] = {}
    if "offload" in modes:
        candidates, offload = _offload_prices(
            joint, candidates, fw_pos=fw_pos, bw_pos=bw_pos, backward=backward_nodes, forward_only=forward_only,
            costs=costs, device_check=offload_device_check,
        )
    return CandidateSet(
        candidates=tuple(candidates),
        fw_steps=fw_steps,
        bw_steps=bw_steps,
        fw_base_bytes=fw_base,
        bw_base_bytes=bw_base,
        switch_bytes=switch_bytes,
        switch_candidates=switch_candidates,
        **offload,
    )


def _offload_prices(joint: fx.GraphModule, candidates: list[Candidate], *, fw_pos, bw_pos, backward: Collection[str],
                    forward_only: Collection[str], costs: CostTable, device_check: bool) -> tuple[list[Candidate], dict]:
    """Offload fields of the storages the backward reads, and the CandidateSet's offload fields.

    ``offload_schedule`` places the copies on the joint graph's own step lists (forward nodes, then
    backward nodes in joint order); the planner's steps are the forward nodes it decides about and
    the default partition's backward order, so each placement step is mapped to the nearest planner
    step at or after it. Copy times for the link check run over every step of a phase (the priced
    windows count only the backward nodes the first reader depends on; ``offload_schedule``)."""
    from .rewrite.offload import joint_steps, offload_schedule

    profile = costs.profile
    by_name = {c.name: i for i, c in enumerate(candidates)}
    roots = list(dict.fromkeys(
        c.root for c in candidates if c.needed and c.root in by_name and candidates[by_name[c.root]].nbytes > 0
    ))
    schedule, skipped = offload_schedule(
        joint, roots, backward=backward, host_link_bandwidth=profile.host_link_bandwidth,
        node_seconds=costs.seconds, overhead_seconds=4 * profile.kernel_overhead_seconds, device_check=device_check,
    )
    steps = joint_steps(joint, backward)
    fw_next = _following(steps.forward, fw_pos, default=len(fw_pos) - 1)
    bw_next = _following(steps.backward, bw_pos, default=None)
    fw_clock = _clock(costs.seconds(n) for n in steps.forward)
    bw_clock = _clock(costs.seconds(n) for n in steps.backward)
    for root, plan in schedule.items():
        i = by_name[root]
        place = plan.placement
        held_from = None
        if plan.prefetch_after is not None:
            held_from = bw_pos[plan.prefetch_after] + 1 if plan.prefetch_after in bw_pos else bw_next[plan.prefetch_after]
        transfer = place.cost.device_to_host.transfer_seconds
        prefetch_at = bw_clock[place.wait_step if place.prefetch_step is None else place.prefetch_step + 1]
        candidates[i] = dataclasses.replace(
            candidates[i], offload_seconds=place.cost.added_seconds, offload_transfer_seconds=transfer,
            offload_release_step=max(fw_next[plan.release_after], candidates[i].fw_step),
            offload_held_from=held_from,
            offload_copies=((fw_clock[place.issue_step + 1], transfer, fw_clock[place.release_step + 1]),
                            (prefetch_at, transfer, bw_clock[place.wait_step])),
        )
    link = (sum(costs.seconds(n) for n in steps.forward if n in forward_only), bw_clock[-1])
    return candidates, {"link_seconds": link, "offload_schedule": schedule, "offload_skipped": tuple(skipped)}


def _following(order: tuple[str, ...], pos: Mapping[str, int], *, default: int | None) -> dict[str, int | None]:
    """Per name of ``order``: ``pos`` of the first name at or after it that ``pos`` has (``default`` if none)."""
    out: dict[str, int | None] = {}
    current = default
    for name in reversed(order):
        if name in pos:
            current = pos[name]
        out[name] = current
    return out


def _clock(step_seconds) -> list[float]:
    """Start time of every step, and the phase's end last."""
    out = [0.0]
    for seconds in step_seconds:
        out.append(out[-1] + seconds)
    return out


def _lossy_prices(node: fx.Node, info, *, owns: bool, has_storage: bool, backward: Collection[str],
                  modes: Collection[str], costs: CostTable) -> dict[str, float | int]:
    """Candidate fields for the lossy modes legal on ``node``: quantize for the storage it owns, fewbit
    for the value itself.

    Seconds are the bytes the kernels move over the profile's memory bandwidth, plus one launch each way.
    """
    from memcompile.kernels.sizes import fewbit_bytes_moved, fewbit_nbytes, quantize_bytes_moved, quantized_nbytes

    from .rewrite import fewbit, quantize

    profile = costs.profile
    out: dict[str, float | int] = {}
    if info.kind != "tensor" or info.dtype is None or not has_storage:
        return out
    numel = size_hint(node.meta["val"].numel())  # a view's own nbytes are 0: count its elements
    launches = 2 * profile.kernel_overhead_seconds
    if "quantize" in modes and owns and quantize.why_not_quantizable(node) is None:
        fmt, group = quantize.FORMAT, quantize.GROUP_SIZE
        out["quantize_bytes"] = int(quantized_nbytes(numel, group_size=group, fmt=fmt))
        moved = quantize_bytes_moved(numel, info.dtype, group_size=group, fmt=fmt)
        out["quantize_seconds"] = moved / profile.memory_bandwidth + launches
    if "fewbit" in modes and info.dtype in quantize.FLOAT_DTYPES and numel and fewbit.fewbit_kind(node, backward):
        out["fewbit_bytes"] = int(fewbit_nbytes(numel, bits=fewbit.BITS))
        out["fewbit_seconds"] = fewbit_bytes_moved(numel, info.dtype, bits=fewbit.BITS) / profile.memory_bandwidth + launches
    return out


def _inplace_output(node: fx.Node, backward: Collection[str], table: LifetimeTable, fw_pos) -> str | None:
    """The forward output the backward may read instead of ``node`` (rewrite/inplace.py: an activation's
    output, or a norm's output rewrite/norm_output.py rebuilds ``node`` from), when it is a forward
    storage of its own that the planner can keep."""
    from .rewrite.inplace import inplace_source

    y, _ = inplace_source(node, backward)
    if y is None or y.name not in fw_pos:
        return None
    info = table.tensors[y.name]
    return y.name if info.alias_root == y.name and info.kind == "tensor" and info.nbytes_hint > 0 else None


def _sweep(n_steps: int, held: int, intervals) -> tuple[int, ...]:
    delta = [0] * (n_steps + 1)
    for a, b, nbytes in intervals:
        if nbytes <= 0 or b < a or a >= n_steps:
            continue
        delta[max(a, 0)] += nbytes
        delta[min(b, n_steps - 1) + 1] -= nbytes
    out, running = [], held
    for i in range(n_steps):
        running += delta[i]
        out.append(running)
    return tuple(out)
