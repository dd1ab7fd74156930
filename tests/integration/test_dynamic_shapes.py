"""Dynamic shapes: one compile serves every sequence length, with gradients equal eager's at each.

The plan is made once, at the sizes of the first compile: the lifetimes keep sizes as sympy
expressions of the symbolic sizes, and the planner evaluates them at the hints dynamo gives
(the sizes of the first call).
"""

from __future__ import annotations

import copy

import pytest
import torch

import memcompile
from _helpers import EAGER, assert_same_grads, train_step
from memcompile.models import ModelArgs, Transformer

LENGTHS = (16, 24, 40)
BUDGET = 0.3
ARGS = ModelArgs(vocab_size=64, dim=32, n_layers=2, n_heads=2, max_seq_len=64, batch_size=2, seq_len=16)


def batch(length: int):
    g = torch.Generator().manual_seed(length)
    idx = torch.randint(0, ARGS.vocab_size, (ARGS.batch_size, length), generator=g)
    return idx, torch.randint(0, ARGS.vocab_size, (ARGS.batch_size, length), generator=g)


class CountingBackend:
    """backend="memcompile" with a count of the graphs dynamo hands it."""

    def __init__(self, **options) -> None:
        self.options = {**EAGER, **options}
        self.calls = 0

    def __call__(self, gm, example_inputs):
        self.calls += 1
        return memcompile.memcompile_backend(gm, example_inputs, options=self.options)


def _summary(plan):
    """What a plan decides, in terms that do not depend on node names (a dynamic graph has extra size nodes)."""
    by_mode = {m: sum(d.bytes for d in plan.decisions if d.mode == m) for m in ("keep", "recompute")}
    return plan.budget_bytes, plan.baseline_peak_bytes, plan.predicted_peak_bytes, by_mode


@pytest.mark.parametrize("how", ["dynamic=True", "mark_dynamic"])
def test_one_plan_serves_every_length_with_eager_gradients(how, no_compile_cache):
    torch.manual_seed(0)
    model = Transformer(ARGS)

    # the plan a static compile makes at the first length
    static = torch.compile(copy.deepcopy(model), backend="memcompile", options={**EAGER, "memory_budget": BUDGET})
    static(*batch(LENGTHS[0])).backward()
    (static_plan,) = memcompile.last_plans()
    torch._dynamo.reset()
    memcompile.clear_plans()

    backend = CountingBackend(memory_budget=BUDGET)
    compiled = torch.compile(copy.deepcopy(model), backend=backend, dynamic=True if how == "dynamic=True" else None)
    calls = []
    for length in LENGTHS:
        inputs = batch(length)
        if how == "mark_dynamic":
            for t in inputs:
                torch._dynamo.mark_dynamic(t, 1)
        ref_loss, ref = train_step(model, lambda m: m(*inputs))
        loss, got = train_step(compiled, lambda m: m(*inputs))
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
        assert_same_grads(got, ref)
        calls.append(backend.calls)
    # dynamo may hand the backend the first frame twice while it settles the symbols; no length after
    # the first compiles anything
    assert calls[0] == calls[-1], calls
    (plan,) = memcompile.last_plans()
    assert any(isinstance(s, str) for d in plan.decisions for s in d.shape), "no symbolic size: not a dynamic graph"
    assert plan.source != "fallback", plan.notes
    assert _summary(plan) == _summary(static_plan)

