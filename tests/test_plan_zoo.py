"""examples/plan_zoo.py: its checks on the simulated peaks, the comparison, and one capture planned as a compile
plans it."""

from __future__ import annotations

import json

import pytest
from _examples import load_example

pz = load_example("plan_zoo.py")

MB = 1_000_000


def row(budget, peak_mb=None, error=""):
    r = {"model": "m", "budget": budget, "seconds": 0.1, "error": error}
    if peak_mb is not None:
        r.update(simulated_peak_bytes=int(peak_mb * MB), source="ilp")
    return r


def test_check_flags_a_lower_fraction_above_a_higher_one_beyond_one_percent_and_a_byte_budget_exceeded():
    ok = [row(1.0, 20), row(0.5, 15), row(0.0, 15.1), row(16 * MB, 15.9), row(12 * MB, error="MemoryBudgetError")]
    assert pz.check(ok) == []
    bad = [row(1.0, 20), row(0.5, 15), row(0.0, 15.2), row(14 * MB, 14.5)]
    failures = pz.check(bad)
    assert len(failures) == 2
    assert "0 simulates 15.20 MB, above 0.5's 15.00" in failures[0]
    assert "byte budget 14.00 MB simulates 14.50" in failures[1]


def test_compare_prints_each_shared_row_with_its_change(tmp_path, capsys):
    before, after = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    before.write_text("\n".join(json.dumps(r) for r in [row(0.5, 10), row(0.0, 8)]) + "\n")
    after.write_text("\n".join(json.dumps(r) for r in [row(0.5, 11), row(0.0, 8), row(0.3, 9)]) + "\n")
    pz.compare(before, after)
    out = capsys.readouterr().out
    assert "| m | 0.5 | 10.00 | 11.00 | +10.00% |" in out
    assert "| m | 0 | 8.00 | 8.00 | +0.00% |" in out
    assert "| m | 0.3 |" not in out  # only in one file


@pytest.mark.slow
def test_a_captured_zoo_graph_plans_as_a_compile_would():
    """toy-gpt captured where the backend hands its joint graph to the partitioner: the whole budget is Inductor's
    default partition, a fraction gets a lower simulated peak, and a byte budget under the floor is a row whose
    error names the smallest peak."""
    joint, inputs, kw = pz.capture_joint("toy-gpt", {"memory_budget": 0.5})
    whole = pz.plan_budget(joint, inputs, kw, 1.0)
    assert whole["source"] == "default" and not whole["error"]
    half = pz.plan_budget(joint, inputs, kw, 0.5)
    assert half["simulated_peak_bytes"] < whole["simulated_peak_bytes"] and half["source"].startswith("ilp")
    refused = pz.plan_budget(joint, inputs, kw, 1 * MB)
    assert refused["error"].startswith("MemoryBudgetError") and "simulated_peak_bytes" not in refused
