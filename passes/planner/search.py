"""The budget search: resolve the target (fraction or bytes), solve, verify against the simulator, re-solve.

Pure over plain data: the solver and the verifier are callables, so tests drive the search with
synthetic problems and a fake verifier. The verifier realizes a plan (rewrites, extraction) and
returns the simulator's Timeline for it; the search never sees an FX graph. docs/planner.md
describes the stages and the memory model.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..simulate import Timeline
from . import tuning
from .greedy import solve_greedy
from .local import improve, max_recompute
from .ilp import REPORTED_REL, meets_budget, solve_ilp
from .problem import FEWBIT, INPLACE, QUANTIZE, PlanProblem, without_modes
from .repeat import candidate_ties
from .solution import PEAK, TIME, PlanSolution

Solve = Callable[..., PlanSolution]
"""``solve_ilp``'s signature: (problem, *, budget_bytes, objective, time_limit_seconds, ...)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Verified:
    """A plan realized and simulated (``solution`` None: the default partition)."""

    solution: PlanSolution | None
    timeline: Timeline
    source: str
    """"default", or the solver that made the plan ("ilp", "ilp+local", "all-recompute[+local]",
    "greedy")."""
    artifact: Any = None
    """What the verifier built (the adapter's forward and backward graphs); opaque here."""
    added_seconds: float | None = None
    """torch's plan (``SearchInputs.reference``): the time its recomputation adds in the planner's model (what
    ``PlanSolution.added_seconds`` counts for a plan of the problem), where the adapter could name it."""

    @property
    def peak_bytes(self) -> int:
        return self.timeline.peak_bytes


Verify = Callable[[PlanSolution], Verified]
"""Builds and simulates a plan; what it builds must follow from ``plan_key(sol)`` alone (``search`` builds a
key once and reuses it)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchInputs:
    problem: PlanProblem
    default: Verified
    """Inductor's default partition, simulated (what a budget of 1.0 runs)."""
    default_model_peak_bytes: int
    """The planner model's peak of the default partition."""
    default_saved_bytes: int
    """Activation bytes the default partition saves, counted as torch's budget counts them."""
    budget_fraction: float | None = None
    budget_bytes: int | None = None
    time_limit_seconds: float = 20.0
    """A backstop: a solve that reaches it gives a plan that depends on the machine's load (and warns)."""
    node_limit: int | None = None
    """CBC's branch-and-bound nodes per solve (tuning.SOLVE_NODES): the bound that stops solves at the same
    plan on every run; refining solves get tuning.REFINE_NODES."""
    warm_start_time_solves: bool = False
    """Start time solves from the floor plan (problems with lossy or offload options, or with recompute
    chains' rows: CBC can take seconds to find a first plan near the floor; lossless ones without chain
    rows find it at once)."""
    label: str = "the graph"
    """Names the graph in warnings."""
    colours: Mapping[str, int] | None = None
    """Per node name, its structural colour (passes/repeats.py), when ``decomposes(problem)``: candidates
    of one colour are the same value in repeated layers and share a decision (planner/repeat.py)."""
    reference: Callable[[float], Verified | None] | None = None
    """torch's own plan at a fraction (what its ``activation_memory_budget`` partitions), built and simulated
    when called; None where there is none. A fraction's plan never runs above torch's plan at that fraction,
    nor, below ``tuning.MONOTONE_ANCHOR``, above torch's plan at the anchor: torch's knapsack may drop more
    peak than the fraction's share of saved bytes promises (``_resolve_fraction``), and a user who asks for a
    fraction expects no more memory than torch's own budget gives. A byte budget's search reads it only in the
    smallest-peak search it runs when not met (a fraction of 0.0's)."""

    account: Callable[[PlanSolution], int] | None = None
    """The exact account's peak of a plan (chains.account_peak), where the solve learns recompute chains' rows and
    takes ``chain_rounds``: the certificate's root solve then runs without chain rounds, and what its plan shows is
    the higher of its model peak and its account (``_certify_above_floor``)."""

    def __post_init__(self) -> None:
        if (self.budget_fraction is None) == (self.budget_bytes is None):
            raise ValueError("SearchInputs: give exactly one of budget_fraction and budget_bytes")


@dataclass(kw_only=True)
class SearchState:
    """Everything the search learns on its way; one per search."""

    target_bytes: int = 0
    """The simulated peak the plan must meet."""
    slack_bytes: int = 0
    model_budget_bytes: int = 0
    """The budget handed to the solver: the target, lowered by each round the model under-estimated."""
    unkept: frozenset[int] = frozenset()
    """Storages the solver may not keep (kept at a simulated peak the model could not see)."""
    pending: PlanSolution | None = None
    """A solution already solved for the first round's budget (the fraction's probe)."""
    floor_solution: PlanSolution | None = None
    """The model's smallest-peak plan, once solved."""
    floor_bound: PlanSolution | None = None
    """A plan whose model peak lies far enough under a fraction's target to show the target is above the
    floor's slack (``_certify_above_floor``); where it does, the floor itself is solved only if a later
    stage needs it."""
    floor_plan: Verified | None = None
    """The lowest simulated peak reachable (the floor, or a lower plan built on the way), once built."""
    built: list[Verified] = field(default_factory=list)
    """Every plan the search built, in order (``lowest_built``, and the starts of ``_polish``)."""
    chosen: Verified | None = None
    notes: list[str] = field(default_factory=list)
    local_seconds: float = 0.0
    """Seconds spent in the local moves (local.improve), which no solve or build counts."""
    reference: Verified | None = None
    """torch's plan at the fraction, once built (``_apply_reference``)."""
    plain_floor: tuple[PlanProblem, Solve, Any] | None = None
    """The problem without inplace options, the search's solve, and that problem's solves started beside the floor's
    (``_plain_floor_ahead``)."""
    seen: list[tuple[PlanProblem, dict]] = field(default_factory=list)
    """Per problem the local moves ran on, the account peaks of the moves they tried (``local.improve``'s ``seen``),
    shared by every descent of the search."""

    @property
    def lowest_built(self) -> Verified | None:
        """The lowest simulated peak built so far (the first built, among equals)."""
        return min(self.built, key=lambda v: v.peak_bytes, default=None)


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchResult:
    chosen: Verified
    target_bytes: int
    budget_met: bool
    floor_solution: PlanSolution | None
    min_peak_bytes: int | None
    """The smallest peak reachable, simulated where the floor was built, else the model's."""
    notes: tuple[str, ...]
    local_seconds: float = 0.0
    """Seconds the local moves took, nested searches included."""
    reachable_bytes: int | None = None
    """For a byte budget not met, searched with ``fresh_solve``: the peak of the plan a fraction of 0.0 runs.
    Every byte budget at or above it is met (its search runs that same plan when its own rounds miss), so it
    is the figure a refusal names; ``chosen`` may run lower (a plan the budget's own rounds built)."""


@dataclass(slots=True)
class _Run:
    inputs: SearchInputs
    solve: Solve
    """The search's solve; ``_certify_above_floor`` may replace it (before any other solve) with the solve that
    made the certificate."""
    verify: Verify
    fallback: Solve
    state: SearchState
    fresh_solve: Callable[[], Solve] | None = None


def decomposes(problem: PlanProblem) -> bool:
    """Whether the search ties repeated layers' candidates (``SearchInputs.colours``) instead of
    solving every candidate on its own."""
    threshold = tuning.REPEAT_MIN_CANDIDATES
    return threshold is not None and problem.n_candidates >= threshold


def search(inputs: SearchInputs, *, verify: Verify, solve: Solve = solve_ilp, fallback: Solve = solve_greedy,
           fresh_solve: Callable[[], Solve] | None = None) -> SearchResult:
    """The plan for ``inputs``' budget: the fastest the solver finds whose simulated peak meets the
    target, else the lowest simulated peak built (``budget_met`` False).

    ``fresh_solve``: where ``solve`` learns from its earlier solves (the adapter's recompute-chain rows), a
    factory of a solve that has learnt nothing yet. A byte budget not met runs the smallest-peak search with
    one, so that search solves exactly what a fraction of 0.0 solves and the peak a refusal names is the
    peak a budget of 0.0 runs; without it, that search follows the byte budget's own solves."""
    if inputs.colours is not None and decomposes(inputs.problem):
        ties = candidate_ties(inputs.problem, inputs.colours, tuning.REPEAT_GROUPS)
        if ties:
            solve = functools.partial(solve, tied=ties)
            if fresh_solve is not None:
                untied = fresh_solve
                fresh_solve = lambda: functools.partial(untied(), tied=ties)  # noqa: E731
    return _search(inputs, verify=_reusing(verify) if REUSE_BUILT_PLANS else verify, solve=solve, fallback=fallback,
                   fresh_solve=fresh_solve)


REUSE_BUILT_PLANS = True
"""Build each plan once per search (its anchor search included) and hand the same forward and backward to every
later verification of the same decisions (the rounds and the floor often ask for a plan built already); the
anchor search takes the floor solution as solved. Off only to check, in tests, that reuse changes no plan."""


def plan_key(sol: PlanSolution) -> tuple:
    """What a verifier's build depends on: what the plan recomputes and stores otherwise than kept, and the
    solver (the plan's source). Not ``keep``: the build saves what the backward reads and does not recompute
    (rewrite/recompute.saved_for), so two solutions that differ only in keep rows build the same graphs."""
    return (sol.solver, sol.recompute, sol.quantize, sol.fewbit, sol.inplace, sol.offload)


def _reusing(verify: Verify) -> Verify:
    """``verify``, run once per ``plan_key``; a repeat gets the built plan with its own solution."""
    built: dict[tuple, Verified] = {}

    def verify_once(sol: PlanSolution) -> Verified:
        key = plan_key(sol)
        hit = built.get(key)
        if hit is None:
            hit = built[key] = verify(sol)
            return hit
        return hit if hit.solution is sol else dataclasses.replace(hit, solution=sol)

    return verify_once


def _search(inputs: SearchInputs, *, verify: Verify, solve: Solve, fallback: Solve,
            floor_solution: PlanSolution | None = None, rounds_from_floor: bool = True,
            fresh_solve: Callable[[], Solve] | None = None) -> SearchResult:
    """``search`` with ties applied; ``floor_solution``: the model's smallest-peak plan of ``inputs.problem``
    when a search of the same problem solved it already (the anchor search), so it is not solved again;
    ``rounds_from_floor``: False for the anchor search (its rounds from the floor are the caller's)."""
    run = _Run(inputs, solve, verify, fallback, SearchState(floor_solution=floor_solution), fresh_solve)
    try:
        return _searched(run, rounds_from_floor)
    finally:
        if run.state.plain_floor is not None:
            run.state.plain_floor[2].wait()  # a floor solved ahead and not needed: never left running


def _searched(run: _Run, rounds_from_floor: bool) -> SearchResult:
    inputs, verify, fallback, fresh_solve = run.inputs, run.verify, run.fallback, run.fresh_solve
    state = run.state
    if inputs.budget_fraction is not None:
        _resolve_fraction(run)
        _apply_reference(run)
    else:
        state.target_bytes = int(inputs.budget_bytes)
        if inputs.default.peak_bytes <= state.target_bytes:
            state.chosen = inputs.default
    state.model_budget_bytes = state.target_bytes
    at_floor = state.chosen is None and _at_floor(run)
    if state.chosen is None:
        _repair(run)
    if state.chosen is None:
        state.chosen = _floor_plan(run)
    elif inputs.budget_fraction is not None and state.floor_solution is not None \
            and state.target_bytes == _floor_bytes(run) and state.chosen.source != "default":
        # a fraction that resolved to the floor asks for the smallest peak, not for any plan within
        # the slack of it: the lowest simulated peak built, so no lower fraction runs above a higher one
        floor = _floor_plan(run)
        if floor.peak_bytes < state.chosen.peak_bytes:
            state.chosen = floor
    fraction = inputs.budget_fraction
    if fraction is not None and fraction < tuning.MONOTONE_ANCHOR and state.chosen.source != "default" \
            and state.chosen.peak_bytes > state.chosen.solution.predicted_peak_bytes:
        # The model under-counted this plan, so plans a higher fraction builds may run lower: a lower
        # budget never runs above the anchor fraction's plan (monotone there by construction: the anchor's
        # search is the one that fraction runs, torch's plan at it included)
        # same problem: its floor and the plans built so far serve the anchor search as they are
        anchor = _search(dataclasses.replace(inputs, budget_fraction=tuning.MONOTONE_ANCHOR), verify=verify,
                         solve=run.solve, fallback=fallback,
                         floor_solution=state.floor_solution if REUSE_BUILT_PLANS else None,
                         rounds_from_floor=False)
        state.local_seconds += anchor.local_seconds
        if anchor.chosen.peak_bytes < state.chosen.peak_bytes:
            state.chosen = anchor.chosen
            state.notes.append(f"the {tuning.MONOTONE_ANCHOR} budget's plan runs lower; taken")
        if state.floor_plan is not None and anchor.chosen.peak_bytes < state.floor_plan.peak_bytes:
            state.floor_plan = anchor.chosen
    missed = inputs.budget_bytes is not None and state.chosen.peak_bytes > state.target_bytes + state.slack_bytes
    reachable = None  # SearchResult.reachable_bytes
    if at_floor and rounds_from_floor:
        # the smallest reachable peak is asked for (a fraction at the floor): the rounds again, from the
        # model's smallest-peak plan; the lowest plan built runs
        _lowest_from_floor(run)
        if tuning.LOCAL_MOVES:
            _polish(run)
    elif missed and rounds_from_floor:
        # a byte budget not met: the smallest reachable peak is what a fraction of 0.0 runs (its search
        # adds the anchor's rounds and the rounds from the floor plan); it runs if it meets the budget,
        # else it is the peak the error reports, so a budget at that peak is never refused. With a fresh
        # solve it is the search a fraction of 0.0 runs, torch's references included: the same plan
        if fresh_solve is not None:
            lowest = _search(dataclasses.replace(inputs, budget_fraction=0.0, budget_bytes=None), verify=verify,
                             solve=fresh_solve(), fallback=fallback)
            reachable = lowest.chosen.peak_bytes
        else:
            lowest = _search(dataclasses.replace(inputs, budget_fraction=0.0, budget_bytes=None, reference=None),
                             verify=verify, solve=run.solve, fallback=fallback,
                             floor_solution=state.floor_solution if REUSE_BUILT_PLANS else None)
        state.local_seconds += lowest.local_seconds
        if lowest.chosen.peak_bytes < state.chosen.peak_bytes:
            state.chosen = lowest.chosen
            state.notes.append("the smallest-peak search's plan runs lower; taken")
        if state.floor_plan is None or lowest.chosen.peak_bytes < state.floor_plan.peak_bytes:
            state.floor_plan = lowest.chosen
    if inputs.reference is not None and inputs.budget_fraction is not None and inputs.budget_fraction < 1.0:
        _take_reference(run)
    if state.floor_plan is not None:
        # the lowest simulated peak built: the floor plan's, or the plan that runs where it runs lower
        min_peak = min(state.floor_plan.peak_bytes, state.chosen.peak_bytes)
    else:
        # the model's, where no floor plan was built; never above the plan that runs
        min_peak = min(_floor_bytes(run), state.chosen.peak_bytes) if state.floor_solution is not None else None
    return SearchResult(
        chosen=state.chosen, target_bytes=state.target_bytes,
        budget_met=state.chosen.peak_bytes <= state.target_bytes + state.slack_bytes,
        floor_solution=state.floor_solution, min_peak_bytes=min_peak, notes=tuple(state.notes),
        local_seconds=state.local_seconds, reachable_bytes=reachable,
    )


# ------------------------------------------------------------------ target resolution
def _resolve_fraction(run: _Run) -> None:
    """torch's meaning: keep a fraction f of the activation bytes the default partition saves.

    Dropping (1 - f) of them lowers the peak by at most that much, so the target is the default's
    peak less (1 - f) of its saved bytes, never below the smallest reachable peak; it is resolved
    in the planner's model (monotone in f), and the repair loop corrects the model where the
    simulator disagrees."""
    inputs, state = run.inputs, run.state
    fraction = inputs.budget_fraction
    default_model = inputs.default_model_peak_bytes
    wanted = int(default_model - (1.0 - fraction) * inputs.default_saved_bytes)
    state.slack_bytes = int(tuning.FRACTION_SLACK * inputs.default.peak_bytes)
    state.target_bytes = inputs.default.peak_bytes
    if fraction >= 1.0 or wanted >= default_model:
        state.chosen = inputs.default
        return
    tried = _certificate_tried(run, wanted)
    certified = tried and _certify_above_floor(run, wanted)
    if not tried and state.floor_solution is None:
        # the target lies within the slack of what every plan holds, so the search plans for the floor: its plan is
        # built, and may need the floor without inplace
        _plain_floor_ahead(run)
    # Every other path needs the floor; at or under it every probe outcome gives the floor as the
    # target, so the probe is solved only above it.
    if not certified and _floor_solution(run).feasible and wanted <= _floor_bytes(run) < default_model:
        state.target_bytes = _floor_bytes(run)
        return
    probe = None
    if wanted > 0:  # no greedy fallback: an unproven probe just means "solve the floor"
        probe = run.solve(inputs.problem, budget_bytes=wanted, objective=TIME, **_limits(inputs))
    if probe is not None and probe.feasible:
        if not certified and _floor_solution(run).feasible and wanted - _floor_bytes(run) <= state.slack_bytes:
            # within the slack of the smallest reachable peak: plan for that peak, as every lower
            # fraction does, so they all get the same plan
            state.target_bytes = _floor_bytes(run)
        else:
            state.target_bytes, state.pending = wanted, probe
    elif default_model <= _floor_bytes(run):
        state.chosen = inputs.default
    else:
        state.target_bytes = int(max(_floor_bytes(run), wanted))


class _Ahead:
    """A solve run on a thread of its own while the planning thread solves another problem (each CBC solve is a
    process of its own, so the two run at once); ``result`` waits for it and raises what it raised."""

    def __init__(self, name: str, solve: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.solve = solve
        self._out: tuple[bool, Any] | None = None
        self._thread = threading.Thread(target=self._run, args=args, kwargs=kwargs, name=f"memcompile-{name}",
                                        daemon=True)
        self._thread.start()

    def _run(self, *args: Any, **kwargs: Any) -> None:
        try:
            self._out = (True, self.solve(*args, **kwargs))
        except BaseException as exc:  # handed to the planning thread
            self._out = (False, exc)

    def wait(self) -> None:
        self._thread.join()

    def result(self) -> Any:
        self.wait()
        ok, value = self._out
        if not ok:
            raise value
        return value


def _certificate_tried(run: _Run, wanted: int) -> bool:
    """Whether ``_certify_above_floor`` is tried: not where no plan can show the target above the floor, ``wanted``
    within the slack of what every plan holds (the problem's base bytes), nor where the floor is solved already."""
    inputs, state = run.inputs, run.state
    if not tuning.CERTIFY_ABOVE_FLOOR or state.floor_solution is not None:
        return False
    problem = inputs.problem
    base = max((*problem.fw_base_bytes, *problem.bw_base_bytes), default=0)
    return wanted - base > state.slack_bytes


def _certify_above_floor(run: _Run, wanted: int) -> bool:
    """Whether ``wanted`` lies more than the slack above the model's floor, shown by a plan whose model peak is
    that far under it: CBC's root plan of the smallest-peak problem (``maxNodes`` 0) usually is one. The floor's
    own solve, whose proof of its last percent takes most of its time on deep graphs, is then left until a stage
    needs the floor itself (none does where the target is met). A root plan CBC proves optimal (within its gap)
    is the floor, certificate or not. Called only where ``_certificate_tried``."""
    inputs, state = run.inputs, run.state
    problem = inputs.problem
    limits = _limits(inputs)
    limits["node_limit"] = 0
    if tuning.CERTIFY_PUMP_ROUNDS is not None:
        limits["pump_rounds"] = tuning.CERTIFY_PUMP_ROUNDS
    # With ``fresh_solve`` (a solve that learns, as the adapter's learns recompute-chain rows), a solve of its
    # own: where it neither certifies nor proves its plan, what it learnt is dropped and the search goes on
    # exactly as without it; else the search goes on with it (it is the search's first solve, so it has learnt
    # what the search's own solve would have learnt from that solve)
    solve = run.fresh_solve() if run.fresh_solve is not None else run.solve
    bound = None
    if inputs.account is not None:
        # The chain rounds bring the root plan's model peak to its exact account, re-solving the root each time (a
        # second or more per round on deep graphs); a certificate only needs a plan far enough under the target, so
        # the root plan's account and its model peak, both that far under it, show it without the rounds. Where
        # they do not, the root is solved again with the rounds, as without an account.
        quick = solve(problem, budget_bytes=None, objective=PEAK, chain_rounds=0, **limits)
        if quick.feasible:
            shown = max(quick.predicted_peak_bytes, inputs.account(quick))
            if wanted - min(shown, inputs.default.peak_bytes) > state.slack_bytes:
                bound = quick
    if bound is None:
        bound = solve(problem, budget_bytes=None, objective=PEAK, **limits)
        # proved at the root: the floor itself, as the floor's own solve (the same solve, stopped at the same root)
        # finds it, with the same rows learnt
        proved = bound.feasible and not bound.node_limit_hit and not bound.time_limit_hit
        certified = bound.feasible and wanted - _reachable_by(run, bound) > state.slack_bytes
    else:
        # shown by its account; not taken as the floor even where CBC proved it (it is the model's floor without the
        # chains' rows, which the floor's own solve learns)
        proved, certified = False, True
    if proved or certified:
        run.solve = solve
    if proved:
        state.floor_solution = bound
    elif certified:
        state.floor_bound = bound
        state.notes.append(f"a plan at {_fmt(bound.predicted_peak_bytes)} (model) shows the target is above the floor; "
                           "the floor is not solved")
    return certified


def _apply_reference(run: _Run) -> None:
    """torch's plan at the fraction (``SearchInputs.reference``), kept as ``SearchState.reference``; where the target lies above the floor and
    torch's plan simulates under the target's bound (target plus slack), its peak becomes that bound, so the
    search looks for the fastest plan at or under torch's peak (``_take_reference`` runs torch's plan if it
    finds none)."""
    inputs, state = run.inputs, run.state
    if inputs.reference is None or inputs.budget_fraction >= 1.0:
        return
    ref = state.reference = inputs.reference(inputs.budget_fraction)
    if ref is None or state.chosen is not None or (state.floor_solution is not None and state.floor_solution.feasible
                       and state.target_bytes == _floor_bytes(run)):
        return  # at the floor the smallest peak is asked for already
    bound = state.target_bytes + state.slack_bytes
    if ref.peak_bytes < bound:
        state.target_bytes = min(state.target_bytes, ref.peak_bytes)
        state.slack_bytes = min(bound, ref.peak_bytes) - state.target_bytes
        if state.pending is not None and state.pending.predicted_peak_bytes > state.target_bytes:
            state.pending = None  # the probe was solved for a higher target
        state.notes.append(f"torch's plan at this budget simulates {_fmt(ref.peak_bytes)}: the plan must not run above it")


def reference_fractions(fraction: float) -> list[float]:
    """The fractions a fraction's search asks torch's plans at, in the order it asks: its own (``_apply_reference``),
    and below ``tuning.MONOTONE_ANCHOR`` the anchor's (``_take_reference``)."""
    return [fraction, *([tuning.MONOTONE_ANCHOR] if fraction < tuning.MONOTONE_ANCHOR else [])]


def _take_reference(run: _Run) -> None:
    """torch's plan at the fraction, and below ``tuning.MONOTONE_ANCHOR`` torch's plan at the anchor too (so
    a lower budget never runs above the anchor's plan), where it simulates lower than the chosen plan."""
    inputs, state = run.inputs, run.state
    refs = [state.reference, *map(inputs.reference, reference_fractions(inputs.budget_fraction)[1:])]
    for ref in refs:
        if ref is None or ref.peak_bytes >= state.chosen.peak_bytes:
            continue
        state.chosen = ref
        state.notes.append(f"torch's plan at this budget (or the {tuning.MONOTONE_ANCHOR} one) simulates lower "
                           f"({_fmt(ref.peak_bytes)}); taken")
        if state.floor_plan is not None and ref.peak_bytes < state.floor_plan.peak_bytes:
            state.floor_plan = ref


# ------------------------------------------------------------------ solve
def _solve(run: _Run, budget: int | None, objective: str, unkept: frozenset[int] = frozenset(),
           start: PlanSolution | None = None) -> PlanSolution:
    """A solve with the greedy planner as the fallback when CBC proves nothing within the time limit."""
    inputs = run.inputs
    if start is None:
        start = run.state.floor_solution if run.state.floor_solution is not None else run.state.floor_bound
    # A time solve starts from the floor plan where the inputs ask for it, and wherever its budget is that plan's
    # own peak (as CBC reported it): few plans meet a budget at the floor, and CBC may search its whole time for one
    at_start = start is not None and start.feasible and budget is not None \
        and abs(budget - start.predicted_peak_bytes) <= REPORTED_REL * budget
    initial = start if objective == TIME and (inputs.warm_start_time_solves or at_start) else None
    refine = initial is not None and initial.feasible and meets_budget(initial.predicted_peak_bytes, budget)
    sol = run.solve(inputs.problem, budget_bytes=budget, objective=objective, initial=initial,
                    unkept_storages=unkept, **_limits(inputs, refine=refine))
    if sol.feasible:
        if sol.time_limit_hit:
            warnings.warn(
                f"memcompile: the ILP hit solver_time_limit={inputs.time_limit_seconds}s on {inputs.label}; "
                "using the best plan found so far (raise solver_time_limit for a better one)",
                RuntimeWarning, stacklevel=4,
            )
        return sol
    if sol.status.startswith("Infeasible"):
        return sol
    warnings.warn(
        f"memcompile: CBC found no plan within solver_time_limit={inputs.time_limit_seconds}s on "
        f"{inputs.label} (status {sol.status}); using the greedy planner instead",
        RuntimeWarning, stacklevel=4,
    )
    return run.fallback(inputs.problem, budget_bytes=budget, objective=objective)


def _limits(inputs: SearchInputs, *, refine: bool = False) -> dict:
    """A solve's limits: the node cap (tuning.SOLVE_NODES, or tuning.REFINE_NODES for a solve that refines a
    plan CBC is handed or has just found: it has a plan at least as good at once, and proving the last
    percent could take it the whole time limit), and the time limit as a backstop."""
    nodes = inputs.node_limit
    if refine and nodes is not None:
        nodes = min(nodes, tuning.REFINE_NODES)
    return {"time_limit_seconds": inputs.time_limit_seconds, "node_limit": nodes}


def _lower_peak_at_same_time(run: _Run, sol: PlanSolution, budget: int, unkept: frozenset[int]) -> PlanSolution:
    """The lowest peak among plans that add no more time than ``sol`` does, within what CBC's gap may have left
    (``tuning.SOLVER_GAP_TIME``), or, for a fraction whose target lies above the floor, than torch's own plan at
    that fraction adds, whichever is more: torch's budget trades time for memory at that rate, and memcompile's
    claim is less memory at the same speed.

    The time solve stops at the budget (and at a 1% gap), so its plan may leave undone cheap
    recomputation that lowers the peak further; a peak solve capped at that time takes it."""
    inputs = run.inputs
    cap = sol.added_seconds + tuning.SOLVER_GAP_TIME * sum(inputs.problem.recompute_seconds)
    ref = run.state.reference
    # at the floor the smallest peak is asked for, whatever the fraction: every fraction there solves alike
    torchs = inputs.budget_fraction is not None and ref is not None and ref.added_seconds is not None \
        and ref.added_seconds > cap and not _at_floor(run)
    if torchs:
        cap = ref.added_seconds
    lower = run.solve(inputs.problem, budget_bytes=budget, objective=PEAK, max_added_seconds=cap,
                      unkept_storages=unkept, **_limits(inputs, refine=True))
    if lower.feasible and lower.predicted_peak_bytes < sol.predicted_peak_bytes:
        if torchs:
            run.state.notes.append(f"peak lowered at up to the time torch's plan at this budget adds "
                                   f"({cap * 1e3:.3g} ms in the model)")
        return lower
    return sol


def _floor_solution(run: _Run) -> PlanSolution:
    """The model's smallest-peak plan, solved once, and only when a budget needs it."""
    if run.state.floor_solution is None:
        run.state.floor_solution = _solve(run, None, PEAK)
    return run.state.floor_solution


PLAIN_FLOOR_AHEAD = True
"""Where a fraction's search plans for the floor and the problem has inplace options, the floor without them and the
fastest plan at its peak (which ``_floor_plan`` solves where the floor's plan uses inplace and runs above its model
peak) are solved beside the floor's own solve, on a thread of their own with the search's solve (each CBC solve is
a process: they run at once): the two problems learn their chain rows apart, so these are the plans ``_floor_plan``
would solve. Waited for and dropped where not needed. The same plans either way; off only to check that in tests."""


def _plain_floor_ahead(run: _Run) -> None:
    problem = run.inputs.problem
    if not PLAIN_FLOOR_AHEAD or run.state.plain_floor is not None \
            or not any(opt.mode == INPLACE for opt in problem.options):
        return
    plain = without_modes(problem, (INPLACE,))
    run.state.plain_floor = (plain, run.solve, _Ahead("floor", _plain_floor_solves, run.solve, plain,
                                                      _limits(run.inputs)))


def _plain_floor_solves(solve: Solve, problem: PlanProblem, limits: dict) -> tuple[PlanSolution, PlanSolution | None]:
    """The solves ``_floor_plan`` makes of the problem without inplace, in its order: the floor, then (where there is
    one) the fastest plan at its peak. Nothing else solves that problem in between, so its chain rows are the same."""
    floor = solve(problem, budget_bytes=None, objective=PEAK, **limits)
    return floor, (_fastest_at_floor(solve, problem, floor, limits) if floor.feasible else None)


def _fastest_at_floor(solve: Solve, problem: PlanProblem, floor: PlanSolution, limits: dict) -> PlanSolution:
    """The fastest plan of ``problem`` at its floor's peak: plans the model rates equal differ in the chains they
    recompute."""
    return solve(problem, budget_bytes=floor.predicted_peak_bytes, objective=TIME, **limits)


def _plain_floor(run: _Run) -> tuple[PlanProblem, tuple[PlanSolution, PlanSolution | None] | None]:
    """The problem without inplace options and, where they were solved ahead (``PLAIN_FLOOR_AHEAD``) with the solve
    the search has now, its floor and its fastest plan at that peak; else that problem and None."""
    problem, solve, ahead = run.state.plain_floor or (None, None, None)
    if ahead is not None and solve is run.solve:
        return problem, ahead.result()
    return without_modes(run.inputs.problem, (INPLACE,)), None


def _floor_bytes(run: _Run) -> int:
    return _reachable_by(run, _floor_solution(run))


def _reachable_by(run: _Run, sol: PlanSolution) -> int:
    """The peak reachable with ``sol`` to hand: its model peak, or the default's where that is lower (or ``sol``
    is no plan)."""
    default_peak = run.inputs.default.peak_bytes
    return min(sol.predicted_peak_bytes, default_peak) if sol.feasible else default_peak


# ------------------------------------------------------------------ verify
def _verify(run: _Run, sol: PlanSolution) -> Verified:
    built = run.verify(sol)
    state = run.state
    state.built.append(built)
    return built


def _floor_plan(run: _Run) -> Verified:
    """The lowest simulated peak reachable: the floor plan, or a lower plan built on the way, or the
    default partition when nothing lowers the peak. Built once (extraction is the costly step)."""
    state, inputs = run.state, run.inputs
    if state.floor_plan is not None:
        return state.floor_plan
    sol = _floor_solution(run)
    built = _verify(run, sol) if sol.feasible else inputs.default
    if sol.feasible and tuning.LOCAL_MOVES:
        # the plan whose exact account peaks lower than the floor solution's, when moves find one
        better = _improve(run, sol)
        if better is not None:
            _verify(run, better)
    if sol.feasible and sol.inplace and built.peak_bytes > sol.predicted_peak_bytes:
        # inplace costs nothing, so it must not leave a higher floor than the plan without it
        plain_problem, solved = _plain_floor(run)
        plain = _floor_without(run, plain_problem, solved[0] if solved else None)
        if plain.feasible:
            # and the fastest plan at that peak, as a fraction's search without inplace builds it: plans
            # the model rates equal differ in the chains they recompute
            fast = solved[1] if solved else _fastest_at_floor(run.solve, plain_problem, plain, _limits(inputs))
            if fast.feasible and fast.recompute != plain.recompute:
                _verify(run, fast)
    if sol.feasible and LOSSLESS_FLOOR and any(opt.mode in LOSSY_MODES for opt in inputs.problem.options):
        # the local moves leave a plan with a quantized storage as it is, so the lossy floor's search may end
        # above the lossless floor its options include
        _floor_without(run, without_modes(inputs.problem, LOSSY_MODES))
    lowest = state.lowest_built
    if lowest is None:
        lowest = built
    if lowest.peak_bytes < built.peak_bytes:
        built = lowest
    if built.peak_bytes >= inputs.default.peak_bytes:
        state.notes.append("no plan lowers the peak below Inductor's default partition")
        built = inputs.default
    state.floor_plan = built
    return built


LOSSY_MODES = (QUANTIZE, FEWBIT)
LOSSLESS_FLOOR = True
"""Whether a problem with lossy options also builds its floor without them (``_floor_without``). Off only in tests
that need a lossy plan to reach a lossy rewrite on a model where the lossless floor runs lower."""


def _floor_without(run: _Run, problem: PlanProblem, solved: PlanSolution | None = None) -> PlanSolution:
    """The floor of ``problem`` (the search's with some modes' options taken out), solved (or ``solved``, its
    floor solved ahead), built, and improved by the local moves (the improvement built too), so the lowest plan
    built is never above it; returns its solve."""
    plain = solved if solved is not None else run.solve(problem, budget_bytes=None, objective=PEAK,
                                                        **_limits(run.inputs))
    if not plain.feasible:
        return plain
    _verify(run, plain)
    better = _improve(run, plain, problem=problem) if tuning.LOCAL_MOVES else None
    if better is not None:
        _verify(run, better)
    return plain


def _lowest_from_floor(run: _Run) -> None:
    """The repair rounds from the floor solution (``_repair(from_floor=True)``); the chosen plan and the
    floor plan become the lowest plan built, so the result is never higher than without these rounds."""
    state = run.state
    chosen = state.chosen
    state.chosen, state.unkept, state.model_budget_bytes = None, frozenset(), state.target_bytes
    _repair(run, from_floor=True)
    lowest = state.lowest_built
    state.chosen = chosen
    if lowest is None:
        return
    if lowest.peak_bytes < chosen.peak_bytes:
        state.chosen = lowest
        state.notes.append("the rounds from the floor plan built a lower plan; taken")
    if state.floor_plan is not None and lowest.peak_bytes < state.floor_plan.peak_bytes:
        state.floor_plan = lowest


def _polish(run: _Run) -> None:
    """The lowest plans built (the chosen one first, ``tuning.POLISH_STARTS`` in all) improved against the exact
    account (local.py), built, and the lowest taken where it runs lower than the chosen plan (a byte budget not
    met gets this from the fraction 0.0 search it runs). The moves descend to the nearest plan no single move
    lowers, so where they start decides where they end; more starts make the floor depend less on which plans
    the solves happened to build. Each start descends as far as the moves go (with the accumulated moves,
    ``local.ACCUMULATE``, a descent costs about a second on gpt-24). Last, with
    ``tuning.POLISH_FROM_ALL_RECOMPUTE``, the plan that recomputes all it can (``local.max_recompute``)."""
    state = run.state
    if state.chosen.solution is None:
        return
    starts: list[PlanSolution] = []
    seen = set()
    for v in [state.chosen, *sorted(state.built, key=lambda v: v.peak_bytes)]:
        key = plan_key(v.solution) if v.solution is not None else None
        if key is None or key in seen:
            continue
        seen.add(key)
        starts.append(v.solution)
        if len(starts) >= tuning.POLISH_STARTS:
            break
    extreme = None
    if tuning.POLISH_FROM_ALL_RECOMPUTE:
        # the far end of the keep/recompute range from the plans the solves built (near the model's optimum):
        # the descents from both ends reach different plans, and the lowest simulated one runs
        extreme = max_recompute(run.inputs.problem, state.chosen.solution)
        if extreme is not None:
            starts.append(extreme)
    for start in starts:
        better = _improve(run, start)
        if better is None and start is extreme:
            better = extreme  # no move lowers it: the descent ends where it starts, which was never built
        if better is None:
            continue
        built = _verify(run, better)
        if built.peak_bytes < state.chosen.peak_bytes:
            state.chosen = built
            state.notes.append("a plan the exact account rates lower runs lower; taken")
            if state.floor_plan is not None and built.peak_bytes < state.floor_plan.peak_bytes:
                state.floor_plan = built


SHARE_SEEN = True
"""The local moves' descents of one search skip the moves an earlier descent accounted no lower (``local.improve``'s
``seen``): the same moves are taken. Off only to check that in tests."""


def _improve(run: _Run, sol: PlanSolution, problem: PlanProblem | None = None, **limits) -> PlanSolution | None:
    """``local.improve`` on ``problem`` (the search's by default), timed."""
    start = time.perf_counter()
    problem = problem if problem is not None else run.inputs.problem
    seen = next((m for p, m in run.state.seen if p is problem), None)
    if seen is None:
        seen = {}
        run.state.seen.append((problem, seen))  # held with its problem, so no other problem gets its id
    try:
        return improve(problem, sol, seen=seen if SHARE_SEEN else None, **limits)
    finally:
        run.state.local_seconds += time.perf_counter() - start


def _at_floor(run: _Run) -> bool:
    """Whether a fraction's target resolved to the model's smallest peak (the floor solution is solved)."""
    return (run.inputs.budget_fraction is not None and run.state.floor_solution is not None
            and run.state.floor_solution.feasible and run.state.target_bytes == _floor_bytes(run))


def _repair(run: _Run, *, from_floor: bool = False) -> None:
    """Solve at the model budget, verify, and re-solve for less while the simulated peak is over the target.

    ``from_floor``: every round takes the smallest-peak plan (the first the floor solution itself, later
    ones without the storages kept at the simulated peaks) rather than the fastest plan at the model
    budget: at the floor many plans tie in the model, and the fastest is the one that recomputes most of
    what the model under-counts (docs/planner.md)."""
    state, problem = run.state, run.inputs.problem
    if from_floor:
        state.pending = _floor_solution(run)
    for _ in range(tuning.REPAIR_ROUNDS):
        unkept = state.unkept
        if unkept:
            # the smallest peak without those storages first: when it meets the budget, the time
            # solve starts from it (lossy problems), else it is the plan
            low = _solve(run, None, PEAK, unkept)
            fits = low.feasible and low.predicted_peak_bytes <= state.model_budget_bytes and not from_floor
            sol = _solve(run, state.model_budget_bytes, TIME, unkept, start=low) if fits else low
        else:
            sol = state.pending if state.pending is not None else _solve(run, state.model_budget_bytes, TIME)
        state.pending = None
        if not sol.feasible and not unkept:
            # below the model's floor: the model is an estimate, so start from its floor plan and
            # let the simulator's peaks steer the rounds, as a fraction's search does
            sol = _floor_solution(run)
        if not sol.feasible:
            return
        if not from_floor:
            sol = _lower_peak_at_same_time(run, sol, max(state.model_budget_bytes, sol.predicted_peak_bytes), unkept)
        built = _verify(run, sol)
        over = built.peak_bytes - state.target_bytes - state.slack_bytes
        if over <= 0:
            state.chosen = built
            return
        # The model under-estimated this plan's peak: assume it errs as much again, and never
        # loosen, so each round asks for strictly less than the last.
        error = built.peak_bytes - sol.predicted_peak_bytes
        next_budget = min(state.model_budget_bytes - over, state.target_bytes - error)
        state.notes.append(f"model peak {_fmt(sol.predicted_peak_bytes)} simulated {_fmt(built.peak_bytes)}; re-solved")
        if unkept or next_budget < _floor_bytes(run):
            more = kept_at_peak(problem, sol, built.timeline, over) - unkept
            if not more:
                return
            state.unkept = unkept | more
            state.notes.append("kept at the simulated peak, now not kept: " + ", ".join(
                problem.names[problem.storage_owner[s]] for s in sorted(more)))
        else:
            state.model_budget_bytes = next_budget


def kept_at_peak(problem: PlanProblem, sol: PlanSolution, timeline: Timeline, excess: int) -> frozenset[int]:
    """Storages ``sol`` keeps that are live at ``timeline``'s peak and whose owner may be recomputed,
    largest first (ties by name), until their bytes reach ``excess`` (at least one when there is any).

    At its floor the model cannot ask for less, and among plans it rates equal the solver takes the
    fastest, which may keep a storage across the step the simulator finds highest."""
    index = {name: i for i, name in enumerate(problem.names)}
    picked: list[int] = []
    total = 0
    for interval in timeline.live_at(timeline.peak_index):  # largest first
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


def _fmt(nbytes: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(nbytes) >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{int(nbytes)} B"
