"""Per-node cost estimates: FLOPs (torch.utils.flop_counter), bytes moved, predicted seconds.

A roofline: seconds = max(flops / peak FLOP/s, bytes / memory bandwidth) + a per-kernel
overhead, with the machine's figures in a DeviceProfile.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import fx
from torch.utils.flop_counter import flop_registry

from .lifetimes import LifetimeTable, alias_source, size_hint


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceProfile:
    name: str
    peak_flops: float
    """FLOP/s the matmuls reach (fp32 on CPU; the training dtype on GPUs)."""
    memory_bandwidth: float
    """Bytes/s between the device's memory and its compute units."""
    host_link_bandwidth: float
    """Bytes/s between the device and pinned host memory (offload)."""
    kernel_overhead_seconds: float
    """Fixed cost of launching one kernel."""

    @classmethod
    def for_device(cls, device: str | torch.device) -> DeviceProfile:
        """Nominal figures for a device type; pass your own DeviceProfile for measured ones."""
        device = torch.device(device)
        if device.type == "cuda" and torch.cuda.is_available():
            name = torch.cuda.get_device_name(device)
            if "H100" in name or "H200" in name:
                return cls(name=name, peak_flops=400e12, memory_bandwidth=3.0e12, host_link_bandwidth=25e9,
                           kernel_overhead_seconds=4e-6)
            return cls(name=name, peak_flops=100e12, memory_bandwidth=1.5e12, host_link_bandwidth=12e9,
                       kernel_overhead_seconds=5e-6)
        # A 2-core x86 machine: ~50 GFLOP/s fp32 matmul, ~10 GB/s stream bandwidth.
        return cls(name="cpu", peak_flops=50e9, memory_bandwidth=10e9, host_link_bandwidth=10e9,
                   kernel_overhead_seconds=2e-6)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeCost:
    flops: int
    bytes_moved: int
    seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CostTable:
    costs: Mapping[str, NodeCost]
    estimator: str
    profile: DeviceProfile
    fused_recompute: Mapping[str, float] = field(default_factory=dict)
    """Seconds of recomputing a value inside the backward kernel that reads it (Inductor inlines a
    pointwise value into its pointwise or reduction readers): the FLOPs, and the bytes its inputs
    add over reading the value itself. Only for values Inductor fuses (``TensorInfo.fusible``)."""

    def recompute_seconds(self, name: str) -> float:
        """Added time of rebuilding ``name`` in the backward."""
        fused = self.fused_recompute.get(name)
        return fused if fused is not None else self.seconds(name)

    def seconds(self, name: str) -> float:
        cost = self.costs.get(name)
        return cost.seconds if cost is not None else 0.0


_FREE = NodeCost(flops=0, bytes_moved=0, seconds=0.0)


def _flops(node: fx.Node) -> int:
    packet = getattr(node.target, "overloadpacket", None)
    formula = flop_registry.get(packet)
    if formula is None:
        return 0
    args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: n.meta.get("val"))
    try:
        flops = formula(*args, **kwargs, out_val=node.meta.get("val"))
    except Exception:  # noqa: BLE001 - a formula that cannot read these args counts as no FLOPs
        return 0
    return size_hint(flops) if isinstance(flops, torch.SymInt) else int(flops)


def estimate_costs(
    gm: fx.GraphModule | fx.Graph, table: LifetimeTable, profile: DeviceProfile, *, fused: bool = False
) -> CostTable:
    """Cost of running each call_function node of ``gm`` once.

    ``fused``: the graph runs through Inductor, so a fusible pointwise value recomputed in the
    backward is computed inside its reader's kernel (``CostTable.recompute_seconds``).
    """
    graph = gm.graph if isinstance(gm, fx.GraphModule) else gm
    costs: dict[str, NodeCost] = {}
    fused_recompute: dict[str, float] = {}
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        if node.target is operator.getitem or alias_source(node) is not None:
            costs[node.name] = _FREE
            continue
        read = sum(table.storage_bytes(a.name) for a in node.all_input_nodes if a.name in table.tensors)
        written = table.tensors[node.name].nbytes_hint
        if table.tensors[node.name].kind == "tuple":
            written = sum(table.tensors[u.name].nbytes_hint for u in node.users if u.name in table.tensors)
        flops = _flops(node)
        seconds = max(flops / profile.peak_flops, (read + written) / profile.memory_bandwidth)
        costs[node.name] = NodeCost(
            flops=flops, bytes_moved=read + written, seconds=seconds + profile.kernel_overhead_seconds
        )
        if fused and table.tensors[node.name].fusible:
            # no launch and no write: the reader computes it from the inputs instead of reading it
            fused_recompute[node.name] = max(flops / profile.peak_flops, max(read - written, 0) / profile.memory_bandwidth)
    return CostTable(costs=costs, estimator="roofline(flop_counter)", profile=profile, fused_recompute=fused_recompute)


_ONEDNN_MATMULS = frozenset(
    getattr(torch.ops.aten, op).default for op in ("mm", "addmm", "bmm", "baddbmm")
)
_ONEDNN_CONVOLUTIONS = frozenset((torch.ops.aten.convolution.default, torch.ops.aten.convolution_backward.default))
_REDUCED = (torch.bfloat16, torch.float16)
_OWN_OPS = ("fewbit_gelu", "fewbit_silu", "fewbit_backward", "quantize_int8", "quantize_fp8", "dequantize")
"""memcompile's own storage ops (kernels/): on CPU their reference implementations hold fp32 and int32
temporaries per chunk (fewbit_forward: an fp32 copy of a bf16 input, int32 intervals, a promoted compare),
so their scratch is measured too. The offload ops are not: they move bytes between devices."""


def _own_ops() -> frozenset:
    """The OpOverloads of ``_OWN_OPS`` that are registered (kernels/ imported), else none."""
    ns = getattr(torch.ops, "memcompile", None)
    found = []
    for name in _OWN_OPS:
        try:
            found.append(getattr(ns, name).default)
        except (AttributeError, RuntimeError):
            continue
    return frozenset(found)


def scratch_bytes(gm: fx.GraphModule | fx.Graph, *, model: str = "eager",
                  arriving: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, int]:
    """Bytes each node allocates and frees inside itself, beyond its output (simulate.py adds them at its step).

    On CPU, oneDNN runs bf16/fp16 matmuls and every convolution (forward and backward, fp32 too); its
    scratchpad and its reorders into and out of blocked layouts (packed operand blocks, fp32
    accumulators per thread, a blocked copy of the output or gradient) go through PyTorch's allocator
    for the op's duration. Their size is oneDNN's blocking choice, so it is measured by running the op
    once per shape, layout, dtype and thread count; so are memcompile's own quantize and few-bit ops
    (``_OWN_OPS``). fp32 matmuls (MKL) and every other op allocate no scratch here. Through Inductor (``model="inductor"``) convolutions are measured in the
    layout Inductor gives the graph (``layout_optimized``), which the graph's strides do not show: channels-last
    where it optimizes the layout (convnext measured in the graph's layout: predicted 37% over the measured
    peak), contiguous where it does not (a backward that recomputes no convolution: measured channels-last,
    convnext's default partition was predicted 40% over).

    A backward graph Inductor does not layout-optimize (it recomputes no convolution) runs each
    ``convolution_backward`` on the strides its lowering gives the operands (``backward_conv_operands``), from the
    strides its inputs arrive in (``arriving``: ``forward_output_strides`` of the forward): channels-last on
    resnet-bn, a contiguous gradient and an (N, H, C, W) input for convnext's depthwise convolutions. Without
    ``arriving`` such a backward is measured contiguous.
    """
    graph = gm.graph if isinstance(gm, fx.GraphModule) else gm
    out: dict[str, int] = {}
    own = _own_ops()
    layout = _UNSET  # decided once, at the graph's first convolution
    operands: dict[str, tuple[_TensorSpec, ...]] | None = None
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        if node.target in own:
            key = _op_key(node, dtypes=None)
        elif node.target in _ONEDNN_MATMULS:
            key = _op_key(node, dtypes=_REDUCED)
        elif node.target in _ONEDNN_CONVOLUTIONS:
            # through Inductor, 4-d operands in the layout Inductor gives this graph: channels-last where it
            # optimizes the graph's layout, its default (contiguous) layout where it does not
            if layout is _UNSET:
                layout = (("channels_last" if layout_optimized(graph) else "contiguous") if model == "inductor"
                          else None)
            key = _op_key(node, dtypes=None, layout=layout)
            if (arriving and layout == "contiguous" and CONV_OPERAND_STRIDES
                    and node.target is torch.ops.aten.convolution_backward.default and key is not None):
                if operands is None:
                    operands = backward_conv_operands(graph, arriving)
                if node.name in operands:
                    key = _on_operands(key, operands[node.name])
        else:
            continue
        if key is not None:
            nbytes = _measured_scratch(*key, torch.get_num_threads())
            if nbytes:
                out[node.name] = nbytes  # a tuple's parts the simulator counts at the op's step itself
    return out


_UNSET = object()


def layout_switch_bytes(fw: fx.GraphModule | fx.Graph, bw: fx.GraphModule | fx.Graph,
                        arriving: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, int]:
    """Per ``convolution_backward`` of ``bw``: how much more scratch it holds (negative: less) than
    ``scratch_bytes``'s figure when the backward runs channels-last, which Inductor does as soon as the
    backward contains a convolution (a plan that recomputes one), where the forward is layout-optimized and
    ``bw`` itself is not. Empty otherwise. On convnext a depthwise convolution's backward holds 6.4 MB
    more channels-last than contiguous; on resnet-bn a 3x3 convolution's up to 1 MB less."""
    if not layout_optimized(fw) or layout_optimized(bw):
        return {}
    graph = bw.graph if isinstance(bw, fx.GraphModule) else bw
    out: dict[str, int] = {}
    threads = torch.get_num_threads()
    operands = backward_conv_operands(graph, arriving) if arriving and CONV_OPERAND_STRIDES else {}
    for node in graph.nodes:
        if node.op != "call_function" or node.target is not torch.ops.aten.convolution_backward.default:
            continue
        switched = _op_key(node, dtypes=None, layout="channels_last")
        plain = _op_key(node, dtypes=None, layout="contiguous")
        if plain is not None and node.name in operands:
            plain = _on_operands(plain, operands[node.name])
        if switched is None or plain is None:
            continue
        extra = _measured_scratch(*switched, threads) - _measured_scratch(*plain, threads)
        if extra:
            out[node.name] = extra
    return out


CONV_OPERAND_STRIDES = True
"""Whether a non-layout-optimized backward's convolution backwards are measured on the strides Inductor gives their
operands (``backward_conv_operands``) rather than contiguous; off only to compare with the simulator before the
rule. Simulated with it, torch's own plan at 0.8 on resnet-bn comes to 7,922,444 B against 7,922,448 measured
(8,952,588 without: oneDNN's scratch on contiguous operands)."""


def _on_operands(key, operands: tuple[_TensorSpec, ...]):
    """``_op_key``'s key of a ``convolution_backward`` with its three tensors replaced by ``operands``."""
    return key[0], operands + key[1][3:], key[2]


def _channels_last_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    n, c, h, w = shape
    return (h * w * c, 1, w * c, c)


def layout_copied_inputs(gm: fx.GraphModule | fx.Graph) -> dict[str, int]:
    """Bytes of the channels-last copy Inductor makes of each graph input a 2-d convolution reads (input or
    weight) in another layout, keyed by the placeholder's name; empty where Inductor does not optimize the
    graph's layout (``simulate.layout_copies``)."""
    graph = gm.graph if isinstance(gm, fx.GraphModule) else gm
    convs = [n for n in graph.nodes if n.op == "call_function" and n.target is torch.ops.aten.convolution.default]
    if not convs or not layout_optimized(graph):
        return {}
    out: dict[str, int] = {}
    for conv in convs:
        for arg in conv.args[:2]:
            if not isinstance(arg, fx.Node) or arg.op != "placeholder" or arg.name in out:
                continue
            val = arg.meta.get("val")
            if not isinstance(val, torch.Tensor) or val.dim() != 4:
                continue  # ndim == 2 convolutions only, as Inductor
            if val.is_contiguous(memory_format=torch.channels_last):
                continue
            out[arg.name] = size_hint(val.numel()) * val.element_size()
    return out


def forward_output_strides(fw: fx.GraphModule | fx.Graph,
                           copied: Mapping[str, int] | None = None) -> dict[str, tuple[int, ...]]:
    """Strides a layout-optimized forward gives its 4-d values where they differ from the graph's: channels-last
    for the dense values ``GraphLowering.find_nodes_prefer_channels_last`` picks (a convolution's inputs and
    outputs, the values that lead to one, and the values after one up to the graph's last convolution; a ``bmm``
    stops both) and for the channels-last copies of graph inputs (``layout_copied_inputs``). Inductor gives its
    outputs these strides (``GraphLowering.output``), so a backward's saved inputs arrive in them. Empty where the
    forward is not layout-optimized. ``copied``: ``layout_copied_inputs(fw)``, when the caller has it."""
    graph = fw.graph if isinstance(fw, fx.GraphModule) else fw
    if not layout_optimized(graph):
        return {}
    aten = torch.ops.aten
    prefer: set[fx.Node] = set()
    last_conv = None
    for n in reversed(graph.nodes):
        if n.target is aten.convolution.default:
            prefer.add(n)
            last_conv = last_conv or n
        elif n.target is not aten.bmm.default and any(u in prefer for u in n.users):
            prefer.add(n)
    for n in graph.nodes:
        if n is last_conv:
            break
        if n in prefer:
            prefer.update(u for u in n.users if u.target is not aten.bmm.default)
    out: dict[str, tuple[int, ...]] = {}
    for n in prefer:
        val = n.meta.get("val")
        if (n.op == "placeholder" or not isinstance(val, torch.Tensor) or val.dim() != 4 or val._is_view()
                or not torch._prims_common.is_non_overlapping_and_dense_or_false(val)):
            continue
        try:
            out[n.name] = _channels_last_strides(tuple(int(d) for d in val.shape))
        except (TypeError, ValueError, RuntimeError):  # a symbolic size
            continue
    names = {n.name: n for n in graph.nodes}
    for name in copied if copied is not None else layout_copied_inputs(graph):
        out[name] = _channels_last_strides(tuple(int(d) for d in names[name].meta["val"].shape))
    return out


def backward_conv_operands(graph: fx.Graph, arriving: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[_TensorSpec, ...]]:
    """Per ``convolution_backward`` of a graph Inductor does not layout-optimize, the (gradient, input, weight) it
    runs on, as Inductor's lowering gives them (``kernel/conv.py``, ``convolution_backward_lowering``): the input
    and the gradient get the stride order of the weight gradient eager would return for the operands as they
    are, then the gradient and the weight that of the input gradient. The operands as they are: the graph's inputs
    in the strides they arrive in (``arriving``, else the graph's); an input computed in the graph in the strides
    eager gives it from those (its ancestors run on fake tensors, a ``view`` as a ``reshape``, as Inductor's compile
    propagates them after ``view_to_reshape``). The gradient's own strides decide neither layout. Empty where
    this cannot run (a symbolic size, an op without a fake kernel): the caller keeps its figure."""
    aten = torch.ops.aten
    convs = [n for n in graph.nodes if n.op == "call_function" and n.target is aten.convolution_backward.default]
    if not convs:
        return {}
    try:
        from torch._inductor import ir
        from torch._subclasses import FakeTensorMode

        mode = FakeTensorMode(allow_non_fake_inputs=True)

        def fake(shape, stride, dtype) -> torch.Tensor:
            with mode:
                return torch.empty_strided(tuple(int(d) for d in shape), tuple(int(d) for d in stride), dtype=dtype)

        needed: set[fx.Node] = set()
        stack = [c.args[i] for c in convs for i in (1, 2) if isinstance(c.args[i], fx.Node)]
        while stack:
            n = stack.pop()
            if n not in needed:
                needed.add(n)
                stack.extend(a for a in n.all_input_nodes)
        env: dict[fx.Node, object] = {}
        with torch.no_grad():
            for n in graph.nodes:
                if n not in needed:
                    continue
                val = n.meta.get("val")
                if n.op == "placeholder":
                    env[n] = (fake(val.shape, arriving.get(n.name, val.stride()), val.dtype)
                              if isinstance(val, torch.Tensor) else val)
                elif n.op == "call_function":
                    target = aten.reshape.default if n.target is aten.view.default else n.target
                    args = fx.node.map_arg(n.args, lambda a: env[a])
                    kwargs = fx.node.map_arg(n.kwargs, lambda a: env[a])
                    with mode:
                        env[n] = target(*args, **kwargs)
                else:
                    return {}

        def ordered(t: torch.Tensor, order) -> torch.Tensor:
            return fake(t.shape, ir.FlexibleLayout.stride_ordered(tuple(int(d) for d in t.shape), order), t.dtype)

        out: dict[str, tuple[_TensorSpec, ...]] = {}
        for n in convs:
            g_val = n.args[0].meta["val"]
            go = fake(g_val.shape, torch.empty(tuple(int(d) for d in g_val.shape), device="meta").stride(), g_val.dtype)
            x, w = env[n.args[1]], env[n.args[2]]
            rest, mask = list(n.args[4:10]), n.args[10]
            with mode:
                if mask[1]:
                    _, dw, _ = aten.convolution_backward(go, x, w, None, *rest, (False, True, False))
                    order = ir.get_stride_order([int(d) for d in dw.stride()])
                    x, go = ordered(x, order), ordered(go, order)
                if mask[0]:
                    dx, _, _ = aten.convolution_backward(go, x, w, None, *rest, (True, False, False))
                    order = ir.get_stride_order([int(d) for d in dx.stride()])
                    go, w = ordered(go, order), ordered(w, order)
            out[n.name] = tuple(_TensorSpec(tuple(int(d) for d in t.shape), tuple(int(d) for d in t.stride()), t.dtype)
                                for t in (go, x, w))
        return out
    except Exception:  # noqa: BLE001 - a figure only: the caller measures the operands as the graph has them
        return {}


def layout_optimized(gm: fx.GraphModule | fx.Graph) -> bool:
    """Whether Inductor runs this graph's 2-d convolutions channels-last (``GraphLowering.decide_layout_opt``,
    decided per graph: always on a CPU with oneDNN when the graph has a convolution, by a FLOP heuristic on
    CUDA). A backward graph qualifies only when it recomputes a convolution: its ``convolution_backward``
    nodes do not count. The layout decides oneDNN's scratch: a depthwise convolution's backward on
    channels-last operands holds 6.4 MB where the contiguous ones hold 0.1 MB (convnext's last stage)."""
    graph = gm.graph if isinstance(gm, fx.GraphModule) else gm
    if not any(n.op == "call_function" and n.target is torch.ops.aten.convolution.default for n in graph.nodes):
        return False
    try:
        from torch._inductor.graph import GraphLowering

        return bool(GraphLowering.decide_layout_opt(_GraphHolder(graph), is_inference=False))
    except Exception:  # noqa: BLE001 - a torch without this hook, or a graph it cannot read
        return False


class _GraphHolder:
    """What ``GraphLowering.decide_layout_opt`` reads of a GraphModule: ``.graph``."""

    def __init__(self, graph: fx.Graph):
        self.graph = graph


class _TensorSpec(NamedTuple):
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype


def _scalar_arg(value) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_scalar_arg(v) for v in value)
    return isinstance(value, (int, float, bool, str)) or value is None


def _op_key(node: fx.Node, *, dtypes, layout: str | None = None):
    """(op, ((size, stride, dtype) | scalars, ...), kwargs) of a CPU op with static shapes whose tensors
    have one of ``dtypes`` (None: any), else None. ``layout``: "channels_last" or "contiguous" for 4-d
    tensors (None: the graph's strides)."""
    args = []
    for a in node.args:
        val = a.meta.get("val") if isinstance(a, fx.Node) else a
        if isinstance(val, torch.Tensor):
            if val.device.type != "cpu" or (dtypes is not None and val.dtype not in dtypes):
                return None
            try:
                shape = tuple(int(s) for s in val.shape)
                stride = tuple(int(s) for s in val.stride())
            except (TypeError, ValueError, RuntimeError):  # a symbolic size: not measurable before it is known
                return None
            if layout is not None and len(shape) == 4:
                n, c, h, w = shape
                stride = _channels_last_strides(shape) if layout == "channels_last" else (c * h * w, h * w, w, 1)
            args.append(_TensorSpec(shape, stride, val.dtype))
        elif _scalar_arg(val):
            args.append(tuple(val) if isinstance(val, list) else val)
        else:
            return None
    if node.kwargs and any(isinstance(v, fx.Node) for v in node.kwargs.values()):
        return None
    return node.target, tuple(args), tuple(sorted(node.kwargs.items()))


@functools.lru_cache(maxsize=1024)
def _measured_scratch(op, args, kwargs, num_threads: int) -> int:
    """Peak bytes ``op`` holds beyond its output, measured with the profiler's memory events (0 while another
    profiler runs: profilers do not nest)."""
    from torch.profiler import ProfilerActivity, profile
    from torch.utils._python_dispatch import _disable_current_modes

    from memcompile.measure import _cpu_memory_deltas, _quiet_stderr

    if torch.autograd.profiler._is_profiler_enabled:
        return 0
    # real tensors (not the compile's fake ones), the op as the node states it (no autocast casts)
    with _disable_current_modes(), torch.no_grad(), torch.autocast("cpu", enabled=False):
        tensors = [
            torch.empty_strided(a.shape, a.stride, dtype=a.dtype).zero_() if isinstance(a, _TensorSpec) else a
            for a in args
        ]
        op(*tensors, **dict(kwargs))  # first call: oneDNN builds and caches its primitive
        prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        with _quiet_stderr():
            prof.__enter__()
        try:
            result = op(*tensors, **dict(kwargs))  # held: only the scratch is freed inside the window
        finally:
            with _quiet_stderr():
                prof.__exit__(None, None, None)
    del result
    running = peak = 0
    for _, nbytes in sorted(_cpu_memory_deltas(prof)):
        running += nbytes
        peak = max(peak, running)
    return max(peak - max(running, 0), 0)
