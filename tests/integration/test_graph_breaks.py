"""Graph breaks: each graph dynamo hands the backend is planned on its own, with the whole budget."""

from __future__ import annotations

import torch
import torch.nn as nn

import memcompile
from _helpers import assert_same_grads, compiled_copy, measured_peak_bytes, train_step


class BrokenNet(nn.Module):
    """Four MLP blocks with a print after the first and a data-dependent branch after the second."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(64, 512), nn.GELU(), nn.Linear(512, 64)) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.blocks[0](x).tanh()
        print("memcompile test: a print is a graph break")
        x = x + self.blocks[1](x).tanh()
        if x.sum() > 0:  # data-dependent branch: dynamo breaks the graph here too
            x = x + self.blocks[2](x).tanh()
        else:
            x = x - self.blocks[2](x).tanh()
        return (x + self.blocks[3](x).tanh()).pow(2).mean()


def _net_and_input():
    torch.manual_seed(0)
    return BrokenNet(), torch.randn(128, 64)


def test_every_graph_is_planned_and_gradients_equal_eager(no_compile_cache, capsys):
    model, x = _net_and_input()
    ref_loss, ref = train_step(model, lambda m: m(x))
    _, compiled = compiled_copy(model, memory_budget=0.0)
    loss, got = train_step(compiled, lambda m: m(x))
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert_same_grads(got, ref)
    plans = memcompile.last_plans()
    assert len(plans) > 1
    assert sorted(p.graph_index for p in plans) == list(range(len(plans)))
    assert all(p.source != "fallback" for p in plans), [p.notes for p in plans]
    # every graph's plan is at most its own default partition's peak, and at least one is lower
    assert all(p.predicted_peak_bytes <= p.baseline_peak_bytes for p in plans)
    assert any(p.predicted_peak_bytes < p.baseline_peak_bytes for p in plans)


def test_a_byte_budget_applies_to_each_graph_whole(no_compile_cache, capsys):
    """Not split between the graphs: each is held to the full figure on its own."""
    model, x = _net_and_input()
    _, probe = compiled_copy(model)
    probe(x).backward()
    largest = max(p.baseline_peak_bytes for p in memcompile.last_plans())
    torch._dynamo.reset()
    memcompile.clear_plans()
    budget = int(0.9 * largest)  # met by each graph alone; the largest graph has to recompute for it
    twin, compiled = compiled_copy(model, memory_budget=budget)
    peak = measured_peak_bytes(twin, compiled, lambda m: m(x), [x])
    plans = memcompile.last_plans()
    print(f"budget {budget} B; per graph (default -> planned): "
          f"{[(p.baseline_peak_bytes, p.predicted_peak_bytes) for p in plans]}; measured step peak {peak} B")
    assert len(plans) > 1
    assert all(p.budget_bytes == budget for p in plans)
    assert all(p.predicted_peak_bytes <= budget for p in plans)
    assert any(p.predicted_peak_bytes < p.baseline_peak_bytes for p in plans)
    # The earlier graphs' saved tensors are alive while the later ones run, and no graph's plan counts
    # them: the step as a whole goes over the budget (README, "Real models and bad input").
    assert peak > budget
