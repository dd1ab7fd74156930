"""What the lossy rewrites (quantize.py, fewbit.py) share: their result type and a node inserter
whose meta["val"] comes from the op's fake implementation.

Lifetimes, the simulator and Inductor read ``meta["val"]`` of every node, so a node a
rewrite inserts gets the value the op would produce under the graph's FakeTensorMode.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

LOSSY_META = "memcompile_lossy"
"""``node.meta`` key on the values a lossy rewrite saves: {"mode", "source", "seconds"} (for the report)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LossyRewrite:
    applied: tuple[str, ...]
    """Names of the values rewritten (quantize: storages; fewbit: GELU/SiLU inputs)."""
    skipped: tuple[tuple[str, str], ...]
    """(name, reason) of each value the plan asked for that could not be rewritten."""
    backward_nodes: frozenset[str]
    """Names of the nodes the rewrite added to the backward (the partitioner must treat them as backward)."""


def finish(gm: fx.GraphModule, applied, skipped, added) -> LossyRewrite:
    """Check and recompile ``gm`` after a rewrite, and say what it did."""
    gm.graph.lint()
    gm.recompile()
    return LossyRewrite(applied=tuple(applied), skipped=tuple(skipped), backward_nodes=frozenset(added))


def fake_mode_of(graph: fx.Graph):
    """The FakeTensorMode of the graph's placeholder values (the one AOT autograd traced with)."""
    from torch._guards import detect_fake_mode

    vals = tuple(n.meta.get("val") for n in graph.find_nodes(op="placeholder"))
    mode = detect_fake_mode(tuple(v for v in vals if isinstance(v, torch.Tensor)))
    if mode is None:
        raise RuntimeError("lossy rewrite: the joint graph carries no fake tensors in meta['val']")
    return mode


def call(graph: fx.Graph, fake_mode, target, *args: Any, **kwargs: Any) -> fx.Node:
    """``graph.call_function(target, args, kwargs)`` at the current insert point, with meta["val"] set."""
    node = graph.call_function(target, args, kwargs)
    fake_args, fake_kwargs = fx.node.map_arg((args, kwargs), lambda n: n.meta["val"])
    with fake_mode:
        node.meta["val"] = target(*fake_args, **fake_kwargs)
    return node


def backward_readers(closure, backward: Collection[str]) -> list[tuple[fx.Node, fx.Node]]:
    """(reader, alias) for every backward node outside ``closure`` (a storage's root and its
    aliases) that reads one of them: the reads a stand-in for the storage must serve."""
    inside = set(closure)
    return [(u, a) for a in closure for u in a.users if u.name in backward and u not in inside]


def redirect_readers(graph: fx.Graph, fake_mode, closure, readers, stand_ins: dict[fx.Node, fx.Node],
                     added: set[str]) -> None:
    """At the current insert point, rebuild the aliases ``readers`` (``backward_readers``) read on top
    of ``stand_ins`` (the storage's root, mapped to what replaces it) and point each reader at its
    rebuilt alias; the names of the nodes made go into ``added``."""
    inside = set(closure)
    copies = dict(stand_ins)

    def copy_of(n: fx.Node) -> fx.Node:
        if n not in copies:
            args, kwargs = fx.node.map_arg((n.args, n.kwargs), lambda a: copy_of(a) if a in inside else a)
            copies[n] = call(graph, fake_mode, n.target, *args, **kwargs)
            added.add(copies[n].name)
        return copies[n]

    for user, alias in readers:
        user.replace_input_with(alias, copy_of(alias))
