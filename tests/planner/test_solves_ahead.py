"""The floor without inplace solved on a thread of its own beside the floor's solve (search.PLAIN_FLOOR_AHEAD): the
same plans as solved after it, a solve not needed waited for and dropped, an error where it is needed raised."""

import importlib.util
import threading
from pathlib import Path

import pytest
from memcompile.passes.planner import ilp
from memcompile.passes.planner import search as search_module
from torch import fx

from memcompile import partitioner as partitioner_module
from memcompile.config import MemConfig
from memcompile.partitioner import MemPartitioner, _copy_graph


@pytest.fixture(scope="module")
def gpt_tiny_decomposed():
    """gpt-tiny's joint graph as Inductor hands it to its partitioner (decomposed: its norms get inplace options)."""
    path = Path(__file__).resolve().parents[2] / "examples" / "bench_planning.py"
    spec = importlib.util.spec_from_file_location("_bench_planning_for_ahead", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.capture_joint("gpt-tiny")


def _plan(joint_args, fraction, monkeypatch, ahead):
    """The plan at ``fraction`` with PLAIN_FLOOR_AHEAD set to ``ahead``, and (thread, objective, node cap, whether
    the problem has inplace options) of each CBC solve."""
    joint, inputs, kw = joint_args
    calls = []
    real = ilp.solve_ilp

    def recording(*args, **kwargs):
        calls.append((threading.current_thread().name, kwargs.get("objective"), kwargs.get("node_limit"),
                      any(o.mode == "inplace" for o in args[0].options)))
        return real(*args, **kwargs)

    monkeypatch.setattr(partitioner_module, "solve_ilp", recording)
    monkeypatch.setattr(search_module, "PLAIN_FLOOR_AHEAD", ahead)
    plans = []
    MemPartitioner(MemConfig.from_options({"memory_budget": fraction, "inner": "eager"}), on_plan=plans.append)(
        fx.GraphModule(joint, _copy_graph(joint.graph)), inputs, compiler="inductor", **kw)
    return plans[-1], calls


def test_the_floor_without_inplace_solved_beside_the_floor_gives_the_same_plan(gpt_tiny_decomposed, monkeypatch):
    """gpt-tiny (decomposed) at 0.0: the floor's plan uses inplace and simulates above its model peak, so the floor
    without inplace is solved: on a thread of its own, beside the floor's solve."""
    fraction = 0.0
    problems = []
    real_without = search_module._floor_without
    monkeypatch.setattr(search_module, "_floor_without",
                        lambda run, problem, *a: problems.append(problem) or real_without(run, problem, *a))
    before, calls_before = _plan(gpt_tiny_decomposed, fraction, monkeypatch, False)
    after, calls_after = _plan(gpt_tiny_decomposed, fraction, monkeypatch, True)
    assert (before.decisions, before.planned.peak_bytes, before.notes, before.backward_code) == \
        (after.decisions, after.planned.peak_bytes, after.notes, after.backward_code)
    assert sorted(c[1:] for c in calls_before) == sorted(c[1:] for c in calls_after)
    # the floor without inplace (with its chain rounds) and the fastest plan at its peak, in the order solved after
    assert [c[1:] for c in calls_after if c[0] == "memcompile-floor"] == [c[1:] for c in calls_before if not c[3]]
    assert {c[1] for c in calls_after if c[0] == "memcompile-floor"} == {"peak", "time"}
    assert not any(o.mode == "inplace" for o in problems[-1].options)
    assert not any(t.name.startswith("memcompile-") for t in threading.enumerate())


def test_a_floor_solved_ahead_and_not_needed_is_waited_for(gpt_tiny_decomposed, monkeypatch):
    """The floor's plan not built (here: the search's floor plan replaced by the default partition): the floor
    without inplace solved ahead is never read, and no thread is left running when the partitioner returns."""
    monkeypatch.setattr(search_module, "_floor_plan", lambda run: run.inputs.default)
    read = []
    real = search_module._plain_floor
    monkeypatch.setattr(search_module, "_plain_floor", lambda run: read.append(run) or real(run))
    plan, calls = _plan(gpt_tiny_decomposed, 0.0, monkeypatch, True)
    assert any(c[0] == "memcompile-floor" for c in calls) and not read
    assert not any(t.name.startswith("memcompile-") for t in threading.enumerate())


def test_an_error_in_the_floor_solved_ahead_reaches_the_planning_thread(gpt_tiny_decomposed, monkeypatch):
    real = ilp.solve_ilp

    def failing(*args, **kwargs):
        if threading.current_thread().name == "memcompile-floor":
            raise RuntimeError("floor failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(partitioner_module, "solve_ilp", failing)
    monkeypatch.setattr(search_module, "PLAIN_FLOOR_AHEAD", True)
    joint, inputs, kw = gpt_tiny_decomposed
    plans = []
    with pytest.warns(RuntimeWarning, match=r"planning graph \d+ failed \(RuntimeError: floor failed\)"):
        MemPartitioner(MemConfig.from_options({"memory_budget": 0.0, "inner": "eager"}), on_plan=plans.append)(
            fx.GraphModule(joint, _copy_graph(joint.graph)), inputs, compiler="inductor", **kw)
    assert plans[-1].source == "fallback"  # the adapter's fallback, as for any planning error
