"""Quantize rewrite: a forward storage the backward reads is kept as int8 codes plus fp32 scales.

On the joint graph, before extraction, for every storage the plan quantizes:
- forward, right after the storage's producer: ``q, scales = memcompile::quantize_int8(x, 128)``,
  where ``x`` is the storage, or a permutation of it that is contiguous (absmax per group of
  128 consecutive elements of that order);
- backward, just before the first backward read of any alias of the storage:
  ``dq = memcompile::dequantize(q, scales, 128, dtype)``, permuted back so it has the storage's
  shape and strides; the alias ops (view, split, getitem, transpose, ...) that led from the
  storage to each value the backward reads are applied again to ``dq``, and the backward
  readers read those copies.
The partitioner then saves ``q`` and ``scales`` (what the backward reads from the forward)
instead of the storage. The planner chooses a storage, not a value, so the three slices of a
fused QKV projection share one quantized copy.
"""

from __future__ import annotations

import operator
from collections.abc import Collection, Mapping

import torch
import torch.fx as fx

from ..lifetimes import alias_source, size_hint
from ._lossy import LOSSY_META, LossyRewrite, call, fake_mode_of

GROUP_SIZE = 128
"""Elements per absmax group (one fp32 scale each)."""
FORMAT = "int8"
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def dense_order(val: torch.Tensor) -> tuple[int, ...] | None:
    """Dimension order in which ``val`` is contiguous (the identity when it is contiguous), or None
    when its elements do not fill their span densely (a slice of a larger tensor, an expand).

    Read at the size hints: under dynamic shapes the kernel still copies a tensor that turns out
    not to be contiguous, so a wrong answer costs a copy, never a wrong value.
    """
    sizes = [size_hint(s) for s in val.shape]
    strides = [size_hint(s) for s in val.stride()]
    order = sorted(range(len(sizes)), key=lambda d: (-strides[d] if sizes[d] != 1 else 0, d))
    expected = 1
    for d in reversed(order):
        if sizes[d] == 1:
            continue
        if strides[d] != expected:
            return None
        expected *= sizes[d]
    return tuple(order)


def why_not_quantizable(node: fx.Node) -> str | None:
    """Why the storage ``node`` allocates may not be quantized, or None."""
    from memcompile.kernels.sizes import quantized_nbytes

    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return "not a tensor"
    if val.dtype not in FLOAT_DTYPES:
        return f"dtype {val.dtype} is not a float type"
    numel = size_hint(val.numel())
    if numel == 0:
        return "empty"
    if quantized_nbytes(numel, group_size=GROUP_SIZE, fmt=FORMAT) >= numel * val.element_size():
        return "too small: codes and scales take no fewer bytes"
    if dense_order(val) is None:
        return "not dense in memory"
    return None


def alias_closure(node: fx.Node) -> list[fx.Node]:
    """``node`` and every node sharing its storage through alias ops, in graph order."""
    closure = {node}
    for n in node.graph.nodes:
        if n.op == "call_function" and n not in closure and alias_source(n) in closure:
            closure.add(n)
    return [n for n in node.graph.nodes if n in closure]


def quantize_storages(
    gm: fx.GraphModule,
    roots: Collection[str],
    *,
    backward: Collection[str],
    seconds: Mapping[str, float] | None = None,
) -> LossyRewrite:
    """Rewrite ``gm`` (a joint graph, in place) so the backward reads the storages ``roots`` through
    quantized copies. ``backward``: names of the joint graph's backward nodes."""
    import memcompile.kernels.quantize  # noqa: F401 - registers memcompile::quantize_int8 / dequantize

    ops = torch.ops.memcompile
    graph = gm.graph
    nodes = {n.name: n for n in graph.nodes}
    order = {n: i for i, n in enumerate(graph.nodes)}
    mode = fake_mode_of(graph)
    applied, skipped, added = [], [], set()
    for name in roots:
        root = nodes.get(name)
        if root is None:
            skipped.append((name, "not in the graph"))
            continue
        why = why_not_quantizable(root)
        if why is not None:
            skipped.append((name, why))
            continue
        closure = alias_closure(root)
        inside = set(closure)
        readers = [(u, a) for a in closure for u in a.users if u.name in backward and u not in inside]
        if not readers:
            skipped.append((name, "the backward reads no alias of it"))
            continue
        val = root.meta["val"]
        perm = dense_order(val)
        tag = {"mode": "quantize", "source": name, "seconds": (seconds or {}).get(name, 0.0)}

        with graph.inserting_before(root.next):
            x = root if perm == tuple(range(val.dim())) else call(graph, mode, torch.ops.aten.permute.default, root, list(perm))
            packed = call(graph, mode, ops.quantize_int8.default, x, GROUP_SIZE, False, 0)
            q = call(graph, mode, operator.getitem, packed, 0)
            scales = call(graph, mode, operator.getitem, packed, 1)
        q.meta[LOSSY_META] = scales.meta[LOSSY_META] = tag

        first = min((u for u, _ in readers), key=order.__getitem__)
        copies: dict[fx.Node, fx.Node] = {}
        with graph.inserting_before(first):
            dq = call(graph, mode, ops.dequantize.default, q, scales, GROUP_SIZE, val.dtype)
            added.add(dq.name)
            if x is not root:
                inverse = [perm.index(d) for d in range(len(perm))]
                dq = call(graph, mode, torch.ops.aten.permute.default, dq, inverse)
                added.add(dq.name)
            copies[root] = dq

            def copy_of(n: fx.Node) -> fx.Node:
                if n not in copies:
                    args, kwargs = fx.node.map_arg((n.args, n.kwargs), lambda a: copy_of(a) if a in inside else a)
                    copies[n] = call(graph, mode, n.target, *args, **kwargs)
                    added.add(copies[n].name)
                return copies[n]

            for user, alias in readers:
                user.replace_input_with(alias, copy_of(alias))
        applied.append(name)
    graph.lint()
    gm.recompile()
    return LossyRewrite(applied=tuple(applied), skipped=tuple(skipped), backward_nodes=frozenset(added))
