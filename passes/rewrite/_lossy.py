"""What the lossy rewrites (quantize.py, fewbit.py) share: their result type, a node inserter
whose meta["val"] comes from the op's fake implementation, and ``inline_aten``, which inserts the
ATen ops a Python function runs.

Lifetimes, the simulator and Inductor read ``meta["val"]`` of every node, so a node a
rewrite inserts gets the value the op would produce under the graph's FakeTensorMode.
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx

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
    return _call(graph, fake_mode, target, args, kwargs)


def _call(graph: fx.Graph, fake_mode, target, args, kwargs, *, reuse: bool = True) -> fx.Node:
    node = graph.call_function(target, args, kwargs)
    fake_args, fake_kwargs = fx.node.map_arg((args, kwargs), lambda n: n.meta["val"])
    node.meta["val"] = _fake_value(graph, fake_mode, target, fake_args, fake_kwargs, reuse=reuse)
    return node


MEMO_FAKE_VALUES = True
"""Reuse the fake values an op, or a function ``inline_aten`` inlines, gave for the same fake inputs (the same
objects) in an earlier rewrite. Each plan's rewrite works on a copy of the joint graph whose nodes share their
``meta["val"]`` objects with it, so the search's rounds, which mostly rewrite the same storages, ask for the
same values again, and a fake dispatch costs more than the node it is for (docs/BENCHMARKS.md, "Issue 19").
Off only to check, in tests, that it changes nothing."""
_MEMO_ATTR = "_memcompile_fake_memo"
_MEMO_MAX = 100_000
_SCALARS = (bool, int, float, str, torch.dtype, torch.device, torch.layout, torch.memory_format)


class _FakeMemo:
    """Per fake mode (one compile's graphs share it): values by the identities of the fake inputs they were
    computed from. Entries hold their inputs, so no identity in a key is ever another object's."""

    __slots__ = ("calls", "fragments", "handed")

    def __init__(self) -> None:
        self.calls: dict[tuple, tuple] = {}
        """op call key -> (inputs, value)"""
        self.fragments: dict[tuple, tuple] = {}
        """inlined function key -> (trace, inputs, values of the trace's call_function nodes in order)"""
        self.handed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        """graph -> ids of memo values given to its nodes: one value never goes to two nodes of one graph
        (passes downstream may read aliasing from the values' storages)."""

    def take(self, graph: fx.Graph, vals) -> bool:
        """Give ``vals`` to nodes of ``graph``, unless one of them was given to a node of it already."""
        handed = self.handed.setdefault(graph, set())
        ids = [id(v) for v in vals]
        if any(i in handed for i in ids):
            return False
        handed.update(ids)
        return True

    def store(self, table: dict, key: tuple, entry: tuple) -> None:
        if len(self.calls) + len(self.fragments) >= _MEMO_MAX:
            self.calls.clear()
            self.fragments.clear()
        table[key] = entry


def _memo(fake_mode) -> _FakeMemo | None:
    if not MEMO_FAKE_VALUES:
        return None
    memo = getattr(fake_mode, _MEMO_ATTR, None)
    if memo is None:
        memo = _FakeMemo()
        setattr(fake_mode, _MEMO_ATTR, memo)
    return memo


def forget_fake_values(graph: fx.Graph) -> None:
    """Drop the memo of ``graph``'s fake mode (a benchmark that plans one traced graph many times, so each
    planning starts as a compile's does)."""
    try:
        mode = fake_mode_of(graph)
    except RuntimeError:
        return
    if hasattr(mode, _MEMO_ATTR):
        delattr(mode, _MEMO_ATTR)


class _NoMemo(Exception):
    pass


def _input_key(args, kwargs=None) -> tuple | None:
    """Each fake tensor by identity and each constant by value; None when a size is symbolic or an argument
    is of another kind (SymInt, anything unforeseen)."""
    parts: list = []

    def walk(a) -> None:
        if isinstance(a, torch.Tensor):
            if not _static(a):
                raise _NoMemo
            parts.append(("tensor", id(a)))
        elif isinstance(a, (tuple, list)):
            parts.append((type(a), len(a)))
            for x in a:
                walk(x)
        elif a is None or type(a) in _SCALARS:
            parts.append((type(a), a))
        else:
            raise _NoMemo

    try:
        walk(tuple(args))
        walk(tuple(sorted((kwargs or {}).items())))
    except _NoMemo:
        return None
    return tuple(parts)


def _memoisable(val) -> bool:
    if isinstance(val, (tuple, list)):
        return all(_memoisable(v) for v in val)
    return isinstance(val, torch.Tensor) and _static(val)


def _pure(target) -> bool:
    """An op whose fake value follows from its inputs' metadata: no mutation, no data-dependent shape."""
    return isinstance(target, torch._ops.OpOverload) and not target._schema.is_mutable and not any(
        tag in target.tags for tag in (torch.Tag.dynamic_output_shape, torch.Tag.data_dependent_output))


def _fake_value(graph: fx.Graph, fake_mode, target, args, kwargs, *, reuse: bool = True):
    """What ``target`` returns on the fake ``args`` under ``fake_mode``, from the memo where it can be."""
    memo = _memo(fake_mode) if reuse and _pure(target) else None
    key = _input_key(args, kwargs) if memo is not None else None
    if key is not None:
        key = (target, key)
        hit = memo.calls.get(key)
        if hit is not None and memo.take(graph, (hit[1],)):
            return hit[1]
    with fake_mode:
        val = target(*args, **kwargs)
    if key is not None and key not in memo.calls and _memoisable(val):
        memo.store(memo.calls, key, ((args, kwargs), val))
        memo.take(graph, (val,))
    return val


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


def _static(val: torch.Tensor) -> bool:
    return not any(isinstance(d, torch.SymInt) for d in (*val.shape, *val.stride()))


_TRACES: dict[tuple, fx.GraphModule] = {}
"""make_fx traces of ``inline_aten``'s functions by function, input layouts and constants: a plan's
storages mostly share a few shapes, and tracing was most of the lossy rewrite's time (gpt-small, all
four modes at 0.0: 268 traces, 3.3 of the rewrite's 7.5 s over one planning)."""
_TRACES_MAX = 512
_CACHED = "memcompile_cached_trace"


def _trace_aten(fake_mode, fn, args, at: list[int]) -> fx.GraphModule:
    """The ATen graph of ``fn`` on ``args`` (tensors at positions ``at``), traced once per key: only
    its structure is used (``inline_aten`` recomputes every value under the graph's own fake mode)."""
    from torch._inductor.decomposition import select_decomp_table
    from torch.fx.experimental.proxy_tensor import make_fx

    vals = [args[i].meta["val"] for i in at]
    key = None
    if all(_static(v) for v in vals):
        consts = tuple((i, a) for i, a in enumerate(args) if i not in at)
        key = (fn, tuple((tuple(v.shape), tuple(v.stride()), v.dtype, v.device.type) for v in vals), consts)
        try:
            hit = _TRACES.get(key)
        except TypeError:  # an unhashable constant: trace every time
            key, hit = None, None
        if hit is not None:
            return hit

    def traced_fn(*tensors):
        full = list(args)
        for i, t in zip(at, tensors):
            full[i] = t
        return fn(*full)

    with fake_mode:
        traced = make_fx(traced_fn, decomposition_table=select_decomp_table())(*vals)
    if key is not None:
        for node in traced.graph.nodes:
            node.meta.clear()  # the fake values would keep this compile's fake mode alive
        if len(_TRACES) >= _TRACES_MAX:
            _TRACES.clear()
        traced.meta[_CACHED] = True
        _TRACES[key] = traced
    return traced


def _fragment(graph: fx.Graph, fake_mode, traced: fx.GraphModule, args, at: list[int]):
    """(memo, key, values): the memo entry of ``traced`` inlined on ``args``; values are those an earlier
    inlining on the same fake inputs gave its nodes, or None (key None: not to be stored either: a
    trace that is not cached, an op that is not pure, a symbolic size)."""
    memo = _memo(fake_mode)
    if memo is None or not traced.meta.get(_CACHED):
        return None, None, None
    if not all(_pure(n.target) or n.target is operator.getitem
               for n in traced.graph.nodes if n.op == "call_function"):
        return None, None, None
    inputs = _input_key([a.meta["val"] if i in at else a for i, a in enumerate(args)])
    if inputs is None:
        return None, None, None
    key = (id(traced), inputs)
    hit = memo.fragments.get(key)
    if hit is not None and memo.take(graph, hit[2]):
        return memo, key, hit[2]
    return memo, (key if hit is None else None), None


def inline_aten(graph: fx.Graph, fake_mode, fn, *args) -> tuple[fx.Node, ...]:
    """Insert the ATen ops ``fn`` runs on ``args`` (nodes and constants) at the insert point, each
    with meta["val"]; returns the nodes of its outputs. ``fn`` is traced with make_fx on the nodes'
    fake values.

    NOTE on decompositions: AOT autograd has already applied Inductor's decompositions to the
    joint graph, and Inductor lowers only what is left after them; an op it would have
    decomposed (``aten.clamp``) fails at lowering ("both a fallback and a decomp"). So we trace
    with Inductor's table too: the ops are then valid for Inductor and for eager alike.
    """
    at = [i for i, a in enumerate(args) if isinstance(a, fx.Node)]
    traced = _trace_aten(fake_mode, fn, args, at)
    memo, key, vals = _fragment(graph, fake_mode, traced, args, at)
    made: list[fx.Node] = []
    env: dict[fx.Node, fx.Node] = {}
    inputs = iter(args[i] for i in at)
    for node in traced.graph.nodes:
        if node.op == "placeholder":
            env[node] = next(inputs)
        elif node.op == "call_function":
            a, k = fx.node.map_arg((node.args, node.kwargs), env.__getitem__)
            if vals is not None:  # the values this function gave on these inputs before
                env[node] = graph.call_function(node.target, a, k)
                env[node].meta["val"] = vals[len(made)]
            else:  # fresh values when they are to be stored: they then belong to this function's nodes only
                env[node] = _call(graph, fake_mode, node.target, a, k, reuse=key is None)
            made.append(env[node])
        elif node.op == "output":
            if vals is None and key is not None and all(_memoisable(n.meta["val"]) for n in made):
                memo.store(memo.fragments, key, (traced, args, tuple(n.meta["val"] for n in made)))
                memo.take(graph, [n.meta["val"] for n in made])
            out = fx.node.map_arg(node.args[0], env.__getitem__)
            return tuple(out) if isinstance(out, (tuple, list)) else (out,)
        else:
            raise RuntimeError(f"inline_aten: {fn.__name__} traced to a {node.op} node ({node.target}); "
                               "only call_function nodes can be inlined")
    raise RuntimeError(f"inline_aten: {fn.__name__} traced to a graph without an output")


def decompose_ops(gm: fx.GraphModule, targets: Collection) -> int:
    """Replace, in place, every call of one of ``targets`` in ``gm`` that Inductor's decomposition table
    covers by that decomposition (inlined ATen ops); returns how many were replaced. For ops the
    backend kept whole for a rewrite that then left them (the fewbit and inplace modes)."""
    from torch._inductor.decomposition import select_decomp_table

    graph = gm.graph
    table = select_decomp_table()
    leftovers = [n for n in graph.nodes if n.op == "call_function" and n.target in targets and n.target in table]
    if not leftovers:
        return 0
    mode = fake_mode_of(graph)
    for node in leftovers:
        # keyword arguments (gelu_backward's approximate) passed positionally, in the schema's order
        following = [a.name for a in node.target._schema.arguments[len(node.args):len(node.args) + len(node.kwargs)]]
        if set(following) != set(node.kwargs):
            raise RuntimeError(f"memcompile: cannot pass the arguments of {node.format_node()} positionally")
        args = [*node.args, *(node.kwargs[name] for name in following)]
        with graph.inserting_before(node):
            (result,) = inline_aten(graph, mode, table[node.target], *args)
        node.replace_all_uses_with(result)
        graph.erase_node(node)
    graph.lint()
    gm.recompile()
    return len(leftovers)
