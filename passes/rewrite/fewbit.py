"""Few-bit rewrite: the backward of a GELU/SiLU reads a 2-bit code of its derivative, not its input.

On the joint graph, before extraction, for every value ``x`` the plan stores as few-bit
(every backward read of ``x`` is the input of the op's derivative, ``gelu_backward(grad, x)``
or ``silu_backward(grad, x)``):
- forward, right after ``x``'s producer: ``codes = memcompile::fewbit_gelu(x, 2)[1]`` (or
  ``fewbit_silu``): the packed Lloyd-Max code of f'(x), 2 bits per element;
- backward: ``gelu_backward(grad, x)`` becomes ``memcompile::fewbit_backward(grad, codes, 2, kind)``.
The forward's own GELU/SiLU node ``f(x)`` becomes ``getitem(both, 0)``, the kernel's f(x), under its
own name (the plan may save it under that name): run beside the op, it would be computed twice and
the op's first output would be a full-size buffer no node reads, which the simulator cannot see.
Left as it is where the two differ: GELU with ``approximate="tanh"`` (the kernel computes exact GELU)
or any other signature or layout. Recomputing ``f(x)`` would read ``x``, which a few-bit plan
neither keeps nor recomputes (planner/problem.py), so the plan never asks for it.

GELU with ``approximate="tanh"`` uses the exact-GELU table: the two derivatives differ by
less than 0.02 everywhere, far below the table's own error (rel. L2 13% at 2 bits, docs/modes.md).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

import torch
import torch.fx as fx

from ._lossy import LOSSY_META, LossyRewrite, call, decompose_ops, fake_mode_of, finish

# NOTE on compile caches: a graph this rewrite produced calls memcompile::fewbit_gelu / _silu / _backward.
# When Inductor's caches serve such a graph to a new process, no planning (and no rewrite)
# runs there, so the ops must be registered by importing memcompile, which imports this
# module (found when a cached graph failed: 'memcompile' has no attribute 'quantize_int8').
import memcompile.kernels.fewbit  # noqa: F401, E402 - registers the ops

BITS = 2
"""Bits per code (the kernels take 2 or 3)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FewBitRule:
    """How one derivative op of the joint graph is replaced."""

    kind: str
    """Table and kernel family: "gelu" or "silu"."""
    forward_op: str
    """The ``memcompile::`` op computing (f(x), codes)."""
    grad_arg: int = 0
    input_arg: int = 1
    extra_check: Callable[[fx.Node], bool] = lambda node: True


def _gelu_approximation_known(node: fx.Node) -> bool:
    return node.kwargs.get("approximate", "none") in ("none", "tanh")


FEWBIT_RULES: Mapping[object, FewBitRule] = {
    torch.ops.aten.gelu_backward.default: FewBitRule(
        kind="gelu", forward_op="fewbit_gelu", extra_check=_gelu_approximation_known
    ),
    torch.ops.aten.silu_backward.default: FewBitRule(kind="silu", forward_op="fewbit_silu"),
}


def fewbit_kind(node: fx.Node, backward: Collection[str]) -> str | None:
    """"gelu"/"silu" when the backward reads ``node`` only as the input of that derivative, else None."""
    kinds = set()
    for user in node.users:
        if user.name not in backward:
            continue
        rule = FEWBIT_RULES.get(user.target)
        if (
            rule is None
            or not rule.extra_check(user)
            or len(user.args) <= rule.input_arg
            or user.args[rule.input_arg] is not node
            or any(a is node for i, a in enumerate(user.args) if i != rule.input_arg)
            or any(a is node for a in user.kwargs.values())
        ):
            return None
        kinds.add(rule.kind)
    return kinds.pop() if len(kinds) == 1 else None


_FORWARD_TARGETS = {"gelu": torch.ops.aten.gelu.default, "silu": torch.ops.aten.silu.default}


def _computes_kernel_f(node: fx.Node, x: fx.Node, kind: str) -> bool:
    """``node`` is ``f(x)`` exactly as the kernel computes it (exact-erf GELU, SiLU)."""
    return (
        node.op == "call_function"
        and node.target is _FORWARD_TARGETS[kind]
        and node.args == (x,)
        and node.kwargs.get("approximate", "none") == "none"
        and set(node.kwargs) <= {"approximate"}
    )


def _same_layout(a, b) -> bool:
    return (
        isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
        and (a.shape, a.stride(), a.dtype, a.device) == (b.shape, b.stride(), b.dtype, b.device)
    )


def fewbit_values(
    gm: fx.GraphModule,
    names: Collection[str],
    *,
    backward: Collection[str],
    seconds: Mapping[str, float] | None = None,
) -> LossyRewrite:
    """Rewrite ``gm`` (a joint graph, in place) so the derivatives reading ``names`` read few-bit codes.
    ``backward``: names of the joint graph's backward nodes."""

    ops = torch.ops.memcompile
    graph = gm.graph
    nodes = {n.name: n for n in graph.nodes}
    mode = fake_mode_of(graph)
    applied, skipped, added = [], [], set()
    for name in names:
        x = nodes.get(name)
        kind = fewbit_kind(x, backward) if x is not None else None
        if kind is None:
            skipped.append((name, "the backward reads it other than as a GELU/SiLU input"))
            continue
        rules = {r.kind: r for r in FEWBIT_RULES.values()}
        with graph.inserting_before(x.next):
            both = call(graph, mode, getattr(ops, rules[kind].forward_op).default, x, BITS)
            codes = call(graph, mode, operator.getitem, both, 1)
        codes.meta[LOSSY_META] = {"mode": "fewbit", "source": name, "seconds": (seconds or {}).get(name, 0.0)}
        forward_f = next((u for u in x.users if u.name not in backward and _computes_kernel_f(u, x, kind)), None)
        if forward_f is not None and _same_layout(forward_f.meta.get("val"), both.meta["val"][0]):
            # in place, so the node keeps its name and its readers (the plan's decisions are by name)
            forward_f.target, forward_f.args, forward_f.kwargs = operator.getitem, (both, 0), {}
            forward_f.meta["val"] = both.meta["val"][0]
        for user in [u for u in x.users if u.name in backward]:
            rule = FEWBIT_RULES[user.target]
            with graph.inserting_before(user):
                grad = user.args[rule.grad_arg]
                if not grad.meta["val"].is_contiguous():
                    # the kernels return a contiguous gradient; their fake impl keeps grad's strides
                    grad = call(graph, mode, torch.ops.aten.clone.default, grad, memory_format=torch.contiguous_format)
                    added.add(grad.name)
                new = call(graph, mode, ops.fewbit_backward.default, grad, codes, BITS, kind)
            added.add(new.name)
            user.replace_all_uses_with(new)
            graph.erase_node(user)
        applied.append(name)
    return finish(gm, applied, skipped, added)


def decompose_leftover_derivatives(gm: fx.GraphModule) -> int:
    """Replace, in place, every GELU/SiLU derivative the few-bit rewrite left in ``gm`` by Inductor's
    decomposition of it (pointwise ATen ops); returns how many were replaced.

    NOTE on why: with the fewbit mode the backend hands compile_fx a decomposition table without
    these two ops, so the few-bit rewrite finds them whole in the joint graph. Those the plan does
    not replace would reach Inductor's lowering as ops with no lowering, which falls back to ATen's
    kernel, and which raises instead when the environment variable CI is set ("make_fallback(
    aten.gelu_backward.default): a decomposition exists"). Decomposed here, they compile as they
    would have without the fewbit mode."""
    return decompose_ops(gm, FEWBIT_RULES)
