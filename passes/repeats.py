"""Repeated structure in an FX graph: nodes that play the same part in copies of one layer.

A transformer's blocks trace to the same ops on the same shapes and dtypes, wired the same way.
Colour refinement (Weisfeiler-Lehman) finds them without knowing the model: each node starts
with its op, shape, dtype and constant arguments, and each round mixes in its inputs' colours
(in argument order) and its readers' colours. After ``rounds`` rounds two nodes share a colour
when their neighbourhoods of that radius match; nodes near the ends of the stack of layers (the
embedding, the head) see different neighbours and keep colours of their own, which gives the
first and last layers the boundary conditions their positions need.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import fx

ROUNDS = 6
"""Refinement rounds: the radius within which two nodes must look alike. A few ops tell apart the values
of one block (their neighbours differ within two or three ops); a larger radius only sets more layers
near the ends of the stack apart from the rest."""


def _meta_key(val) -> tuple:
    if isinstance(val, torch.Tensor):
        return ("t", tuple(str(d) for d in val.shape), str(val.dtype), val.device.type)
    if isinstance(val, (tuple, list)):
        return ("l", tuple(_meta_key(v) for v in val))
    if val is None:
        return ("n",)
    return ("o", type(val).__name__)


def _constants(node: fx.Node) -> tuple:
    out = []
    for a in (*node.args, *node.kwargs.values()):
        if isinstance(a, fx.Node):
            out.append("@")
        elif isinstance(a, (list, tuple)):
            out.append(tuple("@" if isinstance(x, fx.Node) else repr(x) for x in a))
        else:
            out.append(repr(a))
    return tuple(out)


def structural_colours(graph: fx.Graph, rounds: int = ROUNDS) -> Mapping[str, int]:
    """Per node name, a colour shared by exactly the nodes whose neighbourhoods of radius ``rounds``
    look alike (op, shape, dtype, constant arguments, wiring). Linear in the graph per round."""
    nodes = [n for n in graph.nodes if n.op != "output"]
    colour: dict[fx.Node, int] = {}
    for n in nodes:
        if n.op == "placeholder":
            kind = "tangent" if "tangents" in str(n.target) else "primal"
            colour[n] = hash((kind, _meta_key(n.meta.get("val"))))
        else:
            colour[n] = hash((n.op, str(n.target), _meta_key(n.meta.get("val")), _constants(n)))
    inputs = {n: [a for a in n.all_input_nodes if a in colour] for n in nodes}
    readers = {n: [u for u in n.users if u in colour] for n in nodes}
    for _ in range(rounds):
        colour = {
            n: hash((colour[n], tuple(colour[a] for a in inputs[n]), tuple(sorted(colour[u] for u in readers[n]))))
            for n in nodes
        }
    # small dense ids, numbered by first appearance (stable across runs, unlike hash())
    ids: dict[int, int] = {}
    return {n.name: ids.setdefault(colour[n], len(ids)) for n in nodes}
