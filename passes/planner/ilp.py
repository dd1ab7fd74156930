"""The ILP (PuLP + CBC) over a PlanProblem: keep or recompute, or one of the mode options.

Variables: keep[i], recompute[i] per candidate, kept[s] per storage, option[o] per mode option
(a quantized storage, a few-bit code, an output-form derivative, an offloaded storage; only for the
modes enabled and legal), a continuous peak P.
- a value the backward reads is kept, recomputed or served by an option:
  keep[i] + recompute[i] + sum(option[o] serving i) >= 1;
- a recomputed value's inputs are kept or recomputed (never an option's copy, except a quantized
  input of a backward-only value, problem.quantized_input): recompute[i] <= keep[j] + recompute[j]
  (+ option[o]);
- keeping any alias keeps the storage: kept[s] >= keep[i];
- one mode per storage (quantize, offload) or value (few-bit, inplace): option[o] + kept[s] <= 1 and
  option[o] + recompute[owner] <= 1, or option[o] + keep[i] + recompute[i] <= 1; two options
  that conflict (problem.conflicts): option[o] + option[p] <= 1;
- an option that needs a storage kept (inplace: the activation's output) keeps its owner:
  option[o] <= keep[owner];
- each memory constraint: base + sum(bytes * kept) + sum(bytes * recompute[owner])
  + sum(packed, expanded or held bytes * option) <= P;
- offloaded storages share one host link: sum(transfer seconds * option) <= the shorter phase's
  predicted compute (problem.link_budget_seconds).
Objective "time": min added seconds + a tie-break on P (so equal-time plans take the lower
peak), with P <= budget. Objective "peak": min P + a tie-break on seconds.

Two reductions keep the model small enough for CBC to solve a 24-layer graph in a second:
- a free alias (a view or getitem sharing a storage owned by another candidate) gets no keep
  variable: recomputing it costs nothing and needs the same storage, so keeping it never wins;
  a storage with a single keepable alias uses that alias's keep variable as kept[s];
- consecutive memory constraints share most of their terms, so each one reads a running-sum
  variable E_k = E_{k-1} + (terms entering) - (terms leaving) instead of repeating them: the
  constraint matrix grows with the number of storages, not with storages x steps.
The greedy plan is handed to CBC as a warm start, so a time-out still returns a plan at
least as good as greedy's.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
import time
import warnings
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import pulp

from .chains import ChainRow
from .greedy import solve_greedy
from .problem import FORWARD, PlanProblem, conflict_partners, option_indices, option_names
from .solution import PEAK, TIME, PlanSolution

# Bytes enter the model in MiB and time in milliseconds so CBC's tolerances see numbers of a sane size.
_MIB = float(2**20)
_MS = 1e3
# Tie-breaks: 1 MiB of peak is worth 1e-6 ms of time (time objective) and 1 ms of time is worth
# 1e-6 MiB (peak objective): small enough never to override the main objective in practice.
_PEAK_TIE_MS_PER_MIB = 1e-6
_TIME_TIE_MIB_PER_MS = 1e-6
_GAP_REL = 0.01
REPORTED_REL = 1e-7
"""CBC writes a solution's values to 8 significant digits, so the peak it reports (``predicted_peak_bytes``) may
lie up to 5e-8 of itself under the plan's own peak (about 70 bytes of a 1.4 GB peak): a budget taken from a
reported peak is loosened by this much, or the plan that peak was reported for would not meet it."""
_GAP_FRACTION_OF_FORWARD = 0.01


def meets_budget(peak_bytes: int, budget_bytes: int | None) -> bool:
    """Whether a reported peak meets a budget, within the precision CBC reports peaks to (``REPORTED_REL``)."""
    return budget_bytes is None or peak_bytes <= budget_bytes * (1.0 + REPORTED_REL)


def pump_tune(rounds: int) -> int:
    """CBC's ``pumpTune`` for a feasibility pump of ``rounds`` major rounds, its other settings CBC's default
    (1005043: accumulate on, six rounds, 43); the thousands count the rounds after the first."""
    if not 1 <= rounds <= 1000:
        raise ValueError(f"rounds: expected 1 to 1000 major rounds of the feasibility pump, got {rounds}")
    return 1_000_043 + 1000 * (rounds - 1)


def solve_ilp(
    problem: PlanProblem,
    *,
    budget_bytes: int | None,
    objective: str = TIME,
    time_limit_seconds: float = 20.0,
    warm_start: bool = False,
    max_added_seconds: float | None = None,
    initial: PlanSolution | None = None,
    unkept_storages: Collection[int] = (),
    tied: Mapping[int, int] | None = None,
    memory_rows: tuple[MemoryRow, ...] | None = None,
    chain_rows: Sequence[ChainRow] = (),
    node_limit: int | None = None,
    pump_rounds: int | None = None,
) -> PlanSolution:
    """``max_added_seconds``: a cap on the predicted added time, for a peak solve that looks for
    the lowest peak among plans about as fast as a given one. ``initial``: a plan CBC starts from
    (its first incumbent) when it meets the budget, instead of ``warm_start``'s greedy plan.
    ``tied``: candidate -> representative candidate; each takes its representative's decision
    (keep, recompute and the option of the same mode), planner/repeat.py. ``memory_rows``:
    ``build_memory_rows(problem)`` of this very problem, when several solves share it. ``chain_rows``:
    memory constraints at single backward steps that also charge recompute chains (planner/chains.py):
    a chain term's bytes count when every candidate it names is recomputed. ``node_limit``: CBC's
    branch-and-bound nodes (its ``maxNodes``); unlike ``time_limit_seconds`` it stops a solve at the same
    plan on any machine and under any load, so it is how the search bounds its solves (tuning.SOLVE_NODES),
    and the time limit is a backstop. ``pump_rounds``: major rounds of CBC's feasibility pump (``pump_tune``);
    None, CBC's default."""
    if objective not in (TIME, PEAK):
        raise ValueError(f"objective: expected {TIME!r} or {PEAK!r}, got {objective!r}")
    start = time.perf_counter()
    n = problem.n_candidates
    model = pulp.LpProblem("memcompile", pulp.LpMinimize)
    new_var = _variable_factory(model)
    keep = {
        i: new_var(f"k{i}", cat="Binary")
        for i in range(n)
        if problem.can_save[i] and not problem.free_alias(i)
    }
    rec = {i: new_var(f"r{i}", cat="Binary") for i in range(n) if problem.can_recompute[i]}
    unkept = frozenset(unkept_storages)
    for i, var in keep.items():
        if problem.storage_of[i] in unkept:
            var.upBound = 0
    option = {o: new_var(f"o{o}", cat="Binary") for o in range(len(problem.options))}
    serving: dict[int, list[int]] = {}
    for o, opt in enumerate(problem.options):
        for i in opt.serves:
            serving.setdefault(i, []).append(o)
    peak = new_var("peak_mib", lowBound=0)

    def available(j: int) -> list[tuple[pulp.LpVariable, float]]:
        terms = []
        if j in keep:
            terms.append((keep[j], 1.0))
        if j in rec:
            terms.append((rec[j], 1.0))
        return terms

    # kept[s]: the keep variable itself when one alias can keep the storage, else a new binary.
    keepers: dict[int, list[int]] = {}
    for i in keep:
        s = problem.storage_of[i]
        if s >= 0:
            keepers.setdefault(s, []).append(i)
    kept: dict[int, pulp.LpVariable] = {}
    n_rows = 0
    for s, members in keepers.items():
        if len(members) == 1:
            kept[s] = keep[members[0]]
            continue
        kept[s] = new_var(f"s{s}", cat="Binary")
        for i in members:
            model += kept[s] - keep[i] >= 0, f"alias{i}"
            n_rows += 1

    # One mode per storage (quantize, offload) or value (few-bit, inplace); each group below is mutually exclusive.
    partners = conflict_partners(problem.options)
    for o, opt in enumerate(problem.options):
        if opt.whole_storage:
            groups = [[kept[opt.storage]]] if opt.storage in kept else []
            groups += [[rec[opt.candidate]]] if opt.candidate in rec else []
        else:
            groups = [[v for v, _ in available(opt.candidate)]]
        groups += [[option[p]] for p in partners[o]]
        for k, group in enumerate(g for g in groups if g):
            model += pulp.lpSum([option[o], *group]) <= 1, f"one{o}_{k}"
            n_rows += 1
        if opt.requires_kept >= 0:  # the storage's owner is kept (so the plan names it; kept[s] follows)
            owner = problem.storage_owner[opt.requires_kept]
            if owner in keep:
                model += option[o] - keep[owner] <= 0, f"requires{o}"
                n_rows += 1
            else:
                option[o].upBound = 0

    if tied:
        option_of = {(opt.mode, opt.candidate): o for o, opt in enumerate(problem.options)}
        for i, r in tied.items():
            for a, b in ((keep.get(i), keep.get(r)), (rec.get(i), rec.get(r))):
                if a is not None and b is not None:
                    model += a - b == 0, f"tie_{a.name}"
                    n_rows += 1
        for (mode, i), o in option_of.items():
            p = option_of.get((mode, tied.get(i, i)), -1)
            if p >= 0 and p != o:
                model += option[o] - option[p] == 0, f"tie_o{o}"
                n_rows += 1
    quantized = problem.quantize_options()
    for i in range(n):
        if problem.needed[i]:
            terms = available(i) + [(option[o], 1.0) for o in serving.get(i, ())]
            if not terms:
                return _infeasible(problem, start, f"{problem.names[i]} is read by the backward but can be neither saved nor recomputed")
            if len(terms) == 1:
                terms[0][0].lowBound = 1
            else:
                model += pulp.LpAffineExpression(terms) >= 1, f"need{i}"
                n_rows += 1
        if i in rec:
            for j in problem.inputs[i]:
                terms = available(j) + [(rec[i], -1.0)]
                o = problem.quantized_input(i, j, quantized)
                if o >= 0:
                    terms.append((option[o], 1.0))
                model += pulp.LpAffineExpression(terms) >= 0, f"in{i}_{j}"
                n_rows += 1

    # switched: the backward runs channels-last, as soon as one convolution is recomputed in it
    # (Inductor decides the layout per graph), which adds the constraints' switch_bytes
    switched: dict[int, pulp.LpVariable] = {}
    if problem.switch_candidates and any(c.switch_bytes for c in problem.constraints):
        switched[0] = new_var("z_layout", cat="Binary")
        convs = [rec[i] for i in problem.switch_candidates if i in rec]
        # z = OR(recompute of each convolution): at least each, at most their sum (the bytes may be negative)
        for i in problem.switch_candidates:
            if i in rec:
                model += switched[0] - rec[i] >= 0, f"layout{i}"
                n_rows += 1
        model += pulp.lpSum(convs) - switched[0] >= 0, "layout_any"
        n_rows += 1

    def var(key: tuple[str, int]) -> pulp.LpVariable:
        return {"k": kept, "r": rec, "o": option, "z": switched}[key[0]][key[1]]

    running: pulp.LpVariable | None = None
    row_total: dict[int, pulp.LpVariable] = {}
    for k, row in enumerate(memory_rows if memory_rows is not None else build_memory_rows(problem)):
        total = new_var(f"e{k}", lowBound=None if switched else 0)  # a layout switch may save bytes: < 0
        terms = [(var(key), w) for key, w in row.terms]
        if row.incremental:
            terms = [(running, 1.0), *terms]
        model += pulp.LpAffineExpression([(total, -1.0), *terms]) == 0, f"sum{k}"
        model += total - peak <= -row.base_mib, row.label
        n_rows += 2
        running = total
        row_total[row.constraint] = total

    # A chain term's bytes count through z[owner]: z[last] = recompute[last] (read where it is built), and
    # z[j] >= z[k] - keep[j] - (a quantized copy of j that k may read) for each j pulled by reader k: a
    # reader built early needs j then, and j not kept must be rebuilt then. Tighter for CBC than the
    # product of the recompute variables, and equal to it at every integer point the other rows allow.
    pulled: dict[tuple[int, int], pulp.LpVariable] = {}

    def pulled_var(path: tuple[int, ...]) -> pulp.LpVariable | None:
        source = path[-1]
        if source not in rec:
            return None
        z = rec[source]
        for k, j in zip(reversed(path[1:]), reversed(path[:-1])):
            key = (j, source)
            if key not in pulled:
                var_j = pulled[key] = new_var(f"z{j}_{source}", lowBound=0, upBound=1)
                terms = [(var_j, 1.0), (z, -1.0)]
                if j in keep:
                    terms.append((keep[j], 1.0))
                o = problem.quantized_input(k, j, quantized)
                if o >= 0:
                    terms.append((option[o], 1.0))
                model.addConstraint(pulp.LpAffineExpression(terms) >= 0, f"pull{j}_{source}")
            z = pulled[key]
        return z

    # A hold term's bytes count through h[s, step] >= kept[s] + rec[reader] - rec[member] - sum(rec[blockers]) - 1:
    # one variable per storage and step, however many terms (plans' blockers) bound it.
    held: dict[tuple[int, int], pulp.LpVariable] = {}
    n_holds = 0
    for k, row in enumerate(chain_rows):
        # the step's own constraint already sums what the static windows charge there (E of its running sum)
        terms = [(row_total[problem.bw_row_of_step[row.step]], 1.0)]
        for nbytes, path in row.chains:
            z = pulled_var(path)
            if z is not None:
                terms.append((z, nbytes / _MIB))
        for hold in row.holds:
            if hold.storage not in kept or hold.reader not in rec:
                continue
            key = (hold.storage, row.step)
            if key not in held:
                held[key] = new_var(f"h{hold.storage}_{row.step}", lowBound=0, upBound=1)
                terms.append((held[key], hold.nbytes / _MIB))
            cond = {held[key]: 1.0, kept[hold.storage]: -1.0, rec[hold.reader]: -1.0}
            for m in (hold.member, *hold.blockers):
                if m in rec:
                    cond[rec[m]] = cond.get(rec[m], 0.0) + 1.0
            model.addConstraint(pulp.LpAffineExpression(list(cond.items())) >= -1, f"hold{n_holds}")
            n_holds += 1
        model += pulp.LpAffineExpression([(peak, -1.0), *terms]) <= -row.base_bytes / _MIB, f"chainrow{k}_{row.step}"
        n_rows += 1
    n_rows += len(pulled) + n_holds

    link = [(option[o], opt.transfer_seconds * _MS) for o, opt in enumerate(problem.options) if opt.transfer_seconds]
    if link and sum(w for _, w in link) > problem.link_budget_seconds * _MS:
        model += pulp.LpAffineExpression(link) <= problem.link_budget_seconds * _MS, "host_link"
        n_rows += 1

    milliseconds = pulp.LpAffineExpression(
        [(rec[i], problem.recompute_seconds[i] * _MS) for i in rec]
        + [(option[o], problem.options[o].seconds * _MS) for o in option]
    )
    if max_added_seconds is not None:
        model += milliseconds <= max_added_seconds * _MS, "time_cap"
        n_rows += 1
    if objective == TIME:
        if budget_bytes is not None:
            peak.upBound = budget_bytes * (1.0 + REPORTED_REL) / _MIB
        model += milliseconds + _PEAK_TIE_MS_PER_MIB * peak
    else:
        model += peak + _TIME_TIE_MIB_PER_MS * milliseconds

    start_point = None
    if (initial is not None and initial.feasible
            and meets_budget(initial.predicted_peak_bytes, budget_bytes)
            and not (unkept and any(problem.storage_of[problem.names.index(name)] in unkept for name in initial.keep))):
        start_point = initial
        _set_initial(problem, start_point, keep, rec, kept, option)
    elif warm_start:
        start_point = solve_greedy(problem, budget_bytes=budget_bytes, objective=objective)
        if start_point.feasible and (objective == PEAK or budget_bytes is None or start_point.predicted_peak_bytes <= budget_bytes):
            _set_initial(problem, start_point, keep, rec, kept, option)
        else:
            start_point = None

    # Stop at a 1% gap, or (time objective) once the plan is provably within 1% of the forward's
    # compute time of the optimum: the cost model is not more accurate than that, and on graphs
    # of repeated layers CBC finds a near-optimal plan in a fraction of a second, then spends
    # minutes proving the last few percent.
    gap_abs = _GAP_FRACTION_OF_FORWARD * sum(problem.recompute_seconds) * _MS if objective == TIME else 0.0
    with tempfile.TemporaryDirectory(prefix="memcompile-cbc-") as tmp:
        log_path = os.path.join(tmp, "cbc.log")
        # No ``threads``: CBC's default (0) searches in the main thread. ``threads=1`` starts CBC 2.10's
        # threaded search with one worker, which now and then never starts ("Thread 0 used 0 times,
        # waiting to start 10.0" in its log): the solve idles to the time limit and returns the
        # feasibility pump's plan (2% of solves of a small test problem, 0% serial; retrying did not help:
        # under pytest the retries stalled again). Serial CBC walks another tree under the node cap, so
        # some plans differ from the threaded mode's (docs/BENCHMARKS.md, "CBC's worker thread").
        solver = _cbc(
            msg=False, timeLimit=max(1, int(round(time_limit_seconds))), gapRel=_GAP_REL,
            gapAbs=gap_abs or None, warmStart=start_point is not None, maxNodes=node_limit,
            logPath=log_path, options=[f"pumpTune {pump_tune(pump_rounds)}"] if pump_rounds is not None else None,
        )
        model.solve(solver)
        stop, nodes = _read_cbc_log(log_path)
    elapsed = time.perf_counter() - start
    status = pulp.LpStatus[model.status]
    sol_status = getattr(model, "sol_status", None)
    has_solution = sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible)
    stopped_early = sol_status == pulp.LpSolutionIntegerFeasible
    if stop is None:  # no log to read: a solve that stopped early stopped on time unless a node cap was given
        stop = "time" if stopped_early and (node_limit is None or elapsed >= time_limit_seconds) else (
            "nodes" if stopped_early else None)
    time_limit_hit = stopped_early and stop == "time"
    node_limit_hit = stopped_early and stop == "nodes"
    n_vars = len(model.variables())
    if not has_solution:
        return PlanSolution(
            status=status if status != "Optimal" else "Not Solved", solver="ilp", objective=float("nan"),
            keep=frozenset(), recompute=frozenset(), predicted_peak_bytes=0, added_seconds=0.0,
            solve_seconds=elapsed, n_vars=n_vars, n_constraints=n_rows,
            time_limit_hit=elapsed >= time_limit_seconds, nodes=nodes,
        )
    chosen_rec = {i for i, v in rec.items() if (v.value() or 0) > 0.5}
    chosen_keep = {i for i, v in keep.items() if (v.value() or 0) > 0.5}
    chosen_options = {o for o, v in option.items() if (v.value() or 0) > 0.5}
    # A free alias the backward reads is recomputed (it has no keep variable): report it that way.
    keep_names = frozenset(problem.names[i] for i in chosen_keep)
    rec_names = frozenset(problem.names[i] for i in chosen_rec)
    added = sum(problem.recompute_seconds[i] for i in chosen_rec) + sum(problem.options[o].seconds for o in chosen_options)
    return PlanSolution(
        status="Feasible" if stopped_early else "Optimal",
        solver="ilp",
        objective=float(pulp.value(model.objective) or 0.0),
        keep=keep_names,
        recompute=rec_names,
        predicted_peak_bytes=int(round((peak.value() or 0.0) * _MIB)),
        added_seconds=added,
        solve_seconds=elapsed,
        n_vars=n_vars,
        n_constraints=n_rows,
        time_limit_hit=time_limit_hit,
        node_limit_hit=node_limit_hit,
        nodes=nodes,
        **option_names(problem, chosen_options),
    )


_WARNINGS = threading.Lock()


def _cbc(**options) -> pulp.PULP_CBC_CMD:
    """PuLP's bundled CBC command. PuLP 3.x marks it deprecated (removed in 4.0, which pyproject excludes) when it
    is made; it is the solver every PuLP install ships, so it stays until the pin moves, and that warning is
    silenced. ``warnings.catch_warnings`` swaps the process's filters, so two solves on two threads
    (search.PLAIN_FLOOR_AHEAD) take a lock for it, and only around making the command, not the solve."""
    with _WARNINGS, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PULP_CBC_CMD is deprecated", category=DeprecationWarning)
        return pulp.PULP_CBC_CMD(**options)


_CBC_STOP = {"Stopped on time": "time", "Stopped on node": "nodes", "Optimal solution found": "optimal"}


def _read_cbc_log(path: str) -> tuple[str | None, int | None]:
    """CBC's reason to stop ("time", "nodes", "optimal", or None) and its enumerated nodes, from its log."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None, None
    result = re.search(r"^Result - (.*)$", text, re.MULTILINE)
    stop = next((why for prefix, why in _CBC_STOP.items() if result and result.group(1).startswith(prefix)), None)
    nodes = re.search(r"^Enumerated nodes:\s+(\d+)", text, re.MULTILINE)
    return stop, int(nodes.group(1)) if nodes else None


@dataclass(frozen=True, slots=True)
class MemoryRow:
    """One memory constraint as the ILP writes it: a running-sum variable E_k equal to E_{k-1}
    (``incremental``) or 0, plus ``terms`` ((kind, index) -> MiB; kinds "k" kept storage, "r"
    recomputed owner, "o" option), and E_k <= P - ``base_mib``."""

    label: str
    base_mib: float
    incremental: bool
    terms: tuple[tuple[tuple[str, int], float], ...]
    constraint: int = -1
    """Index of the problem constraint it writes."""


def build_memory_rows(problem: PlanProblem) -> tuple[MemoryRow, ...]:
    """The memory constraints of every solve of ``problem`` (they depend on the problem only): written
    once per problem, since the terms of each constraint are as many as the storages live there."""
    keepable = {problem.storage_of[i] for i in range(problem.n_candidates)
                if problem.can_save[i] and not problem.free_alias(i) and problem.storage_of[i] >= 0}

    def memory_terms(c) -> dict[tuple[str, int], float]:
        terms = {("k", s): problem.storage_bytes[s] / _MIB for s in c.kept if s in keepable}
        for s in c.recomputed:
            owner = problem.storage_owner[s]
            if problem.can_recompute[owner]:
                terms[("r", owner)] = problem.storage_bytes[s] / _MIB
        for o in c.option_stored:
            terms[("o", o)] = problem.options[o].packed_bytes / _MIB
        for o in c.option_expanded:
            terms[("o", o)] = terms.get(("o", o), 0.0) + problem.options[o].expanded_bytes / _MIB
        for o in c.option_held:
            terms[("o", o)] = terms.get(("o", o), 0.0) + problem.options[o].held_bytes / _MIB
        if c.switch_bytes and problem.switch_candidates:
            terms[("z", 0)] = c.switch_bytes / _MIB
        return terms

    rows = []
    order = sorted(range(len(problem.constraints)),
                   key=lambda j: (problem.constraints[j].side != FORWARD, problem.constraints[j].step))
    previous: dict[tuple[str, int], float] = {}
    for k, j in enumerate(order):
        c = problem.constraints[j]
        current = memory_terms(c)
        # one term per variable: LpAffineExpression keeps the last coefficient of a repeated variable
        keys = [*current, *(key for key in previous if key not in current)]
        deltas = {key: current.get(key, 0.0) - previous.get(key, 0.0) for key in keys}
        changes = tuple((key, w) for key, w in deltas.items() if w != 0.0)
        incremental = k > 0 and len(changes) < len(current)
        rows.append(MemoryRow(label=f"mem{k}_{c.side[0]}{c.step}", base_mib=c.base_bytes / _MIB, incremental=incremental,
                              terms=changes if incremental else tuple(current.items()), constraint=j))
        previous = current
    return tuple(rows)


def _set_initial(problem: PlanProblem, sol: PlanSolution, keep, rec, kept, option) -> None:
    """Hand a plan to CBC as its first incumbent (free aliases the plan kept are recomputed instead)."""
    index = {name: i for i, name in enumerate(problem.names)}
    keep_idx = {index[name] for name in sol.keep}
    rec_idx = {index[name] for name in sol.recompute}
    rec_idx |= {i for i in keep_idx if i not in keep and i in rec}
    for i, v in keep.items():
        v.setInitialValue(1 if i in keep_idx else 0, check=False)  # CBC itself drops a start that breaks a bound
    for i, v in rec.items():
        v.setInitialValue(1 if i in rec_idx and i not in keep_idx & set(keep) else 0, check=False)  # CBC itself drops a start that breaks a bound
    kept_storage = {problem.storage_of[i] for i in keep_idx if problem.storage_of[i] >= 0}
    for s, v in kept.items():
        if v.name.startswith("s"):
            v.setInitialValue(1 if s in kept_storage else 0, check=False)  # CBC itself drops a start that breaks a bound
    chosen = option_indices(problem, sol)
    for o, v in option.items():
        v.setInitialValue(1 if o in chosen else 0, check=False)  # CBC itself drops a start that breaks a bound


def _infeasible(problem: PlanProblem, start: float, why: str) -> PlanSolution:
    return PlanSolution(
        status=f"Infeasible: {why}", solver="ilp", objective=float("nan"), keep=frozenset(), recompute=frozenset(),
        predicted_peak_bytes=0, added_seconds=0.0, solve_seconds=time.perf_counter() - start,
        n_vars=0, n_constraints=0,
    )


def _variable_factory(model: pulp.LpProblem):
    """``model.add_variable`` where PuLP has it (3.3+: constructing ``LpVariable`` directly is deprecated
    there, one warning per variable), else the ``LpVariable`` constructor of older releases."""
    if hasattr(model, "add_variable"):
        return model.add_variable
    return lambda name, lowBound=None, upBound=None, cat="Continuous": pulp.LpVariable(name, lowBound, upBound, cat)
