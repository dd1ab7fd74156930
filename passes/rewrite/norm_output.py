"""Memory-sharing norms: the backward of a LayerNorm or RMSNorm reads the norm's output, not its input.

In a transformer the backward reads both a norm's input x (or its normalized ``x_hat``) and its
output y (the next matmul's weight gradient reads y). y is an affine function of ``x_hat``, and
``x_hat`` of x, with small operands only (the affine weight and bias, the per-row statistics), so
each can be rebuilt from y in the backward and only y need be saved (Approx-BP, ICML 2024,
"memory-sharing" LayerNorm/RMSNorm). On the joint graph (decomposed by Inductor, or a hand-written
RMSNorm under either inner compiler) a value v the backward reads is rebuilt when a chain of
pointwise links leads from v to a forward value y whose storage the backward reads anyway:

| forward link (s small) | inverse in the backward |
|---|---|
| ``c = a * s``, ``s * a`` | ``a = c / s`` |
| ``c = a / s`` | ``a = c * s`` |
| ``c = a + s``, ``s + a`` (s a graph input: the bias) | ``a = c - s`` |
| ``c = a - s`` (s a graph input) | ``a = c + s`` |

s is a number, or a graph input (the norm's weight or bias) or forward value (a per-row statistic,
multiplicative links only) with at most 1/8 of the chain's elements. The chain needs at least one multiplication by a graph
input (the affine weight) and at most ``MAX_LINKS`` links. LayerNorm: ``x_hat -> *w -> +b = y``; RMSNorm:
``x -> *rstd -> x_hat -> *w = y``; the RMSNorm derivative also reads ``pow(x, 1.0) * 2.0``,
rebuilt as those ops on the rebuilt x.

Exactness: a multiplicative inverse is exact up to two roundings (``fl(fl(a*s)/s)`` is within one
ulp of a) unless ``a*s`` under- or overflows; a bias inverse ``(a + b) - b`` has an absolute error
of one ulp of ``|a*w| + |b|``, so x_hat's relative error is about ``eps * (1 + |b / (w x_hat)|)``:
exact where the bias is 0 (every norm at initialisation), small where ``|b|`` is not much larger
than ``|w|`` (fp32: 1.2e-7 per unit of the ratio). See docs/modes.md.

Zero divisors: a weight element that is 0 (or subnormal) loses x in that column (``y = b``
whatever x was), and the weight is a parameter whose values change every step, so no plan-time
check is sound. Every tensor divisor goes through ``memcompile::nonzero_divisor``, which checks on
the device (``torch._assert_async``: no host sync on CUDA) that every element is finite and at least
the dtype's smallest normal number, and raises a RuntimeError naming the fix otherwise (compile with
``modes`` without "inplace"); it never gives a wrong gradient silently. The rule is not offered
where the output is mutated later, where the backward does not read y's storage anyway (nothing
would be saved), or where a link changes the dtype or the shape.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from numbers import Real

import torch
from torch import fx

from ..lifetimes import alias_source, is_tangent, size_hint

aten = torch.ops.aten

MAX_LINKS = 4
"""Longest chain searched: RMSNorm needs 2 (x -> x_hat -> y), LayerNorm with its bias 2 from x_hat."""

SMALL_FRACTION = 8
"""A forward-value operand has at most 1/SMALL_FRACTION of the chain's elements (a per-row statistic):
reading it in the backward saves a tensor that small at most."""

ZERO_DIVISOR_MESSAGE = (
    "memcompile: a norm's backward was planned to read the norm's output (mode 'inplace', "
    "memory-sharing norm), which divides by the norm's weight, and the weight now has an element "
    "that is 0, subnormal or not finite: the input cannot be recovered from the output. Compile with "
    "options={'modes': ('keep', 'recompute')} (inplace off) for this model."
)


@torch.library.custom_op("memcompile::nonzero_divisor", mutates_args=())
def nonzero_divisor(divisor: torch.Tensor) -> torch.Tensor:
    """``divisor`` (a copy), checked on its device to be finite and at least the smallest normal number."""
    tiny = torch.finfo(divisor.dtype).tiny
    torch._assert_async(((divisor.abs() >= tiny) & divisor.isfinite()).all(), ZERO_DIVISOR_MESSAGE)
    return divisor.clone()


@nonzero_divisor.register_fake
def _nonzero_divisor_fake(divisor: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(divisor)


_MUL = (aten.mul.Tensor, aten.mul.Scalar)
_DIV = (aten.div.Tensor, aten.div.Scalar)
_ADD = (aten.add.Tensor, aten.add.Scalar)
_SUB = (aten.sub.Tensor, aten.sub.Scalar)


@dataclass(frozen=True, slots=True)
class Link:
    """One forward step ``out = op(a, s)`` (or ``op(s, a)``) of a chain from v to y."""

    out: fx.Node
    kind: str
    """"mul", "div", "add" or "sub"."""
    operand: fx.Node | float
    a_first: bool
    """a is the op's first argument (matters for div and sub)."""


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _tensor(node) -> torch.Tensor | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return val if isinstance(val, torch.Tensor) else None


def _layout(t: torch.Tensor) -> tuple:
    """Shape (as expressions: comparing symbolic sizes would add guards after dynamo), dtype, device."""
    return tuple(str(d) for d in t.shape), t.dtype, t.device


def _mutated(node: fx.Node) -> bool:
    from .inplace import _mutated as written

    return written(node) or any(written(u) for u in node.users if alias_source(u) is node)


def _small_operand(s, a: fx.Node, backward: Collection[str], *, multiplicative: bool) -> bool:
    """``s`` may stand beside the chain value ``a`` in the backward (module docstring)."""
    number = _number(s)
    if number is not None:
        return not multiplicative or number != 0.0
    if not isinstance(s, fx.Node) or s.name in backward or is_tangent(s) or _mutated(s):
        return False
    vs, va = _tensor(s), _tensor(a)
    if vs is None or va is None or vs.dtype != va.dtype or vs.device != va.device:
        return False
    if size_hint(vs.numel()) * SMALL_FRACTION > size_hint(va.numel()):
        return False  # a full-size operand (a gate, a graph input batch) is no statistic nor parameter
    return s.op == "placeholder" or (multiplicative and s.op == "call_function")


def _link(out: fx.Node, a: fx.Node, backward: Collection[str]) -> Link | None:
    """``out`` as one invertible link from ``a``, or None."""
    target = out.target
    kind = ("mul" if target in _MUL else "div" if target in _DIV else "add" if target in _ADD
            else "sub" if target in _SUB else None)
    if kind is None or out.kwargs or len(out.args) != 2 or out.name in backward:
        return None
    first, second = out.args
    if (first is a) == (second is a):
        return None
    a_first = first is a
    s = second if a_first else first
    if kind == "div" and not a_first:
        return None
    if kind in ("add", "sub") and not (isinstance(s, fx.Node) and s.op == "placeholder" and (a_first or kind == "add")):
        return None  # an inverse by subtraction is exact only up to |s|: the bias, nothing else
    va, vo = _tensor(a), _tensor(out)
    if va is None or vo is None or _layout(va) != _layout(vo):
        return None
    if not va.is_floating_point():
        return None
    if not _small_operand(s, a, backward, multiplicative=kind in ("mul", "div")):
        return None
    return Link(out=out, kind=kind, operand=s, a_first=a_first)


def _scaled(v: fx.Node) -> bool:
    """v is ``op(a, number)`` for a pointwise op by a number (``pow(a, 1.0)``, ``a * 2.0``), same layout as a."""
    if v.op != "call_function" or v.kwargs or len(v.args) != 2 or not isinstance(v.args[0], fx.Node):
        return False
    if v.target not in (aten.pow.Tensor_Scalar, *_MUL, *_DIV) or _number(v.args[1]) is None:
        return False
    va, vs = _tensor(v), _tensor(v.args[0])
    return va is not None and vs is not None and _layout(va) == _layout(vs)


def _prefixes(v: fx.Node):
    """(start, prefix): v = prefix applied to start, for v itself and each value it is a scaling of
    (the RMSNorm derivative reads ``pow(x, 1.0) * 2.0``); prefix outermost first."""
    prefix: tuple[fx.Node, ...] = ()
    while True:
        yield v, prefix
        if not _scaled(v) or len(prefix) >= MAX_LINKS:
            return
        prefix = (*prefix, v)
        v = v.args[0]


def _storage_read_by(y: fx.Node, backward: Collection[str]) -> bool:
    """The backward reads y or a view of it."""
    stack, seen = [y], set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        for u in n.users:
            if u.name in backward:
                return True
            if alias_source(u) is n:
                stack.append(u)
    return False


def _chains(start: fx.Node, backward: Collection[str]) -> list[tuple[Link, ...]]:
    out, stack = [], [(start, ())]
    while stack:
        a, chain = stack.pop()
        if len(chain) >= MAX_LINKS:
            continue
        for user in a.users:
            link = _link(user, a, backward)
            if link is not None:
                longer = (*chain, link)
                out.append(longer)
                stack.append((user, longer))
    return out


@dataclass(frozen=True, slots=True)
class Rebuild:
    """How the backward rebuilds v: the inverse ``links`` from y to ``start``, then ``prefix`` (v's own ops
    on ``start``, innermost last)."""

    start: fx.Node
    links: tuple[Link, ...]
    prefix: tuple[fx.Node, ...] = ()


def norm_output_source(v: fx.Node, backward: Collection[str]) -> tuple[fx.Node | None, Rebuild | None, str]:
    """(y, how to rebuild v from it, "") when every backward read of ``v`` may read a value rebuilt from
    the forward value y, whose storage the backward reads anyway; else (None, None, why not)."""
    if v.name in backward or _tensor(v) is None:
        return None, None, "not a forward tensor"
    if not any(u.name in backward for u in v.users):
        return None, None, "the backward does not read it"
    if _mutated(v):
        return None, None, "it is written in place"
    for start, prefix in _prefixes(v):
        best: tuple[Link, ...] = ()
        for chain in _chains(start, backward):
            y = chain[-1].out
            if not any(link.kind == "mul" and isinstance(link.operand, fx.Node) and link.operand.op == "placeholder"
                       for link in chain):
                continue  # no affine weight: not a norm's output
            if y is v or y in prefix or _mutated(y) or not _storage_read_by(y, backward):
                continue
            if len(chain) > len(best):
                best = chain
        if best:
            return best[-1].out, Rebuild(start=start, links=best, prefix=prefix), ""
    return None, None, "no output of a norm (scaled by a weight) that the backward reads anyway"


def rebuild(graph: fx.Graph, fake_mode, how: Rebuild, added: set[str]) -> fx.Node:
    """At the insert point: v rebuilt from y (the inverse links, last first, then v's own prefix ops)."""
    from ._lossy import call

    def node(target, *args):
        n = call(graph, fake_mode, target, *args)
        added.add(n.name)
        return n

    c = how.links[-1].out
    for link in reversed(how.links):
        s = link.operand
        if link.kind in ("mul", "div") and isinstance(s, fx.Node):
            s = node(torch.ops.memcompile.nonzero_divisor.default, s)
        if link.kind == "mul":
            c = node(aten.div.Tensor, c, s)
        elif link.kind == "div":
            c = node(aten.mul.Tensor, c, s)
        elif link.kind == "add":
            c = node(aten.sub.Tensor, c, s)
        else:
            c = node(aten.add.Tensor, c, s)
    for op in reversed(how.prefix):
        c = node(op.target, c, *op.args[1:])
    return c


def rebuild_from_output(graph: fx.Graph, fake_mode, v: fx.Node, backward: Collection[str], added: set[str],
                        order: Mapping[fx.Node, int] | None = None) -> str:
    """Point every backward read of ``v`` at a copy rebuilt from the norm's output; "" or why not. ``order``:
    the graph's nodes numbered in graph order before any insertion (insertions keep the others' order), so the
    first reader is found without a walk of the graph."""
    y, how, why = norm_output_source(v, backward)
    if y is None:
        return why
    readers = [u for u in v.users if u.name in backward]
    if order is not None and all(u in order for u in readers):
        first = min(readers, key=order.__getitem__)
    else:
        first = next(n for n in graph.nodes if n in readers)
    with graph.inserting_before(first):
        rebuilt = rebuild(graph, fake_mode, how, added)
    for user in readers:
        user.replace_input_with(v, rebuilt)
    return ""


__all__ = ["MAX_LINKS", "Link", "Rebuild", "nonzero_divisor", "norm_output_source", "rebuild", "rebuild_from_output"]
