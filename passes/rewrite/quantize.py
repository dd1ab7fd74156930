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

Two forms of the same arithmetic (``form``):
- "kernel": the custom ops above (Triton on CUDA and under TRITON_INTERPRET, reference.py on
  CPU). Opaque to Inductor: the activation is written out and read back by the kernel.
- "aten": the ops of kernels/quantize_decomposed.py (abs, amax, div, round, clamp, casts)
  inlined into the graph, so Inductor computes the codes inside the kernel producing the
  activation and folds the dequantize into the backward's pointwise readers. Run op by op
  (inner "eager") every one of them materialises an input-sized fp32 temporary, so it is
  for Inductor only; static shapes only (its views take concrete sizes).
``preferred_form`` says which one to use where, from ``bench_kernels --fusion``.
"""

from __future__ import annotations

import operator
from collections.abc import Collection, Mapping

import torch
import torch.fx as fx

from ..lifetimes import alias_source, size_hint
from ._lossy import (
    LOSSY_META,
    LossyRewrite,
    _static,
    backward_readers,
    call,
    fake_mode_of,
    finish,
    inline_aten,
    redirect_readers,
)

# NOTE on compile caches: a graph this rewrite produced calls memcompile::quantize_int8 / dequantize.
# When Inductor's caches serve such a graph to a new process, no planning (and no rewrite)
# runs there, so the ops must be registered by importing memcompile, which imports this
# module (found when a cached graph failed: 'memcompile' has no attribute 'quantize_int8').
import memcompile.kernels.quantize  # noqa: F401, E402 - registers the ops

GROUP_SIZE = 128
"""Elements per absmax group (one fp32 scale each)."""
FORMAT = "int8"
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
FORMS = ("kernel", "aten")


def preferred_form(device_type: str, inner: str) -> str:
    """The faster form where it was measured, else "kernel".

    Through Inductor, on CPU and CUDA, the "aten" form fuses into its producer and readers and was
    faster in every program of ``bench_kernels --fusion`` (figures: docs/BENCHMARKS.md, "Kernels" and
    "GPU"). Inner "eager": always "kernel" (the aten form would materialise fp32 temporaries).
    """
    if inner == "inductor" and device_type in ("cpu", "cuda"):
        return "aten"
    return "kernel"


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
    # An alias reads its source (a getitem, the multi-output op that reads it): walk readers, not the
    # whole graph, so a rewrite of many storages stays linear in the graph.
    closure = {node}
    stack = [node]
    while stack:
        for user in stack.pop().users:
            for n in (user, *(u for u in user.users if u.target is operator.getitem)):
                if n.op == "call_function" and n not in closure and alias_source(n) in closure:
                    closure.add(n)
                    stack.append(n)
    return sorted(closure)  # fx orders nodes by their place in the graph


def quantize_storages(
    gm: fx.GraphModule,
    roots: Collection[str],
    *,
    backward: Collection[str],
    seconds: Mapping[str, float] | None = None,
    form: str = "kernel",
) -> LossyRewrite:
    """Rewrite ``gm`` (a joint graph, in place) so the backward reads the storages ``roots`` through
    quantized copies. ``backward``: names of the joint graph's backward nodes. ``form``: "kernel"
    (custom ops) or "aten" (inlined ATen ops, for Inductor; see ``preferred_form``); a storage with
    symbolic sizes always takes "kernel"."""
    from memcompile.kernels import quantize_decomposed as decomposed

    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
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
        readers = backward_readers(closure, backward)
        if not readers:
            skipped.append((name, "the backward reads no alias of it"))
            continue
        val = root.meta["val"]
        perm = dense_order(val)
        tag = {"mode": "quantize", "source": name, "seconds": (seconds or {}).get(name, 0.0)}

        aten = form == "aten" and _static(val)
        with graph.inserting_before(root.next):
            x = root if perm == tuple(range(val.dim())) else call(graph, mode, torch.ops.aten.permute.default, root, list(perm))
            if aten:
                q, scales = inline_aten(graph, mode, decomposed.quantize_int8, x, GROUP_SIZE)
            else:
                packed = call(graph, mode, ops.quantize_int8.default, x, GROUP_SIZE, False, 0)
                q = call(graph, mode, operator.getitem, packed, 0)
                scales = call(graph, mode, operator.getitem, packed, 1)
        q.meta[LOSSY_META] = scales.meta[LOSSY_META] = tag

        first = min((u for u, _ in readers), key=order.__getitem__)
        with graph.inserting_before(first):
            if aten:
                anchor = first.prev
                (dq,) = inline_aten(graph, mode, decomposed.dequantize, q, scales, tuple(x.meta["val"].shape), val.dtype)
                node = anchor.next  # what inline_aten inserted: the nodes between the anchor and ``first``
                while node is not first:
                    added.add(node.name)
                    node = node.next
            else:
                dq = call(graph, mode, ops.dequantize.default, q, scales, GROUP_SIZE, val.dtype)
                added.add(dq.name)
            if x is not root:
                inverse = [perm.index(d) for d in range(len(perm))]
                dq = call(graph, mode, torch.ops.aten.permute.default, dq, inverse)
                added.add(dq.name)
            redirect_readers(graph, mode, closure, readers, {root: dq}, added)
        applied.append(name)
    return finish(gm, applied, skipped, added)
