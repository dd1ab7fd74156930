"""Recompute chains: when each recomputed value is built and how long it lives, given the whole plan.

The extraction (rewrite/recompute.py, torch's ``reordering_to_mimic_autograd_engine``) places a
recomputed value just before the first backward node that needs it, directly or through other
recomputed values. So a recomputed value is built at

    F(i) = min(its own first backward need, F(k) for every recomputed reader k),

and lives until L(i) = max(its own last need, F(k) for every recomputed reader k); a kept value lives
until the same L. Recomputing a value whose readers are recomputed too therefore pulls it, and
everything it reads, to the start of the chain: a recomputed residual stream pulls the layers below it
to the start of the backward. The ILP's static windows (problem.py) charge a recomputed storage over
its own reads and its direct readers' reads only; ``live_bytes`` is the exact account of a decision
under the placement above, against which the ILP's solutions are checked and its lazy chain rows
(ilp.py) are derived.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Collection
from dataclasses import dataclass, field

from . import tuning
from .problem import PlanProblem

_NEVER = 1 << 62


@dataclass(frozen=True, slots=True)
class ChainAccount:
    """Live bytes per step of a decision under the extraction's placement (forward steps, then backward)."""

    fw_live: tuple[int, ...]
    bw_live: tuple[int, ...]
    built_at: dict[int, int]
    """Recomputed candidate -> backward step at which it is built (F)."""
    backward: tuple[tuple[int, int, int, int], ...] = ()
    """(storage, first, last backward step, bytes) of every kept or recomputed storage."""

    @property
    def peak_bytes(self) -> int:
        return max((*self.fw_live, *self.bw_live), default=0)

    @property
    def peak_step(self) -> tuple[str, int]:
        """("forward" or "backward", step) of the peak."""
        fw = max(range(len(self.fw_live)), key=self.fw_live.__getitem__, default=0)
        bw = max(range(len(self.bw_live)), key=self.bw_live.__getitem__, default=0)
        if self.bw_live and (not self.fw_live or self.bw_live[bw] >= self.fw_live[fw]):
            return "backward", bw
        return "forward", fw


def readers_of(problem: PlanProblem) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in range(problem.n_candidates)]
    for k, ins in enumerate(problem.inputs):
        for j in ins:
            out[j].append(k)
    return out


def placement(problem: PlanProblem, recompute: Collection[int], readers: list[list[int]] | None = None,
              inlined: Collection[int] = ()) -> tuple[dict[int, int], dict[int, int]]:
    """(F, L) of the recomputed candidates (module docstring); candidates come in forward order, so
    one reverse pass sees every reader before the values it reads. A recomputed value Inductor
    inlines (``inlined``) is computed again in each reader's kernel: what it reads lives to its L."""
    readers = readers if readers is not None else readers_of(problem)
    rec = set(recompute)
    inl = set(inlined)
    built: dict[int, int] = {}
    last: dict[int, int] = {}
    need_window = problem.need_window
    for i in sorted(rec, reverse=True):
        nf, l = need_window[i]
        f = nf if nf >= 0 else _NEVER
        for k in readers[i]:
            if k in built:
                b = built[k]
                if b < f:
                    f = b
                e = last[k] if k in inl else b
                if e > l:
                    l = e
        if f < _NEVER:
            built[i] = f
            last[i] = max(l, f)
    return built, last


def live_bytes(problem: PlanProblem, keep: Collection[int], recompute: Collection[int],
               options: Collection[int] = (), *, fused: Collection[int] = (), inlined: Collection[int] = (),
               readers: list[list[int]] | None = None, members: dict[int, list[int]] | None = None) -> ChainAccount:
    """Live bytes per step of a decision (candidate and option indices) under the extraction's placement.
    ``fused``: recomputed values Inductor gives no buffer; ``inlined``: those of them it inlines;
    ``readers``, ``members``: ``readers_of(problem)`` and ``_storage_members(problem)``, when the caller has them."""
    readers = readers if readers is not None else readers_of(problem)
    built, rec_last = placement(problem, recompute, readers, inlined)
    fused, inlined = set(fused), set(inlined)
    n_fw, n_bw = len(problem.fw_base_bytes), len(problem.bw_base_bytes)
    # differences: each interval is two entries, summed once at the end (linear in steps + storages); an
    # interval [lo, hi] clipped to the steps adds at lo and takes away after hi
    fw = [0] * (n_fw + 1)
    bw = [0] * (n_bw + 1)
    fw_top, bw_top = n_fw - 1, n_bw - 1
    served = {i for o in options for i in problem.options[o].serves}
    storage_of, storage_owner, storage_bytes = problem.storage_of, problem.storage_owner, problem.storage_bytes
    need_window = problem.need_window

    members = members if members is not None else _storage_members(problem)
    kept_storage = {storage_of[i] for i in keep if storage_of[i] >= 0}
    spans: list[tuple[int, int, int, int]] = []
    for s in sorted(kept_storage):
        nbytes = storage_bytes[s]
        end = -1
        for i in members[s]:
            if i in built:
                continue
            if i not in served:
                w = need_window[i][1]
                if w > end:
                    end = w
            for k in readers[i]:
                if k in built:
                    w = rec_last[k] if k in inlined else built[k]
                    if w > end:
                        end = w
        lo = max(problem.keep_from[s], 0)
        if lo <= fw_top:
            fw[lo] += nbytes
            fw[fw_top + 1] -= nbytes
        hi = min(end, bw_top)
        if hi >= 0:
            bw[0] += nbytes
            bw[hi + 1] -= nbytes
        spans.append((s, 0, end, nbytes))
    # Recomputed storages: live after their burst over (F, L]; at F they are part of the burst, the
    # values the extraction builds just before that backward step, one after another (forward order),
    # each freed after its last reader there unless something later reads it. In storage order (the
    # order of their first members), as spans are read in that order.
    rebuilt = sorted({s for i in built if (s := storage_of[i]) >= 0 and storage_owner[s] == i
                      and s not in kept_storage and i not in fused}, key=lambda s: members[s][0])
    for s in rebuilt:
        group = [i for i in members[s] if i in built]
        lo = min(built[i] for i in group)
        hi = max(rec_last[i] for i in group)
        nbytes = storage_bytes[s]
        a, b = max(lo + 1, 0), min(hi, bw_top)
        if a <= b:
            bw[a] += nbytes
            bw[b + 1] -= nbytes
        spans.append((s, lo, hi, nbytes))
    bursts: dict[int, list[int]] = {}
    for i, f in built.items():
        bursts.setdefault(f, []).append(i)
    for tau, group in bursts.items():
        if len(group) == 1:
            # one value built: it holds its own storage's bytes (if it owns one that is neither kept nor fused)
            i = group[0]
            s = storage_of[i]
            peak = storage_bytes[s] if s >= 0 and s not in kept_storage and storage_owner[s] == i \
                and i not in fused else 0
        else:
            peak = _burst_peak(problem, sorted(group), tau, readers, rec_last, fused, inlined, kept_storage)
        if 0 <= tau <= bw_top:
            bw[tau] += peak
            bw[tau + 1] -= peak

    def add(arr: list[int], lo: int, hi: int, nbytes: int) -> None:
        lo, hi = max(lo, 0), min(hi, len(arr) - 2)
        if lo <= hi:
            arr[lo] += nbytes
            arr[hi + 1] -= nbytes

    for o in options:
        opt = problem.options[o]
        if opt.packed_bytes:
            add(fw, opt.fw_from, n_fw - 1, opt.packed_bytes)
            add(bw, 0, opt.bw_last, opt.packed_bytes)
        if opt.expanded_bytes:
            add(bw, opt.bw_first, opt.bw_last, opt.expanded_bytes)
        if opt.held_bytes:
            add(fw, opt.fw_from, opt.fw_until, opt.held_bytes)
    if problem.switch_bytes and problem.switched(recompute):
        for t, extra in enumerate(problem.switch_bytes):
            add(bw, t, t, extra)
    return ChainAccount(fw_live=_summed(fw, problem.fw_base_bytes), bw_live=_summed(bw, problem.bw_base_bytes),
                        built_at=built, backward=tuple(spans))


def _storage_members(problem: PlanProblem) -> dict[int, list[int]]:
    """Storage -> its candidates (the owner and its views), in candidate order."""
    members: dict[int, list[int]] = {}
    for i, s in enumerate(problem.storage_of):
        if s >= 0:
            members.setdefault(s, []).append(i)
    return members


def _summed(differences: list[int], base: tuple[int, ...]) -> tuple[int, ...]:
    """base[t] plus the running sum of differences[:t + 1]."""
    return tuple(map(operator.add, base, itertools.accumulate(differences[:len(base)])))


def _burst_peak(problem: PlanProblem, group: list[int], tau: int, readers, rec_last, fused, inlined,
                kept_storage) -> int:
    """Largest bytes the recomputed storages built at backward step ``tau`` hold at once while the burst runs."""
    pos = {i: p for p, i in enumerate(group)}
    last_read: dict[int, int] = {}

    def read_until(i: int) -> int:
        """Burst position of ``i``'s last reader there (an inlined reader passes its own on)."""
        if i in last_read:
            return last_read[i]
        end = pos[i]
        for k in readers[i]:
            if k in pos:
                end = max(end, read_until(k) if k in inlined else pos[k])
        last_read[i] = end
        return end

    storage_of, storage_owner, storage_bytes, need_window = (problem.storage_of, problem.storage_owner,
                                                             problem.storage_bytes, problem.need_window)
    frees: dict[int, int] = {}
    alloc: dict[int, int] = {}
    for i in group:
        s = storage_of[i]
        if s < 0 or s in kept_storage:
            continue
        owner = storage_owner[s]
        if owner not in pos or owner in fused:
            continue
        if owner not in alloc:
            alloc[owner] = storage_bytes[s]
        lo, hi = need_window[i]
        end = len(group) if rec_last[i] > tau or lo <= tau <= hi else read_until(i)
        if frees.get(owner, -1) < end:
            frees[owner] = end
    if not alloc:
        return 0
    running = peak = 0
    dying: dict[int, int] = {}
    for p, i in enumerate(group):
        if i in alloc:
            running += alloc[i]
            if running > peak:
                peak = running
            f = frees[i]
            dying[f] = dying.get(f, 0) + alloc[i]
        if p in dying:
            running -= dying.pop(p)
    return peak


@dataclass(frozen=True, slots=True)
class ChainRow:
    """A memory constraint at one backward step: the problem's constraint covering that step
    (``PlanProblem.bw_row_of_step``) plus chain terms (bytes, chain: ``ChainTerm.members``) and hold
    terms (``HoldTerm``s at this step)."""

    step: int
    base_bytes: int
    chains: tuple[tuple[int, tuple[int, ...]], ...]
    holds: tuple[HoldTerm, ...] = ()


@dataclass(frozen=True, slots=True)
class HoldTerm:
    """A kept storage held past its static window by a value recomputed from it: live at backward step
    ``step`` whenever the storage is kept, ``member`` (the candidate of it that ``reader`` reads) is not
    recomputed, ``reader`` is recomputed, and none of ``blockers`` is. The blockers are where, in the plan
    the term was found on, every recomputed path from ``reader`` to a value read before ``step`` stopped
    (the first value on it not recomputed). Valid for every plan: a kept copy lives until every value
    recomputed from it is built, and for ``reader`` to be built before ``step`` one such path must be
    recomputed throughout, blocker included."""

    nbytes: int
    storage: int
    member: int
    reader: int
    step: int
    blockers: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ChainTerm:
    """A recomputed storage pulled ahead of its own first read: live over backward steps [lo, hi]
    whenever every candidate of ``members`` (the storage's owner and the readers that pull it) is
    recomputed. Valid for every plan: F(owner) <= the pulling reader's first need = lo, and the
    owner's own last need = hi keeps it to there."""

    nbytes: int
    members: tuple[int, ...]
    """The owner, then each reader that pulls the one before it; the last is read where it is built."""
    lo: int
    hi: int


def pulled_terms(problem: PlanProblem, account: ChainAccount, tau: int, readers: list[list[int]]) -> list[ChainTerm]:
    """Chain terms of the recomputed storages ``account`` has live at backward step ``tau`` that the
    problem's static windows do not charge there because a chain pulled them ahead of their own reads.
    (Values a burst holds only while it runs are left out: where a burst peaks depends on what else
    pulls its chain, so no term is valid for every plan, and charging them anyway raised the floors
    measured on the zoo.)"""
    built = account.built_at
    out = []
    for s, lo, hi, nbytes in account.backward:
        owner = problem.storage_owner[s]
        if owner not in built or owner in problem.fused or not lo <= tau <= hi:
            continue
        first, last = problem.storage_window[s]
        if 0 <= first <= tau <= last:
            continue
        own_last = problem.need_window[owner][1]
        if own_last < tau:
            continue  # live at tau through a later reader's pull, not its own read: no valid bound
        path = _pull_path(problem, owner, built, readers)
        if path is not None:
            out.append(ChainTerm(nbytes=nbytes, members=path, lo=built[owner], hi=own_last))
    return out


def held_terms(problem: PlanProblem, account: ChainAccount, tau: int, readers: list[list[int]],
               keep: Collection[int]) -> list[HoldTerm]:
    """Hold terms of the kept storages ``account`` has live at backward step ``tau`` that the problem's
    static row there does not charge: the one-level windows see a reader's own reads, not a reader
    recomputed only to rebuild something needed later (a softmax's exp, a residual stream's next sum)."""
    built = account.built_at
    kept_storage = {problem.storage_of[i] for i in keep if problem.storage_of[i] >= 0}
    static = set(problem.constraints[problem.bw_row_of_step[tau]].kept)
    members = _storage_members(problem)
    out = []
    for s, lo, hi, nbytes in account.backward:
        if s not in kept_storage or s in static or not lo <= tau <= hi:
            continue
        for i in members[s]:
            if i in built:
                continue
            for k in readers[i]:
                if built.get(k, -1) >= tau:
                    blockers = _blockers(problem, k, tau, built, readers)
                    if blockers is not None:
                        out.append(HoldTerm(nbytes=nbytes, storage=s, member=i, reader=k, step=tau, blockers=blockers))
    return out


def _blockers(problem: PlanProblem, k: int, tau: int, built: dict[int, int], readers) -> tuple[int, ...] | None:
    """The first value not recomputed on each path from ``k`` through its readers to a value read before
    ``tau`` (None if some path is recomputed throughout: then ``k`` is built before ``tau``)."""
    out: set[int] = set()
    seen = {k}
    todo = [k]
    while todo:
        j = todo.pop()
        for r in readers[j]:
            if r in seen:
                continue
            seen.add(r)
            if r not in built:
                out.add(r)
            elif 0 <= problem.need_window[r][0] < tau:
                return None
            else:
                todo.append(r)
    return tuple(sorted(out))


def _pull_path(problem: PlanProblem, owner: int, built: dict[int, int], readers) -> tuple[int, ...] | None:
    """``owner`` and the recomputed readers through which the first read that builds it pulls it, in that
    order (None if the chain does not end at a value read where it is built)."""
    path = [owner]
    node = owner
    while problem.need_window[node][0] != built[node]:
        node = next((k for k in readers[node] if built.get(k) == built[node]), None)
        if node is None:
            return None
        path.append(node)
    return tuple(path)


@dataclass(slots=True)
class ChainCache:
    """Chain terms and steps found by earlier solves of one problem (valid for every plan of it)."""

    known: dict[tuple[int, ...], ChainTerm]
    steps: list[int]
    holds: dict[HoldTerm, None] = field(default_factory=dict)
    """Hold terms found, in the order found (a dict: an ordered set)."""


def solution_account(problem: PlanProblem, sol, *, index: dict[str, int] | None = None,
                     readers: list[list[int]] | None = None) -> ChainAccount:
    """``live_bytes`` of a solution of ``problem`` (its decisions by name), with the fusion the problem records."""
    from .problem import option_indices

    index = index if index is not None else {name: i for i, name in enumerate(problem.names)}
    return live_bytes(problem, {index[n] for n in sol.keep}, {index[n] for n in sol.recompute},
                      option_indices(problem, sol), fused=problem.fused, inlined=problem.inlined,
                      readers=readers if readers is not None else readers_of(problem))


def account_peak(problem: PlanProblem, sol) -> int:
    """The exact account's peak of a solution of ``problem``: what the chain rounds bring a plan's model peak to
    (they stop once the model's peak is at least the account's)."""
    return solution_account(problem, sol).peak_bytes


def solve_with_chains(solve, problem: PlanProblem, *, rounds: int, cache: ChainCache | None = None,
                      hold_terms: bool | None = None, **kwargs):
    """``solve`` (solve_ilp's signature), re-solved while the exact account of its plan (``live_bytes``)
    finds, at its peak step, recomputed storages pulled ahead of their reads that the static windows do
    not charge: each round adds a constraint at that step charging those chains (lazy constraints,
    valid for every plan), and charges every known chain at the earlier rounds' steps too. ``hold_terms``
    (default ``tuning.HOLD_TERMS``): also charge kept storages held by later recomputes (``HoldTerm``)."""
    readers = readers_of(problem)
    index = {name: i for i, name in enumerate(problem.names)}
    cache = cache if cache is not None else ChainCache({}, [])
    known, steps, holds = cache.known, cache.steps, cache.holds
    use_holds = tuning.HOLD_TERMS if hold_terms is None else hold_terms

    def rows() -> tuple[ChainRow, ...]:
        return tuple(
            ChainRow(step=t, base_bytes=problem.bw_base_bytes[t],
                     chains=tuple((c.nbytes, c.members) for c in known.values() if c.lo <= t <= c.hi),
                     holds=tuple(h for h in holds if h.step == t) if use_holds else ())
            for t in steps
        )

    sol = solve(problem, chain_rows=rows(), **kwargs)
    for _ in range(rounds):
        if not sol.feasible:
            return sol
        account = solution_account(problem, sol, index=index, readers=readers)
        side, tau = account.peak_step
        if side != "backward" or account.peak_bytes <= sol.predicted_peak_bytes:
            return sol
        new = [t for t in pulled_terms(problem, account, tau, readers) if t.members not in known]
        new_holds = [h for h in held_terms(problem, account, tau, readers, {index[n] for n in sol.keep})
                     if h not in holds] if use_holds else []
        if not new and not new_holds:
            return sol
        known.update((t.members, t) for t in new)
        holds.update(dict.fromkeys(new_holds))
        if tau not in steps:
            steps.append(tau)
        sol = solve(problem, chain_rows=rows(), **kwargs)
    return sol
