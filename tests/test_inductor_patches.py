"""Inductor options memcompile compiles with: buffer reuse is off when a budget is planned."""

import pytest
import torch
from torch._functorch.aot_autograd import make_boxed_func

import memcompile
from memcompile.backend import memcompile_backend


def _run_boxed(gm, _example_inputs):
    """Run the graph eagerly with AOT autograd's boxed calling convention (an unboxed one warns)."""
    return make_boxed_func(gm.forward)


def compile_fx_kwargs(monkeypatch, options) -> dict:
    """The keyword arguments memcompile's backend hands Inductor's compile_fx (which is not run)."""
    import torch._inductor.compile_fx as cfx

    seen = {}

    def fake_compile_fx(gm, example_inputs, **kwargs):
        seen.update(kwargs)
        return gm.forward

    monkeypatch.setattr(cfx, "compile_fx", fake_compile_fx)
    memcompile_backend(torch.fx.symbolic_trace(torch.nn.Linear(4, 4)), [torch.randn(2, 4)], options=options)
    return seen


@pytest.mark.parametrize("budget, reuse_off", [(None, False), (0.5, True), ("100MB", True)])
def test_buffer_reuse_is_off_under_a_budget(monkeypatch, budget, reuse_off):
    options = {} if budget is None else {"memory_budget": budget}
    seen = compile_fx_kwargs(monkeypatch, options).get("config_patches") or {}
    assert isinstance(seen["custom_partitioner_fn"], memcompile.partitioner.MemPartitioner)
    assert ("allow_buffer_reuse" in seen and seen["allow_buffer_reuse"] is False) == reuse_off


@pytest.mark.parametrize("inner, form", [("inductor", "aten"), ("eager", "kernel")])
def test_quantize_takes_the_preferred_form(monkeypatch, inner, form):
    """On CPU under Inductor the quantized copies are written as ATen ops Inductor fuses into
    their producer (quantize.preferred_form); executed eagerly they are the custom ops."""
    import torch.fx as fx
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch import partitioners as tp

    import memcompile.partitioner as partitioner_mod
    from memcompile.models import make
    from memcompile.config import MemConfig

    captured = {}

    def capture(joint, inputs, **kw):
        captured.update(joint=fx.GraphModule(joint, partitioner_mod._copy_graph(joint.graph)), inputs=inputs, kw=kw)
        return tp.default_partition(joint, inputs, **kw)

    model, inputs = make("gpt-tiny")
    torch._dynamo.reset()
    backend = aot_autograd(fw_compiler=_run_boxed, bw_compiler=_run_boxed, partition_fn=capture)
    torch.compile(model, backend=backend)(*inputs)

    seen = []
    original = partitioner_mod._rewrite_lossy

    def spy(joint, sol, backward_nodes, problem, **kwargs):
        out = original(joint, sol, backward_nodes, problem, **kwargs)
        seen.append((kwargs.get("quantize_form", "kernel"), {str(n.target) for n in out[0].graph.nodes}))
        return out

    monkeypatch.setattr(partitioner_mod, "_rewrite_lossy", spy)
    config = MemConfig(memory_budget=0.0, modes=("keep", "quantize"), inner=inner)
    kw = {k: v for k, v in captured["kw"].items() if k != "compiler"}
    partitioner_mod.MemPartitioner(config)(captured["joint"], captured["inputs"], **kw)
    assert seen and all(f == form for f, _ in seen)
    custom = any("memcompile.quantize_int8" in t for _, targets in seen for t in targets)
    assert custom == (form == "kernel")


@pytest.mark.parametrize("modes, kept_whole", [(None, False), (("keep", "quantize"), False), (("keep", "fewbit"), True)])
def test_gelu_and_silu_derivatives_stay_whole_when_fewbit_may_replace_them(monkeypatch, modes, kept_whole):
    """Decomposed into pointwise ops before the partitioner runs, GELU's and SiLU's derivatives would
    leave the few-bit rewrite nothing to replace; every other decomposition is Inductor's own."""
    from torch._inductor.decomposition import select_decomp_table

    from memcompile.passes.rewrite.inplace import KEPT_WHOLE

    options = {"memory_budget": 0.0} if modes is None else {"memory_budget": 0.0, "modes": modes}
    table = compile_fx_kwargs(monkeypatch, options)["decompositions"]
    if modes is None:  # the default modes hold "inplace": its rules' activations stay whole (issue 18), GELU's do not
        assert set(table) == set(select_decomp_table()) - KEPT_WHOLE
        return
    if not kept_whole:
        assert table is None  # compile_fx's own table
        return
    aten = torch.ops.aten
    whole = {aten.gelu_backward.default, aten.silu_backward.default}
    assert not whole & set(table)
    assert set(table) == set(select_decomp_table()) - whole


@pytest.mark.slow
def test_fewbit_replaces_gelu_derivatives_through_inductor(no_compile_cache):
    """gpt-tiny through Inductor, keep + fewbit at budget 0.0: every GELU input is stored as a few-bit
    code, and the gradients stay within the few-bit bounds of tests/e2e/test_lossy.py."""
    ref, got, plan = _gpt_tiny_grads({"memory_budget": 0.0, "modes": ("keep", "fewbit")})
    from memcompile.models import ModelArgs

    assert len(plan.solution.fewbit) == ModelArgs.from_name("gpt-tiny").n_layers
    flat = torch.cat([(got[n] - ref[n]).flatten() for n in ref]).norm() / torch.cat([r.flatten() for r in ref.values()]).norm()
    assert flat < 0.05  # GRAD_BOUNDS["fewbit"][1]


@pytest.mark.parametrize("op, kwargs", [("gelu_backward", {}), ("gelu_backward", {"approximate": "tanh"}), ("silu_backward", {})])
def test_leftover_derivatives_are_decomposed_before_inductor_lowers_them(op, kwargs):
    """A derivative the few-bit rewrite kept whole but did not replace becomes Inductor's pointwise
    decomposition: no node of the op is left, every new node carries meta["val"], same values."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    from memcompile.passes.rewrite.fewbit import decompose_leftover_derivatives

    target = getattr(torch.ops.aten, op).default

    def f(grad, x):
        return target(grad, x, **kwargs) * 2

    grad, x = torch.randn(7, 33), torch.randn(7, 33)
    with FakeTensorMode() as mode:
        gm = make_fx(f, tracing_mode="real")(mode.from_tensor(grad), mode.from_tensor(x))
    assert any(n.target is target for n in gm.graph.nodes)
    assert decompose_leftover_derivatives(gm) == 1
    assert not any(n.target is target for n in gm.graph.nodes)
    assert all("val" in n.meta for n in gm.graph.nodes if n.op == "call_function")
    torch.testing.assert_close(gm(grad, x), f(grad, x))
    assert decompose_leftover_derivatives(gm) == 0


@pytest.mark.slow
def test_a_derivative_fewbit_does_not_replace_compiles_where_ci_forbids_aten_fallbacks(monkeypatch, no_compile_cache):
    """With CI set, Inductor refuses to fall back to ATen for an op that has a decomposition (the CI
    failure of stop 12). gpt-tiny, keep + fewbit at budget 1.0: the plan keeps every GELU input, so
    every gelu_backward stays whole until the backend decomposes it; gradients equal eager."""
    monkeypatch.setenv("CI", "true")
    ref, got, plan = _gpt_tiny_grads({"memory_budget": 1.0, "modes": ("keep", "fewbit")})
    assert plan.solution is None or not plan.solution.fewbit  # None: budget 1.0 keeps the default partition
    for n, g in got.items():
        torch.testing.assert_close(g, ref[n], rtol=1e-4, atol=1e-5)


def _gpt_tiny_grads(options):
    """(eager gradients, gradients through memcompile with ``options``, the one plan) of gpt-tiny."""
    from memcompile.models import make

    model, inputs = make("gpt-tiny")
    model(*inputs).backward()
    ref = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    memcompile.clear_plans()
    model, inputs = make("gpt-tiny")
    torch.compile(model, backend="memcompile", options=options)(*inputs).backward()
    (plan,) = memcompile.last_plans()
    return ref, {n: p.grad for n, p in model.named_parameters()}, plan


@pytest.mark.parametrize("device, inner, form", [("cpu", "inductor", "aten"), ("cuda", "inductor", "aten"),
                                                 ("cpu", "eager", "kernel"), ("cuda", "eager", "kernel")])
def test_preferred_quantize_form_follows_the_measurements(device, inner, form):
    """Through Inductor the ATen form measured faster on CPU (2026-11-25) and on an H200 (2026-11-26,
    docs/BENCHMARKS.md "GPU"); executed eagerly the custom op is used everywhere."""
    from memcompile.passes.rewrite.quantize import preferred_form

    assert preferred_form(device, inner) == form
