"""The memory simulator: bytes live at every step of a compiled forward+backward.

The single source of truth for "how many bytes are live at step t": the planner's
repair loop, the report and the tests all call ``simulate_step``.

Model (what Inductor's generated code and AOT autograd's boxed calling convention do):
- the forward's inputs (parameters, batch) are held by the caller for the whole step;
- a value is allocated when its node runs and freed after the last node that reads it
  or any view of it; views and getitems of aliasing ops allocate nothing;
- the forward's user outputs (the loss) and the backward's outputs (the gradients) live
  to the end of the step; saved tensors live from their forward node to their last
  backward use; tangents are allocated when the backward starts;
- Inductor's layout optimization (``layout_copies``): where Inductor runs a graph's 2-d convolutions
  channels-last (on a CPU with oneDNN it always does), it copies every conv weight and input that
  arrives as a graph input in another layout into a channels-last buffer at the forward's start, and
  the forward saves that copy, not the input, for the backward: the copy lives from the forward's first
  step to the input's last use (resnet-bn: 0.78 MB of weight and image copies on top of the parameters);
- offload (nodes tagged ``meta["memcompile_offload"]`` by rewrite/offload.py): the host copy
  (``offload_wait``) and the handles are host memory and count nothing; the device copy a
  ``prefetch`` allocates counts from the prefetch on, although the graph sees it only from its
  ``prefetch_wait``. Only offload makes such nodes: on CUDA they hold pinned host memory; on CPU
  only the config's test hook ``_force_offload_on_cpu`` makes them, and the model then treats
  host memory as if it were separate, as on a GPU.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import torch
from torch import fx

from .costs import forward_output_strides, layout_copied_inputs, scratch_bytes
from .lifetimes import _REDUCTIONS as REDUCTION_OPS
from .lifetimes import BACKWARD, FORWARD, LifetimeTable, analyse, size_hint

OFFLOAD_META = "memcompile_offload"
"""``node.meta`` key on the nodes rewrite/offload.py inserts ({"role", "source", "nbytes"}; roles there)."""
_HOST_ROLES = ("offload", "offload_wait", "prefetch")


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageInterval:
    root: str
    nbytes: int
    alloc_step: int
    free_step: int
    """Last step at which the storage is live (inclusive)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeline:
    steps: tuple[str, ...]
    """Node names in execution order (forward nodes, then backward nodes)."""
    sides: tuple[str, ...]
    live_bytes: tuple[int, ...]
    held_bytes: int
    """Bytes of the forward's inputs, live for the whole step."""
    backward_start: int
    """Index of the first backward step (== len(steps) when there is no backward)."""
    intervals: tuple[StorageInterval, ...]
    transient_bytes: tuple[int, ...] = ()
    """Per step, bytes its op holds only while it runs (scratch, a multi-output op's parts before their
    getitems), included in ``live_bytes``; empty where none were counted."""

    @property
    def peak_bytes(self) -> int:
        return max(self.live_bytes, default=self.held_bytes)

    @property
    def peak_index(self) -> int:
        return max(range(len(self.live_bytes)), key=self.live_bytes.__getitem__, default=0)

    def live_at(self, step: int) -> tuple[StorageInterval, ...]:
        """Storages live at ``step``, largest first."""
        live = [iv for iv in self.intervals if iv.alloc_step <= step <= iv.free_step]
        return tuple(sorted(live, key=lambda iv: (-iv.nbytes, iv.root)))


def simulate_step(
    fw: fx.GraphModule | fx.Graph,
    bw: fx.GraphModule | fx.Graph | None,
    *,
    num_fwd_outputs: int,
    model: str = "inductor",
) -> Timeline:
    """Live bytes over one forward (+ backward) of a partition; names tie the two graphs together.

    ``model="inductor"`` leaves out buffers Inductor fuses away (``TensorInfo.fusible``);
    ``model="eager"`` materialises every value.
    """
    schedule = "inductor" if model == "inductor" else "graph"
    fw_table = analyse(fw, schedule=schedule)
    bw_table = analyse(bw, schedule=schedule) if bw is not None else None
    offload = (offload_roles(fw), offload_roles(bw) if bw is not None else {})
    copies = layout_copies(fw) if model == "inductor" else {}
    arriving = forward_output_strides(fw, copies) if model == "inductor" and bw is not None else {}
    scratch = (scratch_bytes(fw, model=model),
               scratch_bytes(bw, model=model, arriving=arriving) if bw is not None else {})
    return simulate_tables(fw_table, bw_table, num_fwd_outputs=num_fwd_outputs, model=model, offload=offload,
                           scratch=scratch, copies=copies)


LAYOUT_PREFIX = "layout:"
"""Root prefix of a channels-last copy of a graph input in a Timeline (``layout_copies``)."""


def layout_copies(gm: fx.GraphModule | fx.Graph) -> dict[str, int]:
    """Bytes of the channels-last copy Inductor makes of each graph input a 2-d convolution reads
    (input or weight) in another layout, keyed by the placeholder's name; empty where Inductor does
    not optimize the graph's layout.

    Inductor decides per graph (``GraphLowering.decide_layout_opt``: always on a CPU with oneDNN, by
    a FLOP heuristic on CUDA); when it does, its convolution lowering requires channels-last operands
    (``ExternKernel.require_channels_last``), which for a graph input is a copy (``costs.layout_copied_inputs``)."""
    return layout_copied_inputs(gm)


def fused_values(table: LifetimeTable) -> tuple[frozenset[str], frozenset[str]]:
    """``_fused_away`` of a whole table: (values Inductor gives no buffer, the subset it inlines)."""
    return _fused_away(table, _inputs_of(table))


@dataclass(frozen=True, slots=True)
class Fusion:
    """What Inductor's lowering and scheduler do to one graph's values, as the simulator models it."""

    away: frozenset[str]
    """Values Inductor gives no buffer."""
    inlined: frozenset[str]
    """The subset of ``away`` it computes again in each reader's kernel."""
    early: Mapping[str, tuple[tuple[str, str], ...]]
    """Per value that has a buffer, the (reader, value or view read) pairs whose kernels compute it from its
    inputs instead of loading the buffer (``_inlined_before_realized``): readers in ``together`` only."""
    together: Mapping[str, str]
    """Per reduction that runs in its pointwise reader's kernel with another of its kind, that reader
    (``_reductions_together``)."""


def _fused_away(table: LifetimeTable, inputs: Mapping[str, list[str]]) -> tuple[frozenset[str], frozenset[str]]:
    f = _fusion(table, inputs)
    return f.away, f.inlined


def _fusion(table: LifetimeTable, inputs: Mapping[str, list[str]]) -> Fusion:
    """Fusible values (``TensorInfo.fusible``) Inductor computes inside their readers' kernels, and the
    subset it inlines (computes again in each reader's kernel, wherever that runs).

    Inductor's lowering decides this per value (``GraphLowering.run_node``: ``mark_reuse`` and
    ``StorageBox.should_realize_on_reuse``; ``has_exceeded_max_reads``), and the rule is mirrored here
    with Inductor's own thresholds: a pointwise value whose expression, with the values inlined into it,
    is read by more than one node gets a buffer when that expression makes more than
    ``realize_reads_threshold`` loads (one per buffer and index, ``READS_BY_INDEX``), has more ops than the
    opcount threshold, or, on a CPU, uses a
    transcendental (exp, log, tanh, sigmoid: too dear to run in each reader); any value whose expression
    loads more than the accumulated-reads threshold gets one too. Otherwise it is inlined into each
    reader, and what it reads lives until its last reader (``_runs_at``). A value given a buffer keeps
    it only where its readers cannot all join its kernel (``_readers_split``); where they can, that
    kernel runs at the value's place and the buffer is fused away. A GELU's ``tanh`` term
    read again after a matmul that depends on it has a buffer; a BatchNorm gradient's
    ``threshold_backward`` read by a reduction and, after a recompute chain, by a residual add is
    computed twice and keeps its inputs. Also the reductions that run together in a later kernel
    (``_reductions_together``) and the values such a reduction computes again (``_inlined_before_realized``)."""
    reads_max, ops_max, acc_max = _inductor_thresholds()
    tensors = table.tensors
    pos = {n: i for i, n in enumerate(table.order)}
    away: set[str] = set()
    inlined: set[str] = set()
    loads: dict[str, frozenset[tuple[str, tuple[str, ...]]]] = {}  # (buffer, the views/gathers it is read through)
    ops: dict[str, int] = {}
    heavy: dict[str, bool] = {}
    would_inline: list[str] = []  # pointwise values with a buffer only because a reader needs one
    views: dict[str, list[str]] = {}
    if VIEW_READERS:
        for v, v_info in tensors.items():
            if v_info.alias_root != v and v_info.producer != "placeholder":
                views.setdefault(v_info.alias_root, []).append(v)
    for name in table.order:
        info = tensors.get(name)
        if info is None or not (info.fusible or (info.pointwise and info.kind == "tensor")):
            continue
        read: set[tuple[str, tuple[str, ...]]] = set()
        count, dear = 1, _op_name(info.producer) in _HEAVY_OPS
        for a in inputs.get(name, ()):
            # a load is a buffer read at one index: a view, or a gather's indices, reads it at another
            gather = (f"gather:{name}",) if info.gathered == a and READS_BY_INDEX else ()
            view = (a,) if READS_BY_INDEX and tensors[a].alias_root != a else ()
            src = a if a in away else _view_of(tensors, a, away)
            if src is not None:
                read |= {(root, gather + view + at) for root, at in loads[src]}
                count += ops[src]
                dear = dear or heavy[src]
            elif tensors[a].kind == "tensor":
                read.add((tensors[a].alias_root, gather + view))
                count += 1
        cpu = (info.device or "cpu").startswith("cpu")
        # Inductor's ``mark_reuse`` runs per node with that node's reader count, a view's included
        several = len(info.users) > 1 or any(len(tensors[v].users) > 1 for v in views.get(name, ()))
        reused = several and (len(read) > reads_max or count > ops_max[cpu] or (cpu and dear))
        if not info.fusible:
            if not (reused or len(read) > acc_max[cpu]):
                would_inline.append(name)
            continue
        loads[name], ops[name], heavy[name] = frozenset(read), count, dear
        if not (reused or len(read) > acc_max[cpu]):
            inlined.add(name)
            away.add(name)
        elif not _readers_split(table, name, pos, inputs):
            away.add(name)
    if INLINED_READERS_RUN_LATE:
        # a value fused away because its readers join its kernel keeps its buffer where a reader Inductor inlines
        # runs, in the kernel it is inlined into, after a matmul that depends on the value
        for name in [n for n in table.order if n in away and n not in inlined]:
            if _readers_split(table, name, pos, inputs, inlined):
                away.discard(name)
    together = _reductions_together(table, inputs) if REDUCTIONS_TOGETHER else {}
    early = {}
    for name in would_inline if EARLY_INLINE and together else ():  # only readers run together count
        edges = tuple(e for e in _inlined_before_realized(table, name, pos) if e[0] in together)
        if edges:
            early[name] = edges
    return Fusion(away=frozenset(away | set(together)), inlined=frozenset(inlined), early=early, together=together)


VIEW_READERS = True
"""Whether a value's readers include its views' readers: for its reuse (Inductor's ``mark_reuse`` runs for each FX
node with that node's reader count, and a view passes it to the value it views) and for ``_readers_split``. A
LayerNorm's input gradient read through a ``permute`` that two ops and a later residual add read is realized by
Inductor (eight loads, over the reads threshold), kept as a buffer across the convolution backward between its
readers, and what it reads is freed (convnext's plan at 0.5). Off only to compare with the simulator before the
rule."""

EARLY_INLINE = True
"""Whether a pointwise value that has a buffer only because a later reader needs one (a matmul, through a view) is
computed again, from its inputs, by a reduction Inductor lowers before that reader and runs later in another
kernel (``_inlined_before_realized``, ``_reductions_together``); off only to compare with the simulator before the
rule. Only for such reductions: a reader run at its own place may as well join the value's kernel (Inductor fuses
them where their sizes allow), which the simulator does not decide."""

REDUCTIONS_TOGETHER = True
"""Whether reductions of one shape whose results meet in one pointwise op run in one kernel at that op's place
(``_reductions_together``); off only to compare with the simulator before the rule."""


def _inlined_before_realized(table: LifetimeTable, name: str, pos: Mapping[str, int]) -> tuple[tuple[str, str], ...]:
    """The readers of pointwise value ``name`` (directly or through views) that Inductor lowers while the value is
    still an unrealized expression, each with what it reads (``name`` or a view of it).

    Inductor lowers the graph in order (``GraphLowering.run_node``); a pointwise value not realized at its own
    lowering (its read and op counts under the thresholds, ``_fusion``'s ``reused``, and no reader of its own
    that is an extern kernel: ``realize_hint``) stays an expression that each reader lowered next computes
    inside its kernel, until a reader that needs a buffer (a matmul's, through a view) realizes it; the readers
    after that load the buffer. hf-t5's softmax gradient is read by the position bias's batch sum before the
    attention's two batched matmuls: the sum's kernel computes it again from the probabilities, their gradient
    and the row sums, which live until that kernel runs."""
    tensors = table.tensors
    readers = _readers_via_views(tensors, name, pos)
    if any(node == name and not _inlines_expression(tensors, user, node) for user, node in readers):
        return ()  # an extern reader of the value itself: realized at its own lowering
    out: list[tuple[str, str]] = []
    for user, node in sorted(readers, key=lambda r: pos[r[0]]):
        if not _inlines_expression(tensors, user, node):
            return tuple(out)
        out.append((user, node))
    return ()  # no reader realizes it: the value is not fusible for another reason (too many readers)


def _readers_via_views(tensors, name: str, pos: Mapping[str, int]) -> list[tuple[str, str]]:
    """(reader, what it reads) for every reader of ``name`` in ``pos``, a view's readers taking the view's place: a
    view of a value is the same expression read at other indices, and no kernel of its own."""
    out: list[tuple[str, str]] = []
    stack = [name]
    while stack:
        node = stack.pop()
        for user in tensors[node].users:
            if user not in pos:
                continue
            if _view_of(tensors, user, (name,)) is not None:
                stack.append(user)
            else:
                out.append((user, node))
    return out


def _inlines_expression(tensors, user: str, value: str) -> bool:
    """``user``'s kernel computes ``value`` inside itself when ``value`` is an unrealized expression (as
    ``lifetimes._inlines`` decides on the graph): a pointwise op, a reduction or a gather from ``value``."""
    info = tensors.get(user)
    if info is None or info.kind != "tensor":
        return False
    if info.gathered is not None:
        return info.gathered == value
    return info.pointwise or info.producer in REDUCTION_OPS


def _reductions_together(table: LifetimeTable, inputs: Mapping[str, list[str]]) -> dict[str, str]:
    """Per reduction, the pointwise op whose kernel it runs in, where two or more reductions of one shape (equal
    input and output sizes) reach that op, each through pointwise ops of its output's size that have one reader
    each. Inductor's scheduler fuses a reduction with the pointwise ops after it of its output's size (an
    epilogue), and so the reductions with each other through the op where their epilogues meet: one kernel,
    which waits for the last of them (hf-t5's shared relative-position bias: each attention layer sums its
    score gradient over the batch, the layers' sums are added, and one kernel at the add after the last
    layer computes them all). Their results get no buffer, and what they read lives until that kernel."""
    tensors = table.tensors
    meets: dict[str, dict[tuple[int | None, int | None], list[str]]] = {}
    for name in table.order:
        info = tensors.get(name)
        if info is None or info.producer not in REDUCTION_OPS or info.kind != "tensor" or _numel(info) is None:
            continue
        src = next((tensors[x] for x in inputs.get(name, ()) if tensors[x].kind == "tensor"), None)
        if src is None:
            continue
        node = name
        while len(tensors[node].users) == 1:
            user = tensors.get(tensors[node].users[0])
            if user is None or not user.pointwise or user.kind != "tensor" or _numel(user) != _numel(info):
                break
            meets.setdefault(user.name, {}).setdefault((_numel(src), _numel(info)), []).append(name)
            node = user.name
    out: dict[str, str] = {}
    for name in table.order:  # the first op where two of a kind meet
        for members in meets.get(name, {}).values():
            if len(members) > 1:
                out.update((m, name) for m in members if m not in out)
    return out


READS_BY_INDEX = True
"""Whether ``_fused_away`` counts an expression's loads as Inductor does (``OpCounterCSE.load``: one per buffer and
index, so a buffer read through two views, or gathered at indices, is two loads) rather than one per buffer. A
causal mask built from four gathers of two small buffers makes seven loads, over the reads threshold, and Inductor
realizes it for the layers that read it (hf-mistral-gqa: 512 KiB in the forward and again in the backward). Off only
to compare with the simulator before the rule."""


def _view_of(tensors, name: str, values: Collection[str]) -> str | None:
    """The value among ``values`` that ``name`` is a view of (None if it is none's): a view of a value Inductor
    computes inside its readers is the same expression read at other indices (lifetimes._readers_through_views)."""
    info = tensors.get(name)
    if info is None or info.alias_root == name or info.alias_root not in values or info.producer == "placeholder":
        return None
    return info.alias_root


def _broadcast_read(table: LifetimeTable, name: str) -> bool:
    """A reader reads ``name`` broadcast: through a view with more elements (an ``expand``), or as a pointwise op
    whose output has more elements. Its kernel loads the buffer at other indices than the value's kernel writes it,
    so the two share no memory access and Inductor never fuses them (``Scheduler.can_fuse``: "no shared data"; an
    attention mask read by every head of its layer, hf-mistral-gqa)."""
    tensors = table.tensors
    numel = _numel(tensors[name])
    if numel is None:
        return False
    stack = [name]
    while stack:
        node = stack.pop()
        for user in tensors[node].users:
            info = tensors.get(user)
            if info is None or info.kind != "tensor":
                continue
            size = _numel(info)
            if _view_of(tensors, user, (tensors[node].alias_root,)) is not None:
                if size is not None and size > numel:
                    return True
                stack.append(user)
            elif info.pointwise and size is not None and size > numel:
                return True
    return False


def _readers_split(table: LifetimeTable, name: str, pos: Mapping[str, int],
                   inputs: Mapping[str, list[str]] | None = None, inlined: Collection[str] | None = None) -> bool:
    """A reader of ``name`` waits for a non-fusible step (a matmul, an extern kernel) that itself depends on
    ``name``: no one kernel can hold that reader and the value's first readers, so Inductor's scheduler
    cannot fuse the value's buffer away (it does when all readers join its kernel, by dependence, not by
    the graph's order: a reader the graph puts after the matmul but that does not wait for it joins).
    A reduction over the trailing dims of a value of ``name``'s size (``_row_reduction``: softmax's and a
    norm's row sums) is no such step: Inductor puts it in one kernel with the pointwise ops before and
    after it over the same rows. ``inputs``: ``_inputs_of(table)``, when the caller has it; ``inlined``: the values
    Inductor inlines, where known (``INLINED_READERS_RUN_LATE``): a reader among them is taken where its kernel runs."""
    tensors = table.tensors
    if BROADCAST_SPLITS and _broadcast_read(table, name):
        return True
    readers = ({u for u, _ in _readers_via_views(tensors, name, pos)} if VIEW_READERS
               else {u for u in tensors[name].users if u in pos})
    if len(readers) < 2:
        return False
    inputs = inputs if inputs is not None else _inputs_of(table)
    numel = _numel(tensors[name])

    def splits(node: str) -> bool:
        info = tensors[node]
        if info.fusible or info.kind != "tensor" or info.producer == "placeholder" or info.nbytes_hint <= 0:
            return False
        return not (ROW_REDUCTIONS_FUSE and _row_reduction(tensors, node, inputs, numel))

    if inlined is not None:
        readers = _kernels_of(tensors, readers, pos, inlined)
    last = max(pos[r] for r in readers)
    # descendants up to the last reader, each with whether its path from the value passed a split
    seen: set[tuple[str, bool]] = set()
    stack = [(name, False)]
    while stack:
        node, passed = stack.pop()
        for user in tensors[node].users:
            if user not in tensors or pos.get(user, last + 1) > last:
                continue
            if passed and user in readers:
                return True
            state = (user, passed or splits(user))
            if state not in seen:
                seen.add(state)
                stack.append(state)
    return False


INLINED_READERS_RUN_LATE = True
"""Whether a value fused away because its readers join its kernel is tested again once every value's fusion is
decided, with each reader Inductor inlines (``Fusion.inlined``) taken where its kernel runs: at the values it is
inlined into (``_kernels_of``), not where the graph puts it. A tanh-GELU's ``tanh``, recomputed at the backward's
start, is read by the GELU (needed at once) and by its derivative's ``mul(tanh, tanh)``, which is inlined into the
product with the gradient of a later matmul that depends on the GELU: Inductor keeps the ``tanh`` term's buffer
until then (swin-window's floor: 1 MiB, docs/BENCHMARKS.md "Five more families"). A reader that is only fusible,
not inlined, runs at its own place: tested that way too, unet-gn's default came out 4.6% high. Off only to compare
with the simulator before the rule."""


def _kernels_of(tensors, readers: set[str], pos: Mapping[str, int], inlined: Collection[str]) -> set[str]:
    """``readers`` with each one in ``inlined`` replaced by the values it is inlined into, followed through inlined
    values and views to those that are not (a value with a buffer, a reduction, an extern kernel's input)."""
    out: set[str] = set()
    seen: set[str] = set()
    stack = list(readers)
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        info = tensors.get(node)
        users = [u for u in info.users if u in pos] if info is not None else []
        if info is not None and (node in inlined or info.alias_root != node) and users:
            stack.extend(users)
        else:
            out.add(node)
    return out


BROADCAST_SPLITS = True
"""Whether a value read broadcast keeps its buffer (``_broadcast_read``); off only to compare with the simulator
before the rule."""

_MIN_UNSPLIT_ROWS = 512
"""On a GPU Inductor splits a reduction with few rows into two kernels (``Reduction.num_splits``: fewer rows than
about twice the SMs of a large GPU, 2 x 132 on an H100), which no pointwise joins; the C++ backend reduces each
row in one kernel whatever the count. Above this many rows no GPU splits."""

ROW_REDUCTIONS_FUSE = True
"""Whether a reduction over trailing dims joins the kernels of the pointwise ops around it (``_readers_split``);
off only to compare with the simulator before the rule."""


def _numel(info) -> int | None:
    if info.shape is None or not all(isinstance(d, int) for d in info.shape):
        return None
    return math.prod(info.shape)


def _row_reduction(tensors, node: str, inputs: Mapping[str, list[str]], numel: int | None) -> bool:
    """``node`` reduces the trailing dims of an input with ``numel`` elements: its output's shape (keepdim or
    not) is the input's leading dims. Inductor's scheduler fuses a pointwise node whose size is the
    reduction's rows times its reduced elements into the reduction's kernel (SIMDScheduling.can_fuse, the
    C++ backend's outer-loop fusion), before it and after it: a softmax backward's ``g * p``, its row
    sum and ``g * p - p * sum`` are one kernel. A reduction over leading dims (a bias gradient) is not."""
    info = tensors[node]
    if numel is None or info.producer not in REDUCTION_OPS or info.shape is None:
        return False
    rows = _numel(info)
    if rows is None or (not (info.device or "cpu").startswith("cpu") and rows < _MIN_UNSPLIT_ROWS):
        return False
    for a in inputs.get(node, ()):
        src = tensors.get(a)
        if src is None or src.kind != "tensor" or src.shape is None or _numel(src) != numel:
            continue
        out = list(info.shape)
        if len(out) == len(src.shape):  # keepdim: the reduced trailing dims are 1
            k = len(out)
            while k > 0 and out[k - 1] == 1 and src.shape[k - 1] != 1:
                k -= 1
            return k < len(out) and out[:k] == list(src.shape[:k])
        return out == list(src.shape[:len(out)])
    return False


_HEAVY_OPS = frozenset(("exp", "log", "log10", "log1p", "log2", "sigmoid", "tanh"))
"""Ops whose reuse Inductor materializes on a CPU (``StorageBox.should_realize_on_reuse``)."""


def _op_name(producer: str) -> str:
    """``"aten.tanh.default"`` -> ``"tanh"``."""
    parts = producer.split(".")
    return parts[1] if len(parts) > 1 else producer


def _inputs_of(table: LifetimeTable) -> dict[str, list[str]]:
    """Per node, the values it reads (the inverse of ``TensorInfo.users``)."""
    inputs: dict[str, list[str]] = {}
    for name, info in table.tensors.items():
        for user in info.users:
            inputs.setdefault(user, []).append(name)
    return inputs


def _inductor_thresholds() -> tuple[int, dict[bool, int], dict[bool, int]]:
    """Inductor's realize thresholds: reads, and per (is CPU) the opcount and accumulated reads."""
    try:
        from torch._inductor import config as c
    except ImportError:  # pragma: no cover
        return 4, {True: 50, False: 30}, {True: 12, False: 8}

    def pick(value, cpu_name, default_name, cpu_fallback, fallback):
        if value is not None:
            return {True: value, False: value}
        return {True: getattr(c, cpu_name, getattr(c, default_name, cpu_fallback)),
                False: getattr(c, default_name, fallback)}

    ops = pick(getattr(c, "realize_opcount_threshold", None), "realize_cpu_opcount_threshold",
               "_realize_opcount_threshold_default", 30, 30)
    acc = pick(getattr(c, "realize_acc_reads_threshold", None), "realize_cpu_acc_reads_threshold",
               "_realize_acc_reads_threshold_default", 8, 8)
    return getattr(c, "realize_reads_threshold", 4), ops, acc


def _runs_at(table: LifetimeTable, fusion: Fusion, step: Mapping[str, int]) -> dict[str, int]:
    """Per node, the last step at which its computation runs: its own step, or, for a value Inductor inlines
    into its readers' kernels, the last of theirs (what it reads is read there: a
    BatchNorm gradient's ``threshold_backward`` read again by a residual add after a recompute chain keeps
    its inputs alive until that add); for a value with a buffer, also the steps of the readers that compute it
    again (``Fusion.early``); for a reduction run in its reader's kernel, that kernel's (``Fusion.together``)."""
    inlined = fusion.inlined
    out: dict[str, int] = {}
    for name in reversed(table.order):
        if name not in step:
            continue
        if name in inlined or _view_of(table.tensors, name, inlined) is not None:
            later = [out[u] for u in table.tensors[name].users if u in out]
            out[name] = max([step[name], *later])
        elif name in fusion.together and fusion.together[name] in out:
            out[name] = max(step[name], out[fusion.together[name]])
        else:
            out[name] = max([step[name], *(out[u] for u, _ in fusion.early.get(name, ()) if u in out)])
    return out


def _write_in_place(table: LifetimeTable, inputs: Mapping[str, list[str]], g: int, inlined: frozenset[str],
                    fused_away: frozenset[str], root: Mapping[tuple[int, str], str], nbytes: Mapping[str, int],
                    last: dict[str, int], step_of: Mapping[tuple[int, str], int], held: set[str]) -> None:
    """Where a pointwise kernel's output takes the storage of a same-sized input of the same dtype whose
    last reader is that kernel, end the input's interval one step before the output's (``last``)."""
    tensors = table.tensors
    taken: set[str] = set()
    for name in table.order:
        info = tensors[name]
        key = root.get((g, name))
        at = step_of.get((g, name))
        if (not info.pointwise or name in fused_away or at is None or key is None or info.alias_root != name
                or not nbytes.get(key)):
            continue
        # the buffers this kernel loads: its inputs, through the values inlined into it
        reads, stack, seen = [], list(inputs.get(name, ())), set()
        while stack:
            a = stack.pop()
            if a in seen:
                continue
            seen.add(a)
            if a in inlined or _view_of(tensors, a, inlined) is not None:
                stack.extend(inputs.get(a, ()))
            else:
                reads.append(a)
        for a in reads:
            src = root.get((g, a))
            a_info = tensors[a]
            if (src is None or src in taken or src in held or src == key or nbytes.get(src) != nbytes[key]
                    or a_info.dtype != info.dtype or last.get(src) != at
                    or not (a_info.alias_root == a or (RESHAPES_IN_PLACE and _reshape_of_root(tensors, inputs, a)))):
                continue
            last[src] = at - 1
            taken.add(src)
            break


_RESHAPES = frozenset({"aten.view.default", "aten.reshape.default", "aten._unsafe_view.default"})

RESHAPES_IN_PLACE = True
"""Whether a kernel may write its output into a dying input it reads through reshapes (``_reshape_of_root``), as
Inductor's code does (tests/passes/test_inductor_order.py): hf-gpt2's GELU derivative written into the matmul output
it reads as (batch, seq, hidden). Off only to compare with the simulator before the rule."""


def _reshape_of_root(tensors, inputs: Mapping[str, list[str]], name: str) -> bool:
    """``name`` is its storage's value through reshapes only (``view``, ``reshape``, ``_unsafe_view`` of a value
    that owns its storage): a reshape of a contiguous buffer reads each element at the buffer's own flat index,
    so Inductor's in-place reuse sees the buffer itself (a GELU derivative written into the matmul output it
    reads as ``(batch, seq, hidden)``: "buf15 = reinterpret_tensor(buf9, ...); del buf9  # reuse")."""
    info = tensors.get(name)
    while info is not None and info.alias_root != info.name:  # a view's source precedes it: no cycle
        if info.producer not in _RESHAPES:
            return False
        source = next((a for a in inputs.get(info.name, ()) if tensors[a].kind == "tensor"), None)
        info = tensors.get(source) if source is not None else None
    return info is not None


def offload_roles(gm: fx.GraphModule | fx.Graph) -> dict[str, tuple[str, str | None]]:
    """Per node the offload rewrite inserted: (role, the prefetch node of a ``prefetch_wait``, else None)."""
    graph = gm.graph if isinstance(gm, fx.GraphModule) else gm
    out = {}
    for node in graph.nodes:
        tag = node.meta.get(OFFLOAD_META)
        if tag:
            fetch = node.args[0] if tag["role"] == "prefetch_wait" else None
            out[node.name] = (tag["role"], fetch.name if isinstance(fetch, fx.Node) else None)
    return out


def simulate_tables(
    fw_table: LifetimeTable, bw_table: LifetimeTable | None, *, num_fwd_outputs: int, model: str = "inductor",
    offload: tuple[Mapping[str, tuple[str, str | None]], Mapping[str, tuple[str, str | None]]] = ({}, {}),
    scratch: tuple[Mapping[str, int], Mapping[str, int]] = ({}, {}),
    copies: Mapping[str, int] | None = None,
) -> Timeline:
    """``offload``: ``offload_roles`` of the forward and of the backward graph; ``scratch``: bytes a node
    holds only while it runs (costs.scratch_bytes), per graph; ``copies``: the forward's inputs Inductor
    copies into another layout (``layout_copies``), each live from the forward's first step to the
    input's last use in either graph."""
    if model not in ("inductor", "eager"):
        raise ValueError(f"model: expected 'inductor' or 'eager', got {model!r}")
    fused = model == "inductor"
    none = Fusion(away=frozenset(), inlined=frozenset(), early={}, together={})
    inputs = (_inputs_of(fw_table), _inputs_of(bw_table) if bw_table is not None else {}) if fused else ({}, {})
    fusion = (_fusion(fw_table, inputs[0]) if fused else none,
              _fusion(bw_table, inputs[1]) if fused and bw_table is not None else none)
    fused_away, inlined = (fusion[0].away, fusion[1].away), (fusion[0].inlined, fusion[1].inlined)
    steps: list[str] = []
    sides: list[str] = []
    step_of: dict[tuple[int, str], int] = {}

    held_roots = {n for n, t in fw_table.tensors.items() if t.producer == "placeholder"}
    held_bytes = sum(fw_table.tensors[n].nbytes_hint for n in held_roots)

    for name in fw_table.order:
        if name in held_roots:
            continue
        step_of[(0, name)] = len(steps)
        steps.append(name)
        sides.append(FORWARD)
    backward_start = len(steps)

    root: dict[tuple[int, str], str] = {}
    nbytes: dict[str, int] = {}
    alloc: dict[str, int] = {}
    last: dict[str, int] = {}
    fw_host, bw_roles = offload
    for name, info in fw_table.tensors.items():
        root[(0, name)] = info.alias_root
        if info.alias_root == name:
            host = fw_host.get(name, ("",))[0] in _HOST_ROLES
            nbytes[name] = 0 if name in fused_away[0] or host else info.nbytes_hint
            alloc[name] = step_of.get((0, name), -1)

    tables = [(0, fw_table)]
    if bw_table is not None:
        for name in bw_table.order:
            info = bw_table.tensors[name]
            if info.producer == "placeholder" and name in fw_table.tensors:
                continue  # a saved value: the forward's storage
            step_of[(1, name)] = max(len(steps), backward_start) if info.producer == "placeholder" else len(steps)
            if info.producer != "placeholder":
                steps.append(name)
                sides.append(BACKWARD)
        for name in bw_table.order:  # execution order: a view's source is resolved before it
            info = bw_table.tensors[name]
            if info.producer == "placeholder" and name in fw_table.tensors:
                root[(1, name)] = fw_table.tensors[name].alias_root
            elif info.alias_root != name:
                root[(1, name)] = root[(1, info.alias_root)]
            else:
                key = name if name not in nbytes else f"bw:{name}"
                root[(1, name)] = key
                role, fetch = bw_roles.get(name, ("", None))
                host = role in _HOST_ROLES
                nbytes[key] = 0 if name in fused_away[1] or host else info.nbytes_hint
                # a prefetched copy exists from its prefetch on
                alloc[key] = step_of.get((1, fetch), step_of[(1, name)]) if role == "prefetch_wait" else step_of[(1, name)]
        tables.append((1, bw_table))

    end = len(steps) - 1
    for g, table in tables:
        runs_at = _runs_at(table, fusion[g], {n: step_of[(g, n)] for n in table.order if (g, n) in step_of})
        # a reader that computes a value again loads what the value reads, not its buffer
        recomputed = {edge for edges in fusion[g].early.values() for edge in edges}
        for name, info in table.tensors.items():
            key = root[(g, name)]
            uses = [runs_at[u] for u in info.users if u in runs_at and (u, name) not in recomputed]
            own = step_of.get((g, name), -1)
            last[key] = max(last.get(key, -1), own, *uses)

    # Outputs that outlive their graph: the forward's user outputs and, with no backward, all of
    # its outputs; the backward's outputs (gradients).
    fw_outputs = fw_table.outputs
    keep_to_end = list(fw_outputs[:num_fwd_outputs] if bw_table is not None else fw_outputs)
    saved = [n for n in fw_outputs[num_fwd_outputs:] if n is not None] if bw_table is not None else []
    for name in keep_to_end:
        if name is not None:
            last[root[(0, name)]] = end
    for name in saved:
        key = root[(0, name)]
        # a saved value is live at least until the backward starts
        last[key] = max(last.get(key, -1), min(backward_start, end))
    if bw_table is not None:
        for name in bw_table.outputs:
            if name is not None:
                last[root[(1, name)]] = end

    # Inductor writes a kernel's output into an input that dies in that kernel (config.inplace_buffers:
    # "buf2 = exp_9; del exp_9  # reuse"): the input's storage ends where the output's begins
    if fused:
        for g, table in tables:
            _write_in_place(table, inputs[g], g, inlined[g], fused_away[g], root, nbytes, last, step_of, held_roots)

    intervals = []
    for name, size in (copies or {}).items():
        if name in held_roots and size:
            intervals.append(StorageInterval(root=LAYOUT_PREFIX + name, nbytes=size, alloc_step=0,
                                             free_step=max(last.get(name, 0), 0)))
    for key, size in nbytes.items():
        if key in held_roots or size == 0:
            continue
        a = max(alloc.get(key, 0), 0)
        intervals.append(StorageInterval(root=key, nbytes=size, alloc_step=a, free_step=max(last.get(key, a), a)))

    delta = [0] * (len(steps) + 1)
    for iv in intervals:
        delta[iv.alloc_step] += iv.nbytes
        delta[iv.free_step + 1] -= iv.nbytes
    live = []
    running = held_bytes
    transient = [scratch[side == BACKWARD].get(name, 0) for name, side in zip(steps, sides)]
    # a multi-output op (convolution_backward, var_mean) writes all its parts while it runs, beside its
    # inputs; the timeline allocates each part at its getitem, one step later
    for g, table in tables:
        for name, info in table.tensors.items():
            if info.kind != "tuple" or (g, name) not in step_of:
                continue
            at = step_of[(g, name)]
            parts = {root[(g, u)] for u in info.users if (g, u) in root}
            transient[at] += sum(nbytes.get(p, 0) for p in parts if alloc.get(p, -1) > at)
    for i in range(len(steps)):
        running += delta[i]
        live.append(running + transient[i])
    return Timeline(
        steps=tuple(steps),
        sides=tuple(sides),
        live_bytes=tuple(live),
        held_bytes=held_bytes,
        backward_start=backward_start,
        intervals=tuple(intervals),
        transient_bytes=tuple(transient),
    )
