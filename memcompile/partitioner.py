"""MemPartitioner: Inductor's partitioner hook, with the saved set chosen by memcompile's planner.

NOTE on torch internals: we follow ``min_cut_rematerialization_partition`` step for step
(the same graph clean-up, the same node classification and the same extraction of the
forward and backward modules) and replace only its choice of saved values. With no budget
that choice is torch's own, so the result is Inductor's default partition.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import hashlib
import inspect
import itertools
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch._functorch import partitioners as tp
from torch._inductor.custom_graph_pass import get_hash_for_files

try:  # where the hook's base class lives moved between torch releases
    from torch._inductor.custom_graph_pass import CustomPartitionerFn
except ImportError:  # pragma: no cover - older torch
    from torch._inductor.custom_partitioner_fn import CustomPartitionerFn

from memcompile.passes import candidates as cand_mod
from memcompile.passes.costs import DeviceProfile, estimate_costs
from memcompile.passes.lifetimes import analyse, partition_saved
from memcompile.passes.planner.greedy import solve_greedy
from memcompile.passes.planner.ilp import solve_ilp
from memcompile.passes.planner.problem import (
    INPLACE,
    OFFLOAD,
    build_problem,
    evaluate,
    option_indices,
    queued_offload_seconds,
    without_modes,
)
from memcompile.passes.planner.solution import PEAK, TIME, PlanSolution
from memcompile.passes.rewrite._lossy import LOSSY_META
from memcompile.passes.rewrite.fewbit import fewbit_values
from memcompile.passes.rewrite.inplace import output_form_values
from memcompile.passes.rewrite.offload import offload_values
from memcompile.passes.rewrite.quantize import preferred_form, quantize_storages
from memcompile.passes.rewrite.recompute import Extractor, saved_for
from memcompile.passes.simulate import Timeline, simulate_step

from . import __version__
from ._errors import MemoryBudgetError
from .config import MemConfig
from .plan import Plan, TensorDecision

log = logging.getLogger(__name__)

_REPAIR_ROUNDS = 6
# A fraction budget accepts a plan whose simulated peak is this share of the default's peak above its target.
_FRACTION_SLACK = 0.02
_LOWER_PEAK_TIME = 0.08
"""Added time, as a fraction of the forward's compute, that a budgeted plan may spend beyond the
fastest plan meeting the budget to lower its peak further (about 3% of a training step). A fraction
asks for memory at a small cost in time, as torch's does; a byte budget asks for the fastest plan
under a cap, so it only gets back what the solver's 1% gap may have left (``_SOLVER_GAP_TIME``).
Measured through Inductor on llama-small at 0.8 (torch's budget: 188.52 MB): 5% gives 189.57 MB,
7% 185.38, 8% 181.15, 10% 179.09. At 10% a middle fraction of HF BERT found a plan below the
floor plan (1.48 MB at 0.5, 1.61 MB at 0.0): the floor is planned in a model that under-counts
recompute chains, so among the many plans with the floor's model peak the one taken is not
always the lowest simulated; 8% keeps every HF model of tests/integration monotone."""
_SOLVER_GAP_TIME = 0.01


class _StageTimer:
    """Seconds spent per planning stage, for the report and the planning-time benchmark."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._open: tuple[str, float] | None = None

    def start(self, name: str) -> None:
        self.stop()
        self._open = (name, time.perf_counter())

    def stop(self) -> None:
        if self._open is not None:
            name, t0 = self._open
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
            self._open = None

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


def _source_files() -> tuple[str, ...]:
    import memcompile.passes.candidates as c
    import memcompile.passes.costs as co
    import memcompile.passes.lifetimes as li
    import memcompile.passes.offload_cost as oc
    import memcompile.passes.planner.greedy as g
    import memcompile.passes.planner.ilp as il
    import memcompile.passes.planner.problem as pr
    import memcompile.passes.rewrite._lossy as lo
    import memcompile.passes.rewrite.fewbit as fb
    import memcompile.passes.rewrite.inplace as ip
    import memcompile.passes.rewrite.offload as of
    import memcompile.passes.rewrite.quantize as qu
    import memcompile.passes.rewrite.recompute as rc
    import memcompile.passes.simulate as si

    return tuple(m.__file__ for m in (c, co, li, oc, g, il, pr, si, lo, fb, ip, of, qu, rc)) + (__file__,)


class MemPartitioner(CustomPartitionerFn):
    """Partition the joint graph under ``config``; ``on_plan`` receives each graph's Plan."""

    def __init__(
        self, config: MemConfig, *, on_plan: Callable[[Plan], None] | None = None,
        graph_counter: Callable[[], int] | None = None,
    ) -> None:
        self.config = config
        self.on_plan = on_plan
        # One counter across the backend calls of a compile (graph breaks), when the backend gives one.
        self._next_index = graph_counter or itertools.count().__next__

    def uuid(self) -> str:
        # Inductor's cache key: our source, version and every option, so no plan made for
        # other options (or another memcompile) is ever served from the cache.
        digest = hashlib.sha256()
        digest.update(get_hash_for_files(_source_files()))
        digest.update(__version__.encode())
        digest.update(self.config.cache_key().encode())
        digest.update(torch.__version__.encode())
        return digest.hexdigest()

    def __call__(
        self, gm: fx.GraphModule, joint_inputs: Sequence[object], **kwargs: Any
    ) -> tuple[fx.GraphModule, fx.GraphModule]:
        graph_index = self._next_index()
        call_start = time.perf_counter()
        # Planning copies the graph a few times; the cyclic collector's passes over torch's
        # heap cost more than the copies themselves, and nothing we make lives in a cycle
        # that refcounting would not free.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._partition(gm, joint_inputs, graph_index=graph_index, **kwargs)
        except MemoryBudgetError:
            raise
        except Exception as exc:  # noqa: BLE001 - never hand Inductor a graph we are unsure of
            message = (
                f"memcompile: planning graph {graph_index} failed ({type(exc).__name__}: {exc}); "
                "falling back to Inductor's default partition for this graph. "
                "Please report this with the model that triggered it."
            )
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            log.exception("memcompile planning failed")
            kwargs.pop("compiler", None)
            # No copy was taken up front (copying a large joint graph costs as much as planning
            # it): what planning did to ``gm`` is torch's own clean-up (dead code, CSE, recompute
            # tags), which min-cut repeats, and every rewrite works on copies. lint() checks
            # the graph is still well formed before torch partitions it.
            gm.graph.lint()
            fw, bw = tp.min_cut_rematerialization_partition(gm, joint_inputs, compiler="inductor", **kwargs)
            try:  # the report shows the graph too, with why it was not planned
                self._record(self.config, graph_index, fw, bw, fw, bw, kwargs["num_fwd_outputs"], None, None, None,
                             call_start, "fallback", (message,))
            except Exception:  # noqa: BLE001 - a report must never break the compile
                log.exception("memcompile could not record the fallback plan")
            return fw, bw
        finally:
            if gc_was_enabled:
                gc.enable()

    # ------------------------------------------------------------------ pipeline
    def _partition(
        self,
        gm: fx.GraphModule,
        joint_inputs: Sequence[object],
        *,
        graph_index: int,
        num_fwd_outputs: int,
        static_lifetime_input_indices: list[int] | None = None,
        compiler: str = "inductor",
        **_: Any,
    ) -> tuple[fx.GraphModule, fx.GraphModule]:
        start = time.perf_counter()
        cfg = self.config
        stages = _StageTimer()
        with stages("prepare"):
            joint = _prepare_joint(gm)
            node_info = tp.classify_nodes(joint, static_lifetime_input_indices or [], num_fwd_outputs)
        if len(node_info.required_bw_nodes) == 0:
            fw, bw = tp.default_partition(
                joint, joint_inputs, num_fwd_outputs=num_fwd_outputs,
                static_lifetime_input_indices=static_lifetime_input_indices,
            )
            self._record(cfg, graph_index, fw, bw, fw, bw, num_fwd_outputs, None, None, None, start, "default",
                         ("the graph has no backward: nothing to plan",))
            return fw, bw

        with stages("default_partition"):
            _annotate_dist_from_bw(joint, node_info)
            extract = Extractor(joint, node_info, num_fwd_outputs)
            default_saved = tp.choose_saved_values_set(joint.graph, node_info, memory_budget=1.0)
        with stages("extract"):
            fw_def, bw_def = extract(default_saved)
        with stages("simulate"):
            baseline = simulate_step(fw_def, bw_def, num_fwd_outputs=num_fwd_outputs, model=_sim_model(cfg))
        if not cfg.has_budget:
            self._record(cfg, graph_index, fw_def, bw_def, fw_def, bw_def, num_fwd_outputs, None, None, None,
                         start, "default", (), stages=stages)
            return fw_def, bw_def

        stages.start("analyse")
        table = analyse(joint)
        device = _graph_device(joint)
        costs = estimate_costs(joint, table, DeviceProfile.for_device(device), fused=_sim_model(cfg) == "inductor")
        required_fw = {n.name for n in node_info.required_fw_nodes}
        forward_nodes = {
            n.name
            for n in joint.graph.nodes
            if n.op == "call_function"
            and (n.name in required_fw or node_info.is_unclaimed(n))
            and table.tensors[n.name].kind != "symint"
        }
        backward_nodes = {n.name for n in node_info.required_bw_nodes}
        cset = cand_mod.build_candidates(
            joint, table=table, forward_nodes=forward_nodes, backward_nodes=backward_nodes,
            forward_only=required_fw, default_timeline=baseline, costs=costs,
            fused=_sim_model(cfg) == "inductor",
            modes=cfg.modes, offload_device_check=not cfg._force_offload_on_cpu,
        )
        problem = build_problem(cset)
        lossy_options = any(opt.mode != INPLACE for opt in problem.options)  # see solve()
        stages.stop()
        notes: list[str] = _offload_notes(cset)

        def realize(sol: PlanSolution) -> tuple[fx.GraphModule, fx.GraphModule, Timeline]:
            graph, inside = joint, backward_nodes
            if sol.quantize or sol.fewbit or sol.inplace or sol.offload:
                with stages("rewrite"):
                    graph, inside, skipped = _rewrite_lossy(
                        joint, sol, backward_nodes, problem, offload_schedule=cset.offload_schedule,
                        quantize_form=preferred_form(device.type, cfg.inner),
                    )
                notes.extend(
                    f"{name}: derivative not rewritten to read its output ({why}); kept instead" if name in sol.inplace
                    else f"{name} not offloaded ({why}); kept instead" if name in sol.offload
                    else f"{name} not stored lossily ({why}); kept instead"
                    for name, why in skipped
                )
            with stages("extract"):
                saved = saved_for(graph, inside, sol.recompute)
                fw, bw = extract(saved, joint=graph)
            with stages("simulate"):
                tl = simulate_step(fw, bw, num_fwd_outputs=num_fwd_outputs, model=_sim_model(cfg))
            if "built" not in lazy or tl.peak_bytes < lazy["built"][2].peak_bytes:
                lazy["built"] = (fw, bw, tl, sol, sol.solver)
            return fw, bw, tl

        def solve(budget: int | None, objective: str, unkept: frozenset[int] = frozenset(),
                  start: PlanSolution | None = None) -> PlanSolution:
            # With lossy or offload options CBC can take seconds to find a first plan at a budget near
            # the floor (gpt-small, keep + recompute + quantize + fewbit at 0.0: 4.6 s for the time solve
            # at the floor, 0.08 s started from the floor plan, the same plan). Lossless solves (inplace
            # included) are left as they were measured (docs/BENCHMARKS.md); CBC's 1% gap bounds
            # either result the same way.
            start = start if start is not None else lazy.get("sol")
            initial = start if lossy_options and objective == TIME else None
            with stages("solve"):
                sol = solve_ilp(problem, budget_bytes=budget, objective=objective, time_limit_seconds=cfg.solver_time_limit,
                                initial=initial, unkept_storages=unkept)
            if sol.feasible:
                if sol.time_limit_hit:
                    warnings.warn(
                        f"memcompile: the ILP hit solver_time_limit={cfg.solver_time_limit}s on graph {graph_index}; "
                        "using the best plan found so far (raise solver_time_limit for a better one)",
                        RuntimeWarning, stacklevel=3,
                    )
                return sol
            if sol.status.startswith("Infeasible"):
                return sol
            warnings.warn(
                f"memcompile: CBC found no plan within solver_time_limit={cfg.solver_time_limit}s on graph "
                f"{graph_index} (status {sol.status}); using the greedy planner instead",
                RuntimeWarning, stacklevel=3,
            )
            return solve_greedy(problem, budget_bytes=budget, objective=objective)

        def lower_peak_at_same_time(sol: PlanSolution, budget: int, unkept: frozenset[int] = frozenset()) -> PlanSolution:
            """The lowest peak among plans that add at most ``_LOWER_PEAK_TIME`` (fractions) or
            ``_SOLVER_GAP_TIME`` (byte budgets) of the forward's compute time to ``sol``'s.

            The time solve stops at the budget (and at a 1% gap), so its plan leaves undone cheap
            recomputation that lowers the peak further: mostly pointwise values Inductor computes
            inside the backward kernels that read them. A second, peak solve capped at that time
            takes the memory they free; torch's own budget does the same (any budget below 1 first
            recomputes every fusible op).
            """
            share = _LOWER_PEAK_TIME if cfg.budget_fraction is not None else _SOLVER_GAP_TIME
            cap = sol.added_seconds + share * sum(problem.recompute_seconds)
            with stages("solve"):
                lower = solve_ilp(problem, budget_bytes=budget, objective=PEAK,
                                  time_limit_seconds=cfg.solver_time_limit, max_added_seconds=cap, unkept_storages=unkept)
            if lower.feasible and lower.predicted_peak_bytes < sol.predicted_peak_bytes:
                return lower
            return sol

        # The smallest-peak plan is the floor of every budget. It is solved for only when a
        # fraction needs it or a byte budget fails, and extracted only when it is used:
        # extraction is the most expensive step of planning.
        lazy: dict[str, Any] = {}

        def min_solution() -> PlanSolution:
            if "sol" not in lazy:
                lazy["sol"] = solve(None, PEAK)
            return lazy["sol"]

        def floor_bytes() -> int:
            sol = min_solution()
            return min(sol.predicted_peak_bytes, baseline.peak_bytes) if sol.feasible else baseline.peak_bytes

        def minimum() -> tuple:
            if "plan" not in lazy:
                sol = min_solution()
                fw, bw, tl = realize(sol) if sol.feasible else (fw_def, bw_def, baseline)
                if sol.feasible and sol.inplace and tl.peak_bytes > sol.predicted_peak_bytes:
                    # inplace costs nothing, so it must not leave a higher floor than the plan without it:
                    # the model under-counts some recompute chains that keeping an activation's output
                    # (for its output-form derivative) can lead to; realize() keeps the lower of the two
                    with stages("solve"):
                        plain = solve_ilp(without_modes(problem, (INPLACE,)), budget_bytes=None, objective=PEAK,
                                          time_limit_seconds=cfg.solver_time_limit)
                    if plain.feasible:
                        realize(plain)
                lazy.setdefault("built", (fw, bw, tl, sol, sol.solver))
                if lazy["built"][2].peak_bytes < tl.peak_bytes:  # never worse than a plan already built
                    fw, bw, tl, sol, _ = lazy["built"]
                if tl.peak_bytes >= baseline.peak_bytes:
                    notes.append("no plan lowers the peak below Inductor's default partition")
                    lazy["plan"] = (fw_def, bw_def, baseline, None, "default")
                else:
                    lazy["plan"] = (fw, bw, tl, sol, sol.solver)
            return lazy["plan"]

        chosen = None
        first_solution: PlanSolution | None = None
        if cfg.budget_fraction is not None:
            # torch's meaning: keep a fraction f of the activation bytes the default partition
            # saves. Dropping (1 - f) of them lowers the peak by at most that much, so the
            # target is the default's peak less (1 - f) of its saved bytes, never below the
            # smallest reachable peak. It is resolved in the planner's model (monotone in f).
            # The model tracks the simulator closely on most graphs (one solve, one
            # extraction); where it does not, the repair loop below corrects it.
            default_model_bytes = min(_model_peak_of(problem, default_saved, bw_def), baseline.peak_bytes)
            saved_bytes = _saved_activation_bytes(table, default_saved)
            wanted = int(default_model_bytes - (1.0 - cfg.budget_fraction) * saved_bytes)
            slack = int(_FRACTION_SLACK * baseline.peak_bytes)
            target = baseline.peak_bytes
            if cfg.budget_fraction >= 1.0 or wanted >= default_model_bytes:
                chosen = (fw_def, bw_def, baseline, None, "default")
            else:
                # Solve for the wanted peak first; the floor (a second CBC run) tells whether
                # the wanted peak is within the slack of the smallest reachable one.
                probe = None
                if wanted > 0:
                    with stages("solve"):  # no greedy fallback here: an unproven probe just means "solve the floor"
                        probe = solve_ilp(problem, budget_bytes=wanted, objective=TIME,
                                          time_limit_seconds=cfg.solver_time_limit)
                if probe is not None and probe.feasible:
                    if min_solution().feasible and wanted - floor_bytes() <= slack:
                        # Within the accepted slack of the smallest reachable peak: plan for that
                        # peak, as every lower fraction does, so they all get the same plan (and
                        # measured peak), not near-equal plans Inductor may run in either order.
                        target = floor_bytes()
                    else:
                        target, first_solution = wanted, probe
                elif default_model_bytes <= floor_bytes():
                    chosen = (fw_def, bw_def, baseline, None, "default")
                else:
                    target = int(max(floor_bytes(), wanted))
        else:
            target = int(cfg.budget_bytes)
            slack = 0
            if baseline.peak_bytes <= target:
                chosen = (fw_def, bw_def, baseline, None, "default")
        model_budget = target
        unkept: frozenset[int] = frozenset()
        for _ in range(_REPAIR_ROUNDS if chosen is None else 0):
            if unkept:
                # the smallest peak without those storages first: when it meets the budget, the time
                # solve starts from it (lossy problems), else it is the plan
                low = solve(None, PEAK, unkept)
                fits = low.feasible and low.predicted_peak_bytes <= model_budget
                sol = solve(model_budget, TIME, unkept, start=low) if fits else low
            else:
                sol = first_solution if first_solution is not None else solve(model_budget, TIME)
            first_solution = None
            if not sol.feasible:
                break
            sol = lower_peak_at_same_time(sol, max(model_budget, sol.predicted_peak_bytes), unkept)
            fw, bw, tl = realize(sol)
            if tl.peak_bytes <= target + slack:
                chosen = (fw, bw, tl, sol, sol.solver)
                break
            # The model under-estimated this plan's peak: assume it errs as much again, and
            # never loosen, so each round asks for strictly less than the last.
            error = tl.peak_bytes - sol.predicted_peak_bytes
            next_budget = min(model_budget - (tl.peak_bytes - target - slack), target - error)
            notes.append(f"model peak {_fmt(sol.predicted_peak_bytes)} simulated {_fmt(tl.peak_bytes)}; re-solved")
            if unkept or next_budget < floor_bytes():
                more = _kept_at_peak(problem, sol, tl, tl.peak_bytes - target - slack) - unkept
                if not more:
                    break
                unkept |= more
                notes.append("kept at the simulated peak, now not kept: " + ", ".join(
                    problem.names[problem.storage_owner[s]] for s in sorted(more)))
            else:
                model_budget = next_budget
        if chosen is None:
            # The smallest simulated peak among the plans built (realize() keeps it): the
            # model's smallest-peak plan is usually it, but a plan tried on the way can be lower.
            chosen = minimum()
            if chosen[2].peak_bytes > target and cfg.budget_bytes is not None:
                message = (
                    f"memory budget {_fmt(target)} cannot be met on graph {graph_index}: the smallest peak "
                    f"memcompile reaches is {_fmt(chosen[2].peak_bytes)} (Inductor's default partition peaks at "
                    f"{_fmt(baseline.peak_bytes)}, of which {_fmt(baseline.held_bytes)} are the graph's inputs). "
                    + ("Raise the budget to at least that, use a smaller batch, or pass "
                       "on_infeasible='best_effort' to run with the smallest-peak plan." if cfg.on_infeasible == "raise"
                       else "Running with the smallest-peak plan (on_infeasible='best_effort'); to meet the budget, "
                       "raise it to at least that or use a smaller batch.")
                )
                if cfg.on_infeasible == "raise":
                    raise MemoryBudgetError(message, budget_bytes=target, min_peak_bytes=chosen[2].peak_bytes)
                warnings.warn("memcompile: " + message, RuntimeWarning, stacklevel=2)
                notes.append(f"budget {_fmt(target)} not met; smallest-peak plan used")
        if "sol" in lazy:
            extra_min = {"status": lazy["sol"].status, "seconds": lazy["sol"].solve_seconds,
                         "predicted_peak_bytes": lazy["sol"].predicted_peak_bytes}
        else:
            extra_min = None
        if "plan" in lazy:
            min_peak = lazy["plan"][2].peak_bytes
        else:
            min_peak = floor_bytes() if "sol" in lazy else None
        fw, bw, tl, sol, source = chosen
        if sol is not None and sol.offload:
            notes.append(_link_note(problem, sol))
        self._record(cfg, graph_index, fw, bw, fw_def, bw_def, num_fwd_outputs, sol, target,
                     min_peak, start, source, tuple(notes), costs=costs, baseline=baseline, planned=tl,
                     stages=stages, min_solution=extra_min)
        return fw, bw

    def _record(self, cfg, graph_index, fw, bw, fw_def, bw_def, num_fwd_outputs, sol, target, min_peak, start,
                source, notes, *, costs=None, baseline=None, planned=None, stages=None, min_solution=None) -> None:
        if self.on_plan is None:
            return
        record_start = time.perf_counter()
        baseline = baseline or simulate_step(fw_def, bw_def, num_fwd_outputs=num_fwd_outputs, model=_sim_model(cfg))
        planned = planned or simulate_step(fw, bw, num_fwd_outputs=num_fwd_outputs, model=_sim_model(cfg))
        plan = Plan(
            config=cfg,
            graph_index=graph_index,
            budget_bytes=target,
            baseline=baseline,
            planned=planned,
            decisions=_decisions(fw, bw, costs, inplace=sol.inplace if sol is not None else ()),
            solution=sol,
            min_peak_bytes=min_peak,
            planning_seconds=time.perf_counter() - start,
            source=source,
            notes=notes,
            forward_code=fw.code,
            backward_code=bw.code,
            extra={
                "stage_seconds": {**(stages.seconds if stages else {}), "record": time.perf_counter() - record_start},
                **({"min_solution": min_solution} if min_solution else {}),
            },
        )
        self.on_plan(plan)


def _kept_at_peak(problem, sol: PlanSolution, tl: Timeline, excess: int) -> frozenset[int]:
    """Storages ``sol`` keeps that are live at ``tl``'s peak and whose owner may be recomputed, largest
    first (ties by name), until their bytes reach ``excess`` (at least one when there is any).

    NOTE on why: the planner's model under-counts some steps (recompute chains, README "Planner");
    at its floor it cannot ask for less, and among plans it rates equal it takes the fastest, which
    may keep a storage across the step the simulator finds highest. gpt-small at 0.0 through
    Inductor kept every layer's 8 MiB first-MLP output: simulated 81.08 MB, measured 80.04; with
    the largest of them (addmm_10) not kept, 73.68 simulated and 74.75 measured."""
    index = {name: i for i, name in enumerate(problem.names)}
    picked: list[int] = []
    total = 0
    at = tl.peak_index
    for interval in tl.live_at(at):  # largest first
        i = index.get(interval.root)
        if i is None or interval.root not in sol.keep:
            continue
        s = problem.storage_of[i]
        if s < 0 or s in picked or not problem.can_recompute[problem.storage_owner[s]]:
            continue
        picked.append(s)
        total += problem.storage_bytes[s]
        if total >= excess:
            break
    return frozenset(picked)


# ---------------------------------------------------------------------- torch mirror
def _copy_graph(graph: fx.Graph) -> fx.Graph:
    new = fx.Graph()
    value_map: dict[fx.Node, fx.Node] = {}
    out = new.graph_copy(graph, value_map)
    new.output(out)
    return new


def _prepare_joint(joint: fx.GraphModule) -> fx.GraphModule:
    """The clean-up ``min_cut_rematerialization_partition`` does before choosing saved values."""
    joint.graph.eliminate_dead_code()
    joint.recompile()
    if tp.config.cse:
        joint.graph = tp.fx_graph_cse(joint.graph)
    if tp.has_recomputable_ops(joint):
        joint = tp.cleanup_recompute_tags(joint, is_default_partition=False) if "is_default_partition" in inspect.signature(
            tp.cleanup_recompute_tags).parameters else tp.cleanup_recompute_tags(joint)
    if not getattr(tp.config, "unsafe_allow_optimization_of_collectives", False):
        tp.force_save_collectives(joint)
    for name in ("force_save_effectful_ops", "force_save_bw_mutation_src"):
        fn = getattr(tp, name, None)
        if fn is not None:
            fn(joint)
    return joint


def _annotate_dist_from_bw(joint: fx.GraphModule, node_info) -> None:
    """Distance to the backward, which torch's min-cut weights read from each node."""
    for node in reversed(joint.graph.nodes):
        if node.op == "output" or node_info.is_required_fw(node):
            node.dist_from_bw = int(1e9)
            if node.op != "output":
                for user in node.users:
                    node.dist_from_bw = min(node.dist_from_bw, user.dist_from_bw + 1)
        else:
            node.dist_from_bw = 0


def _model_peak_of(problem, saved: Sequence[fx.Node], bw: fx.GraphModule) -> int:
    """The planner model's peak for a partition given by its saved values and backward graph."""
    index = {name: i for i, name in enumerate(problem.names)}
    keep = {index[n.name] for n in saved if n.name in index}
    recompute = {
        index[n.name] for n in bw.graph.nodes if n.op == "call_function" and n.name in index and index[n.name] not in keep
    }
    return evaluate(problem, keep, recompute)[0]


def _sim_model(cfg: MemConfig) -> str:
    """Inductor fuses pointwise values into their readers; eager execution materialises them all."""
    return "eager" if cfg.inner == "eager" else "inductor"


def _saved_activation_bytes(table, saved: Sequence[fx.Node]) -> int:
    """Activation bytes a partition saves, counted as torch's budget counts them.

    torch sizes each saved value on its own (a saved view counts its full size again) and
    leaves graph inputs (parameters, batch) out; we do the same, so a fraction asks for at
    least as much as torch's ``activation_memory_budget`` does.
    """
    total = 0
    for node in saved:
        info = table.tensors.get(node.name)
        if info is None or info.kind != "tensor" or info.producer == "placeholder":
            continue
        total += int(tp._size_of(node)) if hasattr(tp, "_size_of") else table.tensors[info.alias_root].nbytes_hint
    return total


def _rewrite_lossy(
    joint: fx.GraphModule, sol: PlanSolution, backward_nodes: set[str], problem, *, offload_schedule=None,
    quantize_form: str = "kernel",
) -> tuple[fx.GraphModule, set[str], list[tuple[str, str]]]:
    """A copy of the joint graph with the plan's output-form derivatives (inplace), quantized storages,
    few-bit codes and offloaded storages in place, its backward node names, and what could not be
    rewritten (those values are then simply saved). The inplace rewrite goes first: it reads the
    derivatives as traced. Offload goes last, with the placement the planner priced
    (``offload_schedule``, by node name: the other rewrites touch other storages and remove no node)."""
    graph = fx.GraphModule(joint, _copy_graph(joint.graph))
    seconds = {problem.names[opt.candidate]: opt.seconds for opt in problem.options}
    inside = set(backward_nodes)
    skipped: list[tuple[str, str]] = []
    offload = functools.partial(offload_values, schedule=offload_schedule or {})
    # "aten" where it measured faster (quantize.preferred_form: Inductor on CPU and CUDA), else the custom ops
    quantize = quantize_storages if quantize_form == "kernel" else functools.partial(quantize_storages, form=quantize_form)
    # recomputed backward-only values read a quantized input's dequantized copy (problem.quantized_input)
    moved = {problem.names[i] for i, only in enumerate(problem.backward_only) if only} & sol.recompute
    for names, rewrite in ((sol.inplace, output_form_values), (sol.quantize, quantize),
                           (sol.fewbit, fewbit_values), (sol.offload, offload)):
        if names:
            readers = inside | moved if rewrite is quantize else inside
            done = rewrite(graph, sorted(names), backward=readers, seconds=seconds)
            inside |= done.backward_nodes
            skipped.extend(done.skipped)
    return graph, inside, skipped


def _offload_notes(cset) -> list[str]:
    """Why offload was not offered, one note per reason (on CPU: every storage, for one reason)."""
    by_reason: dict[str, list[str]] = {}
    for name, why in cset.offload_skipped:
        by_reason.setdefault(why, []).append(name)
    return [
        f"offload not offered for {len(names)} storage{'s' if len(names) > 1 else ''} "
        f"({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}): {why}"
        for why, names in by_reason.items()
    ]


def _link_note(problem, sol: PlanSolution) -> str:
    """The plan's offload copies priced one at a time (what the ILP charged) and queued on one link."""
    chosen = [o for o in option_indices(problem, sol) if problem.options[o].mode == OFFLOAD]
    alone = sum(problem.options[o].seconds for o in chosen)
    queued = queued_offload_seconds(problem, chosen)
    moved = sum(problem.storage_bytes[problem.options[o].storage] for o in chosen)
    return (f"offload: {len(chosen)} storages, {_fmt(moved)} each way; priced +{alone * 1e3:.3f} ms (each copy "
            f"alone, plus the op overhead); copies queued on one link: {queued * 1e3:.3f} ms exposed (no overhead)")


def _graph_device(gm: fx.GraphModule) -> torch.device:
    for node in gm.graph.nodes:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            return val.device
    return torch.device("cpu")


def _decisions(fw: fx.GraphModule, bw: fx.GraphModule, costs, *, inplace=()) -> tuple[TensorDecision, ...]:
    """One row per saved tensor (keep; quantize and fewbit with their packed bytes; offload with the
    bytes of its host copy), per recomputed tensor, and per ``inplace`` value the forward computes but does not save (its derivative reads
    the activation's output, which has its own keep row)."""
    fw_table = analyse(fw)
    fw_names = set(fw_table.tensors)
    fw_nodes = {n.name: n for n in fw.graph.nodes}
    out = []
    lossy: dict[tuple[str, str], list] = {}
    for name in partition_saved(fw, bw):
        info = fw_table.tensors.get(name)
        if info is None or info.producer == "placeholder" or info.kind != "tensor":
            continue
        tag = fw_nodes[name].meta.get(LOSSY_META) if name in fw_nodes else None
        if tag is not None:  # codes (and scales), or a host copy, standing in for a forward value: one row
            lossy.setdefault((tag["mode"], tag["source"]), [tag, 0])[1] += info.nbytes_hint
            continue
        out.append(_decision(info, "keep", 0.0))
    for (mode, source), (tag, nbytes) in lossy.items():
        info = fw_table.tensors[source]
        out.append(dataclasses.replace(_decision(info, mode, tag["seconds"]), bytes=nbytes))
    bw_table = analyse(bw)
    read_by_backward = set(partition_saved(fw, bw)) | set(bw_table.tensors)
    for name in sorted(inplace):
        info = fw_table.tensors.get(name)
        if info is not None and info.kind == "tensor" and name not in read_by_backward:
            out.append(_decision(info, "inplace", 0.0))
    for name in bw_table.order:
        info = bw_table.tensors[name]
        if info.producer == "placeholder" or info.kind != "tensor":
            continue
        # computed by the forward and again by the backward (a value only the backward needs is moved, not recomputed)
        if name in fw_names and info.side != "backward":
            out.append(_decision(info, "recompute", costs.recompute_seconds(name) if costs is not None else 0.0))
    return tuple(out)


def _decision(info, mode: str, seconds: float) -> TensorDecision:
    shape = tuple(int(d) if not hasattr(d, "free_symbols") or not d.free_symbols else str(d) for d in (info.shape or ()))
    return TensorDecision(
        name=info.name, shape=shape, dtype=str(info.dtype).removeprefix("torch."), bytes=info.nbytes_hint,
        mode=mode, added_seconds=seconds,
    )


def _fmt(nbytes: int | float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(nbytes) >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{int(nbytes)} B"
