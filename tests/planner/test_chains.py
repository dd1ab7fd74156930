"""Recompute chains (planner/chains.py): the exact account of a plan under the extraction's placement,
and the lazy chain rows the ILP gets from it, on synthetic problems."""

from memcompile.passes.candidates import Candidate, CandidateSet
from memcompile.passes.planner.chains import (
    ChainCache,
    account_peak,
    held_terms,
    live_bytes,
    placement,
    readers_of,
    solve_with_chains,
)
from memcompile.passes.planner.ilp import solve_ilp
from memcompile.passes.planner.problem import build_problem, evaluate
from memcompile.passes.planner.solution import PEAK
from _planner_helpers import valid_plans
from test_ilp import MB, chain


def test_a_recomputed_chain_is_built_where_its_first_reader_needs_it():
    # a3 is read first (backward step 0), a0 last (step 3); recomputing a1..a3 builds all three at step 0
    problem = build_problem(chain(4))
    built, last = placement(problem, {1, 2, 3})
    assert built == {1: 0, 2: 0, 3: 0}
    assert last == {1: 2, 2: 1, 3: 0}
    # with a2 kept, a1 is built at its own read
    built, last = placement(problem, {1, 3})
    assert built == {1: 2, 3: 0}


def test_the_account_sees_the_chain_the_static_windows_miss():
    problem = build_problem(chain(4))
    keep, rec = {0}, {1, 2, 3}
    static_peak, _ = evaluate(problem, keep, rec)
    account = live_bytes(problem, keep, rec)
    # at step 0: a0 kept, a1, a2, a3 built (a1 and a2 live on to their own reads), plus the base
    assert account.bw_live[0] == problem.bw_base_bytes[0] + 4 * 8 * MB
    assert account.peak_bytes > static_peak
    # one level deep the static windows are right
    assert live_bytes(problem, {0, 1, 2}, {3}).peak_bytes == evaluate(problem, {0, 1, 2}, {3})[0]


def _burst() -> CandidateSet:
    """b0 -> b1 -> b2, only b2 read by the backward (step 0): recomputed, b0 and b1 live only in the burst."""
    cands = tuple(
        Candidate(name=f"b{i}", root=f"b{i}", nbytes=8 * MB, recompute_seconds=1e-3, can_save=True,
                  can_recompute=True, recompute_ban=None, needed=i == 2, inputs=(f"b{i-1}",) if i else (), fw_step=i,
                  fw_keep_from=i + 1, bw_first=0 if i == 2 else None, bw_last=0 if i == 2 else None)
        for i in range(3)
    )
    return CandidateSet(candidates=cands, fw_steps=("b0", "b1", "b2"), bw_steps=("g0", "g1"),
                        fw_base_bytes=(0, 0, 0), bw_base_bytes=(MB, MB))


def test_values_built_one_after_another_do_not_add_up():
    problem = build_problem(_burst())
    account = live_bytes(problem, set(), {0, 1, 2})
    # b0 is freed once b1 is built, b1 once b2 is: two at a time, not three
    assert account.bw_live[0] == MB + 2 * 8 * MB
    # Inductor fusing b1 into b2 leaves b0 and b2
    fused = live_bytes(problem, set(), {0, 1, 2}, fused={1}, inlined={1})
    assert fused.bw_live[0] == MB + 2 * 8 * MB
    assert live_bytes(problem, set(), {0, 1, 2}, fused={0, 1}, inlined={0, 1}).bw_live[0] == MB + 8 * MB


def test_chain_terms_hold_for_every_plan():
    """A lazy row's chain term says: when all its members are recomputed, the storage is live over
    [lo, hi]. Checked against the account of every valid plan of a small problem."""
    problem = build_problem(chain(5))
    cache = ChainCache({}, [])
    solve_with_chains(solve_ilp, problem, rounds=4, cache=cache, budget_bytes=None, objective=PEAK,
                      time_limit_seconds=10)
    assert cache.known, "the floor of a chain recomputes a chain: some term must be found"
    checked = 0
    for keep, rec in valid_plans(problem):
        account = live_bytes(problem, keep, rec)
        live = {s: (lo, hi) for s, lo, hi, _ in account.backward}
        for term in cache.known.values():
            if set(term.members) <= rec:
                s = problem.storage_of[term.members[0]]
                lo, hi = live[problem.storage_of[problem.storage_owner[s]]]
                assert lo <= term.lo and term.hi <= hi
                checked += 1
    assert checked


def test_chain_rows_lower_the_floor_the_account_finds():
    """The old, chain-blind ILP's floor on a stack of layers recomputes a long chain it believes costs
    24 MiB; built, it holds every pulled layer at once. With the chain rows the floor it predicts is the
    floor it builds, and it is lower."""
    problem = build_problem(chain(10))
    index = {name: i for i, name in enumerate(problem.names)}

    def account_peak(sol):
        return live_bytes(problem, {index[x] for x in sol.keep}, {index[x] for x in sol.recompute}).peak_bytes

    plain = solve_ilp(problem, budget_bytes=None, objective=PEAK, time_limit_seconds=10)
    aware = solve_with_chains(solve_ilp, problem, rounds=6, budget_bytes=None, objective=PEAK, time_limit_seconds=10)
    assert plain.feasible and aware.feasible
    assert account_peak(plain) > plain.predicted_peak_bytes  # the chain-blind model under-counts its own plan
    assert aware.predicted_peak_bytes == account_peak(aware)
    assert account_peak(aware) < account_peak(plain)


def _held(pull: bool = False) -> CandidateSet:
    """x (read at backward step 3, never recomputed) -> j -> i -> d: only x and d (step 2) are read by
    the backward, so recomputing i and d from a kept j holds j until d is rebuilt. ``pull``: i has
    another reader e, read at step 0, which, recomputed too, pulls i there."""
    spec = [("x", (), 3, False), ("j", ("x",), None, True), ("i", ("j",), None, True), ("d", ("i",), 2, True)]
    spec += [("e", ("i",), 0, True)] if pull else []
    cands = tuple(
        Candidate(name=n, root=n, nbytes=8 * MB, recompute_seconds=1e-3, can_save=True, can_recompute=rc,
                  recompute_ban=None if rc else "random op", needed=bw is not None, inputs=ins, fw_step=k,
                  fw_keep_from=k + 1, bw_first=bw, bw_last=bw)
        for k, (n, ins, bw, rc) in enumerate(spec))
    return CandidateSet(candidates=cands, fw_steps=tuple(s[0] for s in spec), bw_steps=("g0", "g1", "g2", "g3"),
                        fw_base_bytes=(0,) * len(spec), bw_base_bytes=(MB, 10 * MB, MB, MB))


def test_hold_terms_charge_a_kept_value_held_by_a_later_recompute():
    """The static windows charge a kept value over its readers' own reads; a reader recomputed only to
    rebuild something read later (a softmax's exp) holds it longer. Without hold terms the model
    under-counts that plan; with them the peak it predicts is the peak of the account."""
    problem = build_problem(_held())
    index = {name: i for i, name in enumerate(problem.names)}

    def account_peak(sol):
        return live_bytes(problem, {index[x] for x in sol.keep}, {index[x] for x in sol.recompute}).peak_bytes

    blind = solve_with_chains(solve_ilp, problem, rounds=6, hold_terms=False, budget_bytes=None, objective=PEAK,
                              time_limit_seconds=10)
    aware = solve_with_chains(solve_ilp, problem, rounds=6, hold_terms=True, budget_bytes=None, objective=PEAK,
                              time_limit_seconds=10)
    assert blind.feasible and aware.feasible
    assert account_peak(blind) > blind.predicted_peak_bytes
    assert aware.predicted_peak_bytes == account_peak(aware)
    assert account_peak(aware) < account_peak(blind)


def test_hold_terms_hold_for_every_plan():
    """A hold term says: when its storage is kept, its member not recomputed, its reader recomputed and
    none of its blockers recomputed (so no recomputed path pulls the reader ahead of the step), the
    storage is live at that step. Checked against the account of every valid plan, also where a second
    reader may pull the reader ahead (then that reader is a blocker)."""
    cache = ChainCache({}, [])
    solve_with_chains(solve_ilp, build_problem(_held()), rounds=6, cache=cache, hold_terms=True, budget_bytes=None,
                      objective=PEAK, time_limit_seconds=10)
    assert cache.holds, "the chain-blind floor of this graph keeps j for a later recompute: a hold must be found"
    assert _check_holds(build_problem(_held()), cache.holds)
    # with e, recomputing i pulls it to step 0 unless e is not recomputed: found on a plan, e is a blocker
    problem = build_problem(_held(pull=True))
    found = held_terms(problem, live_bytes(problem, {0, 1, 4}, {2, 3}), 1, readers_of(problem), {0, 1, 4})
    assert [(h.storage, h.reader, h.blockers) for h in found] == [(1, 2, (4,))]
    assert _check_holds(problem, found)


def _check_holds(problem, holds) -> int:
    checked = 0
    for keep, rec in valid_plans(problem):
        account = live_bytes(problem, keep, rec)
        if set(account.built_at) != rec:
            continue  # a recompute nothing reads: the ILP pays its time for no bytes, never chooses it
        live = {s: (lo, hi) for s, lo, hi, _ in account.backward}
        kept_storage = {problem.storage_of[i] for i in keep}
        for h in holds:
            if h.storage in kept_storage and h.member not in rec and h.reader in rec \
                    and not rec & set(h.blockers):
                lo, hi = live[h.storage]
                assert lo <= h.step <= hi
                checked += 1
    return checked





def test_account_peak_is_the_exact_accounts_peak_of_a_solution():
    """chains.account_peak: the account of a PlanSolution (by names), as live_bytes gives it for the same plan; a
    chain-blind root plan's account lies above its model peak, a chain-aware floor's equals it."""
    problem = build_problem(chain(10))
    index = {name: i for i, name in enumerate(problem.names)}
    plain = solve_ilp(problem, budget_bytes=None, objective=PEAK, time_limit_seconds=10)
    aware = solve_with_chains(solve_ilp, problem, rounds=6, budget_bytes=None, objective=PEAK, time_limit_seconds=10)
    for sol in (plain, aware):
        expected = live_bytes(problem, {index[x] for x in sol.keep}, {index[x] for x in sol.recompute}).peak_bytes
        assert account_peak(problem, sol) == expected
    assert account_peak(problem, plain) > plain.predicted_peak_bytes
    assert account_peak(problem, aware) == aware.predicted_peak_bytes
