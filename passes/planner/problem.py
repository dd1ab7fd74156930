"""CandidateSet -> PlanProblem: plain numbers and index lists, no FX (the solver's input).

Memory is counted per storage (a view shares its root's bytes). Keeping any alias of a
storage keeps the storage; recomputing the owner rebuilds it just before its first
backward use. Constraints are written only where the live set can change:
- forward: keeping a storage adds its bytes from the step it would otherwise die on, so
  the constraint at step t dominates every earlier step with a smaller base; we keep the
  steps whose base exceeds every later base (suffix maxima);
- backward: the coefficients only change at a storage's first or last backward use, so
  one constraint per segment between those breakpoints, with the segment's largest base.

Mode options are the ways, other than keeping or recomputing, to serve a value's backward
reads; each is one binary choice in the ILP, with packed bytes (stored from the forward to the
last backward need), expanded bytes (live over a backward window) and added seconds:
- quantize a storage (lossy, opt-in): its int8 codes and scales are the packed bytes; the
  dequantized copy (full bytes) lives over its backward window, like a recomputed storage.
  It serves every alias the backward reads and replaces the whole storage;
- few-bit (lossy, opt-in): the derivative code of a GELU/SiLU input (packed bytes) lives from
  its forward step to its backward read; no full-size copy is rebuilt;
- in-place (lossless): an activation's derivative reads the activation's output y instead of
  its input x. Nothing is packed and no time is added, but y's storage must be kept, and when
  the derivative runs after y's last backward need, y lives on until it (the expanded bytes
  are y's bytes over that extension).
- offload a storage (lossless, opt-in): copied to host memory after its last forward use and
  prefetched before its first backward read (rewrite/offload.py). It packs nothing on the device;
  the storage stays on the device from where keeping it would start to cost (its last forward use)
  through the step after which the forward waits for the copy (held bytes over [fw_from,
  fw_until], forward only), and the prefetched copy (full bytes) lives from the prefetch to the
  last backward read. Its seconds are the transfer time the compute around each copy cannot hide,
  plus the op overhead. Copies share one host link: the chosen storages' transfer time must fit in
  the shorter phase's compute (``link_seconds``), so the per-copy prices stay a fair estimate.
Each candidate takes exactly one way: keep, recompute, or one option. An option excludes
keeping and recomputing what it replaces (the storage, or the value), and two options that
serve the same value or replace the same storage exclude each other. A recomputed value's
inputs are kept or recomputed, with one exception: a backward-only value (``Candidate.backward_only``:
a part of a derivative that reads forward values only, which Inductor's decompositions split
out, e.g. GELU's ``cdf + x * pdf``) may read a quantized input's dequantized copy, as the
derivative it belongs to would. So a quantize option also serves the backward-only readers of its
storage, over their windows; an offloaded storage never feeds a recompute.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from ..candidates import CandidateSet

FORWARD, BACKWARD = "forward", "backward"
QUANTIZE, FEWBIT, INPLACE, OFFLOAD = "quantize", "fewbit", "inplace", "offload"
OPTION_MODES = (QUANTIZE, FEWBIT, INPLACE, OFFLOAD)


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryConstraint:
    side: str
    step: int
    """Step (within its side) where this constraint's base is largest."""
    base_bytes: int
    kept: tuple[int, ...]
    """Storages whose bytes count here when kept."""
    recomputed: tuple[int, ...]
    """Storages whose bytes count here when recomputed."""
    option_stored: tuple[int, ...] = ()
    """Mode options whose packed bytes count here when chosen."""
    option_expanded: tuple[int, ...] = ()
    """Mode options whose expanded bytes (dequantized copy, extended output, prefetched copy) count here when chosen."""
    option_held: tuple[int, ...] = ()
    """Mode options whose forward-held bytes (an offloaded storage before its copy is waited for) count here."""
    switch_bytes: int = 0
    """Bytes that count here (negative: are saved) when any of ``PlanProblem.switch_candidates`` is
    recomputed: the scratch a channels-last backward adds at this step's convolution backward."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ModeOption:
    """One way other than keep or recompute to serve backward reads (module docstring)."""

    mode: str
    """QUANTIZE, FEWBIT, INPLACE or OFFLOAD."""
    candidate: int
    """quantize, offload: the storage's owner; fewbit: the GELU/SiLU input; inplace: the activation's input."""
    storage: int
    """The storage of the value(s) it serves (-1 if none)."""
    whole_storage: bool
    """It replaces the storage for every alias the backward reads (quantize, offload); else it serves one value."""
    serves: tuple[int, ...]
    """Candidates whose backward reads it serves."""
    packed_bytes: int
    expanded_bytes: int
    """Bytes live over [bw_first, bw_last] when chosen: the dequantized copy (quantize), the
    activation output's extra lifetime (inplace), the prefetched copy (offload); 0 for few-bit."""
    seconds: float
    fw_from: int
    """Forward step from which the packed bytes are live."""
    bw_first: int
    bw_last: int
    requires_kept: int = -1
    """A storage that must be kept when it is chosen (inplace: the activation's output), else -1."""
    held_bytes: int = 0
    """Device bytes live over forward steps [fw_from, fw_until] only (offload: the storage until
    the forward waits for its copy to the host)."""
    fw_until: int = -1
    transfer_seconds: float = 0.0
    """Seconds each of its copies keeps the host link busy (offload: one per phase)."""
    copies: tuple[tuple[float, float, float], ...] = ()
    """offload: (issue_at, transfer_seconds, wait_at) of its forward and its backward copy
    (seconds from each phase's start), for ``queued_offload_seconds``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanProblem:
    names: tuple[str, ...]
    storage_of: tuple[int, ...]
    """Per candidate: index of its storage, -1 if it has none (tuples, views of inputs, symbols)."""
    storage_bytes: tuple[int, ...]
    storage_owner: tuple[int, ...]
    """Per storage: the candidate that allocates it (recomputing it re-allocates the storage)."""
    can_save: tuple[bool, ...]
    can_recompute: tuple[bool, ...]
    needed: tuple[bool, ...]
    recompute_seconds: tuple[float, ...]
    inputs: tuple[tuple[int, ...], ...]
    constraints: tuple[MemoryConstraint, ...]
    n_steps: int
    options: tuple[ModeOption, ...] = ()
    link_seconds: tuple[float, float] = (math.inf, math.inf)
    """Predicted compute seconds of the forward and the backward: the chosen offloads' transfer
    seconds must fit in the shorter (each phase moves every offloaded storage once)."""
    backward_only: tuple[bool, ...] = ()
    """Per candidate: ``Candidate.backward_only`` (recomputed, it may read a quantized input)."""
    need_window: tuple[tuple[int, int], ...] = ()
    """Per candidate: the backward steps (first, last) at which it must be available ((-1, -1): none):
    its own reads and those passed on by values rebuilt whenever it is (planner/chains.py)."""
    fw_base_bytes: tuple[int, ...] = ()
    bw_base_bytes: tuple[int, ...] = ()
    """What every plan holds at each forward and backward step (the constraints keep only their maxima)."""
    keep_from: tuple[int, ...] = ()
    """Per storage: the forward step from which keeping it costs."""
    storage_window: tuple[tuple[int, int], ...] = ()
    """Per storage: the backward steps (first, last) over which the constraints charge it ((-1, -1): none)."""
    fused: frozenset[int] = frozenset()
    """Candidates Inductor gives no buffer of their own when recomputed (planner/chains.py); empty
    where the graph runs eagerly."""
    inlined: frozenset[int] = frozenset()
    """The subset of ``fused`` Inductor computes again in each reader's kernel."""
    bw_row_of_step: tuple[int, ...] = ()
    """Per backward step: the index of the constraint that covers it (its terms are the step's)."""
    switch_candidates: tuple[int, ...] = ()
    """Convolutions whose recomputation turns the whole backward channels-last (Inductor decides the layout
    per graph): recomputing any of them adds the constraints' ``switch_bytes``."""
    switch_bytes: tuple[int, ...] = ()
    """Per backward step: those bytes (empty: none)."""

    def switched(self, recompute: Collection[int]) -> bool:
        """Whether a plan recomputing ``recompute`` runs its backward channels-last."""
        return any(i in recompute for i in self.switch_candidates)

    def quantize_options(self) -> dict[int, int]:
        """Storage -> index of its quantize option."""
        return {opt.storage: o for o, opt in enumerate(self.options) if opt.mode == QUANTIZE}

    def quantized_input(self, i: int, j: int, quantize_options: dict[int, int]) -> int:
        """The quantize option whose dequantized copy recomputing ``i`` may read for its input ``j``,
        else -1 (``quantize_options``: ``self.quantize_options()``)."""
        if not self.backward_only or not self.backward_only[i] or self.storage_of[j] < 0:
            return -1
        return quantize_options.get(self.storage_of[j], -1)

    @property
    def link_budget_seconds(self) -> float:
        return min(self.link_seconds)

    @property
    def n_candidates(self) -> int:
        return len(self.names)

    def free_alias(self, i: int) -> bool:
        return _free_alias(i, self.storage_of[i], self.storage_owner, self.can_recompute[i], self.recompute_seconds[i])


def build_problem(cset: CandidateSet) -> PlanProblem:
    cands = cset.candidates
    index = {c.name: i for i, c in enumerate(cands)}
    storage_index: dict[str, int] = {}
    storage_bytes: list[int] = []
    storage_owner: list[int] = []
    for i, c in enumerate(cands):
        if c.root == c.name and c.nbytes > 0:
            storage_index[c.name] = len(storage_bytes)
            storage_bytes.append(c.nbytes)
            storage_owner.append(i)
    storage_of = tuple(storage_index.get(c.root, -1) for c in cands)

    n_storage = len(storage_bytes)
    keep_from = [0] * n_storage
    first = [None] * n_storage
    last = [-1] * n_storage
    for s, owner in enumerate(storage_owner):
        keep_from[s] = cands[owner].fw_keep_from
    # Backward windows, two kinds per candidate:
    # - need: it must be available then (its own reads, and reads of values that are rebuilt
    #   whenever it is: tuples that cannot be saved and free views pass needs through);
    # - ext: a value built from it may be recomputed then, so a kept copy must outlive that.
    # A storage is charged over the union of both. Candidates come in forward order
    # (consumers follow their inputs): one reverse pass propagates the windows.
    n_cands = len(cands)
    need = [[None, -1] for _ in range(n_cands)]
    ext = [[None, -1] for _ in range(n_cands)]

    def widen(window: list, lo: int | None, hi: int) -> None:
        if lo is not None:
            window[0] = lo if window[0] is None else min(window[0], lo)
            window[1] = max(window[1], hi)

    for i in range(n_cands - 1, -1, -1):
        c = cands[i]
        if c.bw_first is not None:
            widen(need[i], c.bw_first, c.bw_last)
        passes_on = not c.can_save or _free_alias(i, storage_of[i], storage_owner, c.can_recompute, c.recompute_seconds)
        for name in c.inputs:
            j = index[name]
            if passes_on:
                widen(need[j], *need[i])
                widen(ext[j], *ext[i])
            else:
                widen(ext[j], *need[i])
    win_first: list[int | None] = []
    win_last: list[int] = []
    for i in range(n_cands):
        window = [None, -1]
        widen(window, *need[i])
        widen(window, *ext[i])
        win_first.append(window[0])
        win_last.append(window[1])
    for i in range(len(cands)):
        s = storage_of[i]
        if s < 0 or win_first[i] is None:
            continue
        first[s] = win_first[i] if first[s] is None else min(first[s], win_first[i])
        last[s] = max(last[s], win_last[i])

    reads = _storage_reads(cands, storage_of, need)
    backward_only = tuple(c.backward_only and c.can_recompute for c in cands)
    options = _mode_options(cands, index, storage_of, storage_bytes, storage_owner, need, last, reads,
                            _backward_only_reads(cands, index, storage_of, need, backward_only))
    options += _offload_options(cands, storage_bytes, storage_owner, reads)

    constraints: list[MemoryConstraint] = []
    fw_base = cset.fw_base_bytes
    # Terms only enter as t grows, except held windows (offload), which leave after fw_until: the
    # suffix-maximum argument holds within each stretch between such ends, so it restarts at each.
    held_ends = {opt.fw_until + 1 for opt in options if opt.held_bytes and opt.fw_from <= opt.fw_until}
    best_later = -1
    for t in range(len(fw_base) - 1, -1, -1):
        if t + 1 in held_ends:
            best_later = -1
        if fw_base[t] > best_later:
            best_later = fw_base[t]
            kept = tuple(s for s in range(n_storage) if keep_from[s] <= t)
            stored = tuple(o for o, opt in enumerate(options) if opt.packed_bytes and opt.fw_from <= t)
            held = tuple(o for o, opt in enumerate(options) if opt.held_bytes and opt.fw_from <= t <= opt.fw_until)
            constraints.append(MemoryConstraint(side=FORWARD, step=t, base_bytes=fw_base[t], kept=kept, recomputed=(),
                                                option_stored=stored, option_held=held))

    bw_base = cset.bw_base_bytes
    n_bw = len(bw_base)
    cuts = {0, n_bw}
    for s in range(n_storage):
        if last[s] >= 0:
            cuts.add(min(last[s] + 1, n_bw))
        if first[s] is not None:
            cuts.add(first[s])
    for opt in options:
        if opt.packed_bytes:
            cuts.add(min(opt.bw_last + 1, n_bw))
        if opt.expanded_bytes:
            cuts.update((opt.bw_first, min(opt.bw_last + 1, n_bw)))
    bounds = sorted(c for c in cuts if 0 <= c <= n_bw)
    seen: dict[tuple, int] = {}
    row_of_step = [-1] * n_bw
    # per backward step, what a channels-last backward changes there (empty: no plan switches it)
    switch = tuple(cset.switch_bytes) if cset.switch_candidates and any(cset.switch_bytes) else ()
    for a, b in zip(bounds, bounds[1:]):
        if a >= b:
            continue
        kept = tuple(s for s in range(n_storage) if last[s] >= a)
        recomputed = tuple(s for s in range(n_storage) if first[s] is not None and first[s] <= a <= last[s])
        stored = tuple(o for o, opt in enumerate(options) if opt.packed_bytes and opt.bw_last >= a)
        expanded = tuple(o for o, opt in enumerate(options) if opt.expanded_bytes and opt.bw_first <= a <= opt.bw_last)
        # a step where a channels-last backward changes its op's scratch gets its own row with that term;
        # the segment's row covers the other steps
        switching = [t for t in range(a, b) if switch and switch[t]]
        plain = [t for t in range(a, b) if t not in switching]
        if plain:
            step = max(plain, key=bw_base.__getitem__)
            key = (kept, recomputed, stored, expanded)
            row = MemoryConstraint(side=BACKWARD, step=step, base_bytes=bw_base[step], kept=kept,
                                   recomputed=recomputed, option_stored=stored, option_expanded=expanded)
            if key not in seen:
                seen[key] = len(constraints)
                constraints.append(row)
            elif constraints[seen[key]].base_bytes < bw_base[step]:
                constraints[seen[key]] = row
            for t in plain:
                row_of_step[t] = seen[key]
        for t in switching:
            row_of_step[t] = len(constraints)
            constraints.append(MemoryConstraint(
                side=BACKWARD, step=t, base_bytes=bw_base[t], kept=kept, recomputed=recomputed,
                option_stored=stored, option_expanded=expanded, switch_bytes=switch[t]))

    return PlanProblem(
        names=tuple(c.name for c in cands),
        storage_of=storage_of,
        storage_bytes=tuple(storage_bytes),
        storage_owner=tuple(storage_owner),
        can_save=tuple(c.can_save for c in cands),
        can_recompute=tuple(c.can_recompute for c in cands),
        needed=tuple(c.needed for c in cands),
        recompute_seconds=tuple(c.recompute_seconds for c in cands),
        inputs=tuple(tuple(index[n] for n in c.inputs) for c in cands),
        constraints=tuple(constraints),
        n_steps=len(fw_base) + n_bw,
        options=tuple(options),
        link_seconds=cset.link_seconds,
        backward_only=backward_only,
        need_window=tuple((w[0], w[1]) if w[0] is not None else (-1, -1) for w in need),
        fw_base_bytes=tuple(fw_base),
        bw_base_bytes=tuple(bw_base),
        keep_from=tuple(keep_from),
        storage_window=tuple((first[s], last[s]) if first[s] is not None else (-1, -1) for s in range(n_storage)),
        bw_row_of_step=tuple(row_of_step),
        switch_candidates=tuple(index[n] for n in cset.switch_candidates) if switch else (),
        switch_bytes=switch,
    )


def _storage_reads(cands, storage_of, need) -> dict[int, tuple[tuple[int, ...], list]]:
    """Per storage the backward reads: (the candidates among its aliases the backward reads, their need
    windows). What a whole-storage option (quantize, offload) serves and over which steps."""
    members: dict[int, list[int]] = {}
    for i, s in enumerate(storage_of):
        if s >= 0:
            members.setdefault(s, []).append(i)
    reads = {}
    for s, group in members.items():
        serves = tuple(i for i in group if cands[i].needed)
        windows = [need[i] for i in group if need[i][0] is not None]
        if serves and windows:
            reads[s] = (serves, windows)
    return reads


def _backward_only_reads(cands, index, storage_of, need, backward_only) -> dict[int, list]:
    """Per storage: the need windows of the recomputable backward-only candidates (``backward_only``)
    that read it (when recomputed, they read a quantized storage's dequantized copy, so its window
    covers theirs)."""
    out: dict[int, list] = {}
    for i, c in enumerate(cands):
        if not backward_only[i] or need[i][0] is None:
            continue
        for name in c.inputs:
            s = storage_of[index[name]]
            if s >= 0:
                out.setdefault(s, []).append(need[i])
    return out


def _mode_options(cands, index, storage_of, storage_bytes, storage_owner, need, last, reads,
                  backward_only_reads) -> list[ModeOption]:
    """The legal mode options: a quantized copy per quantizable storage the backward or a
    backward-only value reads, a few-bit code per GELU/SiLU input and an output-form derivative per
    activation input whose only backward reads are those derivatives (``last``: each storage's last
    backward step when kept; ``reads``: ``_storage_reads``; ``backward_only_reads``:
    ``_backward_only_reads``)."""
    options = []
    for s, owner in enumerate(storage_owner):
        c = cands[owner]
        if not c.quantize_bytes or (s not in reads and s not in backward_only_reads):
            continue
        serves, windows = reads.get(s, ((), []))
        windows = windows + backward_only_reads.get(s, [])
        options.append(ModeOption(
            mode=QUANTIZE, candidate=owner, storage=s, whole_storage=True, serves=serves,
            packed_bytes=c.quantize_bytes, expanded_bytes=storage_bytes[s], seconds=c.quantize_seconds,
            fw_from=c.fw_step, bw_first=min(w[0] for w in windows), bw_last=max(w[1] for w in windows),
        ))
    for i, c in enumerate(cands):
        # a view of it read elsewhere in the backward passes its need on: the option cannot serve that
        if not c.needed or storage_of[i] < 0 or need[i] != [c.bw_first, c.bw_last]:
            continue
        if c.fewbit_bytes:
            options.append(ModeOption(
                mode=FEWBIT, candidate=i, storage=storage_of[i], whole_storage=False, serves=(i,),
                packed_bytes=c.fewbit_bytes, expanded_bytes=0, seconds=c.fewbit_seconds, fw_from=c.fw_step,
                bw_first=c.bw_first, bw_last=c.bw_last,
            ))
        output = index.get(c.inplace_output) if c.inplace_output else None
        out_storage = storage_of[output] if output is not None else -1
        if out_storage >= 0 and storage_owner[out_storage] == output and cands[output].can_save:
            # kept, the output lives to its own last backward need; the derivative may read it later
            extends = c.bw_last > last[out_storage]
            options.append(ModeOption(
                mode=INPLACE, candidate=i, storage=storage_of[i], whole_storage=False, serves=(i,),
                packed_bytes=0, expanded_bytes=storage_bytes[out_storage] if extends else 0, seconds=0.0,
                fw_from=c.fw_step, bw_first=max(last[out_storage] + 1, 0) if extends else c.bw_first,
                bw_last=c.bw_last, requires_kept=out_storage,
            ))
    return options


def _offload_options(cands, storage_bytes, storage_owner, reads) -> list[ModeOption]:
    """An offload option per storage the candidates priced (``Candidate.offload_seconds``) whose
    backward reads give it a window (``reads``: ``_storage_reads``)."""
    options = []
    for s, owner in enumerate(storage_owner):
        c = cands[owner]
        if c.offload_seconds is None or s not in reads:
            continue
        serves, windows = reads[s]
        first_read = min(w[0] for w in windows)
        held_from = first_read if c.offload_held_from is None else min(c.offload_held_from, first_read)
        options.append(ModeOption(
            mode=OFFLOAD, candidate=owner, storage=s, whole_storage=True, serves=serves,
            packed_bytes=0, expanded_bytes=storage_bytes[s], seconds=c.offload_seconds,
            fw_from=c.fw_keep_from, bw_first=held_from, bw_last=max(w[1] for w in windows),
            held_bytes=storage_bytes[s], fw_until=c.offload_release_step,
            transfer_seconds=c.offload_transfer_seconds, copies=c.offload_copies,
        ))
    return options


def without_modes(problem: PlanProblem, modes: Collection[str]) -> PlanProblem:
    """``problem`` with the options of ``modes`` taken out (what a plan without those modes may choose)."""
    kept = [o for o, opt in enumerate(problem.options) if opt.mode not in modes]
    if len(kept) == len(problem.options):
        return problem
    renumber = {o: k for k, o in enumerate(kept)}
    rows = tuple(
        dataclasses.replace(
            c, option_stored=tuple(renumber[o] for o in c.option_stored if o in renumber),
            option_expanded=tuple(renumber[o] for o in c.option_expanded if o in renumber),
            option_held=tuple(renumber[o] for o in c.option_held if o in renumber),
        )
        for c in problem.constraints
    )
    return dataclasses.replace(problem, options=tuple(problem.options[o] for o in kept), constraints=rows)


def conflicts(a: ModeOption, b: ModeOption) -> bool:
    """Two options that may not both be chosen: they serve the same value, or one replaces the
    storage the other serves."""
    if set(a.serves) & set(b.serves):
        return True
    return (a.whole_storage or b.whole_storage) and a.storage == b.storage >= 0


def conflict_partners(options: Sequence[ModeOption]) -> tuple[tuple[int, ...], ...]:
    """Per option o, the options p > o it ``conflicts`` with, ascending: the pairs of the pairwise test, found
    through the values and storages they name (linear in the options and their partners, not quadratic)."""
    by_value: dict[int, set[int]] = {}
    by_storage: dict[int, list[int]] = {}
    whole_by_storage: dict[int, list[int]] = {}
    for o, opt in enumerate(options):
        for v in opt.serves:
            by_value.setdefault(v, set()).add(o)
        if opt.storage >= 0:
            by_storage.setdefault(opt.storage, []).append(o)
            if opt.whole_storage:
                whole_by_storage.setdefault(opt.storage, []).append(o)
    out = []
    for o, opt in enumerate(options):
        found: set[int] = set()
        for v in opt.serves:
            found.update(by_value[v])
        if opt.storage >= 0:
            found.update((by_storage if opt.whole_storage else whole_by_storage).get(opt.storage, ()))
        out.append(tuple(sorted(p for p in found if p > o)))
    return tuple(out)


def any_conflict(options: Sequence[ModeOption]) -> bool:
    """Whether some two of ``options`` ``conflict`` (the pairwise test, in one pass)."""
    served: set[int] = set()
    storages: dict[int, list[bool]] = {}
    for opt in options:
        values = set(opt.serves)
        if values & served:
            return True
        served |= values
        if opt.storage >= 0:
            storages.setdefault(opt.storage, []).append(opt.whole_storage)
    return any(len(flags) > 1 and any(flags) for flags in storages.values())


def _free_alias(i: int, s: int, storage_owner, can_recompute: bool, recompute_seconds: float) -> bool:
    """Candidate ``i`` shares storage ``s`` owned by another candidate and is rebuilt for free:
    recomputing it costs no time and no memory of its own, so keeping it never pays."""
    return s >= 0 and storage_owner[s] != i and can_recompute and recompute_seconds == 0.0


def evaluate(
    problem: PlanProblem, keep: set[int], recompute: set[int], options: Collection[int] = ()
) -> tuple[int, float]:
    """(peak bytes, added seconds) of a decision under the problem's memory model (``options``: option indices)."""
    kept_storage = {problem.storage_of[i] for i in keep if problem.storage_of[i] >= 0}
    rec_storage = {problem.storage_of[i] for i in recompute if problem.storage_of[i] >= 0 and problem.storage_owner[problem.storage_of[i]] == i}
    options = set(options)
    switched = problem.switched(recompute)
    peak = 0
    for c in problem.constraints:
        total = c.base_bytes + (c.switch_bytes if switched else 0)
        total += sum(problem.storage_bytes[s] for s in c.kept if s in kept_storage)
        total += sum(problem.storage_bytes[s] for s in c.recomputed if s in rec_storage)
        total += sum(problem.options[o].packed_bytes for o in c.option_stored if o in options)
        total += sum(problem.options[o].expanded_bytes for o in c.option_expanded if o in options)
        total += sum(problem.options[o].held_bytes for o in c.option_held if o in options)
        peak = max(peak, total)
    seconds = sum(problem.recompute_seconds[i] for i in recompute) + sum(problem.options[o].seconds for o in options)
    return peak, seconds


def is_valid(problem: PlanProblem, keep: set[int], recompute: set[int], options: Collection[int] = ()) -> bool:
    """Every needed value is kept, recomputed or served by an option; every recomputed value's inputs
    are kept or recomputed (or, for a backward-only value, quantized); an option's storage (whole-storage options) or value is not also kept or
    recomputed, no two chosen options conflict, a storage an option requires is kept, and the
    chosen offloads' copies fit on the host link."""
    options = sorted(set(options))
    quantized = problem.quantize_options()
    if sum(problem.options[o].transfer_seconds for o in options) > problem.link_budget_seconds:
        return False
    served = {i for o in options for i in problem.options[o].serves}
    kept_storage = {problem.storage_of[i] for i in keep if problem.storage_of[i] >= 0}
    if any_conflict([problem.options[o] for o in options]):
        return False
    for o in options:
        opt = problem.options[o]
        if opt.whole_storage:
            if opt.storage in kept_storage or problem.storage_owner[opt.storage] in recompute:
                return False
        elif opt.candidate in keep or opt.candidate in recompute:
            return False
        if opt.requires_kept >= 0 and opt.requires_kept not in kept_storage:
            return False
    for i in range(problem.n_candidates):
        if problem.needed[i] and i not in keep and i not in recompute and i not in served:
            return False
        if i in recompute and any(
            j not in keep and j not in recompute and problem.quantized_input(i, j, quantized) not in options
            for j in problem.inputs[i]
        ):
            return False
        if i in keep and not problem.can_save[i]:
            return False
        if i in recompute and not problem.can_recompute[i]:
            return False
    return True


def queued_offload_seconds(problem: PlanProblem, options: Collection[int]) -> float:
    """Exposed seconds of the chosen offloads' copies when they queue on one link (forward copies
    among themselves, backward copies among themselves; ``offload_cost.queued_exposed_seconds``),
    against which the options' own seconds, priced one copy at a time, can be checked."""
    from ..offload_cost import queued_exposed_seconds

    chosen = [problem.options[o] for o in sorted(set(options)) if problem.options[o].copies]
    total = 0.0
    for phase in (0, 1):
        total += sum(queued_exposed_seconds([opt.copies[phase] for opt in chosen]))
    return total


def option_names(problem: PlanProblem, chosen: Collection[int]) -> dict[str, frozenset[str]]:
    """PlanSolution's per-mode fields (``quantize``, ``fewbit``, ``inplace``, ``offload``) for the chosen options."""
    return {
        mode: frozenset(problem.names[problem.options[o].candidate] for o in chosen if problem.options[o].mode == mode)
        for mode in OPTION_MODES
    }


def option_indices(problem: PlanProblem, sol) -> set[int]:
    """The options a PlanSolution chose (inverse of ``option_names``)."""
    names = {mode: getattr(sol, mode) for mode in OPTION_MODES}
    return {o for o, opt in enumerate(problem.options) if problem.names[opt.candidate] in names[opt.mode]}
