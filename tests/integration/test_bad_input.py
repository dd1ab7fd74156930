"""Bad input: each row of README's "Real models and bad input" table, through torch.compile.

Every row ends in a clear error (naming the input, what is accepted, what to do) or in a warned
fallback; none in a wrong gradient or a silent change of meaning.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn as nn

import memcompile
from _helpers import EAGER, assert_same_grads, compiled_copy, train_step
from memcompile import MemoryBudgetError


class MLP(nn.Module):
    """Three residual MLP blocks: small to trace, with activations worth recomputing."""

    def __init__(self, act=None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64)) for _ in range(3))
        self.act = act or torch.tanh

    def forward(self, x):
        for block in self.blocks:
            x = x + self.act(block(x))
        return x.pow(2).mean()


def _mlp(act=None):
    torch.manual_seed(0)
    return MLP(act), torch.randn(64, 64)


def _compile_error(options, **compile_kwargs):
    """The exception torch.compile raises for ``options``: dynamo wraps ours in BackendCompilerFailed."""
    model, x = _mlp()
    if options is not None:
        compile_kwargs["options"] = options
    compiled = torch.compile(model, backend="memcompile", **compile_kwargs)
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed) as info:
        compiled(x)
    return info.value.inner_exception


# ---------------------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"memory_budgett": 0.5}, ValueError, r"options: unknown key\(s\) \['memory_budgett'\]; accepted keys: .*'memory_budget'"),
        ([("memory_budget", 0.5)], TypeError, "options: expected a dict"),
        ({"memory_budget": [0.5]}, TypeError, "memory_budget: expected a float in .*got list"),
        ({"memory_budget": True}, TypeError, "memory_budget: .*got a bool"),
        ({"memory_budget": torch.tensor(0.5)}, TypeError, "memory_budget: .*got Tensor"),
        ({"memory_budget": 1.5}, ValueError, r"memory_budget: a float budget is a fraction in \[0, 1\], got 1.5"),
        ({"memory_budget": float("nan")}, ValueError, r"memory_budget: a float budget is a fraction in \[0, 1\], got nan"),
        ({"memory_budget": -1}, ValueError, "memory_budget: a byte budget must be a positive int, got -1"),
        ({"memory_budget": "lots"}, ValueError, "memory_budget: cannot parse 'lots' as a byte count.*'800MB'"),
        # an int 1 or 0 would be a 1- or 0-byte cap: the fraction was meant
        ({"memory_budget": 1}, ValueError, r"memory_budget: 1 is an int, which means a byte cap of 1; for the fraction write 1\.0"),
        ({"memory_budget": 0}, ValueError, r"memory_budget: 0 is an int.*for the fraction write 0\.0"),
        ({"inner": "tvm"}, ValueError, r"inner: expected one of \('inductor', 'eager'\), got 'tvm'"),
        ({"solver_time_limit": 0}, ValueError, "solver_time_limit: expected a positive number of seconds"),
        ({"on_infeasible": "ignore"}, ValueError, "on_infeasible: expected one of"),
    ],
    ids=["unknown-key", "options-not-a-dict", "budget-list", "budget-bool", "budget-tensor", "fraction-above-1",
         "fraction-nan", "bytes-negative", "bytes-unparsable", "int-1", "int-0", "inner-unknown", "time-limit-0",
         "on-infeasible-unknown"],
)
def test_bad_options_raise_naming_the_option(options, error, message):
    err = _compile_error(options)
    assert isinstance(err, error), repr(err)
    assert re.search(message, str(err)), str(err)


def test_a_torch_compile_mode_is_refused():
    # torch itself refuses mode= together with options=; alone, memcompile refuses it
    err = _compile_error(None, mode="max-autotune")
    assert isinstance(err, ValueError) and "memcompile takes no torch.compile mode" in str(err)


def test_numpy_scalars_are_budgets():
    assert memcompile.MemConfig(memory_budget=np.float32(0.5)).budget_fraction == 0.5
    assert memcompile.MemConfig(memory_budget=np.int64(10**9)).budget_bytes == 10**9


# ------------------------------------------------------------------------------- infeasible budget
def test_infeasible_byte_budget_names_the_smallest_peak(no_compile_cache):
    err = _compile_error({**EAGER, "memory_budget": "10KB"})
    assert isinstance(err, MemoryBudgetError)
    assert err.budget_bytes == 10_000 and err.min_peak_bytes > 10_000
    assert "cannot be met" in str(err) and "on_infeasible='best_effort'" in str(err)


# ----------------------------------------------------------------------------------- unusual ops
@torch.library.custom_op("memcompile_test::wavy", mutates_args=())
def wavy(x: torch.Tensor) -> torch.Tensor:
    """A custom op with a fake (shape) implementation but no FLOP formula: costed by its bytes only."""
    return torch.sin(x) * x


@wavy.register_fake
def _(x):
    return torch.empty_like(x)


def _wavy_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _wavy_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return grad * (torch.cos(x) * x + torch.sin(x))


wavy.register_autograd(_wavy_backward, setup_context=_wavy_setup)


def wavy_act(x):  # a plain function: a module holding the op object itself cannot be deep-copied
    return wavy(x)


@torch.library.custom_op("memcompile_test::shapeless", mutates_args=())
def shapeless(x: torch.Tensor) -> torch.Tensor:
    """A custom op with no fake implementation: nothing can trace it."""
    return torch.sin(x)


def shapeless_act(x):
    return shapeless(x)


def test_custom_op_without_flop_formula_is_planned(no_compile_cache):
    model, x = _mlp(wavy_act)
    ref_loss, ref = train_step(model, lambda m: m(x))
    _, compiled = compiled_copy(model, memory_budget=0.0)
    loss, got = train_step(compiled, lambda m: m(x))
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert_same_grads(got, ref)
    (plan,) = memcompile.last_plans()
    assert plan.source in ("ilp", "ilp+local") and plan.predicted_peak_bytes < plan.baseline_peak_bytes, plan.notes


def test_custom_op_without_fake_impl_is_refused_by_torch_before_memcompile():
    model, x = _mlp(shapeless_act)
    compiled = torch.compile(model, backend="memcompile", options={**EAGER, "memory_budget": 0.0})
    with pytest.raises(Exception, match="no fake impl registered .*register_fake"):
        compiled(x)
    assert memcompile.last_plans() == ()


def test_planner_failure_warns_and_falls_back_to_the_default_partition(monkeypatch, no_compile_cache):
    import memcompile.partitioner as partitioner

    def broken(*args, **kwargs):
        raise RuntimeError("cost model broke")

    monkeypatch.setattr(partitioner, "estimate_costs", broken)
    model, x = _mlp()
    ref_loss, ref = train_step(model, lambda m: m(x))
    _, compiled = compiled_copy(model, memory_budget=0.0)
    with pytest.warns(RuntimeWarning, match=r"planning graph 0 failed \(RuntimeError: cost model broke\); "
                                            "falling back to Inductor's default partition"):
        loss, got = train_step(compiled, lambda m: m(x))
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert_same_grads(got, ref)
    (plan,) = memcompile.last_plans()
    assert plan.source == "fallback" and "cost model broke" in plan.notes[0]
    assert plan.predicted_peak_bytes == plan.baseline_peak_bytes


# ------------------------------------------------------------------------------- no backward
@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_inference_graph_warns_that_the_budget_does_not_apply(context, no_compile_cache):
    model, x = _mlp()
    compiled = torch.compile(model, backend="memcompile", options={**EAGER, "memory_budget": "1KB"})
    with context(), pytest.warns(UserWarning, match="no backward .*memory_budget does not apply"):
        out = compiled(x)
    with context():
        torch.testing.assert_close(out, model(x))
    assert memcompile.last_plans() == ()


def test_no_budget_no_warning_under_no_grad(recwarn):
    model, x = _mlp()
    with torch.no_grad():
        torch.compile(model, backend="memcompile", options=EAGER)(x)
    assert not [w for w in recwarn if "memcompile" in str(w.message)]


def test_nothing_requiring_grad_warns(no_compile_cache):
    model, x = _mlp()
    model.requires_grad_(False)
    compiled = torch.compile(model, backend="memcompile", options={**EAGER, "memory_budget": 0.5})
    with pytest.warns(UserWarning, match="nothing in it requires grad"):
        compiled(x)
    assert memcompile.last_plans() == ()


class Parameterless(nn.Module):
    def forward(self, x, w1, w2):
        return (torch.tanh(torch.nn.functional.gelu(x @ w1)) @ w2).pow(2).mean()


def test_model_without_parameters_plans_for_inputs_that_require_grad(no_compile_cache):
    torch.manual_seed(0)
    x = torch.randn(64, 64)
    w1 = torch.randn(64, 512, requires_grad=True)
    w2 = torch.randn(512, 64, requires_grad=True)
    Parameterless()(x, w1, w2).backward()
    ref = (w1.grad.clone(), w2.grad.clone())
    w1.grad = w2.grad = None
    compiled = torch.compile(Parameterless(), backend="memcompile", options={**EAGER, "memory_budget": 0.0})
    compiled(x, w1, w2).backward()
    torch.testing.assert_close((w1.grad, w2.grad), ref, rtol=1e-5, atol=1e-6)
    (plan,) = memcompile.last_plans()
    assert plan.source != "fallback", plan.notes


# -------------------------------------------------------------------------- non-tensor outputs
class DictOutput(MLP):
    def forward(self, x):
        loss = super().forward(x)
        return {"loss": loss, "steps": 3, "shape": x.shape, "flag": True, "pair": (loss.detach() * 2, "two")}


def test_non_tensor_outputs_pass_through(no_compile_cache):
    torch.manual_seed(0)
    model, x = DictOutput(), torch.randn(64, 64)
    ref_loss, ref = train_step(model, lambda m: m(x)["loss"])
    _, compiled = compiled_copy(model, memory_budget=0.0)
    out = compiled(x)
    assert (out["steps"], out["shape"], out["flag"], out["pair"][1]) == (3, x.shape, True, "two")
    torch.testing.assert_close(out["pair"][0], 2 * ref_loss)
    model_grads = train_step(compiled, lambda m: m(x)["loss"])[1]
    assert_same_grads(model_grads, ref)
    plans = memcompile.last_plans()
    assert plans and all(p.source in ("ilp", "ilp+local") for p in plans), [(p.source, p.notes) for p in plans]
