"""Tensor lifetimes of an FX graph: bytes, dtype, device, producer, users, alias root, uses, side.

Works on the AOT-autograd joint graph (forward then backward, tangents as inputs) and on
the forward and backward graphs a partition produces. Values are keyed by node name:
the partitioner keeps names when it splits the joint graph, so a name identifies one
storage across the forward and the backward.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

import sympy
import torch
import torch.fx as fx

INPUT, FORWARD, BACKWARD = "input", "forward", "backward"


@dataclass(frozen=True, slots=True, kw_only=True)
class TensorInfo:
    """What the planner needs to know about one value of the graph."""

    name: str
    index: int
    """Position of the producing node in execution order."""
    kind: str
    """"tensor", "tuple" (a multi-output op; its getitems are the tensors), "symint" or "other"."""
    shape: tuple[int | sympy.Expr, ...] | None
    dtype: torch.dtype | None
    device: str | None
    nbytes: int | sympy.Expr
    """Bytes of the storage this value allocates: 0 for views, tuples and non-tensors; a sympy
    expression when the shape is symbolic."""
    nbytes_hint: int
    """``nbytes`` at the size hints (the example input's sizes)."""
    producer: str
    """The op that produces it ("placeholder" for graph inputs)."""
    users: tuple[str, ...]
    alias_root: str
    """Name of the value that owns the storage (itself unless it is a view or an in-place result)."""
    first_use: int | None
    last_use: int | None
    """Execution indices of the first and last node reading this value (None if unused)."""
    side: str
    """"input" (primal or tangent), "forward" or "backward" (depends on a tangent)."""
    is_primal: bool
    is_tangent: bool
    fusible: bool = False
    """A pointwise result read only by pointwise ops or reductions: Inductor computes it inside its
    readers' kernels, so it never gets a buffer of its own (the simulator's "inductor" model)."""
    pointwise: bool = False
    """Produced by a pointwise op (an Inductor kernel, which may write into an input that dies there)."""
    gathered: str | None = None
    """For a gather (``_GATHERS``), the value it loads at the indices it reads (its first input)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LifetimeTable:
    order: tuple[str, ...]
    """Node names in execution order (placeholders included, output excluded)."""
    tensors: Mapping[str, TensorInfo]
    outputs: tuple[str | None, ...]
    """Names returned by the graph, in order (None for a None output)."""
    mutated_inputs: frozenset[str] | None = frozenset()
    """Graph inputs whose storage a run of the graph overwrites in place (``mutated_inputs()``);
    None when the graph does not say (no AOT-autograd descriptors): then any input may be."""

    def storage_bytes(self, name: str) -> int:
        """Hinted bytes of the storage behind ``name`` (its alias root)."""
        return self.tensors[self.tensors[name].alias_root].nbytes_hint

    def aliases_of(self, root: str) -> tuple[str, ...]:
        return tuple(n for n, t in self.tensors.items() if t.alias_root == root)

    def saved_for_backward(self) -> tuple[str, ...]:
        """Joint graph: forward-side values (primals included) read by a backward node.

        This is the saved set of a partition that recomputes nothing; the partition a
        compiler picks saves a subset of these plus what it chose not to recompute.
        """
        out = []
        for name in self.order:
            info = self.tensors[name]
            if info.side == BACKWARD or info.is_tangent or info.kind not in ("tensor", "symint"):
                continue
            if any(self.tensors[u].side == BACKWARD for u in info.users if u in self.tensors):
                out.append(name)
        return tuple(out)


def is_tangent(node: fx.Node) -> bool:
    return node.op == "placeholder" and "tangents" in str(node.target)


def is_primal(node: fx.Node) -> bool:
    return node.op == "placeholder" and not is_tangent(node)


# Ops whose list outputs share the input's storage although their schema declares no alias
# (``Tensor self -> Tensor[]``): autograd does not track the outputs as views, but eager
# returns slices of the input and Inductor decomposes them into views.
_UNDECLARED_LIST_VIEWS = frozenset(
    {
        "aten.unsafe_split.Tensor",
        "aten.unsafe_split_with_sizes.default",
        "aten.unsafe_chunk.default",
    }
)


# ``Tensor(a)[]``: the return part of a list-returning view op's schema text.
_LIST_ALIAS_RETURN = re.compile(r"Tensor\((\w+)!?\)\[\]")


@functools.lru_cache(maxsize=None)
def _return_alias_set(target, index: int) -> frozenset[str]:
    """Alias set of return ``index`` (``{"a"}`` for ``Tensor(a)``, ``Tensor(a!)`` and ``Tensor(a)[]``).

    NOTE on list returns: for ``Tensor(a)[]`` (split, split_with_sizes, unbind, chunk,
    tensor_split, ...) the alias set belongs to the list's element type, which the Python
    binding does not expose (``returns[0].alias_info`` has empty sets; torch 2.13). The
    schema's text does carry it, so we read it there. Cached per op: a FunctionSchema itself
    cannot be hashed when an argument has a list default (``amax(int[1] dim=[])``).
    """
    schema = target._schema
    ret = schema.returns[index]
    if ret.alias_info is not None and ret.alias_info.before_set:
        return frozenset(ret.alias_info.before_set)
    if len(schema.returns) == 1 and isinstance(ret.type, torch.ListType):
        returns = str(schema).rsplit(") -> ", 1)[-1].strip()
        match = _LIST_ALIAS_RETURN.fullmatch(returns)
        if match:
            return frozenset({match.group(1)})
    return frozenset()


def _schema_alias_arg(node: fx.Node, output: int = 0) -> fx.Node | None:
    """The argument whose storage output ``output`` of ``node`` shares (views, in-place and
    out= ops, and every element of a list-returning view such as split), if any."""
    target = node.target
    if node.op != "call_function":
        return None
    if target is operator.getitem:
        return None
    if str(target) in _UNDECLARED_LIST_VIEWS:
        value = node.args[0] if node.args else node.kwargs.get("self")
        return value if isinstance(value, fx.Node) else None
    schema = getattr(target, "_schema", None)
    if schema is None or not schema.returns:
        return None
    # one list return: every element has its alias set; several returns: each its own
    index = output if len(schema.returns) > 1 else 0
    if not 0 <= index < len(schema.returns):
        return None
    sets = _return_alias_set(target, index)
    if not sets:
        return None
    for i, arg in enumerate(schema.arguments):
        if arg.alias_info is not None and sets & set(arg.alias_info.before_set):
            value = node.args[i] if i < len(node.args) else node.kwargs.get(arg.name)
            if isinstance(value, fx.Node):
                return value
    return None


def alias_source(node: fx.Node) -> fx.Node | None:
    """The node whose storage ``node`` shares, or None when ``node`` owns new storage."""
    if node.op == "call_function" and node.target is operator.getitem:
        parent = node.args[0]
        if isinstance(parent, fx.Node):
            # getitem of an aliasing multi-output op (split, unbind, chunk) is a view of its input.
            index = node.args[1] if len(node.args) > 1 and isinstance(node.args[1], int) else 0
            return _schema_alias_arg(parent, index)
        return None
    return _schema_alias_arg(node)


# Inductor realizes a pointwise buffer when it is read by more kernels than this
# (torch._inductor.config.realize_reads_threshold); below it the op is inlined into its readers.
_INLINE_MAX_READERS = 4

_REDUCTIONS = frozenset(
    {
        "aten.sum.dim_IntList",
        "aten.sum.default",
        "aten.mean.dim",
        "aten.amax.default",
        "aten.amin.default",
        "aten.var_mean.correction",
        "aten.var.correction",
        "prims.sum.default",
        "prims.var.default",
    }
)


def is_pointwise(node: fx.Node) -> bool:
    return node.op == "call_function" and torch.Tag.pointwise in getattr(node.target, "tags", ())


_CONSTANTS = frozenset({"aten.full.default", "aten.zeros.default", "aten.ones.default", "aten.scalar_tensor.default"})
"""Factories of a constant: Inductor lowers one to an expression that loads nothing, which it never realizes on
reuse (``StorageBox.should_realize_on_reuse`` counts loads), so a scatter (``_INDEXED``) reading it computes it."""

_INDEXED = frozenset({"aten.slice_scatter.default", "aten.select_scatter.default"})
"""Ops Inductor lowers to a pointwise expression over their inputs (an index test picks which input each
element reads), so a constant they read is inlined into them: a rotary embedding's backward scatters into
zeros made once and read by every layer (hf-qwen2-gqa: 320 KiB the simulator held through the backward)."""


_CLONES_FIRST = frozenset({"aten.index_put.default", "aten._unsafe_masked_index_put_accumulate.default"})
"""Ops Inductor lowers to a scatter into a copy of their first input (``lowering.index_put``,
``_unsafe_masked_index_put_accumulate``: ``index_put_impl_(clone(x), ...)``): the copy is a pointwise expression of
the input, realized by the scatter, so a constant read there is computed in the copy's kernel and never has a
buffer of its own. An embedding's gradient scatters into zeros made once and read by every embedding of that
shape (hf-t5: 256 KiB the simulator held from the decoder's embedding gradient to the encoder's)."""

CONSTANTS_CLONED = True
"""Whether a constant read as the first input of a ``_CLONES_FIRST`` op is inlined into the copy; off only to
compare with the simulator before the rule."""


def _clones_first(user: fx.Node, value: fx.Node) -> bool:
    """``user`` is a ``_CLONES_FIRST`` op whose copied first input is ``value``, and reads it nowhere else."""
    return (str(user.target) in _CLONES_FIRST and bool(user.args) and user.args[0] is value
            and value not in user.args[1:])


_GATHERS = frozenset({"aten.gather.default", "aten.index.Tensor"})
"""Ops Inductor lowers to a pointwise expression that loads their first input at indices it reads from the
second (``lowering.gather``): a pointwise value they gather from is computed inside their kernel, never
realized, and the gather itself is a pointwise value for its readers. A cross-entropy's ``log_softmax`` output,
read only by the loss's gather (toy-gpt, hf-llama, hf-qwen2-gqa at 1.0: 1 MiB the simulator held at the
forward's end that Inductor's code never allocates)."""


GATHERS_FUSE = True
"""Whether ``_GATHERS`` count as pointwise readers and values (the rule above; ``aten.index`` with tensor indices
is lowered the same way, ``lowering.index``). Off only to compare with the simulator before the rule (on the zoo
grid of 2026-12-06 it moved floor searches onto plans that met the in-place write through a reshape, then not
modelled; docs/BENCHMARKS.md, "A gather's input has no buffer")."""


def _pointwise_like(node: fx.Node) -> bool:
    return node.op == "call_function" and (is_pointwise(node) or (GATHERS_FUSE and str(node.target) in _GATHERS))


def _inlines(user: fx.Node, value: fx.Node, extern: Collection[fx.Node] = ()) -> bool:
    """``user``'s kernel computes ``value`` inside itself when ``value`` is an unrealized expression: a
    pointwise op, a reduction, or a gather from ``value`` (not one indexed by it); not an add in ``extern``
    (folded into an addmm, which reads its inputs from memory)."""
    if user.op != "call_function" or user in extern:
        return False
    if str(user.target) in _GATHERS:
        return GATHERS_FUSE and bool(user.args) and user.args[0] is value
    return is_pointwise(user) or str(user.target) in _REDUCTIONS


def _is_view(node: fx.Node) -> bool:
    """``node`` is a view of its input (an alias that writes nothing): Inductor lowers a view of an unrealized
    expression to the same expression read at other indices (``ir.View``, ``ExpandView``), so a pointwise value
    read through views is inlined into the views' readers as if they read it."""
    return node.op == "call_function" and alias_source(node) is not None and not writes_in_place(node)


def _readers_through_views(node: fx.Node) -> list[tuple[fx.Node, fx.Node]]:
    """(reader, what it reads) for every reader of ``node``, a view's readers taking the view's place."""
    out = []
    for user in node.users:
        if _is_view(user) and alias_source(user) is node:
            out.extend(_readers_through_views(user))
        else:
            out.append((user, node))
    return out


def _fusible(node: fx.Node, extern: Collection[fx.Node] = ()) -> bool:
    """Whether Inductor computes ``node`` inside its readers' kernels (it gets no buffer of its own); ``extern``:
    adds Inductor folds into an addmm (``inductor_order``), extern kernels that inline nothing."""
    if node in extern:
        return False
    if str(node.target) in _CONSTANTS and node.op == "call_function":
        # read only by scatters (checked against Inductor's code) or, with CONSTANTS_INLINE, by pointwise ops too:
        # Inductor lowers a constant to an expression that loads nothing, inlined into every reader
        users = list(node.users)
        return bool(users) and all(u.op == "call_function" and (str(u.target) in _INDEXED
                                                                 or (CONSTANTS_INLINE and _inlines(u, node))
                                                                 or (CONSTANTS_CLONED and _clones_first(u, node)))
                                   for u in users)
    if not _pointwise_like(node):
        return False
    readers = _readers_through_views(node) if VIEWS_INLINE else [(u, node) for u in node.users]
    if not readers or len(readers) > _INLINE_MAX_READERS:
        return False
    return all(_inlines(u, value, extern) for u, value in readers)


CONSTANTS_INLINE = True
"""Whether a constant read by pointwise ops is inlined into them: Inductor lowers it to an expression that loads
nothing. Before, it was counted as a load, which made an attention mask's ``where`` come out realized, as Inductor
realizes it, for the wrong reason (Inductor counts the mask's gathers: ``simulate.READS_BY_INDEX``). Off only to
compare with the simulator before the rule."""

VIEWS_INLINE = True
"""Whether a pointwise value read through views counts as read by the views' readers (``_readers_through_views``).
Off only to compare with the simulator before the rule."""


def to_sympy(x) -> sympy.Expr:
    if isinstance(x, torch.SymInt):
        return x.node.expr
    return sympy.Integer(int(x))


def size_hint(x) -> int:
    """Concrete value of an int or SymInt (its hint: the size seen when tracing)."""
    if not isinstance(x, torch.SymInt):
        return int(x)
    node = x.node
    if getattr(node, "hint", None) is not None:
        return int(node.hint)
    shape_env = node.shape_env
    expr = node.expr
    for attr in ("optimization_hint", "size_hint"):
        fn = getattr(shape_env, attr, None)
        if fn is not None:
            try:
                return int(fn(expr))
            except Exception:  # noqa: BLE001 - try the next way of asking
                pass
    return int(expr.xreplace(shape_env.var_to_val))


def _tensor_facts(val) -> tuple[str, tuple | None, torch.dtype | None, str | None, int | sympy.Expr, int]:
    if isinstance(val, torch.Tensor):
        shape = tuple(d.node.expr if isinstance(d, torch.SymInt) else int(d) for d in val.shape)
        itemsize = val.element_size()
        numel = val.numel()
        if isinstance(numel, torch.SymInt):
            nbytes: int | sympy.Expr = sympy.expand(to_sympy(numel) * itemsize)
            hint = size_hint(numel) * itemsize
        else:
            nbytes = hint = int(numel) * itemsize
        return "tensor", shape, val.dtype, str(val.device), nbytes, hint
    if isinstance(val, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return "symint", None, None, None, 0, 0
    if isinstance(val, (tuple, list)):
        return "tuple", None, None, None, 0, 0
    return "other", None, None, None, 0, 0


def _backward_nodes(graph: fx.Graph) -> set[fx.Node]:
    """Nodes that depend on a tangent (the joint graph's backward)."""
    back: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op == "output":
            continue
        if is_tangent(node) or any(a in back for a in node.all_input_nodes):
            back.add(node)
    return back


def analyse(gm: fx.GraphModule | fx.Graph, *, schedule: str = "graph") -> LifetimeTable:
    """Lifetime facts for every value of ``gm`` (joint, forward or backward graph).

    ``schedule="inductor"``: in the order Inductor runs the graph (``inductor_order``), not the graph's."""
    graph = gm.graph if isinstance(gm, fx.GraphModule) else gm
    nodes = [n for n in graph.nodes if n.op != "output"]
    merged: frozenset[fx.Node] = frozenset()
    if schedule == "inductor":
        nodes, merged = inductor_order(nodes)
    elif schedule != "graph":
        raise ValueError(f"schedule: expected 'graph' or 'inductor', got {schedule!r}")
    # the adds Inductor folds into an addmm: an extern kernel, though the add is pointwise (FOLDED_ADDS_EXTERN)
    extern = frozenset(next(iter(mm.users)) for mm in merged) if FOLDED_ADDS_EXTERN else frozenset()
    index = {n: i for i, n in enumerate(nodes)}
    backward = _backward_nodes(graph)
    output_node = next(iter(graph.find_nodes(op="output")), None)
    outputs: tuple[str | None, ...] = ()
    if output_node is not None:
        outputs = tuple(a.name if isinstance(a, fx.Node) else None for a in _flatten(output_node.args[0]))

    roots: dict[fx.Node, fx.Node] = {}
    tensors: dict[str, TensorInfo] = {}
    for node in nodes:
        src = alias_source(node)
        roots[node] = roots.get(src, src) if src is not None else node
        kind, shape, dtype, device, nbytes, hint = _tensor_facts(node.meta.get("val"))
        if src is not None or node in merged:
            nbytes, hint = 0, 0
        uses = [index[u] for u in node.users if u in index]
        if node.op == "placeholder":
            side = INPUT
            producer = "placeholder"
        else:
            side = BACKWARD if node in backward else FORWARD
            producer = str(node.target) if node.op == "call_function" else node.op
        tensors[node.name] = TensorInfo(
            name=node.name,
            index=index[node],
            kind=kind,
            shape=shape,
            dtype=dtype,
            device=device,
            nbytes=nbytes,
            nbytes_hint=hint,
            producer=producer,
            users=tuple(u.name for u in node.users if u.op != "output"),
            alias_root=roots[node].name,
            first_use=min(uses) if uses else None,
            last_use=max(uses) if uses else None,
            side=side,
            is_primal=is_primal(node),
            is_tangent=is_tangent(node),
            fusible=_fusible(node, extern),
            pointwise=is_pointwise(node) and node not in extern,
            gathered=(node.args[0].name if str(node.target) in _GATHERS and node.op == "call_function"
                      and node.args and isinstance(node.args[0], fx.Node) else None),
        )
    return LifetimeTable(order=tuple(n.name for n in nodes), tensors=tensors, outputs=outputs,
                         mutated_inputs=mutated_inputs(graph, roots))


def inductor_order(nodes: list[fx.Node]) -> tuple[list[fx.Node], frozenset[fx.Node]]:
    """``nodes`` in the order Inductor runs them, and the nodes whose output Inductor writes into
    their reader's buffer.

    Inductor's post-grad pass turns ``add(mm(a, b), c)`` into ``addmm(c, a, b)`` at the add's place
    (torch/_inductor/fx_passes/post_grad.py, ``addmm``: the mm's only reader is the add, equal dtypes,
    ``c`` broadcastable to the product), so ``a`` and ``b`` live until the add and the product gets no
    buffer of its own. A tied embedding's gradient is such an add: hf-gpt2's logits gradient (1 MB)
    lived through the whole backward while the graph's order freed it at the first matmul.

    Inductor's lowering computes a pointwise value lazily: it gets a kernel only when something needs
    it in memory (``GraphLowering.run_node``). A pointwise value whose one reader (through views) is an
    extern kernel (a matmul, a convolution, its backward) is realized when that kernel is lowered, so it
    runs just before it, wherever the graph put it (``_realized_at``): what it reads lives until then
    (resnet-bn at 0.5: a BatchNorm gradient the graph computes before a recomputed convolution runs
    after it, holding the saved convolution output it reads across the recompute)."""
    folded = {add: mm for add in nodes if (mm := _addmm_product(add)) is not None}
    moved = frozenset(folded.values())
    extern = frozenset(folded) if FOLDED_ADDS_EXTERN else frozenset()
    out: list[fx.Node] = []
    for node in nodes:
        if node in moved:
            continue
        if node in folded:
            out.append(folded[node])
        out.append(node)
    present = set(out)
    deferred: dict[fx.Node, list[fx.Node]] = {}  # extern reader -> the chains realized just before it
    chained: set[fx.Node] = set()
    for node in out:
        chain = None if node in folded else _realized_at(node, present, extern)  # a folded add is an addmm
        if chain is not None:
            *values, reader = chain
            deferred.setdefault(reader, []).extend(values)
            chained.update(values)
    if not deferred:
        return out, moved
    order: list[fx.Node] = []
    for node in out:
        if node in chained:
            continue
        order.extend(deferred.get(node, ()))
        order.append(node)
    return order, moved


def _realized_at(node: fx.Node, present: Collection[fx.Node], extern: Collection[fx.Node] = ()) -> list[fx.Node] | None:
    """``[node, views..., reader]`` when ``node`` is a pointwise value Inductor realizes only at
    ``reader``'s lowering: its one reader, through views that each have one reader, is an op that is
    neither pointwise nor a reduction (an extern kernel). None otherwise (several readers: realized at
    its own place when one of them needs it in memory; a pointwise or reduction reader inlines it)."""
    if not is_pointwise(node) or len(node.users) != 1:
        return None
    chain = [node]
    reader = next(iter(node.users))
    while reader.op == "call_function" and alias_source(reader) is not None and not is_pointwise(reader):
        if len(reader.users) != 1:
            return None
        chain.append(reader)
        reader = next(iter(reader.users))
    if reader.op != "call_function" or reader not in present or (is_pointwise(reader) and reader not in extern) \
            or str(reader.target) in _REDUCTIONS or alias_source(reader) is not None:
        return None
    if reader.target is operator.getitem:
        return None
    return [*chain, reader]


FOLDED_ADDS_EXTERN = True
"""Whether an add Inductor folds into an addmm (``inductor_order``) is an extern kernel for the simulator, as it is for
Inductor: it gets a buffer of its own (``extern_kernels.addmm(c, a, b, out=buf)``), never takes a dying input's
buffer, and inlines none of its inputs. As a pointwise add it wrote into the dying accumulator of an unrolled GRU's
weight gradient, one buffer fewer than Inductor's code holds (docs/BENCHMARKS.md, "Five more families"). Off only to
compare with the simulator before the rule."""


def _addmm_product(add: fx.Node) -> fx.Node | None:
    """The mm Inductor folds into ``add`` as an addmm, or None (the pattern's conditions, mirrored)."""
    aten = torch.ops.aten
    if add.op != "call_function" or add.target not in (aten.add.Tensor, aten.add.default) or add.kwargs:
        return None
    if len(add.args) != 2 or not all(isinstance(a, fx.Node) for a in add.args):
        return None
    for mm, inp in (add.args, add.args[::-1]):
        if mm.op != "call_function" or mm.target is not aten.mm.default or len(mm.users) != 1 or mm is inp:
            continue
        vals = [n.meta.get("val") for n in (inp, *mm.args[:2])] if len(mm.args) >= 2 else []
        if len(vals) != 3 or not all(isinstance(v, torch.Tensor) for v in vals):
            continue
        c, a, b = vals
        if not (c.dtype == a.dtype == b.dtype):
            continue
        shape = (a.shape[0], b.shape[1])
        if c.dim() > 2 or any(d != 1 and d != s for d, s in zip(reversed(c.shape), reversed(shape))):
            continue
        if c.device.type != "cpu" and _all_pointwise_readers(add):
            continue  # on GPU Inductor keeps such an add apart to fuse it with its readers
        return mm
    return None


def _all_pointwise_readers(node: fx.Node) -> bool:
    try:
        from torch._inductor.utils import is_pointwise_use
    except ImportError:  # pragma: no cover - an older Inductor: assume it keeps the add apart
        return True
    return all(is_pointwise_use(u) for u in node.users)


def mutated_inputs(graph: fx.Graph, roots: Mapping[fx.Node, fx.Node] | None = None) -> frozenset[str] | None:
    """Names of the graph inputs whose storage is overwritten while the graph runs or right after it.

    Two ways, both in AOT autograd's joint graph: a mutation AOT autograd applies after the forward
    (``x.mul_(2)``, a buffer's ``add_``, a view's ``add_`` on its base, BatchNorm's running statistics:
    an output described as ``InputMutationAOTOutput``), and an op inside the graph that writes into an
    input or a view of one (``copy_``, kept in the graph for inputs that need no gradient). None when
    the output carries no descriptors (a graph not traced by AOT autograd, or a torch without them),
    or a described mutation names no input of this graph: the caller cannot tell and must assume any.
    """
    placeholders = list(graph.find_nodes(op="placeholder"))
    output = next(iter(graph.find_nodes(op="output")), None)
    descs = output.meta.get("desc") if output is not None else None
    if not isinstance(descs, (list, tuple)):
        return None
    mutated: set[str] = set()
    for desc in descs:
        if type(desc).__name__ == "InputMutationAOTOutput":
            source = getattr(desc, "mutated_input", None)
            names = [n.name for n in placeholders if source is not None and n.meta.get("desc") == source]
            if len(names) != 1:
                return None
            mutated.add(names[0])
    if roots is None:
        roots = {}
        for node in graph.nodes:
            src = alias_source(node)
            roots[node] = roots.get(src, src) if src is not None else node
    for node in graph.nodes:
        for arg in _written_args(node):
            root = roots.get(arg, arg)
            if root.op == "placeholder":
                mutated.add(root.name)
    return frozenset(mutated)


def _written_args(node: fx.Node) -> list[fx.Node]:
    """The arguments ``node`` writes into (``Tensor(a!)`` in its schema): ``copy_``'s destination,
    BatchNorm's running statistics in its non-functional form, any in-place or out= op."""
    schema = getattr(node.target, "_schema", None) if node.op == "call_function" else None
    if schema is None or not schema.is_mutable:
        return []
    out = []
    for i, arg in enumerate(schema.arguments):
        if arg.alias_info is not None and arg.alias_info.is_write:
            value = node.args[i] if i < len(node.args) else node.kwargs.get(arg.name)
            values = value if isinstance(value, (list, tuple)) else (value,)
            out.extend(v for v in values if isinstance(v, fx.Node))
    return out


def writes_in_place(node: fx.Node) -> bool:
    """``node`` writes into one of its arguments (its schema marks one ``Tensor(a!)``)."""
    return bool(_written_args(node))


def _flatten(x) -> Iterable:
    if isinstance(x, (tuple, list)):
        for item in x:
            yield from _flatten(item)
    elif isinstance(x, dict):
        for item in x.values():
            yield from _flatten(item)
    else:
        yield x


def partition_saved(fw_gm: fx.GraphModule, bw_gm: fx.GraphModule) -> tuple[str, ...]:
    """Names the forward saves for the backward under a partition: the backward's non-tangent inputs."""
    return tuple(n.name for n in bw_gm.graph.find_nodes(op="placeholder") if not is_tangent(n))
