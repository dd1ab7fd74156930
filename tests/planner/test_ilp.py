"""The planner on synthetic problems (no torch.compile): ILP vs brute force, greedy validity."""

import pytest

from _planner_helpers import assert_ilp_matches_brute_force, decision
from memcompile.passes.candidates import Candidate, CandidateSet
from memcompile.passes.planner.greedy import solve_greedy
from memcompile.passes.planner.ilp import solve_ilp
from memcompile.passes.planner.problem import build_problem, evaluate, is_valid
from memcompile.passes.planner.solution import PEAK, TIME

MB = 2**20


def chain(n: int, *, nbytes=8 * MB, seconds=1e-3, random_at=()) -> CandidateSet:
    """A linear chain a0 -> a1 -> ... like a stack of layers: the backward reads every value in reverse."""
    cands = []
    for i in range(n):
        cands.append(
            Candidate(
                name=f"a{i}", root=f"a{i}", nbytes=nbytes, recompute_seconds=seconds * (i + 1),
                can_save=True, can_recompute=i not in random_at, recompute_ban="random op" if i in random_at else None,
                needed=True, inputs=(f"a{i-1}",) if i else (), fw_step=i, fw_keep_from=i + 1,
                bw_first=n - 1 - i, bw_last=n - 1 - i,
            )
        )
    return CandidateSet(
        candidates=tuple(cands), fw_steps=tuple(c.name for c in cands), bw_steps=tuple(f"g{i}" for i in range(n)),
        fw_base_bytes=tuple(nbytes for _ in range(n)), bw_base_bytes=tuple(nbytes for _ in range(n)),
    )


@pytest.mark.parametrize("budget_mb", [80, 56, 48, 40, 32])
def test_ilp_matches_brute_force_on_a_chain(budget_mb):
    assert_ilp_matches_brute_force(build_problem(chain(6)), budget_mb * MB)


def test_random_values_are_never_recomputed():
    problem = build_problem(chain(5, random_at=(0, 3)))
    sol = solve_ilp(problem, budget_bytes=None, objective=PEAK, time_limit_seconds=10)
    assert sol.feasible
    assert {"a0", "a3"} <= sol.keep and not ({"a0", "a3"} & sol.recompute)


def test_smaller_budget_never_gives_a_larger_model_peak():
    problem = build_problem(chain(8))
    peaks = []
    for budget_mb in (120, 100, 80, 64, 56, 48):
        sol = solve_ilp(problem, budget_bytes=budget_mb * MB, objective=TIME, time_limit_seconds=10)
        assert sol.feasible
        peaks.append(sol.predicted_peak_bytes)
    assert peaks == sorted(peaks, reverse=True)


def test_impossible_budget_is_infeasible_and_min_peak_is_reported():
    problem = build_problem(chain(6))
    floor = solve_ilp(problem, budget_bytes=None, objective=PEAK, time_limit_seconds=10)
    assert floor.feasible
    below = solve_ilp(problem, budget_bytes=floor.predicted_peak_bytes - MB, objective=TIME, time_limit_seconds=10)
    assert not below.feasible


@pytest.mark.parametrize("budget_mb", [80, 56, 48])
def test_greedy_gives_valid_plans_within_budget(budget_mb):
    problem = build_problem(chain(6))
    sol = solve_greedy(problem, budget_bytes=budget_mb * MB, objective=TIME)
    keep = {problem.names.index(n) for n in sol.keep}
    rec = {problem.names.index(n) for n in sol.recompute}
    assert is_valid(problem, keep, rec)
    if sol.feasible:
        assert evaluate(problem, keep, rec)[0] <= budget_mb * MB
    ilp = solve_ilp(problem, budget_bytes=budget_mb * MB, objective=TIME, time_limit_seconds=10)
    assert ilp.added_seconds <= sol.added_seconds + 1e-12


def test_unkept_storages_are_never_kept():
    """solve_ilp(unkept_storages=...): the partitioner's repair of a floor the simulator finds above
    the model's; the storage's candidates are recomputed instead and the plan stays valid."""
    from memcompile.passes.planner.problem import is_valid

    problem = build_problem(_repair_chain())
    free = solve_ilp(problem, budget_bytes=None, objective=TIME)
    assert "a1" in free.keep
    s = problem.storage_of[problem.names.index("a1")]
    sol = solve_ilp(problem, budget_bytes=None, objective=TIME, unkept_storages={s})
    assert sol.feasible and "a1" not in sol.keep and "a1" in sol.recompute
    keep = {problem.names.index(n) for n in sol.keep}
    rec = {problem.names.index(n) for n in sol.recompute}
    assert is_valid(problem, keep, rec)


def test_a_start_plan_keeping_an_unkept_storage_is_ignored():
    problem = build_problem(_repair_chain())
    free = solve_ilp(problem, budget_bytes=None, objective=TIME)
    s = problem.storage_of[problem.names.index("a1")]
    sol = solve_ilp(problem, budget_bytes=None, objective=TIME, unkept_storages={s}, initial=free)
    assert sol.feasible and "a1" not in sol.keep


def _repair_chain():
    """a0 -> a1 -> a2, each recomputable from the last, read in reverse by the backward."""
    from memcompile.passes.candidates import Candidate, CandidateSet

    mb = 2**20
    sizes = (2 * mb, 8 * mb, 4 * mb)
    cands = tuple(
        Candidate(name=f"a{i}", root=f"a{i}", nbytes=sizes[i], recompute_seconds=1e-3, can_save=True,
                  can_recompute=i > 0, recompute_ban=None, needed=True, inputs=(f"a{i-1}",) if i else (),
                  fw_step=i, fw_keep_from=i + 1, bw_first=2 - i, bw_last=2 - i)
        for i in range(3)
    )
    return CandidateSet(candidates=cands, fw_steps=("a0", "a1", "a2"), bw_steps=("g0", "g1", "g2"),
                        fw_base_bytes=(0, 0, 0), bw_base_bytes=(0, 0, 0))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # PuLP 3's notes on its 4.0 API
def test_cbc_log_says_why_a_solve_stopped(tmp_path):
    """The node cap is read back from CBC's log, so the search can tell a node stop (the same plan on any
    machine) from a time stop (a plan that depends on the load, which warns)."""
    import random

    import pulp

    from memcompile.passes.planner.ilp import _read_cbc_log

    rng = random.Random(1)
    model = pulp.LpProblem("knapsack", pulp.LpMaximize)
    x = [pulp.LpVariable(f"x{i}", cat="Binary") for i in range(300)]
    model += pulp.lpSum(rng.randint(10, 1000) * v for v in x)
    for _ in range(40):
        model += pulp.lpSum(rng.randint(10, 1000) * v for v in x) <= 30000
    stops = {}
    for cap in (3, 3):
        log = tmp_path / f"cbc{len(stops)}.log"
        model.solve(pulp.PULP_CBC_CMD(msg=False, maxNodes=cap, timeLimit=60, logPath=str(log)))
        stops[len(stops)] = (_read_cbc_log(str(log)), pulp.value(model.objective))
    (why, nodes), objective = stops[0]
    assert why == "nodes" and nodes == 3
    assert stops[1] == stops[0]  # the same stop, the same plan
    assert _read_cbc_log(str(tmp_path / "missing.log")) == (None, None)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # PuLP 3's notes on its 4.0 API
def test_cbc_searches_in_its_main_thread(monkeypatch):
    """CBC 2.10 asked for ``threads=1`` starts a worker thread that now and then never starts: the solve idles
    until the time limit and returns its first heuristic plan (2% of the solves of a small problem did). Solves
    ask for no threads, and a small problem solves well within its limit every time."""
    import pulp

    asked = []

    class Recording(pulp.PULP_CBC_CMD):
        def __init__(self, *args, **kwargs):
            asked.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(pulp, "PULP_CBC_CMD", Recording)
    problem = build_problem(_repair_chain())
    for _ in range(20):
        sol = solve_ilp(problem, budget_bytes=None, objective=PEAK, time_limit_seconds=5)
        assert sol.feasible and not sol.time_limit_hit and sol.solve_seconds < 5
    assert len(asked) == 20 and not any(kwargs.get("threads") for kwargs in asked)


def test_a_solve_runs_the_feasibility_pump_rounds_it_asks_for(monkeypatch):
    """``pump_rounds`` hands CBC ``pumpTune`` for that many major rounds; CBC's log names the value it replaced,
    which is ``pump_tune(6)``: only the number of rounds differs from CBC's own default. Without it CBC keeps
    its default."""
    from memcompile.passes.planner import ilp

    logs = []
    read = ilp._read_cbc_log

    def keeping(path):
        with open(path) as f:
            logs.append(f.read())
        return read(path)

    monkeypatch.setattr(ilp, "_read_cbc_log", keeping)
    problem = build_problem(chain(6))
    for rounds in (1, 3, None):
        assert solve_ilp(problem, budget_bytes=None, objective=PEAK, time_limit_seconds=10,
                         pump_rounds=rounds).feasible
    assert f"pumpTune was changed from {ilp.pump_tune(6)} to {ilp.pump_tune(1)}" in logs[0]
    assert f"pumpTune was changed from {ilp.pump_tune(6)} to {ilp.pump_tune(3)}" in logs[1]
    assert "pumpTune" not in logs[2]
    with pytest.raises(ValueError, match="major rounds"):
        ilp.pump_tune(0)


@pytest.mark.parametrize("nbytes", [339_730_943, 339_730_947, 1_358_923_773, 987_654_321])
def test_a_time_solve_at_the_reported_floor_finds_the_floor_plan(nbytes):
    """CBC reports values to 8 significant digits, so the floor's reported peak of a GB-sized graph may lie a few
    bytes under the floor plan's own; a time solve given that peak as its budget still finds a plan."""
    problem = build_problem(chain(5, nbytes=nbytes))
    floor = solve_ilp(problem, budget_bytes=None, objective=PEAK, time_limit_seconds=10)
    assert floor.feasible and abs(floor.predicted_peak_bytes - evaluate(problem, *decision(problem, floor)[:2])[0]) \
        <= 1e-7 * floor.predicted_peak_bytes
    fastest = solve_ilp(problem, budget_bytes=floor.predicted_peak_bytes, objective=TIME, time_limit_seconds=10)
    assert fastest.feasible
    assert evaluate(problem, *decision(problem, fastest)[:2])[0] <= floor.predicted_peak_bytes * (1 + 1e-7)
