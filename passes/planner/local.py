"""Local improvement of a plan against the exact account of its memory (chains.live_bytes).

The ILP optimizes static rows plus the chain rows it has found so far, so the plan it rates lowest may hold
more than it says (kept storages held by recomputed readers, values a burst holds: docs/planner.md). The
exact account of a decision is linear in the graph's size, so many decisions can be tried where one build
and simulation costs a second: at the account's peak step each move below is tried, the one that lowers
the account's peak most is taken, and so on until none does (or ``max_moves``).

A decision here is its recompute set R: the build (rewrite/recompute.saved_for) saves whatever the backward
reads that R does not rebuild, so the kept set follows from R (``closure``). Moves, for a storage live at
the peak:
- a kept storage: recompute it (its owner and the aliases the backward reads), keeping its inputs;
- a recomputed storage: keep it instead, and drop the recomputation nothing needs any more;
- a kept storage held by recomputed readers: keep what those readers build instead.
The plan's mode options stay as chosen; a plan with a quantized or offloaded storage is left as it is.
"""

from __future__ import annotations

import array
import collections
import dataclasses
import hashlib
import itertools
from collections.abc import Collection

from . import tuning
from .chains import _storage_members, live_bytes, readers_of
from .problem import PlanProblem, any_conflict, evaluate, option_indices
from .solution import PlanSolution


def closure(problem: PlanProblem, recompute: Collection[int], served: Collection[int] = (), *,
            roots: tuple[list[int], list[int]] | None = None) -> tuple[set[int], set[int]] | None:
    """(keep, recompute) of a plan that recomputes ``recompute``: every value the backward reads (unless a
    chosen option serves it: ``served``) or a recomputed value reads is kept unless rebuilt (a value that
    cannot be saved is rebuilt too), and a rebuilt value that nothing needs is dropped. None if some value
    can be neither. ``roots``: ``closure_roots(problem, served)``, when the caller has it."""
    inputs, needed, can_save, can_recompute = problem.inputs, problem.needed, problem.can_save, problem.can_recompute
    rec = set(recompute)
    served = set(served)
    # drop rebuilt values that neither the backward (unserved) nor another rebuilt value reads, outermost first
    rebuilt_readers = collections.Counter(itertools.chain.from_iterable(inputs[k] for k in rec))
    # value -> how many rebuilt values read it
    wanted = lambda i: (needed[i] and i not in served) or rebuilt_readers[i] > 0  # noqa: E731
    stack = [i for i in rec if not ((needed[i] and i not in served) or i in rebuilt_readers)]
    while stack:
        i = stack.pop()
        if i in rec and not wanted(i):
            rec.discard(i)
            for j in inputs[i]:
                rebuilt_readers[j] -= 1
            stack.extend(j for j in inputs[i] if j in rec)
    # Each value's fate follows from itself alone (rebuilt if asked to be, else kept if it can be saved, else
    # rebuilt if it can be), so the values the backward reads that can be saved and are not rebuilt are kept
    # at once, and only the rest is walked.
    savable, others = roots if roots is not None else closure_roots(problem, served)
    keep = set(savable)
    keep.difference_update(rec)
    seen = set(keep)
    stack = [*others, *rec]
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        if i in rec:
            if not can_recompute[i]:
                return None
            stack.extend(inputs[i])
        elif can_save[i]:
            keep.add(i)
        elif can_recompute[i]:
            rec.add(i)
            stack.extend(inputs[i])
        else:
            return None
    return keep, rec


def closure_roots(problem: PlanProblem, served: Collection[int] = ()) -> tuple[list[int], list[int]]:
    """The values the backward reads that no option serves: (those that can be saved, the others)."""
    served = set(served)
    roots = [i for i in range(problem.n_candidates) if problem.needed[i] and i not in served]
    return [i for i in roots if problem.can_save[i]], [i for i in roots if not problem.can_save[i]]


def max_recompute(problem: PlanProblem, like: PlanSolution) -> PlanSolution | None:
    """The plan that recomputes every value it can and keeps the rest (torch's plan at a budget of 0.0 in
    spirit), as a ``PlanSolution`` with ``like``'s solver fields and no options; None where no such plan
    exists. A value is left out of the recompute set where it reads, directly or through values left out,
    a value that can be neither saved nor recomputed (a random op's tuple): its closure would need it."""
    can_save, can_recompute, inputs = problem.can_save, problem.can_recompute, problem.inputs
    blocked = [not can_save[i] and not can_recompute[i] for i in range(problem.n_candidates)]
    rec: set[int] = set()
    for i in range(problem.n_candidates):  # forward order: inputs first
        if can_recompute[i] and not any(blocked[j] for j in inputs[i]):
            rec.add(i)
        elif not can_save[i]:
            blocked[i] = True
    closed = closure(problem, rec)
    if closed is None:
        return None
    keep, rec = closed
    peak, seconds = evaluate(problem, keep, rec)
    return dataclasses.replace(
        like, solver="all-recompute", keep=frozenset(problem.names[i] for i in keep),
        recompute=frozenset(problem.names[i] for i in rec), quantize=frozenset(), fewbit=frozenset(),
        inplace=frozenset(), offload=frozenset(), predicted_peak_bytes=peak, added_seconds=seconds)


class _OptionCheck:
    """``is_valid`` for the plans ``closure`` gives, with the plan's options fixed: ``closure`` keeps or rebuilds
    every value the backward reads and every input of a rebuilt value, keeps only what can be saved and rebuilds
    only what can be rebuilt, so what is left to check is what involves the options (tests/planner/test_local.py
    checks that this agrees with ``is_valid``)."""

    def __init__(self, problem: PlanProblem, options: Collection[int]) -> None:
        chosen = [problem.options[o] for o in sorted(set(options))]
        self.possible = sum(opt.transfer_seconds for opt in chosen) <= problem.link_budget_seconds \
            and not any_conflict(chosen)
        self.candidates = [opt.candidate for opt in chosen if not opt.whole_storage]
        self.whole = [(opt.storage, problem.storage_owner[opt.storage]) for opt in chosen if opt.whole_storage]
        self.required = [opt.requires_kept for opt in chosen if opt.requires_kept >= 0]
        self.storage_of = problem.storage_of

    def __call__(self, keep: set[int], rec: set[int]) -> bool:
        if not self.possible:
            return False
        if any(i in keep or i in rec for i in self.candidates):
            return False
        if self.whole or self.required:
            kept_storage = {self.storage_of[i] for i in keep}
            if any(s in kept_storage or owner in rec for s, owner in self.whole):
                return False
            return all(s in kept_storage for s in self.required)
        return True


class _Seen(dict):
    """Account peaks of recompute sets asked for (a digest of the set -> its peak, or ``INVALID``), one per plan
    options; small (a 16-byte key per move), so a whole search's descents can share them."""

    INVALID = -1

    @staticmethod
    def of(seen: dict | None, options: Collection[int]) -> _Seen | None:
        if seen is None:
            return None
        return seen.setdefault(frozenset(options), _Seen())

    @staticmethod
    def key(rec: Collection[int]) -> bytes:
        return hashlib.blake2b(array.array("q", sorted(rec)).tobytes(), digest_size=16).digest()


ACCUMULATE = True
"""After the best move at a peak step, the other moves that lowered the plan there are added one by one, each kept
where it lowers the account further."""

PRUNE = True
"""Skip the moves whose lower bound (``_RecomputeBound``) shows they cannot be taken: the same moves are taken
as without it (tests/planner/test_local.py checks both ways), at a fraction of the accounts."""


class _RecomputeBound:
    """A lower bound on the account's peak after recomputing kept storage ``s``: recomputing it removes its
    bytes over its kept span (forward from ``keep_from``, backward to its last hold) and removes nothing
    else (the closure only adds values, the placement only builds earlier and frees later, the bursts only
    grow), so each step keeps at least its live bytes less, where the span covers it, the storage's bytes."""

    def __init__(self, problem: PlanProblem, acc) -> None:
        self.problem = problem
        self.end = {s: hi for s, _, hi, _ in acc.backward}  # a kept storage's span is (s, 0, last hold, bytes)
        self.fw_pre, self.fw_suf = _running_max(acc.fw_live)
        self.bw_pre, self.bw_suf = _running_max(acc.bw_live)

    def __call__(self, s: int) -> int:
        b = self.problem.storage_bytes[s]
        lo = min(max(self.problem.keep_from[s], 0), len(self.fw_pre) - 1)
        end = min(self.end[s], len(self.bw_pre) - 2)  # -1: held by no backward step
        return max(self.fw_pre[lo], self.fw_suf[lo] - b, self.bw_pre[end + 1] - b, self.bw_suf[end + 1])


def _running_max(live: tuple[int, ...]) -> tuple[list[int], list[int]]:
    """(pre, suf): pre[t] the largest of live[:t], suf[t] of live[t:] (0 where empty), t in 0..len(live)."""
    n = len(live)
    pre, suf = [0] * (n + 1), [0] * (n + 1)
    for t in range(n):
        pre[t + 1] = max(pre[t], live[t])
    for t in range(n - 1, -1, -1):
        suf[t] = max(suf[t + 1], live[t])
    return pre, suf


def improve(problem: PlanProblem, sol: PlanSolution, *, max_moves: int | None = None,
            max_accounts: int | None = None, stats: dict | None = None, seen: dict | None = None) -> PlanSolution | None:
    """A plan whose exact account peaks lower than ``sol``'s, found by at most ``max_moves`` moves above
    (default ``tuning.LOCAL_MOVES``), or None. ``max_accounts``: stop once that many plans were accounted (the
    best found so far is the result); ``stats``: where ``stats["accounts"]`` counts them. ``seen``: the account
    peaks of the moves earlier calls on the same ``problem`` tried (``_Seen``; read and added to): a move whose peak
    is known to be no lower than the plan it would replace is not accounted again, so the moves are the same as
    without it (and the count too: a move skipped so counts as accounted)."""
    max_moves = tuning.LOCAL_MOVES if max_moves is None else max_moves
    counted = stats if stats is not None else {}
    counted["accounts"] = 0
    if not sol.feasible:
        return None
    options = option_indices(problem, sol)
    if any(problem.options[o].whole_storage for o in options):
        return None  # a quantized or offloaded storage: its copies' lifetimes are the rewrite's, left as they are
    served = {i for o in options for i in problem.options[o].serves}
    index = {name: i for i, name in enumerate(problem.names)}
    readers = readers_of(problem)
    members = _storage_members(problem)
    roots = closure_roots(problem, served)
    valid = _OptionCheck(problem, options)

    peaks = _Seen.of(seen, options)

    def account(rec: set[int], above: int | None = None):
        """The move's (peak, seconds, keep, recompute, account), or None where it is no plan; with ``above``,
        also None where ``seen`` knows its peak is at or above that (it could not be taken)."""
        counted["accounts"] += 1
        key = peaks.key(rec) if peaks is not None else None
        if key is not None and above is not None:
            known = peaks.get(key)
            if known is not None and (known == _Seen.INVALID or known >= above):
                return None
        closed = closure(problem, rec, served, roots=roots)
        if closed is None or not valid(*closed):
            if key is not None:
                peaks[key] = _Seen.INVALID
            return None
        keep, closed_rec = closed
        acc = live_bytes(problem, keep, closed_rec, options, fused=problem.fused, inlined=problem.inlined,
                         readers=readers, members=members)
        if key is not None:
            peaks[key] = acc.peak_bytes
        seconds = sum(problem.recompute_seconds[i] for i in closed_rec) + sum(problem.options[o].seconds for o in options)
        return acc.peak_bytes, seconds, keep, closed_rec, acc

    start = account({index[n] for n in sol.recompute})
    if start is None:
        return None
    best = start
    for _ in range(max_moves):
        _, _, keep, rec, acc = best
        side, tau = acc.peak_step
        kept_storage = {problem.storage_of[i] for i in keep if problem.storage_of[i] >= 0}
        live = ([s for s, lo, hi, _ in acc.backward if lo <= tau <= hi] if side == "backward"
                else sorted(kept_storage))
        tried: list[tuple[set[int], int | None]] = []  # (recompute set, lower bound on its account's peak)
        bound = _RecomputeBound(problem, acc) if PRUNE else None
        for s in live:
            owner = problem.storage_owner[s]
            if s in kept_storage:
                if problem.can_recompute[owner]:
                    tried.append((rec | {owner} | {i for i in members[s] if i in keep or problem.needed[i]},
                                  bound(s) if bound is not None else None))
                held_by = {k for i in members[s] for k in readers[i] if k in rec and problem.storage_of[k] != s}
                if held_by:
                    tried.append((rec - {j for k in held_by for j in members.get(problem.storage_of[k], [k])}, None))
            elif owner in rec:
                tried.append((rec - set(members[s]), None))
        # the lowest account, ties to the move tried first; a move whose bound cannot beat the best found
        # (or the plan itself) is not accounted: moves without a bound first, then by bound, lowest first
        order = sorted(range(len(tried)), key=lambda t: (tried[t][1] is not None, tried[t][1] or 0, t))
        found, found_at = None, -1
        improving: list[tuple[int, int]] = []  # (account peak, move) of every move that lowers the plan
        for t in order:
            if max_accounts is not None and counted["accounts"] >= max_accounts:
                break
            candidate, low = tried[t]
            if low is not None:
                limit = best[0] if ACCUMULATE else (found or best)[0]
                if low > limit or (low == limit and (ACCUMULATE or found is None or t > found_at)):
                    break  # the rest are bounded no lower
            result = account(candidate, above=best[0])  # not below the plan: neither improving nor taken
            if result is not None and result[0] < best[0]:
                improving.append((result[0], t))
            if result is not None and (result[0] < (found or best)[0]
                                       or (found is not None and result[0] == found[0] and t < found_at)):
                found, found_at = result, t
        if found is None:
            break
        if ACCUMULATE and len(improving) > 1:
            # the other moves that lower the plan, added to the best one, best first, each kept if it lowers the
            # account further (moves at one peak step in different layers are often independent)
            for _, t in sorted(improving)[1:]:
                if max_accounts is not None and counted["accounts"] >= max_accounts:
                    break
                candidate = tried[t][0]
                merged = (found[3] | (candidate - rec)) - (rec - candidate)
                result = account(merged, above=found[0])
                if result is not None and result[0] < found[0]:
                    found = result
        best = found
        if max_accounts is not None and counted["accounts"] >= max_accounts:
            break
    if best is start or best[0] >= start[0]:
        return None
    peak, seconds, keep, rec, _ = best
    return dataclasses.replace(
        sol, solver=f"{sol.solver}+local", keep=frozenset(problem.names[i] for i in keep),
        recompute=frozenset(problem.names[i] for i in rec), predicted_peak_bytes=evaluate(problem, keep, rec, options)[0],
        added_seconds=seconds,
    )
