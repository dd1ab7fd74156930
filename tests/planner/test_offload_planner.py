"""The offload mode in the planner: the option's memory model (device bytes held in the forward until
the copy's wait, the prefetched copy over its backward window), ILP vs brute force, the shared host
link, exclusivity with the other modes, greedy validity (synthetic problems, no torch.compile); and on
the PlanProblem of a real toy GPT under made-up device profiles: offload is chosen where the host link
makes it cheaper than recomputing, and mixed plans are never slower than recompute alone."""

import dataclasses

import pytest
import torch

from _planner_helpers import assert_ilp_matches_brute_force, decision
import memcompile.partitioner as partitioner_mod
from memcompile.models import make
from memcompile.passes.candidates import Candidate, CandidateSet
from memcompile.passes.costs import DeviceProfile
from memcompile.passes.planner.greedy import solve_greedy
from memcompile.passes.planner.ilp import solve_ilp
from memcompile.passes.planner.problem import (
    FEWBIT,
    OFFLOAD,
    OPTION_MODES,
    QUANTIZE,
    build_problem,
    evaluate,
    is_valid,
    queued_offload_seconds,
    without_modes,
)
from memcompile.passes.planner.solution import PEAK, TIME

MB = 2**20


def chain(n: int, *, nbytes=8 * MB, seconds=1e-3, offload_seconds=2e-4, hold=1, lead=1, transfer=1e-4,
          quantize=False, link=(1.0, 1.0)) -> CandidateSet:
    """A chain a0 -> a1 -> ... read in reverse by the backward. Offloading a_i holds it on the device
    ``hold`` forward steps past its last use and brings it back ``lead`` backward steps before its read."""
    cands = []
    for i in range(n):
        bw = n - 1 - i
        cands.append(Candidate(
            name=f"a{i}", root=f"a{i}", nbytes=nbytes, recompute_seconds=seconds * (i + 1),
            can_save=True, can_recompute=True, recompute_ban=None,
            needed=True, inputs=(f"a{i-1}",) if i else (), fw_step=i, fw_keep_from=i + 1,
            bw_first=bw, bw_last=bw,
            quantize_bytes=nbytes // 4 if quantize else 0, quantize_seconds=3e-4,
            offload_seconds=offload_seconds, offload_transfer_seconds=transfer,
            offload_release_step=min(i + hold, n - 1), offload_held_from=max(bw - lead, 0),
            offload_copies=((i * 1e-3, transfer, (i + hold) * 1e-3), ((bw - lead) * 1e-3, transfer, bw * 1e-3)),
        ))
    return CandidateSet(
        candidates=tuple(cands), fw_steps=tuple(c.name for c in cands), bw_steps=tuple(f"g{i}" for i in range(n)),
        fw_base_bytes=tuple(nbytes for _ in range(n)), bw_base_bytes=tuple(nbytes for _ in range(n)),
        link_seconds=link,
    )


def test_offload_option_holds_the_storage_until_the_wait_and_the_copy_from_the_prefetch():
    problem = build_problem(chain(4, hold=2, lead=1))
    (opt,) = [o for o in problem.options if problem.names[o.candidate] == "a1"]
    assert opt.mode == OFFLOAD and opt.whole_storage and opt.packed_bytes == 0
    assert (opt.fw_from, opt.fw_until, opt.held_bytes) == (2, 3, 8 * MB)  # from its last use to the wait
    assert (opt.bw_first, opt.bw_last, opt.expanded_bytes) == (1, 2, 8 * MB)  # from the prefetch to the read
    assert opt.seconds == 2e-4 and opt.transfer_seconds == 1e-4
    a1 = problem.names.index("a1")
    o = problem.options.index(opt)
    keep_all = set(range(4))
    assert evaluate(problem, keep_all, set())[0] == 40 * MB  # backward start: base and all four storages
    peak, seconds = evaluate(problem, keep_all - {a1}, set(), {o})
    assert seconds == pytest.approx(2e-4)
    # forward step 3: base, a0, a2 kept and a1 held until its wait; backward step 1: base, a0, a2 and
    # a1's prefetched copy; backward step 0: base, a0, a2, a3
    assert peak == 32 * MB
    rows = {(c.side, c.step) for c in problem.constraints if o in c.option_held}
    assert rows and all(side == "forward" and 2 <= step <= 3 for side, step in rows)
    assert all(o not in c.option_held for c in problem.constraints if c.side == "backward")


def test_a_held_window_that_ends_gets_its_own_forward_rows():
    """Held bytes leave the forward after the wait, so a step after it with a larger base needs its own
    row: the suffix-maximum rows alone would miss the earlier step where the held bytes count."""
    cset = chain(4, hold=0)
    cset = dataclasses.replace(cset, fw_base_bytes=(MB, 30 * MB, 2 * MB, 31 * MB))
    cands = list(cset.candidates)
    cands[0] = dataclasses.replace(cands[0], offload_release_step=1)  # a0 held through step 1, gone at 2
    problem = build_problem(dataclasses.replace(cset, candidates=tuple(cands)))
    o = next(k for k, opt in enumerate(problem.options) if problem.names[opt.candidate] == "a0")
    rows = {c.step: c for c in problem.constraints if c.side == "forward"}
    assert set(rows) == {1, 3}  # without the held window only step 3 (the largest base) would have a row
    assert o in rows[1].option_held and rows[1].base_bytes == 30 * MB
    assert o not in rows[3].option_held


@pytest.mark.parametrize("budget_mb", [40, 32, 28, 24, 16])
def test_ilp_matches_brute_force_with_offload(budget_mb):
    assert_ilp_matches_brute_force(build_problem(chain(4)), budget_mb * MB)


def test_no_offload_without_memory_pressure():
    sol = solve_ilp(build_problem(chain(6)), budget_bytes=None, objective=TIME, time_limit_seconds=10)
    assert sol.feasible and not sol.offload and sol.added_seconds == 0


@pytest.mark.parametrize("budget_mb", [48, 40, 32])
def test_offload_replaces_recompute_where_cheaper(budget_mb):
    problem = build_problem(chain(6))
    mixed = solve_ilp(problem, budget_bytes=budget_mb * MB, objective=TIME, time_limit_seconds=10)
    plain = solve_ilp(without_modes(problem, (OFFLOAD,)), budget_bytes=budget_mb * MB, objective=TIME,
                      time_limit_seconds=10)
    assert mixed.feasible and plain.feasible and plain.added_seconds > 0
    assert mixed.offload and mixed.added_seconds < plain.added_seconds


def test_expensive_copies_are_not_chosen():
    problem = build_problem(chain(6, offload_seconds=1.0))
    sol = solve_ilp(problem, budget_bytes=48 * MB, objective=TIME, time_limit_seconds=10)
    assert sol.feasible and not sol.offload and sol.recompute


def test_copies_share_one_link():
    """Each transfer takes 0.4 s and a phase 1 s: at most two storages may go to the host."""
    problem = build_problem(chain(6, transfer=0.4))
    assert problem.link_budget_seconds == 1.0
    sol = solve_ilp(problem, budget_bytes=None, objective=PEAK, time_limit_seconds=10)
    assert len(sol.offload) == 2
    keep, rec, options = decision(problem, sol)
    assert is_valid(problem, keep, rec, options)
    assert [problem.names[o.candidate] for o in problem.options[:3]] == ["a0", "a1", "a2"]
    assert is_valid(problem, {2, 3, 4, 5}, set(), {0, 1})
    assert not is_valid(problem, {3, 4, 5}, set(), {0, 1, 2})
    greedy = solve_greedy(problem, budget_bytes=None, objective=PEAK)
    assert len(greedy.offload) <= 2


def test_queued_copies_are_checked_against_their_prices():
    problem = build_problem(chain(4, transfer=5e-3))  # each copy 5 ms, windows of 1 ms: the link queues them
    options = range(len(problem.options))
    alone = sum(max(0.0, c[1] - (c[2] - c[0])) for o in options for c in problem.options[o].copies)
    assert queued_offload_seconds(problem, options) > alone > 0
    assert queued_offload_seconds(problem, ()) == 0.0


def test_one_mode_per_storage_and_no_recompute_from_an_offloaded_storage():
    problem = build_problem(chain(3, quantize=True))
    a0 = {problem.options[o].mode: o for o in range(len(problem.options)) if problem.names[problem.options[o].candidate] == "a0"}
    assert set(a0) == {QUANTIZE, OFFLOAD}
    assert not is_valid(problem, {1, 2}, set(), {a0[QUANTIZE], a0[OFFLOAD]})
    assert not is_valid(problem, {0, 1, 2}, set(), {a0[OFFLOAD]})  # kept and offloaded
    assert not is_valid(problem, {2}, {1}, {a0[OFFLOAD]})  # recomputing a1 reads a0 at its full bytes
    assert is_valid(problem, {1, 2}, set(), {a0[OFFLOAD]})
    for budget in (None, 40 * MB, 24 * MB):
        sol = solve_ilp(problem, budget_bytes=budget, objective=PEAK if budget is None else TIME, time_limit_seconds=10)
        assert not (sol.offload & (sol.keep | sol.recompute | sol.quantize))


@pytest.mark.parametrize("budget_mb", [48, 40, 32])
def test_greedy_with_offload_gives_valid_plans(budget_mb):
    problem = build_problem(chain(6, quantize=True))
    sol = solve_greedy(problem, budget_bytes=budget_mb * MB, objective=TIME)
    keep, rec, options = decision(problem, sol)
    assert is_valid(problem, keep, rec, options)
    peak, seconds = evaluate(problem, keep, rec, options)
    assert peak == sol.predicted_peak_bytes and seconds == pytest.approx(sol.added_seconds)
    if sol.feasible:
        assert peak <= budget_mb * MB
    warm = solve_ilp(problem, budget_bytes=budget_mb * MB, objective=TIME, time_limit_seconds=10, warm_start=True)
    assert warm.feasible and warm.added_seconds <= sol.added_seconds * 1.01 + 1e-12


# ------------------------------------------------------- the PlanProblem of a toy GPT, made-up devices


def gpt_problem(monkeypatch, profile, modes=("keep", "recompute", "inplace", "offload")):
    """The PlanProblem memcompile builds for gpt-tiny (inner="eager", offload offered on CPU through the
    test hook) when the device has ``profile``."""
    seen = []

    def record(cset):
        problem = build_problem(cset)
        seen.append(problem)
        return problem

    torch._dynamo.reset()  # a second model of the same class would reuse the compiled graph
    monkeypatch.setattr(DeviceProfile, "for_device", classmethod(lambda cls, device: profile))
    monkeypatch.setattr(partitioner_mod, "build_problem", record)
    model, inputs = make("gpt-tiny")
    options = {"inner": "eager", "memory_budget": 0.5, "modes": modes, "_force_offload_on_cpu": True}
    torch.compile(model, backend="memcompile", options=options)(*inputs).backward()
    (problem,) = seen
    return problem


# slow compute, so recomputing a matmul costs more than copying its output over the link
FAST_LINK = DeviceProfile(name="made-up: fast link", peak_flops=1e9, memory_bandwidth=1e10,
                          host_link_bandwidth=1e12, kernel_overhead_seconds=1e-7)
SLOW_LINK = dataclasses.replace(FAST_LINK, name="made-up: slow link", host_link_bandwidth=1e6)


def budgets_between(problem, n=4):
    """``n`` byte budgets from just above the smallest peak (all modes) to below keeping everything."""
    floor = solve_ilp(problem, budget_bytes=None, objective=PEAK, time_limit_seconds=10).predicted_peak_bytes
    top = evaluate(problem, {i for i in range(problem.n_candidates) if problem.needed[i] and problem.can_save[i]}, set())[0]
    return [int(floor + (top - floor) * k / (n + 1)) for k in range(1, n + 1)]


def test_ilp_offloads_where_the_host_link_beats_recompute(monkeypatch, no_compile_cache):
    problem = gpt_problem(monkeypatch, FAST_LINK)
    offload = [o for o in problem.options if o.mode == OFFLOAD]
    assert len(offload) >= 20
    budget = budgets_between(problem)[0]
    mixed = solve_ilp(problem, budget_bytes=budget, objective=TIME, time_limit_seconds=20)
    plain = solve_ilp(without_modes(problem, (OFFLOAD,)), budget_bytes=budget, objective=TIME, time_limit_seconds=20)
    assert mixed.feasible and plain.feasible and plain.added_seconds > 0
    assert mixed.offload and mixed.added_seconds < plain.added_seconds
    print(f"budget {budget} B: recompute/inplace +{plain.added_seconds * 1e6:.1f} us; with offload "
          f"+{mixed.added_seconds * 1e6:.1f} us ({len(mixed.offload)} offloaded)")
    # what it offloads costs less to copy than to recompute
    by_owner = {problem.names[o.candidate]: o for o in offload}
    cheaper = [name for name in mixed.offload
               if by_owner[name].seconds < problem.recompute_seconds[problem.names.index(name)]]
    assert len(cheaper) >= len(mixed.offload) / 2

    slow = gpt_problem(monkeypatch, SLOW_LINK)
    sol = solve_ilp(slow, budget_bytes=budget, objective=TIME, time_limit_seconds=20)
    assert not sol.offload  # every copy would take longer than a whole phase of compute


@pytest.mark.parametrize("profile", [FAST_LINK, DeviceProfile.for_device("cpu")], ids=["fast-link", "cpu-figures"])
def test_mixed_plans_are_never_slower_than_recompute_alone(monkeypatch, profile, no_compile_cache):
    """All modes enabled against recompute alone, at tight budgets: the ILP uses the cheaper modes where
    they pay. Both solves stop at the solver's 1% gap, so the mixed plan may be that much above its
    optimum, which is at most the recompute-only optimum."""
    modes = ("keep", "recompute", "inplace", "quantize", "fewbit", "offload")
    problem = gpt_problem(monkeypatch, profile, modes=modes)
    assert {o.mode for o in problem.options} >= {OFFLOAD, QUANTIZE, FEWBIT}
    plain_problem = without_modes(problem, OPTION_MODES)
    gap = 0.01 * sum(problem.recompute_seconds)
    for budget in budgets_between(plain_problem):
        mixed = solve_ilp(problem, budget_bytes=budget, objective=TIME, time_limit_seconds=20)
        plain = solve_ilp(plain_problem, budget_bytes=budget, objective=TIME, time_limit_seconds=20)
        assert mixed.feasible and plain.feasible
        assert mixed.added_seconds <= max(plain.added_seconds * 1.01, plain.added_seconds + gap), budget
