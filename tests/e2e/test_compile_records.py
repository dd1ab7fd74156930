"""What a compile records and says: last_plans() holds the most recent compile's plans, no spurious
warning for the graphs inside a graph-breaking autograd.Function, and an unmet budget's warning
under on_infeasible="best_effort" does not ask for what is already set (issue 16)."""

import warnings

import pytest
import torch
import torch.nn as nn

import memcompile
from memcompile.backend import last_plans

EAGER = {"inner": "eager"}


def _mlp(width=16):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(width, 32), nn.Tanh(), nn.Linear(32, 4)), torch.randn(8, width)


def test_last_plans_holds_only_the_most_recent_compile(no_compile_cache):
    first, x1 = _mlp(16)
    torch.compile(first, backend="memcompile", options={**EAGER, "memory_budget": 0.5})(x1).sum().backward()
    (plan_first,) = last_plans()
    second, x2 = _mlp(24)
    options = {**EAGER, "memory_budget": 0.0}
    torch.compile(second, backend="memcompile", options=options)(x2).sum().backward()
    (plan_second,) = last_plans()
    assert plan_second is not plan_first and plan_second.graph_index == 0
    assert plan_second.config.budget_fraction == 0.0
    # a third model compiled with the very same options object is still another compile
    third, x3 = _mlp(40)
    torch.compile(third, backend="memcompile", options=options)(x3).sum().backward()
    (plan_third,) = last_plans()
    assert plan_third is not plan_second and plan_third.graph_index == 0


def test_graph_breaks_of_one_compile_stay_together(no_compile_cache):
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 4)

        def forward(self, x):
            h = torch.tanh(self.a(x))
            torch._dynamo.graph_break()
            return self.b(h).sum()

    torch.manual_seed(0)
    model = Broken()
    torch.compile(model, backend="memcompile", options={**EAGER, "memory_budget": 0.5})(torch.randn(8, 16)).backward()
    plans = last_plans()
    assert [p.graph_index for p in plans] == [0, 1]


class _ItemScale(torch.autograd.Function):
    """A custom Function whose forward breaks the graph (``.item()``): dynamo compiles its body alone."""

    @staticmethod
    def forward(ctx, x):
        scale = float(x.abs().max().item()) + 1.0
        ctx.scale = scale
        return x * scale

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale


class _WithFunction(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.b(_ItemScale.apply(torch.tanh(self.a(x)))).square().sum()


def test_a_graph_breaking_autograd_function_gets_no_spurious_no_backward_warning(no_compile_cache):
    torch.manual_seed(0)
    model, x = _WithFunction(), torch.randn(8, 16)
    model(x).backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model, backend="memcompile", options={**EAGER, "memory_budget": 0.3})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled(x).backward()
    assert not [w for w in caught if "no backward" in str(w.message)], [str(w.message) for w in caught]
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[name], rtol=1e-5, atol=1e-6)


def test_a_no_grad_compile_with_a_budget_still_warns(no_compile_cache):
    model, x = _mlp()
    compiled = torch.compile(model, backend="memcompile", options={**EAGER, "memory_budget": 0.5})
    with torch.no_grad(), pytest.warns(UserWarning, match="graph with no backward"):
        compiled(x)


def test_best_effort_warning_does_not_ask_for_best_effort(no_compile_cache):
    model, x = _mlp()
    compiled = torch.compile(model, backend="memcompile",
                             options={**EAGER, "memory_budget": "1KB", "on_infeasible": "best_effort"})
    with pytest.warns(RuntimeWarning, match="cannot be met") as caught:
        compiled(x).sum().backward()
    message = next(str(w.message) for w in caught if "cannot be met" in str(w.message))
    assert "pass on_infeasible" not in message and "smallest-peak plan" in message


def test_raise_error_still_names_best_effort(no_compile_cache):
    model, x = _mlp()
    compiled = torch.compile(model, backend="memcompile", options={**EAGER, "memory_budget": "1KB"})
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed) as info:
        compiled(x)
    assert isinstance(info.value.inner_exception, memcompile.MemoryBudgetError)
    assert "pass on_infeasible='best_effort'" in str(info.value.inner_exception)
