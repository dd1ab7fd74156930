"""Report: what memcompile planned for a model, as text, JSON and a memory-timeline plot.

``memcompile.inspect(model, example_inputs, memory_budget=...)`` plans a model without
running a training step and returns a Report; ``memcompile.last_report()`` wraps the plans
of the last compile. A Report holds one Plan per compiled graph (a graph break gives
several) and only reads them: every figure comes from the Plan and its simulated
Timelines (passes/simulate.py), never from a second model of memory.

JSON layout (``Report.to_json()``), stable keys first:

- ``budget_bytes``: the byte budget the plan was held to (a fraction resolved to bytes), or null;
- ``baseline_peak_bytes``: simulated peak of Inductor's default partition;
- ``predicted_peak_bytes``: simulated peak of the plan handed to the compiler;
- ``solver``: ``{"status", "seconds", "objective"}``; status is PuLP's string ("Optimal", ...),
  "Greedy", or the Plan's source ("default") when no solve chose the partition;
- ``tensors``: one ``{"name", "shape", "dtype", "bytes", "mode", "added_seconds"}`` per tensor
  the forward saves ("keep"), the backward rebuilds ("recompute"), stores lossily ("quantize",
  "fewbit": ``bytes`` are the packed bytes), copies to host memory and prefetches ("offload":
  ``bytes`` are the host copy's) or does not need because its derivative reads the
  activation's output or rebuilds it from a norm's output ("inplace"); ``bytes`` is the storage the tensor owns (0 for a view of
  another tensor);
- ``binding_step``: where the predicted peak occurs: ``{"graph", "index", "node", "side",
  "live_bytes", "held_bytes", "live": [{"name", "bytes", "role"}]}``, live storages largest
  first (``held_bytes`` are the graph's inputs, live for the whole step); a live storage is
  named by the node that allocates it, ``bw:name`` for the backward's copy of a recomputed
  value, and its role is "keep", "recompute" or "other" (temporaries, gradients, outputs); what the
  step's op holds only while it runs (a multi-output op's parts, oneDNN scratch) is one more entry,
  role "inside op".

With several graphs the top level describes the whole compile and ``graphs`` lists one
object per graph with the keys above (names unprefixed) plus ``graph_index`` (its position,
in the order the graphs were compiled; also ``binding_step.graph``), ``source``,
``min_peak_bytes``, ``planning_seconds`` and ``notes``. At the top level the two peaks are
the largest over the graphs (each graph is simulated on its own, counting its inputs), the
budget is that of the binding graph (the one with the largest predicted peak), solver seconds and objective are summed, the status is
the graphs' common status (or "graph 0: ...; graph 1: ..." when they differ), and tensor
names carry their graph as ``g1/mm``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .config import MemConfig
from .plan import Plan, TensorDecision

KEEP, RECOMPUTE = "keep", "recompute"
MODES = (KEEP, RECOMPUTE, "quantize", "fewbit", "inplace", "offload")
"""Every mode a TensorDecision may carry, in the order the summary and the plot list them."""
_ROLE_KEEP, _ROLE_RECOMPUTE, _ROLE_OTHER, _ROLE_INSIDE = KEEP, RECOMPUTE, "other", "inside op"
# Colours per mode / role, shared by the timeline's stacked area and the bar of bytes per mode.
_COLOURS = {"held": "#c7c7c7", _ROLE_KEEP: "#1f77b4", _ROLE_RECOMPUTE: "#ff7f0e", _ROLE_OTHER: "#9ecae1",
            "quantize": "#2ca02c", "fewbit": "#9467bd", "inplace": "#8c564b",
            "offload": "#e377c2"}
# What each mode's bytes are, for the summary's totals.
_TOTAL_NOTES = {"quantize": "packed", "fewbit": "packed", "inplace": "not saved: the backward reads the activation's or norm's output",
                "offload": "in host memory between the forward and the backward"}
_SUMMARY_LIVE_ROWS = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveTensor:
    name: str
    bytes: int
    role: str
    """"keep" (a forward storage the backward reads), "recompute" (rebuilt in the backward) or "other"."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BindingStep:
    """The step of the planned timeline where the predicted peak occurs."""

    graph: int
    index: int
    node: str
    side: str
    live_bytes: int
    held_bytes: int
    live: tuple[LiveTensor, ...]
    """Storages live at that step, largest first (the held inputs are not listed)."""


@dataclass(frozen=True, slots=True)
class Report:
    """The plans of one compile (one per graph), read-only."""

    plans: tuple[Plan, ...]

    def __post_init__(self) -> None:
        plans = tuple(self.plans) if isinstance(self.plans, (list, tuple)) else self.plans
        if not isinstance(plans, tuple) or not plans or not all(isinstance(p, Plan) for p in plans):
            raise TypeError(f"Report: expected a non-empty tuple of memcompile.Plan, got {self.plans!r}")
        object.__setattr__(self, "plans", plans)

    # ------------------------------------------------------------------ figures
    @property
    def binding_plan(self) -> Plan:
        """The graph with the largest predicted peak (the first one on ties)."""
        return max(self.plans, key=lambda p: p.predicted_peak_bytes)

    @property
    def baseline_peak_bytes(self) -> int:
        return max(p.baseline_peak_bytes for p in self.plans)

    @property
    def predicted_peak_bytes(self) -> int:
        return self.binding_plan.predicted_peak_bytes

    @property
    def budget_bytes(self) -> int | None:
        return self.binding_plan.budget_bytes

    def graph_number(self, plan: Plan) -> int:
        """Position of ``plan`` in this report: the graph's number in the JSON, the text and the plot.

        (``Plan.graph_index`` counts graphs per partitioner, and dynamo gives every graph of a graph
        break its own backend call, so it is 0 for each of them.)
        """
        return next(i for i, p in enumerate(self.plans) if p is plan)

    def binding_step(self, plan: Plan | None = None) -> BindingStep:
        """Where ``plan``'s (default: the binding graph's) predicted peak occurs and what is live there."""
        plan = plan or self.binding_plan
        timeline = plan.planned
        index = timeline.peak_index
        roles = _roles(plan)
        live = tuple(
            LiveTensor(name=iv.root, bytes=iv.nbytes, role=roles.get(iv.root, _ROLE_OTHER))
            for iv in timeline.live_at(index)
        )
        inside = timeline.peak_bytes - timeline.held_bytes - sum(t.bytes for t in live) if timeline.steps else 0
        if inside > 0:  # a multi-output op's parts and an op's scratch, held while it runs (simulate.py)
            extra = LiveTensor(name=f"{timeline.steps[index]} (inside the op)", bytes=inside, role=_ROLE_INSIDE)
            live = tuple(sorted((*live, extra), key=lambda t: -t.bytes))  # largest first, as live_at
        return BindingStep(
            graph=self.graph_number(plan),
            index=index,
            node=timeline.steps[index] if timeline.steps else "",
            side=timeline.sides[index] if timeline.sides else "",
            live_bytes=timeline.peak_bytes,
            held_bytes=timeline.held_bytes,
            live=live,
        )

    # ------------------------------------------------------------------ JSON
    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with the stable keys documented in this module's docstring."""
        if len(self.plans) == 1:
            return self._graph_json(self.plans[0], detailed=False)
        graphs = [self._graph_json(p, detailed=True) for p in self.plans]
        statuses = [g["solver"]["status"] for g in graphs]
        status = statuses[0] if len(set(statuses)) == 1 else "; ".join(
            f"graph {position}: {s}" for position, s in enumerate(statuses)
        )
        return {
            "budget_bytes": self.budget_bytes,
            "baseline_peak_bytes": self.baseline_peak_bytes,
            "predicted_peak_bytes": self.predicted_peak_bytes,
            "solver": {
                "status": status,
                "seconds": sum(g["solver"]["seconds"] for g in graphs),
                "objective": _finite(sum(_nan_to_zero(g["solver"]["objective"]) for g in graphs)),
            },
            "tensors": [
                {**t, "name": f"g{position}/{t['name']}"}
                for position, g in enumerate(graphs)
                for t in g["tensors"]
            ],
            "binding_step": _binding_json(self.binding_step()),
            "graphs": graphs,
        }

    def write_json(self, path: str | os.PathLike) -> str:
        path = os.fspath(path)
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=2)
            f.write("\n")
        return path

    def write(self, directory: str | os.PathLike, *, stem: str = "memcompile_report", plot: bool | None = None) -> tuple[str, ...]:
        """Write ``stem.json`` and ``stem.png`` into ``directory`` (created if missing); return the paths.

        ``plot=None`` writes the PNG only when matplotlib is installed; ``True`` requires it.
        """
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        paths = [self.write_json(os.path.join(directory, f"{stem}.json"))]
        if plot is None:
            try:
                _matplotlib_figure()
            except ImportError:
                plot = False
        if plot is not False:
            paths.append(self.plot(os.path.join(directory, f"{stem}.png")))
        return tuple(paths)

    def _graph_json(self, plan: Plan, *, detailed: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "budget_bytes": plan.budget_bytes,
            "baseline_peak_bytes": plan.baseline_peak_bytes,
            "predicted_peak_bytes": plan.predicted_peak_bytes,
            "solver": _solver_json(plan),
            "tensors": [_tensor_json(d) for d in plan.decisions],
            "binding_step": _binding_json(self.binding_step(plan)),
        }
        if detailed:
            out.update(
                graph_index=self.graph_number(plan),
                source=plan.source,
                min_peak_bytes=plan.min_peak_bytes,
                planning_seconds=plan.planning_seconds,
                notes=list(plan.notes),
            )
        return out

    # ------------------------------------------------------------------ text
    def summary(self, *, all_tensors: bool = False) -> str:
        """A table per graph: one row per saved or recomputed tensor, then totals, peaks, solver and
        binding step. Views (0 bytes of their own) are counted but listed only with ``all_tensors``."""
        return "\n\n".join(self._graph_summary(p, all_tensors=all_tensors) for p in self.plans)

    def _graph_summary(self, plan: Plan, *, all_tensors: bool) -> str:
        lines = [f"graph {self.graph_number(plan)}: {_describe_source(plan)}, planned in {plan.planning_seconds:.2f} s"]
        rows = sorted(plan.decisions, key=lambda d: (d.mode != KEEP, d.mode, -d.bytes, d.name))
        shown = [d for d in rows if all_tensors or d.bytes > 0]
        name_w = max([len("name"), *(len(d.name) for d in shown)])
        shape_w = max([len("shape"), *(len(_shape(d)) for d in shown)])
        lines.append(
            f"  {'name':<{name_w}}  {'shape':<{shape_w}}  {'dtype':<9} {'bytes':>11}  {'mode':<9} {'added ms':>9}"
        )
        for d in shown:
            lines.append(
                f"  {d.name:<{name_w}}  {_shape(d):<{shape_w}}  {d.dtype:<9} {_fmt_bytes(d.bytes):>11}  "
                f"{d.mode:<9} {d.added_seconds * 1e3:>9.4f}"
            )
        hidden = len(rows) - len(shown)
        if hidden:
            lines.append(f"  ({hidden} views of other tensors, 0 bytes of their own, not listed)")
        for mode in _modes_of(plan):
            chosen = [d for d in plan.decisions if d.mode == mode]
            owning = sum(d.bytes > 0 for d in chosen)
            added = sum(d.added_seconds for d in chosen)
            lines.append(
                f"{mode:<9} {owning:>4} tensors {_fmt_bytes(sum(d.bytes for d in chosen)):>11}"
                + (f" ({_TOTAL_NOTES[mode]})" if mode in _TOTAL_NOTES else "")
                + (f" (+{len(chosen) - owning} views)" if len(chosen) > owning else "")
                + (f", +{added * 1e3:.4f} ms predicted" if mode not in (KEEP, "inplace") else "")
            )
            if mode == "inplace":  # the tensors freed this way, by name (an activation's input, a norm's input or x_hat)
                lines.append("  freed (rebuilt from an output the backward reads anyway): "
                             + ", ".join(sorted(d.name for d in chosen)))
        budget = "none" if plan.budget_bytes is None else _fmt_bytes(plan.budget_bytes)
        if plan.budget_bytes is not None and plan.config.budget_fraction is not None:
            budget += f" (fraction {plan.config.budget_fraction:g})"
        change = plan.predicted_peak_bytes / plan.baseline_peak_bytes - 1 if plan.baseline_peak_bytes else 0.0
        lines.append(
            f"peak: default partition {_fmt_bytes(plan.baseline_peak_bytes)}, predicted "
            f"{_fmt_bytes(plan.predicted_peak_bytes)} ({change:+.1%}), budget {budget}"
            + (f", smallest reachable {_fmt_bytes(plan.min_peak_bytes)}" if plan.min_peak_bytes is not None else "")
        )
        if plan.budget_bytes is not None and plan.predicted_peak_bytes > plan.budget_bytes:
            lines.append(f"  the predicted peak is {_fmt_bytes(plan.predicted_peak_bytes - plan.budget_bytes)} over the budget")
        solver = _solver_json(plan)
        if plan.solution is None:
            lines.append(f"solver: no solve chose this partition (status {solver['status']!r})")
        else:
            objective = "n/a" if solver["objective"] is None else f"{solver['objective']:.4g}"
            lines.append(f"solver: {solver['status']} in {solver['seconds']:.3f} s, objective {objective}")
        step = self.binding_step(plan)
        lines.append(
            f"binding step: #{step.index} {step.node} ({step.side}), {_fmt_bytes(step.live_bytes)} live = "
            f"{_fmt_bytes(step.held_bytes)} inputs + {len(step.live)} tensors:"
        )
        live_w = max([name_w, *(len(t.name) for t in step.live[:_SUMMARY_LIVE_ROWS])])
        for t in step.live[:_SUMMARY_LIVE_ROWS]:
            lines.append(f"  {t.name:<{live_w}}  {_fmt_bytes(t.bytes):>11}  {t.role}")
        rest = step.live[_SUMMARY_LIVE_ROWS:]
        if rest:
            lines.append(f"  ... {len(rest)} more, {_fmt_bytes(sum(t.bytes for t in rest))}")
        lines.extend(f"note: {note}" for note in plan.notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    # ------------------------------------------------------------------ plot
    def plot(self, path: str | os.PathLike) -> str:
        """Save a PNG: live bytes over the step, default partition vs plan, one panel per graph, then
        the bytes of saved tensors per mode. Needs matplotlib (``pip install memcompile[plot]``)."""
        Figure = _matplotlib_figure()
        path = os.fspath(path)
        n = len(self.plans)
        fig = Figure(figsize=(10, 3.6 * n + 1.4 + 0.35 * n), layout="constrained")
        axes = fig.subplots(n + 1, 1, height_ratios=[3.6] * n + [1.4 + 0.35 * n], squeeze=False)[:, 0]
        for number, (ax, plan) in enumerate(zip(axes, self.plans)):
            self._plot_timeline(ax, plan, title_prefix=f"graph {number}: " if n > 1 else "")
        _plot_modes(axes[-1], self.plans)
        fig.savefig(path, dpi=110)
        return path

    def _plot_timeline(self, ax, plan: Plan, *, title_prefix: str) -> None:
        planned, baseline = plan.planned, plan.baseline
        top_bytes = max(planned.peak_bytes, baseline.peak_bytes, plan.budget_bytes or 0)
        unit, scale = _unit_for(top_bytes)
        roles = _roles(plan)
        steps = len(planned.live_bytes)
        layers = {role: [0] * (steps + 1) for role in (_ROLE_KEEP, _ROLE_RECOMPUTE, _ROLE_OTHER)}
        for iv in planned.intervals:
            delta = layers[roles.get(iv.root, _ROLE_OTHER)]
            delta[iv.alloc_step] += iv.nbytes
            delta[iv.free_step + 1] -= iv.nbytes
        stacks = [[planned.held_bytes / scale] * steps]
        labels = [f"inputs held ({_fmt_bytes(planned.held_bytes)})"]
        for role, label in (
            (_ROLE_KEEP, "kept from the forward"),
            (_ROLE_RECOMPUTE, "recomputed in the backward"),
            (_ROLE_OTHER, "other (temporaries, gradients)"),
        ):
            running, series = 0, []
            for d in layers[role][:steps]:
                running += d
                series.append(running / scale)
            stacks.append(series)
            labels.append(label)
        x = range(steps)
        colours = [_COLOURS["held"], _COLOURS[_ROLE_KEEP], _COLOURS[_ROLE_RECOMPUTE], _COLOURS[_ROLE_OTHER]]
        ax.stackplot(x, *stacks, labels=labels, colors=colours, alpha=0.85, step="post")
        ax.step(range(len(baseline.live_bytes)), [b / scale for b in baseline.live_bytes], where="post",
                color="#555555", linestyle="--", linewidth=1.0,
                label=f"default partition, peak {_fmt_bytes(baseline.peak_bytes)}")
        ax.step(x, [b / scale for b in planned.live_bytes], where="post", color="black", linewidth=1.2,
                label=f"plan, peak {_fmt_bytes(planned.peak_bytes)}")
        if plan.budget_bytes is not None:
            ax.axhline(plan.budget_bytes / scale, color="#d62728", linestyle="-.", linewidth=1.2,
                       label=f"budget {_fmt_bytes(plan.budget_bytes)}")
        ax.axvline(planned.backward_start - 0.5, color="black", linestyle=":", linewidth=1.0)
        top_of_axes = ax.get_xaxis_transform()  # x in data, y in axes fraction
        ax.text(planned.backward_start, 0.98, " backward \u2192", transform=top_of_axes, va="top", ha="left",
                fontsize=8)
        ax.text(planned.backward_start - 1, 0.98, "\u2190 forward ", transform=top_of_axes, va="top", ha="right",
                fontsize=8)
        step = self.binding_step(plan)
        ax.plot([step.index], [step.live_bytes / scale], marker="v", color="#d62728", markersize=7, linestyle="none")
        ax.annotate(f"peak: {step.node} ({step.side})", (step.index, step.live_bytes / scale),
                    xytext=(0, 10), textcoords="offset points", ha="center", fontsize=8, color="#d62728",
                    bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})
        ax.set_ylim(0, top_bytes / scale * 1.18)
        ax.set_xlim(0, max(steps, len(baseline.live_bytes)))
        ax.set_xlabel("step (graph node in execution order)")
        ax.set_ylabel(f"live {unit}")
        ax.set_title(f"{title_prefix}live memory over one training step ({_describe_source(plan)})", fontsize=10)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)


def inspect(
    model: Any, example_inputs: Sequence[Any], memory_budget: float | int | str | None = None, **options: Any
) -> Report:
    """Plan ``model``'s training step without running one, and return the Report.

    The forward runs once with grad enabled (AOT autograd needs the joint graph) through the
    memcompile backend with ``inner="eager"`` unless given; its output is discarded and no
    backward runs, so no gradient changes. ``options`` are the backend's options. With
    ``inner="inductor"`` its caches are bypassed for this compile: a cache hit would plan nothing.
    """
    import torch

    from ._errors import MemcompileError, MemoryBudgetError
    from .backend import _collect_plans

    if not isinstance(example_inputs, (tuple, list)):
        raise TypeError(f"example_inputs: expected a tuple or list of the model's inputs, got {type(example_inputs).__name__}")
    options = {"inner": "eager", **options, "memory_budget": memory_budget}
    config = MemConfig.from_options(options)  # bad options raise here, not wrapped by dynamo
    compiled = torch.compile(model, backend="memcompile", options=options)
    caught: list[warnings.WarningMessage] = []
    try:
        with _collect_plans() as plans, plans_not_cached(config), torch.enable_grad(), \
                warnings.catch_warnings(record=True) as recorded:
            try:
                compiled(*example_inputs)
            except torch._dynamo.exc.BackendCompilerFailed as exc:
                if isinstance(exc.inner_exception, MemoryBudgetError):
                    raise exc.inner_exception from exc
                raise
            finally:
                caught = list(recorded)
    finally:
        for w in caught:  # recorded to explain a missing plan; shown as usual
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if not plans:
        failures = [str(w.message) for w in caught if "planning graph" in str(w.message)]
        reason = (
            failures[0] if failures else
            "nothing in the forward requires grad (set requires_grad on a parameter or input), or "
            "torch.compile reused an earlier compile of this model (call torch._dynamo.reset() first)"
        )
        raise MemcompileError(f"inspect: no graph was planned: {reason}")
    return Report(tuple(plans))


@contextlib.contextmanager
def plans_not_cached(config: MemConfig) -> Iterator[None]:
    """Bypass the compile caches that would skip the partitioner (and so record no plan).

    Only Inductor caches a partition (its FX graph cache and AOT autograd's cache); the eager inner
    compiler never does, so nothing is patched then. Patched for this block only.
    """
    if config.inner != "inductor":
        yield
        return
    import torch._functorch.config
    import torch._inductor.config

    with torch._inductor.config.patch(fx_graph_cache=False), torch._functorch.config.patch(enable_autograd_cache=False):
        yield


def last_report() -> Report:
    """A Report of the plans recorded since the last ``clear_plans()`` (see ``last_plans()``)."""
    from .backend import last_plans

    plans = last_plans()
    if not plans:
        raise LookupError(
            "last_report: no plan recorded yet; compile and run a model with backend='memcompile' first "
            "(an Inductor cache hit plans nothing, so none is recorded then)"
        )
    return Report(plans)


# ---------------------------------------------------------------------- helpers
def _roles(plan: Plan) -> dict[str, str]:
    """Storage root -> role ("keep", "recompute" or "other") for every interval of the planned timeline.

    keep: a forward storage the backward reads: a kept tensor, or the base of a kept view (still live
    when the backward starts and freed before the end; the forward's outputs, such as the loss, live
    to the end). recompute: a backward storage of a value the plan recomputes (the simulator keys it
    "bw:name", or "name" when the forward owns no storage of that name).
    """
    timeline = plan.planned
    end = len(timeline.steps) - 1
    kept = {d.name for d in plan.decisions if d.mode == KEEP}
    recomputed = {d.name for d in plan.decisions if d.mode == RECOMPUTE}
    roles: dict[str, str] = {}
    for iv in timeline.intervals:
        if iv.alloc_step >= timeline.backward_start:
            recomputed_here = iv.root.removeprefix("bw:") in recomputed
            roles[iv.root] = _ROLE_RECOMPUTE if recomputed_here else _ROLE_OTHER
        elif iv.root in kept or timeline.backward_start <= iv.free_step < end:
            roles[iv.root] = _ROLE_KEEP
        else:
            roles[iv.root] = _ROLE_OTHER
    return roles


def _modes_of(plan: Plan) -> list[str]:
    """keep and recompute always, then every other mode the plan uses (MODES order, unknown ones last)."""
    used = {d.mode for d in plan.decisions}
    return [m for m in MODES if m in (KEEP, RECOMPUTE) or m in used] + sorted(used - set(MODES))


def _solver_json(plan: Plan) -> dict[str, Any]:
    sol = plan.solution
    if sol is None:
        return {"status": plan.source, "seconds": 0.0, "objective": None}
    return {"status": sol.status, "seconds": sol.solve_seconds, "objective": _finite(sol.objective)}


def _tensor_json(d: TensorDecision) -> dict[str, Any]:
    return {
        "name": d.name,
        "shape": list(d.shape),
        "dtype": d.dtype,
        "bytes": d.bytes,
        "mode": d.mode,
        "added_seconds": d.added_seconds,
    }


def _binding_json(step: BindingStep) -> dict[str, Any]:
    return {
        "graph": step.graph,
        "index": step.index,
        "node": step.node,
        "side": step.side,
        "live_bytes": step.live_bytes,
        "held_bytes": step.held_bytes,
        "live": [{"name": t.name, "bytes": t.bytes, "role": t.role} for t in step.live],
    }


def _plot_modes(ax, plans: Iterable[Plan]) -> None:
    plans = list(plans)
    labels = [f"graph {number}" for number in range(len(plans))]
    unit, scale = _unit_for(max(sum(d.bytes for d in p.decisions) for p in plans))
    left = [0.0] * len(plans)
    modes = [m for m in MODES if any(d.mode == m for p in plans for d in p.decisions)] or [KEEP, RECOMPUTE]
    for mode in modes:
        widths = [sum(d.bytes for d in p.decisions if d.mode == mode) / scale for p in plans]
        counts = [sum(d.mode == mode and d.bytes > 0 for d in p.decisions) for p in plans]
        bars = ax.barh(labels, widths, left=left, color=_COLOURS.get(mode, _COLOURS[_ROLE_OTHER]), label=mode)
        for bar, count, width in zip(bars, counts, widths):
            if width > 0:
                ax.text(bar.get_x() + width / 2, bar.get_y() + bar.get_height() / 2, f"{count} tensors",
                        ha="center", va="center", fontsize=7)
        left = [a + b for a, b in zip(left, widths)]
    ax.set_xlabel(f"{unit} of tensors the backward reads from the forward, by mode")
    ax.set_title("bytes per mode (recompute, inplace: not stored; quantize, fewbit: packed bytes)", fontsize=10)
    ax.invert_yaxis()
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)


def _matplotlib_figure():
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("Report.plot needs matplotlib: pip install memcompile[plot]") from exc
    # A bare Figure renders with the Agg canvas on savefig; pyplot and its global backend stay untouched.
    return Figure


def _describe_source(plan: Plan) -> str:
    return {
        "default": "Inductor's default partition",
        "ilp": "ILP plan",
        "ilp+local": "ILP plan, improved against the exact memory account",
        "all-recompute": "the plan that recomputes all it can (no move of the local search lowered it)",
        "all-recompute+local": "the plan that recomputes all it can, improved against the exact memory account",
        "greedy": "greedy plan",
        "fallback": "fallback to the default partition",
        "torch": "torch's own partition at this activation_memory_budget (it ran lower than memcompile's plans)",
    }.get(plan.source, plan.source)


def _shape(d: TensorDecision) -> str:
    return "(" + ", ".join(str(s) for s in d.shape) + ("," if len(d.shape) == 1 else "") + ")"


def _fmt_bytes(nbytes: int | float | None) -> str:
    if nbytes is None:
        return "n/a"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{int(nbytes)} B"


def _unit_for(nbytes: int) -> tuple[str, float]:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return unit, float(scale)
    return "B", 1.0


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _nan_to_zero(x: float | None) -> float:
    return 0.0 if x is None else x

