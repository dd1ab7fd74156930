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
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx
from torch._functorch import partitioners as tp
from torch._inductor.custom_graph_pass import get_hash_for_files
from torch.fx._lazy_graph_module import _LazyGraphModule
from torch.utils._ordered_set import OrderedSet

try:  # where the hook's base class lives moved between torch releases
    from torch._inductor.custom_graph_pass import CustomPartitionerFn
except ImportError:  # pragma: no cover - older torch
    from torch._inductor.custom_partitioner_fn import CustomPartitionerFn

from memcompile.passes import candidates as cand_mod
from memcompile.passes.costs import DeviceProfile, estimate_costs, forward_output_strides, layout_switch_bytes
from memcompile.passes.lifetimes import analyse, partition_saved
from memcompile.passes.planner import tuning
from memcompile.passes.planner.chains import ChainCache, account_peak, solve_with_chains
from memcompile.passes.planner.ilp import build_memory_rows, solve_ilp
from memcompile.passes.planner.problem import (
    INPLACE,
    OFFLOAD,
    PlanProblem,
    build_problem,
    evaluate,
    option_indices,
    queued_offload_seconds,
)
from memcompile.passes.planner.search import SearchInputs, Verified, decomposes, reference_fractions, search
from memcompile.passes.planner.solution import PlanSolution
from memcompile.passes.repeats import structural_colours
from memcompile.passes.rewrite._lossy import LOSSY_META
from memcompile.passes.rewrite.fewbit import fewbit_values
from memcompile.passes.rewrite.inplace import output_form_values
from memcompile.passes.rewrite.offload import offload_values
from memcompile.passes.rewrite.quantize import preferred_form, quantize_storages
from memcompile.passes.rewrite.recompute import Extractor, saved_for
from memcompile.passes.simulate import fused_values, simulate_step

from . import __version__
from ._errors import MemoryBudgetError
from ._references import References
from .config import MemConfig
from .plan import Plan, TensorDecision

log = logging.getLogger(__name__)

REFERENCES_AHEAD = True
"""Build torch's plans at a fraction (and at the anchor below it) on a worker thread while the search's first solves
run (_references.py). Off only to check, in tests, that building them ahead changes no plan."""

class _StageTimer:
    """Seconds spent per planning stage, for the report and the planning-time benchmark."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        """How many times each stage was entered (solves, extractions, ...)."""
        self._open: tuple[str, float] | None = None
        self._lock = threading.Lock()  # stages run on the references' worker and on a solve ahead too

    def start(self, name: str) -> None:
        self.stop()
        self._open = (name, self._enter(name))

    def stop(self) -> None:
        if self._open is not None:
            self._leave(*self._open)
            self._open = None

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = self._enter(name)
        try:
            yield
        finally:
            self._leave(name, t0)

    def _enter(self, name: str) -> float:
        with self._lock:
            self.counts[name] = self.counts.get(name, 0) + 1
        return time.perf_counter()

    def _leave(self, name: str, t0: float) -> None:
        with self._lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


def _source_files() -> tuple[str, ...]:
    """Every source file a plan depends on: all of memcompile.passes (analysis, planner, rewrites) and
    memcompile.kernels (the sizes the planner reads, the ops and decomposed forms the rewrites write), this adapter
    and the references' builder: whole packages, so that no module a plan reads is ever left out of the key."""
    import pathlib

    import memcompile.kernels as kernels
    import memcompile.passes as passes

    from . import _references

    found = sorted(str(p) for pkg in (passes, kernels) for p in pathlib.Path(pkg.__file__).parent.rglob("*.py"))
    return (*found, _references.__file__, __file__)


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
        except Exception as exc:
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
            except Exception:
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
            min_cuts: dict = {}  # torch's min-cuts of this graph, shared by its choose_saved_values_set calls
            with _shared_min_cuts(min_cuts):
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
            layout_switch=(layout_switch_bytes(fw_def, bw_def, forward_output_strides(fw_def))
                           if _sim_model(cfg) == "inductor" else None),
        )
        problem = build_problem(cset)
        if _sim_model(cfg) == "inductor":
            away, inlined = fused_values(table)
            index = {name: i for i, name in enumerate(problem.names)}
            problem = dataclasses.replace(problem, fused=frozenset(index[n] for n in away if n in index),
                                          inlined=frozenset(index[n] for n in inlined if n in index))
        stages.stop()
        colours = None
        if decomposes(problem):
            with stages("repeats"):
                colours = structural_colours(joint.graph)
        notes: list[str] = _offload_notes(cset)

        def realize(sol: PlanSolution) -> Verified:
            torch_reference.settle()  # torch's plans built ahead: never beside this thread's own torch work
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
            return Verified(solution=sol, timeline=tl, source=sol.solver, artifact=(fw, bw))

        def build_reference(fraction: float) -> Verified | None:
            """torch's own partition at ``fraction`` (its activation_memory_budget), built and simulated (the
            search's ``reference``: a fraction's plan never runs above it); None where it is the default."""
            ref = None
            with stages("reference"):
                try:
                    with _shared_min_cuts(min_cuts):
                        saved = tp.choose_saved_values_set(joint.graph, node_info, memory_budget=fraction)
                    if {n.name for n in saved} != {n.name for n in default_saved}:
                        fw_ref, bw_ref = extract(saved)
                        unsafe = _unsafe_recompute(bw_ref, forward_nodes)
                        if unsafe:  # a random op rebuilt in the backward draws another sample: never run it
                            notes.append(f"torch's partition at activation_memory_budget={fraction} recomputes "
                                         f"{unsafe}, a random op; the plan is not compared with it")
                            raise _NoReference
                        tl = simulate_step(fw_ref, bw_ref, num_fwd_outputs=num_fwd_outputs, model=_sim_model(cfg))
                        ref = Verified(solution=None, timeline=tl, source="torch", artifact=(fw_ref, bw_ref),
                                       added_seconds=_recompute_seconds(problem, bw_ref))
                except _NoReference:
                    ref = None
                except Exception as exc:  # a bound only: the plan stands without it, and says so
                    log.debug("torch's partition at %s failed", fraction, exc_info=True)
                    notes.append(f"torch's partition at activation_memory_budget={fraction} could not be built "
                                 f"({type(exc).__name__}: {exc}); the plan is not compared with it")
            return ref

        torch_reference = References(build_reference, on_wait=lambda: stages("reference wait"))

        memory_rows = []  # the problem's memory constraints, written for its first solve and reused

        def new_solve() -> Callable[..., PlanSolution]:
            """A solve that learns the recompute chains its solves find (per problem solved) and has
            learnt none yet; the search asks for a second one (``search``'s ``fresh_solve``)."""
            chain_caches: dict[int, tuple] = {}

            def timed_solve(*args, chain_rounds: int | None = None, **kwargs) -> PlanSolution:
                with stages("solve"):
                    if args and args[0] is problem:
                        if not memory_rows:
                            memory_rows.append(build_memory_rows(problem))
                        kwargs.setdefault("memory_rows", memory_rows[0])
                    if tuning.CHAIN_ROUNDS:
                        cache = chain_caches.setdefault(id(args[0]), (args[0], ChainCache({}, [])))[1]
                        rounds = tuning.CHAIN_ROUNDS if chain_rounds is None else chain_rounds
                        return solve_with_chains(solve_ilp, *args, rounds=rounds, cache=cache, **kwargs)
                    return solve_ilp(*args, **kwargs)

            return timed_solve

        with stages("analyse"):
            # a byte budget needs it too: its smallest-peak search is a fraction's (search's fresh_solve)
            default_model_bytes = min(_model_peak_of(problem, default_saved, bw_def), baseline.peak_bytes)
            inputs = SearchInputs(
                problem=problem,
                default=Verified(solution=None, timeline=baseline, source="default", artifact=(fw_def, bw_def)),
                default_model_peak_bytes=default_model_bytes,
                default_saved_bytes=_saved_activation_bytes(table, default_saved),
                budget_fraction=cfg.budget_fraction,
                budget_bytes=None if cfg.budget_fraction is not None else int(cfg.budget_bytes),
                time_limit_seconds=cfg.solver_time_limit,
                node_limit=tuning.SOLVE_NODES,
                # see SearchInputs: with recompute chains' rows (tuning.CHAIN_ROUNDS) lossless problems too
                warm_start_time_solves=bool(tuning.CHAIN_ROUNDS) or any(opt.mode != INPLACE for opt in problem.options),
                label=f"graph {graph_index}",
                colours=colours,
                # torch's plan recomputes: offered only where the user's modes allow recompute; a byte
                # budget's smallest-peak search (a fraction of 0.0's) reads it
                reference=(torch_reference if (cfg.budget_fraction is None or cfg.budget_fraction < 1.0)
                           and "recompute" in cfg.modes else None),
                account=functools.partial(account_peak, problem) if tuning.CHAIN_ROUNDS else None,
            )
        if REFERENCES_AHEAD and inputs.reference is not None and cfg.budget_fraction is not None:
            # the fraction's search asks for these before it verifies a plan; built while its first solves run
            torch_reference.ahead(reference_fractions(cfg.budget_fraction))
        try:
            result = search(inputs, verify=realize, solve=new_solve(), fresh_solve=new_solve)
        finally:
            torch_reference.settle()
        stages.seconds["local"] = result.local_seconds
        notes.extend(result.notes)
        chosen, target = result.chosen, result.target_bytes
        if not result.budget_met and cfg.budget_bytes is not None:
            # a refusal names the peak memory_budget=0.0 runs: every budget at or above it is met; the
            # best-effort plan is the lowest the search built, which may run lower still
            reachable = result.reachable_bytes if result.reachable_bytes is not None else chosen.peak_bytes
            message = (
                f"memory budget {_fmt(target)} cannot be met on graph {graph_index}: the smallest peak "
                f"memcompile reaches is {_fmt(reachable)}, what memory_budget=0.0 runs (Inductor's default "
                f"partition peaks at {_fmt(baseline.peak_bytes)}, of which {_fmt(baseline.held_bytes)} are the "
                "graph's inputs). "
                + ("Raise the budget to at least that, use a smaller batch, or pass "
                   "on_infeasible='best_effort' to run with the smallest-peak plan." if cfg.on_infeasible == "raise"
                   else f"Running with the smallest-peak plan built ({_fmt(chosen.peak_bytes)}, "
                   "on_infeasible='best_effort'); to meet the budget, raise it to at least that or use a "
                   "smaller batch.")
            )
            if cfg.on_infeasible == "raise":
                raise MemoryBudgetError(message, budget_bytes=target, min_peak_bytes=reachable)
            warnings.warn("memcompile: " + message, RuntimeWarning, stacklevel=2)
            notes.append(f"budget {_fmt(target)} not met; smallest-peak plan used")
        floor = result.floor_solution
        extra_min = (None if floor is None else
                     {"status": floor.status, "seconds": floor.solve_seconds, "predicted_peak_bytes": floor.predicted_peak_bytes})
        fw, bw = chosen.artifact
        sol = chosen.solution
        if sol is not None and sol.offload:
            notes.append(_link_note(problem, sol))
        self._record(cfg, graph_index, fw, bw, fw_def, bw_def, num_fwd_outputs, sol, target,
                     result.min_peak_bytes, start, chosen.source, tuple(notes), costs=costs, baseline=baseline,
                     planned=chosen.timeline, stages=stages, min_solution=extra_min)
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
                "stage_counts": dict(stages.counts) if stages else {},
                **({"min_solution": min_solution} if min_solution else {}),
            },
        )
        self.on_plan(plan)


# ---------------------------------------------------------------------- torch mirror
def _copy_graph(graph: fx.Graph) -> fx.Graph:
    """A copy of ``graph`` with its output node's meta: AOT autograd describes each output there (``desc``), and
    lifetimes.mutated_inputs reads which inputs the forward mutates from it (without it, no value that reads a
    graph input may be recomputed)."""
    new = fx.Graph()
    # as fx.Graph.__deepcopy__ does: graph_copy hands back the output node it stopped at
    out, old_output = new.graph_copy(graph, {}, return_output_node=True)
    new.output(out).meta.update(old_output.meta)
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


@contextlib.contextmanager
def _shared_min_cuts(cache: dict):
    """``tp.solve_min_cut`` answered from ``cache`` (one joint graph's) while the block runs.

    ``choose_saved_values_set`` below a budget of 1.0 solves three min-cuts that do not depend on the budget
    (its default options, then two more aggressive ones) before the knapsack and a last cut; the default
    partition and each torch reference of one graph (two below ``tuning.MONOTONE_ANCHOR``) would solve them
    again. A min-cut reads the graph and writes nothing to it, so the answer for the same options and the
    same nodes not banned is the same; each caller gets its own lists."""
    original = tp.solve_min_cut
    options_type = getattr(tp, "MinCutOptions", ())

    def part(value):
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, options_type):
            return dataclasses.astuple(value)
        if isinstance(value, (list, tuple, set, frozenset, OrderedSet)) and all(isinstance(n, fx.Node) for n in value):
            return tuple(sorted(n.name for n in value))  # dont_ban
        return ("id", id(value))  # the graph and its NodeInfo: the same objects for the whole cache

    def solve(*args, **kwargs):
        key = (tuple(map(part, args)), tuple(sorted((k, part(v)) for k, v in kwargs.items())))
        hit = cache.get(key)
        if hit is None:
            hit = cache[key] = original(*args, **kwargs)
        saved, banned = hit
        return list(saved), type(banned)(banned)

    tp.solve_min_cut = solve
    try:
        yield
    finally:
        tp.solve_min_cut = original


def _recompute_seconds(problem: PlanProblem, bw: fx.GraphModule) -> float:
    """What recomputing the forward values ``bw`` computes again costs in the planner's model: the sum of
    their candidates' recompute seconds (a plan of ``problem`` that recomputes them adds that much)."""
    index = {name: i for i, name in enumerate(problem.names)}
    return sum(problem.recompute_seconds[index[n.name]] for n in bw.graph.nodes
               if n.op == "call_function" and n.name in index)


class _NoReference(Exception):
    """torch's partition at a fraction is not offered to the search (its reason is in the plan's notes)."""


def _unsafe_recompute(bw: fx.GraphModule, forward_nodes: set[str]) -> str | None:
    """The first forward value ``bw`` computes again that draws random numbers (a dropout; attention only
    with a nonzero dropout), or None: rebuilt, it would draw another sample than the forward's. The test is
    candidates.draws_random, less its ban on attention without dropout (which the planner keeps, and
    torch's plans recompute legitimately)."""
    for node in bw.graph.nodes:
        if node.op != "call_function" or node.name not in forward_nodes or not cand_mod.draws_random(node):
            continue
        if "scaled_dot_product" in str(node.target):
            p = node.kwargs.get("dropout_p", node.args[3] if len(node.args) > 3 else 0.0)
            if isinstance(p, (int, float)) and p == 0:
                continue
        return node.name
    return None


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
    # lazy: the rewrites recompile it after each mode, and only its graph is ever read (extraction)
    graph = _LazyGraphModule(joint, _copy_graph(joint.graph))
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


def _fmt(nbytes: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(nbytes) >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{int(nbytes)} B"
