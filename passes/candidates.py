"""Which forward values the planner decides about, and what each decision may cost (FX -> plain data).

A candidate is a value the forward computes (or could compute) that the backward reads,
directly or through a recomputed value. Each candidate may be kept (saved), recomputed in
the backward, or neither (when nothing in the backward needs it). Everything here is keyed
by node name so the planner never sees an FX node.
"""

from __future__ import annotations

import operator
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import torch
import torch.fx as fx

from .costs import CostTable
from .lifetimes import LifetimeTable
from .simulate import Timeline


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


@dataclass(frozen=True, slots=True, kw_only=True)
class CandidateSet:
    candidates: tuple[Candidate, ...]
    fw_steps: tuple[str, ...]
    bw_steps: tuple[str, ...]
    fw_base_bytes: tuple[int, ...]
    """Live bytes at each forward step that no decision changes (inputs, transient forward values)."""
    bw_base_bytes: tuple[int, ...]
    """Live bytes at each backward step that no decision changes (inputs, gradients, backward temporaries)."""

    def by_name(self) -> Mapping[str, Candidate]:
        return {c.name: c for c in self.candidates}


_RANDOM_TARGET_NAMES = ("inductor_random", "inductor_seeds", "inductor_lookup_seed", "philox", "rng")


def recompute_ban(node: fx.Node) -> str | None:
    """Why ``node`` must not be recomputed, or None.

    A random op recomputed in the backward would draw a new mask (pytorch issue 190758),
    so random ops are always saved; so are ops with side effects and tagged must-save values.
    """
    target = node.target
    tags = getattr(target, "tags", ())
    if torch.Tag.nondeterministic_seeded in tags or any(s in str(target) for s in _RANDOM_TARGET_NAMES):
        return "random op"
    if node.is_impure() if hasattr(node, "is_impure") else False:
        return "side effect"
    recompute_tag = node.meta.get("recompute")
    if recompute_tag is not None and "MUST_SAVE" in str(recompute_tag):
        return "tagged must-save"
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
    fused: bool = True,
) -> CandidateSet:
    """Candidates of a joint graph.

    ``forward_nodes``: call_function nodes the planner may place in the forward (what the forward
    must compute, plus values only the backward reads). ``forward_only``: the subset the forward's
    own outputs need (re-running one of them in the backward is added time; the others are moved,
    not repeated). ``backward_nodes``: nodes that depend on a tangent. ``default_timeline``: the
    default partition's simulated timeline, whose backward order and backward temporaries we keep.
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

    def fw_last(root: str) -> int:
        members = groups.get(root, [root])
        uses = [fw_pos[u] for m in members for u in table.tensors[m].users if u in fw_pos]
        return max([fw_pos.get(root, 0), *uses])

    candidates = []
    for name in fw_steps:
        node = nodes[name]
        info = table.tensors[name]
        bw_users = [bw_pos[u] for u in info.users if u in bw_pos]
        ban = recompute_ban(node)
        root = root_of(name)
        owns = root == name and info.kind == "tensor"
        if ban is None and any(a.op == "placeholder" and "tangents" in str(a.target) for a in node.all_input_nodes):
            ban = "reads a tangent"
        nbytes = info.nbytes_hint if owns else 0
        keep_from = fw_pos[name] if fused and info.fusible else fw_last(root) + 1
        candidates.append(
            Candidate(
                name=name,
                root=root if root in fw_pos else name,
                nbytes=nbytes,
                recompute_seconds=costs.seconds(name) if name in forward_only else 0.0,
                can_save=info.kind in ("tensor", "symint"),
                can_recompute=ban is None,
                recompute_ban=ban,
                needed=bool(bw_users),
                inputs=tuple(a.name for a in node.all_input_nodes if a.name in fw_pos),
                fw_step=fw_pos[name],
                fw_keep_from=keep_from,
                bw_first=min(bw_users) if bw_users else None,
                bw_last=max(bw_users) if bw_users else None,
            )
        )

    fw_base = _sweep(
        len(fw_steps),
        default_timeline.held_bytes,
        (
            (fw_pos[r], fw_last(r), 0 if fused and table.tensors[r].fusible else table.tensors[r].nbytes_hint)
            for r in groups
            if r in fw_pos and table.tensors[r].kind == "tensor"
        ),
    )
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
    return CandidateSet(
        candidates=tuple(candidates),
        fw_steps=fw_steps,
        bw_steps=bw_steps,
        fw_base_bytes=fw_base,
        bw_base_bytes=bw_base,
    )


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
