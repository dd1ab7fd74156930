"""Forwards that mutate state in place: inputs, views of inputs, EMA and counter buffers, BatchNorm's
running statistics. After several steps the gradients, the buffers and the mutated inputs equal
eager's (inner="eager") or plain Inductor's (through Inductor, slow) at budgets 1.0, 0.5 and 0.0.

The rule under test (docs/correctness.md): the backward never rebuilds a value from a graph input
whose storage the forward overwrites after reading it.
"""

import importlib.util
import os

import pytest
import torch
from torch import nn
from torch._functorch.aot_autograd import aot_function
from torch._functorch.partitioners import default_partition

import memcompile.passes.candidates as cand_mod
from memcompile.passes.lifetimes import analyse

_FIXTURE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "mutating_models.py")
_spec = importlib.util.spec_from_file_location("mutating_models", _FIXTURE)
models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(models)

BUDGETS = [1.0, 0.5, 0.0]
STEPS = 3


def _state(model: nn.Module, inputs) -> dict[str, torch.Tensor]:
    """Gradients, buffers and (mutated) inputs after a step, by name."""
    out = {f"grad:{n.removeprefix('_orig_mod.')}": p.grad.detach().clone() for n, p in model.named_parameters()}
    out |= {f"buffer:{n.removeprefix('_orig_mod.')}": b.detach().clone() for n, b in model.named_buffers()}
    out |= {f"input:{i}": t.detach().clone() for i, t in enumerate(inputs)}
    return out


def _run(model: nn.Module, step_model, name: str) -> list[dict[str, torch.Tensor]]:
    """``STEPS`` training steps of ``step_model`` (``model`` or its compiled form), fresh inputs each."""
    states = []
    for step in range(STEPS):
        model.zero_grad(set_to_none=True)
        inputs = models.input_batch(name, step)
        loss = step_model(*inputs)
        loss.backward()
        states.append({"loss": loss.detach().clone(), **_state(model, inputs)})
    return states


def _assert_same(got, ref, *, rtol, atol):
    for step, (g, r) in enumerate(zip(got, ref)):
        assert g.keys() == r.keys()
        for key in r:
            torch.testing.assert_close(g[key], r[key], rtol=rtol, atol=atol,
                                       msg=lambda m, step=step, key=key: f"step {step}, {key}: {m}")


def _compiled_run(name: str, backend: str, options=None):
    torch.manual_seed(0)
    model = models.MODELS[name]()
    kwargs = {"options": options} if options is not None else {}
    return _run(model, torch.compile(model, backend=backend, **kwargs), name)


def _eager_run(name: str):
    torch.manual_seed(0)
    model = models.MODELS[name]()
    return _run(model, model, name)


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_mutating_forward_equals_eager(name, budget, no_compile_cache):
    ref = _eager_run(name)
    got = _compiled_run(name, "memcompile", {"inner": "eager", "memory_budget": budget})
    _assert_same(got, ref, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def plain_inductor_runs():
    """Plain Inductor's run of each row, made once and shared by the row's three budgets."""
    return {}


@pytest.mark.slow
@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_mutating_forward_through_inductor_equals_plain_inductor(name, budget, plain_inductor_runs, one_thread):
    """Inductor's caches stay on: no plan is read here, and a row's budgets that plan alike share kernels."""
    if name not in plain_inductor_runs:
        plain_inductor_runs[name] = _compiled_run(name, "inductor")
        torch._dynamo.reset()
    got = _compiled_run(name, "memcompile", {"memory_budget": budget})
    _assert_same(got, plain_inductor_runs[name], rtol=1e-4, atol=1e-5)  # two compiles may order float sums differently


# ---------------------------------------------------------------------- the rule on the joint graph
def _joint_of(fn, *args, **aot_options):
    seen = []

    def partition(joint, inputs, **kwargs):
        seen.append(joint)
        return default_partition(joint, inputs, **kwargs)

    aot_function(fn, fw_compiler=lambda g, _: g, partition_fn=partition, **aot_options)(*args).backward()
    return seen[0]


def _input_named(joint, value: torch.Tensor) -> str:
    """The placeholder whose fake value has ``value``'s shape (each test gives its inputs distinct shapes)."""
    (node,) = [n for n in joint.graph.find_nodes(op="placeholder") if tuple(n.meta["val"].shape) == tuple(value.shape)]
    return node.name


def _mutated_inputs_of(mutate, **aot_options):
    """``analyse(joint).mutated_inputs`` of ``mutate(x); (x @ w).sum()``, and x's placeholder name."""
    def f(x, w):
        mutate(x)
        return (x @ w).sum()

    x, w = torch.randn(3, 4), torch.randn(4, 5, requires_grad=True)
    joint = _joint_of(f, x, w, **aot_options)
    return joint, analyse(joint).mutated_inputs, _input_named(joint, x)


def test_inputs_mutated_through_the_runtime_epilogue_are_found():
    _, mutated, x = _mutated_inputs_of(lambda x: x.mul_(2))
    assert mutated == {x}


def test_a_mutated_view_marks_its_base_input():
    _, mutated, x = _mutated_inputs_of(lambda x: x[0].add_(1))
    assert mutated == {x}


def test_copy_into_an_input_inside_the_graph_is_found():
    """Through Inductor, AOT autograd keeps a mutation of an input that needs no gradient in the graph."""
    joint, mutated, x = _mutated_inputs_of(lambda x: x.mul_(2), keep_inference_input_mutations=True)
    assert any(n.target is torch.ops.aten.copy_.default for n in joint.graph.nodes)
    assert mutated == {x}


def test_a_graph_without_descriptors_cannot_tell_and_says_so():
    from torch.fx.experimental.proxy_tensor import make_fx

    gm = make_fx(lambda x: x.sin())(torch.randn(3))
    assert analyse(gm).mutated_inputs is None


def _planned_candidates(model, inputs, budget, monkeypatch):
    """The joint graph and the candidate set the planner built for one inner="eager" training step."""
    seen = []
    build = cand_mod.build_candidates

    def spy(joint, **kwargs):
        cset = build(joint, **kwargs)
        seen.append((joint, cset))
        return cset

    monkeypatch.setattr(cand_mod, "build_candidates", spy)
    torch.compile(model, backend="memcompile", options={"inner": "eager", "memory_budget": budget})(*inputs).backward()
    (joint, cset), = seen
    return joint, cset


@pytest.mark.parametrize("budget", [0.5, 0.0])
def test_no_candidate_reading_a_mutated_input_may_be_recomputed(budget, monkeypatch, no_compile_cache):
    """Problem 1 of issue 16: the plan rebuilt ``x * 2`` in the backward from the already doubled x."""
    model, (x,) = models.input_mutating()
    joint, cset = _planned_candidates(model, (x,), budget, monkeypatch)
    x_name = _input_named(joint, x)
    nodes = {n.name: n for n in joint.graph.nodes}
    readers = [c for c in cset.candidates if any(a.name == x_name for a in nodes[c.name].all_input_nodes)]
    assert readers, "the test model no longer reads its input in the forward"
    for c in readers:
        assert not c.can_recompute and "mutat" in c.recompute_ban, (c.name, c.recompute_ban)
    # the weight's own readers stay free to be recomputed
    assert any(c.can_recompute for c in cset.candidates if c not in readers)


def test_batch_norm_is_never_recomputed_from_overwritten_running_statistics(monkeypatch, no_compile_cache):
    """Problem 2 of issue 16: with inner="eager" the backward re-ran the whole batch norm from running
    statistics the forward had already overwritten (autograd: 'modified by an inplace operation')."""
    joint, cset = _planned_candidates(*models.bn_resnet(), 0.0, monkeypatch)
    by_name = cset.by_name()
    norms = [n for n in joint.graph.nodes if "batch_norm" in str(n.target) and n.name in by_name
             and "backward" not in str(n.target)]
    assert len(norms) == 5
    assert all(not by_name[n.name].can_recompute for n in norms)


def test_when_the_graph_does_not_say_nothing_reading_an_input_is_recomputed():
    from torch.fx.experimental.proxy_tensor import make_fx

    gm = make_fx(lambda x, w: (x @ w).sin())(torch.randn(3, 4), torch.randn(4, 5))
    table = analyse(gm)
    mm, sin = [n for n in gm.graph.nodes if n.op == "call_function"]
    assert "does not say" in cand_mod.overwritten_input_ban(mm, table)
    assert cand_mod.overwritten_input_ban(sin, table) is None  # reads no input


def test_ops_writing_into_an_argument_are_never_recomputed():
    from torch.fx.experimental.proxy_tensor import make_fx

    gm = make_fx(lambda x, y: x.copy_(y.cos()))(torch.randn(3), torch.randn(3))
    copy, = [n for n in gm.graph.nodes if n.target is torch.ops.aten.copy_.default]
    cos, = [n for n in gm.graph.nodes if n.target is torch.ops.aten.cos.default]
    assert cand_mod.recompute_ban(copy) is not None
    assert cand_mod.recompute_ban(cos) is None
