"""Shared by the integration tests: one training step, gradient comparison, measured peak."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import torch

import memcompile
from memcompile.measure import live_bytes_of, measure_peak

EAGER = {"inner": "eager"}
"""AOT autograd + memcompile's partitioner, graphs run eagerly: the planner is tested, Inductor's compile time is not paid."""


def param_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Gradients by parameter name, without the ``_orig_mod.`` prefix torch.compile adds."""
    return {
        name.removeprefix("_orig_mod."): p.grad.detach().clone()
        for name, p in model.named_parameters()
        if p.grad is not None
    }


def assert_same_grads(got: Mapping[str, torch.Tensor], ref: Mapping[str, torch.Tensor], *, rtol=1e-5, atol=1e-6):
    assert got.keys() == ref.keys(), sorted(set(got) ^ set(ref))
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def train_step(model: torch.nn.Module, step: Callable[[torch.nn.Module], torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """One forward+backward of ``step(model)`` (which returns the loss) from cleared grads."""
    model.zero_grad(set_to_none=True)
    loss = step(model)
    loss.backward()
    return loss.detach(), param_grads(model)


def compiled_copy(model: torch.nn.Module, **options) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(a deep copy of ``model``, that copy compiled with backend="memcompile" and ``options``)."""
    twin = copy.deepcopy(model)
    return twin, torch.compile(twin, backend="memcompile", options={**EAGER, **options})


def measured_peak_bytes(model: torch.nn.Module, compiled: torch.nn.Module, step, inputs) -> int:
    """Peak bytes of one warm step of ``compiled`` (profiler method, memcompile.measure).

    Two warm-up steps first, so that no compile (and no recompile, such as one caused by a
    model that sets an attribute on its first call) lands inside the measured step.
    """
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        step(compiled).backward()
    model.zero_grad(set_to_none=True)
    plans_before = len(memcompile.last_plans())
    peak = measure_peak(lambda: step(compiled).backward(), live_before_bytes=live_bytes_of(model, inputs)).peak_bytes
    assert len(memcompile.last_plans()) == plans_before, "the measured step compiled a graph"
    return peak


def assert_monotone(peaks: Mapping[float, int], *, rtol: float = 0.01, what: str = "peak") -> None:
    """Each peak is at most the one at the next larger budget, plus ``rtol`` for allocator noise."""
    budgets = sorted(peaks, reverse=True)
    for larger, smaller in zip(budgets, budgets[1:]):
        assert peaks[smaller] <= peaks[larger] * (1 + rtol), (
            f"{what} at budget {smaller} ({peaks[smaller]} B) exceeds the one at {larger} ({peaks[larger]} B): {peaks}"
        )
