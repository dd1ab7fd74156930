"""The ``memcompile`` torch.compile backend.

``torch.compile(model, backend="memcompile", options={...})`` compiles through Inductor
with MemPartitioner as its partitioner (passed as a config patch for this compile only,
never by changing global config), or through AOT autograd with eager execution when
``options={"inner": "eager"}``.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import sys
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.fx as fx

from ._inductor_choices import planned_order
from .config import MemConfig
from .partitioner import MemPartitioner
from .plan import Plan

_lock = threading.Lock()
_plans: list[Plan] = []
_graph_counter = itertools.count()
_current_compile: object | None = None
"""What identifies the torch.compile call whose plans ``_plans`` holds (``_compile_key``)."""


def _next_graph_index() -> int:
    """Graphs are numbered across the backend calls of one compile (graph breaks, recompiles)."""
    with _lock:
        return next(_graph_counter)


_collectors: list[list[Plan]] = []


def _compile_key(options: object) -> object:
    """The ``torch.compile(...)`` call this backend call serves: its wrapper, found on the stack
    (torch hands every graph of one compiled model, graph breaks and recompiles included, to one
    ``_TorchCompileWrapper``); the options object when the backend is called some other way."""
    wrapper_type = getattr(torch, "_TorchCompileWrapper", None)
    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self") if frame.f_code.co_name == "__call__" else None
        if wrapper_type is not None and isinstance(candidate, wrapper_type):
            return candidate
        frame = frame.f_back
    return options


def _start_compile(key: object) -> None:
    """A backend call for another compiled model than the last one: its plans replace the last one's."""
    global _current_compile, _graph_counter
    with _lock:
        if key is not _current_compile:
            _current_compile = key
            _plans.clear()
            _graph_counter = itertools.count()


def _remember(plan: Plan) -> None:
    with _lock:
        _plans.append(plan)
        for collector in _collectors:
            collector.append(plan)
    if plan.config.report_dir:
        from .report import Report

        stem = f"graph{plan.graph_index}_{id(plan):x}"
        try:
            Report((plan,)).write(plan.config.report_dir, stem=stem)
        except Exception as exc:  # noqa: BLE001 - a report that cannot be written must not change the partition
            warnings.warn(
                f"memcompile: could not write the report {stem} to report_dir={plan.config.report_dir!r} "
                f"({type(exc).__name__}: {exc}); the plan is still used and is in memcompile.last_report()",
                RuntimeWarning,
                stacklevel=2,
            )


@contextlib.contextmanager
def _collect_plans() -> Iterator[list[Plan]]:
    """Collect the plans recorded inside the ``with`` block (what ``memcompile.inspect`` reports)."""
    collected: list[Plan] = []
    with _lock:
        _collectors.append(collected)
    try:
        yield collected
    finally:
        with _lock:
            _collectors.remove(collected)


def last_plans() -> tuple[Plan, ...]:
    """Plans recorded by the most recent compile (one per graph), oldest first: the graphs of the
    model most recently compiled with ``torch.compile(..., backend="memcompile")``, its graph breaks
    and recompiles included; compiling another model starts a new list."""
    with _lock:
        return tuple(_plans)


def clear_plans() -> None:
    global _graph_counter, _current_compile
    with _lock:
        _plans.clear()
        _graph_counter = itertools.count()
        _current_compile = None


def last_report():
    """A ``memcompile.Report`` of ``last_plans()``; LookupError when no plan was recorded."""
    from .report import last_report as _last_report

    return _last_report()


def memcompile_backend(
    gm: fx.GraphModule, example_inputs: Sequence[Any], *, options: Mapping[str, Any] | MemConfig | None = None, **kwargs: Any
):
    """torch.compile backend entry point (registered as "memcompile")."""
    if kwargs.get("mode") not in (None, "default"):
        raise ValueError(f"mode: memcompile takes no torch.compile mode, got {kwargs['mode']!r}; pass options instead")
    config = MemConfig.from_options(options)
    _start_compile(_compile_key(options))
    if config.has_budget and not _has_backward(gm, example_inputs) and not _inside_autograd_function():
        warnings.warn(
            "memcompile: a graph with no backward (run under torch.no_grad() or torch.inference_mode(), or "
            "nothing in it requires grad) saves no activations, so memory_budget does not apply to it: it is "
            "compiled as the inner compiler compiles it and no plan is recorded",
            UserWarning,
            stacklevel=2,
        )
    partitioner = MemPartitioner(config, on_plan=_remember, graph_counter=_next_graph_index)
    if config.inner == "eager":
        return _eager(gm, example_inputs, partitioner)
    from torch._inductor.compile_fx import compile_fx

    # a fraction of 1.0 runs Inductor's default partition: Inductor's own peak-memory reordering stays on there
    # (mlp-mixer: 18.79 MB with it, 19.05 without), and the planned-order fusion choices too, which the
    # simulator follows (hf-t5: 14.85 MB predicted and measured with them, 15.77 measured without)
    inner_compile = functools.partial(_inner_compile, planned=config.has_budget,
                                      keep_order="recompute" in config.modes and config.budget_fraction != 1.0)
    return compile_fx(gm, example_inputs, inner_compile=inner_compile,
                      config_patches=_config_patches(config, partitioner), decompositions=_decompositions(config))


def _decompositions(config: MemConfig) -> dict | None:
    """Inductor's decomposition table (None: compile_fx's own), less GELU's and SiLU's derivatives when
    the plan may store few-bit codes: decomposed into pointwise ops before the partitioner sees the
    joint graph, they leave the few-bit rewrite nothing to replace (gpt-small, keep + fewbit through
    Inductor: 146.48 MB of activations, keep-all 146.76; kept whole: 116.40). A derivative the plan
    does not replace is decomposed before Inductor lowers it (``_inner_compile``), as Inductor would have.
    Likewise less the activations and derivatives of the inplace rules (``inplace.KEPT_WHOLE``) when the
    plan may use "inplace" and there is a budget (without one the partition is Inductor's own)."""
    from memcompile.passes.rewrite.fewbit import FEWBIT_RULES
    from memcompile.passes.rewrite.inplace import KEPT_WHOLE

    removed = set(FEWBIT_RULES) if "fewbit" in config.modes else set()
    if "inplace" in config.modes and config.has_budget:
        removed |= KEPT_WHOLE
    if not removed:
        return None
    from torch._inductor.decomposition import select_decomp_table

    return {op: fn for op, fn in select_decomp_table().items() if op not in removed}


def _inner_compile(gm: fx.GraphModule, example_inputs: Sequence[Any], *, planned: bool = False,
                   keep_order: bool = True, **kwargs: Any):
    """Inductor's compile of one extracted graph, under the offload rewrite's INDUCTOR_CONFIG when
    that graph calls the offload ops (config.patch restores the config when it returns), and, for a
    planned graph, with fusion choices that keep the plan's order (memcompile/_inductor_choices.py).

    NOTE on why here: which graphs hold offload ops is known only once the partitioner has run,
    inside compile_fx; it then hands the forward and the backward graph to ``inner_compile`` one at
    a time (the backward possibly much later), so a patch around compile_fx could not tell them apart."""
    from torch._inductor import config as inductor_config
    from torch._inductor.compile_fx import compile_fx_inner

    from memcompile.passes.rewrite.fewbit import decompose_leftover_derivatives
    from memcompile.passes.rewrite.inplace import decompose_leftovers
    from memcompile.passes.rewrite.offload import INDUCTOR_CONFIG, has_offload

    decompose_leftover_derivatives(gm)  # only present when the fewbit mode kept them whole
    decompose_leftovers(gm)  # only present when the inplace mode kept them whole
    with contextlib.ExitStack() as stack:
        if planned:
            stack.enter_context(planned_order(keep_order=keep_order))
        if has_offload(gm):
            stack.enter_context(inductor_config.patch(INDUCTOR_CONFIG))
        return compile_fx_inner(gm, example_inputs, **kwargs)


def _config_patches(config: MemConfig, partitioner: MemPartitioner) -> dict[str, Any]:
    """Inductor options for a compile with memcompile's partitioner.

    With a budget, Inductor's buffer reuse is off: Inductor keeps a dead buffer allocated until a
    later buffer of the same size takes it over, often a whole transformer block later, so the
    peak it runs at is above the plan's (the simulator frees a value after its last use). On
    gpt-small at 0.3 the measured peak drops from 86.5 to 80.0 MB (the plan predicts 81.1), on
    llama-small from 116.7 to 102.9 MB, at the same step time (docs/BENCHMARKS.md).
    """
    patches: dict[str, Any] = {"custom_partitioner_fn": partitioner}
    if config.has_budget:
        patches["allow_buffer_reuse"] = False
    return patches


def _has_backward(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> bool:
    """AOT autograd's own test for tracing a joint graph: grad mode on and some input requiring grad."""
    if not torch.is_grad_enabled():
        return False
    inputs = itertools.chain(gm.parameters(), (t for t in example_inputs if isinstance(t, torch.Tensor)))
    return any(t.requires_grad for t in inputs)


def _inside_autograd_function() -> bool:
    """The graph being compiled is part of a custom ``torch.autograd.Function``'s forward or backward
    that dynamo compiles on its own (a graph break inside it): autograd runs those with grad mode off,
    so the graph has no backward of its own, and memory_budget applies to the graphs around it."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name in ("apply", "_apply") and code.co_filename.endswith(os.path.join("autograd", "function.py")):
            return True
        frame = frame.f_back
    return False


def _eager(gm: fx.GraphModule, example_inputs: Sequence[Any], partitioner: MemPartitioner):
    from torch._dynamo.backends.common import aot_autograd

    def boxed(graph_module: fx.GraphModule, _inputs):
        # Boxed calling convention: the generated code clears its argument list, so saved
        # tensors die at their last use as they do under Inductor.
        graph_module.graph.set_codegen(torch.fx.graph._BoxedCodeGen())
        graph_module.recompile()  # with _BoxedCodeGen, GraphModule._boxed_call is then True
        return graph_module

    def partition(joint, joint_inputs, **kw):
        kw.setdefault("compiler", "inductor")
        return partitioner(joint, joint_inputs, **kw)

    backend = aot_autograd(fw_compiler=boxed, bw_compiler=boxed, partition_fn=partition)
    return backend(gm, example_inputs)
