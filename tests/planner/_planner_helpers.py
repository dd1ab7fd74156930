"""What the planner tests share: reading a solution back as index sets, the brute-force optimum
the ILP is checked against on small synthetic problems, and a preset's traced joint graph."""

import itertools

import pytest

from memcompile.passes.planner.ilp import solve_ilp
from memcompile.passes.planner.problem import evaluate, is_valid, option_indices
from memcompile.passes.planner.solution import TIME


def decision(problem, sol):
    """(kept, recomputed, option) index sets of a PlanSolution on ``problem``."""
    return ({problem.names.index(n) for n in sol.keep}, {problem.names.index(n) for n in sol.recompute},
            option_indices(problem, sol))


def decisions(problem):
    """Every (keep, recompute) pair of a small problem: each candidate none, kept or recomputed."""
    for modes in itertools.product((0, 1, 2), repeat=problem.n_candidates):
        yield {i for i, m in enumerate(modes) if m == 1}, {i for i, m in enumerate(modes) if m == 2}


def valid_plans(problem):
    """Every valid (keep, recompute) decision of a small problem, without options."""
    for keep, rec in decisions(problem):
        if is_valid(problem, keep, rec):
            yield keep, rec


def brute_force(problem, budget):
    """(seconds, peak) of the cheapest valid plan within ``budget`` (the lower peak among equally fast
    ones), or None: every candidate none/keep/recompute, every option on or off."""
    best = None
    for keep, rec in decisions(problem):
        for chosen in itertools.product((0, 1), repeat=len(problem.options)):
            options = {o for o, on in enumerate(chosen) if on}
            if not is_valid(problem, keep, rec, options):
                continue
            peak, seconds = evaluate(problem, keep, rec, options)
            if peak <= budget and (best is None or (seconds, peak) < best):
                best = (seconds, peak)
    return best


def assert_ilp_matches_brute_force(problem, budget):
    """The ILP's time-objective plan under ``budget`` is valid, meets the budget at the peak it
    predicts, adds the seconds it reports, and is within CBC's 1% gap of the brute-force optimum;
    or neither finds a plan."""
    expected = brute_force(problem, budget)
    sol = solve_ilp(problem, budget_bytes=budget, objective=TIME, time_limit_seconds=10)
    if expected is None:
        assert not sol.feasible
        return
    assert sol.feasible
    keep, rec, options = decision(problem, sol)
    assert is_valid(problem, keep, rec, options)
    peak, seconds = evaluate(problem, keep, rec, options)
    assert peak <= budget and peak == sol.predicted_peak_bytes
    assert seconds == pytest.approx(sol.added_seconds)
    assert seconds == pytest.approx(expected[0], rel=0.011, abs=1e-12)  # CBC stops at a 1% gap


def traced_joint(name):
    """(joint graph, inputs, partition keywords) of ``memcompile.models.make(name)``, captured at the partitioner
    (no Inductor compile), for tests that call MemPartitioner directly."""
    import torch
    from torch import fx
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch import partitioners as tp
    from torch._functorch.aot_autograd import make_boxed_func

    from memcompile.models import make
    from memcompile.partitioner import _copy_graph

    captured = {}

    def partition(joint, inputs, **kw):
        captured.update(joint=fx.GraphModule(joint, _copy_graph(joint.graph)), inputs=inputs, kw=kw)
        return tp.default_partition(joint, inputs, **kw)

    model, inputs = make(name)
    torch._dynamo.reset()
    run = lambda g, _: make_boxed_func(g.forward)  # noqa: E731
    torch.compile(model, backend=aot_autograd(fw_compiler=run, bw_compiler=run, partition_fn=partition))(*inputs)
    torch._dynamo.reset()
    kw = dict(captured["kw"])
    kw.pop("compiler", None)
    return captured["joint"], captured["inputs"], kw
