"""In-place rewrite: the backward of an activation reads the activation's output, not its input.

For ``y = f(x)`` with f monotone and its derivative a function of y, the backward need not
save x: it can read y, which the backward usually reads anyway (the next layer's weight
gradient does). In AOT autograd's joint graphs (aten level, ``inner="eager"``) torch already
does this for relu, sigmoid, tanh, exp, softmax, log_softmax, sqrt, rsqrt, reciprocal and
expm1 (``threshold_backward(g, relu, 0)``, ``sigmoid_backward(g, sigmoid)``, ...). It does not
for the ops below, whose derivative reads x; each rule says how to read y instead and when
that is the same value:

| derivative (reads x) | forward ops giving y | output form | legal when |
|---|---|---|---|
| ``leaky_relu_backward(g, x, s, False)`` | ``leaky_relu(x, s)`` | ``(g, y, s, True)`` | s >= 0 (y > 0 iff x > 0) |
| ``hardtanh_backward(g, x, lo, hi)`` | ``hardtanh(x, lo, hi)`` (relu6 too) | ``(g, y, lo, hi)`` | lo <= hi (clamping keeps x <= lo, x >= hi) |
| ``threshold_backward(g, x, t)`` | ``threshold(x, t, v)``; ``relu(x)`` | ``(g, y, t)`` | v <= t; relu: t >= 0 |
| ``elu_backward(g, a, s, i, False, x)`` | ``elu(x, a, s, i)``, ``celu``, ``selu`` | ``(g, a, s, i, True, y)`` | a >= 0, s >= 1, i > 0 |

The first three are bit-exact: the kernels test the same predicate on y as on x (checked in
fp32, bf16 and fp64 with NaN, infinities and signed zeros). The ELU output form computes the
negative branch's derivative as ``i * (y + a*s)`` instead of ``i * a*s * exp(i*x)``; the two
differ by the rounding of ``y + a*s`` (measured at most 4.8e-7 absolute for SELU in fp32, one
bf16 ulp in bf16). It is the formula torch's own in-place ``elu_`` backward uses.

Not rewritten, because the output form is not the same value: hardsigmoid (``x + 3`` can round
to 6 for x just below 3), hardswish, softplus, gelu, silu, mish (not invertible or not exactly),
clamp (``where(x >= lo, ...)`` cannot tell x == lo from x < lo from the clamped value).

Under Inductor the joint graph is decomposed before memcompile sees it (``leaky_relu_backward``
becomes ``where(gt(x, 0), g, g * s)``), so no rule would match there. With a budget and "inplace"
the backend hands Inductor a decomposition table without the ops of ``KEPT_WHOLE`` (the rules'
derivatives and forward ops), as the fewbit mode does for GELU/SiLU, and ``decompose_leftovers``
decomposes them, rewritten or not, before Inductor lowers each extracted graph.

The second family, memory-sharing norms (a LayerNorm's or RMSNorm's backward rebuilding x or x_hat
from the norm's output), lives in norm_output.py; ``inplace_source`` and ``output_form_values`` try
the activation rules first, then that one.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from numbers import Real

import torch
from torch import fx

from ._lossy import LossyRewrite, call, decompose_ops, fake_mode_of, finish
from .norm_output import norm_output_source, rebuild_from_output

aten = torch.ops.aten

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _arg(node: fx.Node, index: int):
    """Argument ``index`` of an aten call: positional, keyword or the schema's default."""
    if index < len(node.args):
        return node.args[index]
    argument = node.target._schema.arguments[index]
    return node.kwargs.get(argument.name, argument.default_value)


def _number(value) -> float | None:
    """A plain Python number as float (a bool, a symbolic or a traced scalar is not one)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        return None
    return float(value)


def _numbers(node: fx.Node, indices) -> tuple[float, ...] | None:
    values = tuple(_number(_arg(node, i)) for i in indices)
    return None if any(v is None for v in values) else values


def _leaky_relu_matches(derivative: fx.Node, forward: fx.Node) -> bool:
    slope, fw_slope = _numbers(derivative, (2,)), _numbers(forward, (1,))
    return slope is not None and slope == fw_slope and slope[0] >= 0.0


def _hardtanh_matches(derivative: fx.Node, forward: fx.Node) -> bool:
    bounds = _numbers(derivative, (2, 3))
    return bounds is not None and bounds == _numbers(forward, (1, 2)) and bounds[0] <= bounds[1]


def _threshold_matches(derivative: fx.Node, forward: fx.Node) -> bool:
    threshold = _numbers(derivative, (2,))
    if threshold is None:
        return False
    if forward.target is aten.relu.default:  # relu(x) = threshold(x, 0, 0): y <= t iff x <= t when t >= 0
        return threshold[0] >= 0.0
    fw = _numbers(forward, (1, 2))
    return fw is not None and fw[0] == threshold[0] and fw[1] <= threshold[0]


def _elu_parameters(forward: fx.Node) -> tuple[float, ...] | None:
    """(alpha, scale, input_scale) of an elu, celu or selu node."""
    if forward.target is aten.elu.default:
        return _numbers(forward, (1, 2, 3))
    if forward.target is aten.celu.default:
        alpha = _numbers(forward, (1,))
        return None if alpha is None or alpha[0] == 0.0 else (alpha[0], 1.0, 1.0 / alpha[0])
    return (_SELU_ALPHA, _SELU_SCALE, 1.0)


def _elu_matches(derivative: fx.Node, forward: fx.Node) -> bool:
    params = _numbers(derivative, (1, 2, 3))
    if params is None or params != _elu_parameters(forward):
        return False
    alpha, scale, input_scale = params
    # y <= 0 iff x <= 0: alpha * scale >= 0 keeps the negative branch <= 0, and scale >= 1 keeps
    # scale * x > 0 for every positive x (no underflow to 0)
    return alpha >= 0.0 and scale >= 1.0 and input_scale > 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class InplaceRule:
    """How one derivative op of the joint graph is made to read its forward op's output."""

    input_arg: int
    """Position of x among the derivative's arguments (replaced by y)."""
    forward_ops: frozenset
    """Targets of the forward ops that may produce y from x (x their first argument)."""
    matches: Callable[[fx.Node, fx.Node], bool]
    """(derivative, forward) -> the forward op's parameters are the derivative's and the output form
    gives the same gradient."""
    result_flag_arg: int | None = None
    """Position of the derivative's ``is_result`` flag (set to True), if it has one."""
    exact: bool = True
    """The output form gives the gradient bit for bit (False: up to one rounding; see the module note)."""


INPLACE_RULES: Mapping[object, InplaceRule] = {
    aten.leaky_relu_backward.default: InplaceRule(
        input_arg=1, forward_ops=frozenset({aten.leaky_relu.default}), matches=_leaky_relu_matches, result_flag_arg=3,
    ),
    aten.hardtanh_backward.default: InplaceRule(
        input_arg=1, forward_ops=frozenset({aten.hardtanh.default}), matches=_hardtanh_matches,
    ),
    aten.threshold_backward.default: InplaceRule(
        input_arg=1, forward_ops=frozenset({aten.threshold.default, aten.relu.default}), matches=_threshold_matches,
    ),
    aten.elu_backward.default: InplaceRule(
        input_arg=5, forward_ops=frozenset({aten.elu.default, aten.celu.default, aten.selu.default}),
        matches=_elu_matches, result_flag_arg=4, exact=False,
    ),
}


def _same_tensor_type(a: fx.Node, b: fx.Node) -> bool:
    va, vb = a.meta.get("val"), b.meta.get("val")
    return (
        isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor)
        and va.dtype == vb.dtype and tuple(va.shape) == tuple(vb.shape) and va.device == vb.device
    )


def _mutated(node: fx.Node) -> bool:
    """Some node writes into ``node``'s value (an in-place or out= op left in the graph)."""
    for user in node.users:
        schema = getattr(user.target, "_schema", None)
        if schema is None:
            continue
        for i, argument in enumerate(schema.arguments):
            value = user.args[i] if i < len(user.args) else user.kwargs.get(argument.name)
            if value is node and argument.alias_info is not None and argument.alias_info.is_write:
                return True
    return False


def _forward_output(derivative: fx.Node, x: fx.Node, rule: InplaceRule, backward: Collection[str]) -> fx.Node | None:
    """The forward op's output y that ``derivative`` may read instead of ``x``, or None."""
    if derivative.kwargs or len(derivative.args) <= rule.input_arg or derivative.args[rule.input_arg] is not x:
        return None
    if any(a is x for i, a in enumerate(derivative.args) if i != rule.input_arg):
        return None
    if rule.result_flag_arg is not None and _arg(derivative, rule.result_flag_arg) is not False:
        return None  # already reads the result
    for y in x.users:
        if (
            y.op == "call_function" and y.target in rule.forward_ops and y.name not in backward
            and y.args and y.args[0] is x and not any(a is x for a in y.args[1:]) and not any(a is x for a in y.kwargs.values())
            and _same_tensor_type(x, y) and not _mutated(y) and rule.matches(derivative, y)
        ):
            return y
    return None


def output_form_source(x: fx.Node, backward: Collection[str]) -> tuple[fx.Node | None, str]:
    """(y, "") when every backward read of ``x`` is a derivative in INPLACE_RULES that may read the same
    forward output y instead; else (None, why not)."""
    readers = [u for u in x.users if u.name in backward]
    if not readers:
        return None, "the backward does not read it"
    if _mutated(x):
        return None, "it is written in place"
    outputs = set()
    for user in readers:
        rule = INPLACE_RULES.get(user.target)
        if rule is None:
            return None, f"the backward reads it in {user.target}, which has no output form"
        y = _forward_output(user, x, rule, backward)
        if y is None:
            return None, f"{user.name} ({user.target}) cannot read the forward op's output instead"
        outputs.add(y)
    if len(outputs) != 1:
        return None, "its derivatives read outputs of different forward ops"
    return outputs.pop(), ""


def inplace_source(x: fx.Node, backward: Collection[str]) -> tuple[fx.Node | None, str]:
    """The forward value y every backward read of ``x`` may read instead: an activation's output
    (``output_form_source``) or a norm's output (norm_output.py); (None, why not) else."""
    y, why = output_form_source(x, backward)
    if y is not None:
        return y, ""
    y, _, why_norm = norm_output_source(x, backward)
    return (y, "") if y is not None else (None, f"{why}; {why_norm}")


def output_form_values(
    gm: fx.GraphModule,
    names: Collection[str],
    *,
    backward: Collection[str],
    seconds: Mapping[str, float] | None = None,
) -> LossyRewrite:
    """Rewrite ``gm`` (a joint graph, in place) so the derivatives reading ``names`` read their forward
    op's output instead. ``backward``: names of the joint graph's backward nodes."""
    graph = gm.graph
    nodes = {n.name: n for n in graph.nodes}
    order = {n: k for k, n in enumerate(graph.nodes)}  # graph order before any insertion (norm_output's first reader)
    mode = fake_mode_of(graph)
    applied, skipped, added = [], [], set()
    inside = set(backward)  # the backward's nodes and the nodes rebuilt so far (``added``)
    for name in names:
        x = nodes.get(name)
        if x is None:
            skipped.append((name, "not in the graph"))
            continue
        y, why = output_form_source(x, backward)
        if y is None:
            # the nodes rebuilt for earlier names are backward nodes: no chain may run through them
            rebuilt: set[str] = set()
            why_norm = rebuild_from_output(graph, mode, x, inside, rebuilt, order=order)
            added |= rebuilt
            inside |= rebuilt
            if why_norm:
                skipped.append((name, f"{why}; {why_norm}"))
            else:
                applied.append(name)
            continue
        for user in [u for u in x.users if u.name in backward]:
            rule = INPLACE_RULES[user.target]
            args = list(user.args)
            args[rule.input_arg] = y
            if rule.result_flag_arg is not None:
                args[rule.result_flag_arg] = True
            with graph.inserting_before(user):
                new = call(graph, mode, user.target, *args)
            added.add(new.name)
            inside.add(new.name)
            user.replace_all_uses_with(new)
            graph.erase_node(user)
        applied.append(name)
    return finish(gm, applied, skipped, added)


KEPT_WHOLE = frozenset({
    *INPLACE_RULES,
    *(op for rule in INPLACE_RULES.values() for op in rule.forward_ops),
})
"""Ops the backend keeps out of Inductor's decomposition table when the plan may use "inplace"."""


def decompose_leftovers(gm: fx.GraphModule) -> int:
    """Replace, in place, every op of ``KEPT_WHOLE`` left in ``gm`` (an extracted forward or backward
    graph) by Inductor's decomposition of it; returns how many were replaced.

    NOTE on why: Inductor has no lowering for these ops (it relies on their decompositions) and would
    fall back to ATen's kernel, or raise where the environment variable CI is set; decomposed here,
    they compile as they would have without the inplace mode."""
    # relu is lowered by Inductor itself (no decomposition): decompose_ops leaves it as it is
    return decompose_ops(gm, KEPT_WHOLE)
