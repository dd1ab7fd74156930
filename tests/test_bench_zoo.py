"""examples/bench_zoo.py: its issue-15 checks flag what they must, on synthetic rows (no child process)."""

from __future__ import annotations

import pytest
import torch
from _examples import load_example

import memcompile
from memcompile.bench import RunResult, _error_text
from memcompile.models import make

bz = load_example("bench_zoo.py")

MB = 1_000_000


def mem(budget, peak_mb, predicted_mb=None, **kw):
    predicted = None if predicted_mb is None else int(predicted_mb * MB)
    return RunResult(method="memcompile", budget=budget, status="ok", peak_bytes=int(peak_mb * MB),
                     predicted_peak_bytes=predicted if predicted is not None else int(peak_mb * MB), **kw)


def torch_row(fraction, peak_mb):
    return RunResult(method="torch-budget", budget=fraction, status="ok", peak_bytes=int(peak_mb * MB))


def by_fraction(checks):
    return {c.fraction: c for c in checks.fractions}


def test_a_peak_that_rises_as_the_budget_falls_fails_monotone():
    # issue 15's GPT-2: 22.5 / 14.9 / 16.1 MB at 1.0 / 0.5 / 0.0
    checks = bz.check_rows([mem(1.0, 22.5), mem(0.5, 14.9), mem(0.0, 16.1)])
    verdicts = by_fraction(checks)
    assert verdicts[1.0].monotone_ok is None  # nothing above it to compare with
    assert verdicts[0.5].monotone_ok is True
    assert verdicts[0.0].monotone_ok is False
    assert "fraction 0.0: monotone" in checks.failures()


def test_a_rise_over_a_lower_peak_two_budgets_up_fails_too():
    """Compared with the lowest peak at any larger fraction, not only the neighbour."""
    checks = bz.check_rows([mem(1.0, 20.0), mem(0.5, 15.0), mem(0.3, 15.1), mem(0.0, 15.5)])
    verdicts = by_fraction(checks)
    assert verdicts[0.3].monotone_ok is True  # +0.7%: noise
    assert verdicts[0.0].monotone_ok is False  # +3.3% over 0.5's 15.0


def test_prediction_off_by_more_than_three_percent_fails():
    checks = bz.check_rows([mem(1.0, 20.0, predicted_mb=19.5), mem(0.0, 10.0, predicted_mb=9.6)])
    verdicts = by_fraction(checks)
    assert verdicts[1.0].prediction_ok is True  # -2.5%
    assert verdicts[0.0].prediction_ok is False  # -4%


def test_byte_budget_over_by_more_than_one_percent_fails():
    rows = [mem(1.0, 20.0), mem(0.0, 10.0), mem(15 * MB, 15.1), mem(12 * MB, 12.5)]
    checks = {b.budget_bytes: b for b in bz.check_rows(rows).bytes}
    assert checks[15 * MB].budget_ok is True  # +0.7%
    assert checks[12 * MB].budget_ok is False  # +4.2%


def test_a_crashed_byte_budget_run_fails():
    crashed = RunResult(method="memcompile", budget=12 * MB, status="error", error="RuntimeError: boom")
    (check,) = bz.check_rows([mem(1.0, 20.0), mem(0.0, 10.0), crashed]).bytes
    assert check.budget_ok is False


def _budget_error_row(budget_bytes: int) -> tuple[RunResult, int]:
    """A row carrying a real MemoryBudgetError's text, as a bench child reports it, and its min_peak_bytes."""
    model, inputs = make("gpt-tiny")
    compiled = torch.compile(model, backend="memcompile", options={"memory_budget": budget_bytes, "inner": "eager"})
    with pytest.raises(Exception) as info:
        compiled(*inputs).backward()
    exc = getattr(info.value, "inner_exception", info.value)
    assert isinstance(exc, memcompile.MemoryBudgetError), repr(info.value)
    row = RunResult(method="memcompile", budget=budget_bytes, status="error", error=_error_text(info.value))
    return row, exc.min_peak_bytes


def test_memory_budget_error_passes_only_when_its_smallest_peak_is_the_measured_floor(no_compile_cache):
    row, min_peak = _budget_error_row(1000)
    parsed = bz.budget_error_min_peak(row)
    assert parsed == pytest.approx(min_peak, rel=0.01)  # the message rounds to 0.1 of its unit
    true_floor = mem(0.0, min_peak / MB)
    wrong_floor = mem(0.0, min_peak * 1.2 / MB)
    (kept,) = bz.check_rows([mem(1.0, 2 * min_peak / MB), true_floor, row]).bytes
    (lied,) = bz.check_rows([mem(1.0, 2 * min_peak / MB), wrong_floor, row]).bytes
    assert kept.budget_ok is True
    assert lied.budget_ok is False


def test_floor_above_torch_or_checkpointing_fails():
    rows = [mem(1.0, 20.0), mem(0.0, 12.0), torch_row(1.0, 21.0), torch_row(0.0, 11.0),
            RunResult(method="checkpoint-compiled", budget=None, status="ok", peak_bytes=11 * MB)]
    checks = bz.check_rows(rows)
    assert checks.floor_vs_torch_ok is False
    assert checks.floor_vs_checkpoint_ok is False
    assert by_fraction(checks)[1.0].below_torch_ok is True
    assert by_fraction(checks)[0.0].below_torch_ok is False
    assert {"floor above torch's lowest", "floor above compiled checkpointing"} <= set(checks.failures())


def test_auto_byte_budgets_sit_between_the_floor_and_the_default_and_one_under_the_floor():
    budgets = bz.auto_byte_budgets([mem(1.0, 20.0), mem(0.5, 15.0), mem(0.0, 10.0)])
    assert len(budgets) == 3
    assert 10 * MB < budgets[0] < 20 * MB and 10 * MB < budgets[1] < budgets[0]
    assert budgets[2] < 10 * MB
    assert bz.auto_byte_budgets([mem(0.5, 15.0)]) == ()


def test_a_byte_budget_peak_under_the_floor_fails_the_floor():
    """Fraction 0.0 must be the smallest-peak plan: a byte budget that measures lower shows it is not."""
    checks = bz.check_rows([mem(1.0, 27.4), mem(0.0, 26.3), mem(25 * MB, 24.5)])
    assert checks.floor_vs_bytes_ok is False
    assert "floor above a byte budget's peak" in checks.failures()
    assert bz.check_rows([mem(1.0, 27.4), mem(0.0, 24.4), mem(25 * MB, 24.5)]).floor_vs_bytes_ok is True


def test_no_memcompile_measures_only_torchs_rows(monkeypatch, tmp_path):
    """torch's rows do not depend on memcompile's code: --no-memcompile runs them alone (to join memcompile rows
    measured elsewhere through --from-json)."""
    spawned = []

    def fake_spawn(spec, timeout_seconds):
        spawned.append((spec.method, spec.budget))
        return RunResult(method=spec.method, budget=spec.budget, status="ok", peak_bytes=10 * MB)

    monkeypatch.setattr(bz, "spawn", fake_spawn)
    out = tmp_path / "rows.json"
    assert bz.main(["--models", "toy-gpt", "--no-memcompile", "--no-inductor", "--fractions", "0.8,0.3",
                    "--json", str(out)]) == 0
    assert spawned == [("torch-budget", 0.8), ("torch-budget", 0.3), ("checkpoint-compiled", None)]
    rows, _ = bz.rows_from_json([str(out)])
    assert [r.method for r in rows["toy-gpt"]] == ["torch-budget", "torch-budget", "checkpoint-compiled"]
    with pytest.raises(SystemExit, match="leaves nothing to measure"):
        bz.main(["--models", "toy-gpt", "--no-memcompile", "--no-torch"])
