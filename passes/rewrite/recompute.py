"""The recompute rewrite: forward and backward graphs for a saved set (FX -> FX).

torch's own extraction tail, callable many times on one joint graph: the forward computes
what its outputs and the saved values need; the backward reads the saved values and
rebuilds every other forward value it needs; ``reordering_to_mimic_autograd_engine`` then
places each rebuilt value just before its first backward use, so it is freed after its
last. Using torch's code keeps RNG functionalization, symbolic-size and getitem handling
exactly as Inductor expects them.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
from torch._functorch import partitioners as tp
from torch.fx._lazy_graph_module import _make_graph_module
from torch.utils._ordered_set import OrderedSet

from ..lifetimes import alias_source, is_tangent


def saved_for(joint: fx.GraphModule, backward_nodes: set[str], recompute: frozenset[str]) -> list[fx.Node]:
    """Exactly what the backward (plus the recomputed values) reads from the forward side."""
    inside = backward_nodes | set(recompute)
    saved: dict[str, fx.Node] = {}
    for node in joint.graph.nodes:
        if node.name not in inside or node.op == "output":
            continue
        for arg in node.all_input_nodes:
            if arg.name not in inside and not is_tangent(arg):
                saved.setdefault(arg.name, arg)
    order = {n: i for i, n in enumerate(joint.graph.nodes)}
    return sorted(saved.values(), key=order.__getitem__)



def storages_the_backward_reads(joint: fx.GraphModule, backward_nodes: set[str]) -> list[str]:
    """Forward-owned storages the backward reads when nothing is recomputed (alias roots, in graph order)."""
    roots: list[str] = []
    for node in saved_for(joint, backward_nodes, frozenset()):
        while alias_source(node) is not None:
            node = alias_source(node)
        if node.op == "call_function" and node.name not in roots:
            roots.append(node.name)
    return roots

class Extractor:
    """Forward and backward modules for a saved set: torch's extraction tail, callable many times."""

    def __init__(self, joint: fx.GraphModule, node_info, num_fwd_outputs: int) -> None:
        self.joint = joint
        self.node_info = node_info
        self.num_fwd_outputs = num_fwd_outputs
        self.has_rng = tp.has_recomputable_ops(joint) and tp.has_recomputable_rng_ops(joint)
        params = inspect.signature(tp._extract_fwd_bwd_modules).parameters
        self._opaque = "saved_opaque_nodes" in params
        self._static = "static_lifetime_input_nodes" in params

    def __call__(
        self, saved_values: Sequence[fx.Node], *, joint: fx.GraphModule | None = None
    ) -> tuple[fx.GraphModule, fx.GraphModule]:
        """``joint``: a rewritten copy of the joint graph (lossy modes) to extract from instead."""
        joint = joint if joint is not None else self.joint
        is_opaque = getattr(tp, "is_opaque_node", lambda n: False)
        sym = [n for n in saved_values if tp.is_sym_node(n) and not _assert_only(n)]
        opaque = [n for n in saved_values if is_opaque(n)]
        tensors = [n for n in saved_values if not tp.is_sym_node(n) and not is_opaque(n)]
        kwargs: dict[str, Any] = {"num_fwd_outputs": self.num_fwd_outputs}
        if self._opaque:
            kwargs["saved_opaque_nodes"] = opaque
        if self._static:
            static = self.node_info.static_lifetime_input_nodes
            if joint is not self.joint:
                by_name = {n.name: n for n in joint.graph.find_nodes(op="placeholder")}
                static = type(static)(by_name[n.name] for n in static)
            kwargs["static_lifetime_input_nodes"] = static
        fw, bw = tp._extract_fwd_bwd_modules(joint, tensors, saved_sym_nodes=sym, **kwargs)
        if self.has_rng:
            fw, bw = tp.functionalize_rng_ops(joint, fw, bw, len(sym))
        bw = _reorder_like_autograd(bw)
        fw, bw = tp.raise_getitems(fw), tp.raise_getitems(bw)
        thread = getattr(tp, "thread_graphsafe_rng_from_hops", None)
        if thread is not None:
            fw, bw = thread(fw, is_backward=False), thread(bw, is_backward=True)
        return fw, bw


def _assert_only(node: fx.Node) -> bool:
    fn = getattr(tp, "_is_assert_only_symbool", None)
    return bool(fn and fn(node))


def _reorder_like_autograd(gm: fx.GraphModule) -> fx.GraphModule:
    """``tp.reordering_to_mimic_autograd_engine``, step for step, except that the module it returns is
    made as ``_extract_fwd_bwd_modules`` makes its own (lazy under Inductor's lazy mode): torch's builds a
    plain GraphModule, whose constructor generates the Python code of the whole backward at once, and
    ``raise_getitems`` generates it again; a lazy module generates it only if it is ever run or printed.
    """
    new_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in gm.graph.find_nodes(op="placeholder"):
        env[node] = new_graph.node_copy(node, lambda x: env[x])
    order = {node: idx for idx, node in enumerate(gm.graph.nodes)}

    def insert_node_in_graph(node: fx.Node) -> None:
        cur_nodes = [node]
        insertable_nodes: OrderedSet[fx.Node] = OrderedSet()
        while len(cur_nodes) > 0:
            node = cur_nodes.pop()
            if node in insertable_nodes or node in env:
                continue
            insertable_nodes.add(node)
            cur_nodes += node.all_input_nodes
        for node in sorted(insertable_nodes, key=lambda n: order[n]):
            env[node] = new_graph.node_copy(node, lambda x: env[x])

    first_node_in_bwd = None
    minimum_order = math.inf
    for tangent in filter(tp._is_tangent, gm.graph.nodes):
        for user in tangent.users:
            if order[user] < minimum_order:
                minimum_order = order[user]
                first_node_in_bwd = user
    if first_node_in_bwd is None:
        return gm
    nodes = list(gm.graph.nodes)
    for node in nodes[: order[first_node_in_bwd]]:
        if node.op == "call_function" and node.target is torch.ops.aten.copy_.default:
            insert_node_in_graph(node)
    for node in nodes[order[first_node_in_bwd]:]:
        insert_node_in_graph(node)
    return _make_graph_module(gm, new_graph)
