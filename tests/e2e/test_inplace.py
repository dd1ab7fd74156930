"""The inplace mode end to end: which joint-graph derivatives read an activation's input, the output
form's equality, plans that stop saving activation inputs at no added time, gradients equal eager
(alone and with recompute), the report.

Everything runs with inner="eager" but two slow tests: through Inductor the backend keeps these ops out
of the decomposition table (inplace.KEPT_WHOLE) so the rules apply there too, and LayerNorm's decomposed
backward reads x_hat, which the memory-sharing norm rule (rewrite/norm_output.py) rebuilds from the output.
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._functorch.aot_autograd import aot_function, make_boxed_func

from memcompile.backend import clear_plans, last_plans
from memcompile.measure import live_bytes_of, measure_peak
from memcompile.passes.lifetimes import BACKWARD, analyse
from memcompile.passes.rewrite.inplace import INPLACE_RULES, output_form_source
from memcompile.report import Report


def _run_boxed(gm, _example_inputs):
    """Run the graph eagerly with AOT autograd's boxed calling convention (an unboxed one warns)."""
    return make_boxed_func(gm.forward)

aten = torch.ops.aten

# derivative reads the output already | reads the input, output form legal | reads the input, not legal
READS_OUTPUT = {
    "relu": F.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "exp": torch.exp,
    "softmax": lambda t: F.softmax(t, -1), "log_softmax": lambda t: F.log_softmax(t, -1),
}
LEGAL = {
    "leaky_relu": lambda t: F.leaky_relu(t, 0.1), "leaky_relu_0": lambda t: F.leaky_relu(t, 0.0),
    "hardtanh": F.hardtanh, "relu6": F.relu6, "threshold": lambda t: F.threshold(t, 0.1, 0.0),
    "elu": F.elu, "selu": F.selu, "celu": lambda t: F.celu(t, 0.5),
}
ILLEGAL = {
    "leaky_relu_negative": lambda t: F.leaky_relu(t, -0.1),
    "threshold_value_above": lambda t: F.threshold(t, 0.1, 0.5),
    "elu_negative_alpha": lambda t: F.elu(t, -0.5),
    "hardsigmoid": F.hardsigmoid, "gelu": F.gelu, "softplus": F.softplus,
}


def joint_graph(fn):
    """The aten-level joint graph AOT autograd builds for ``fn`` (what memcompile sees with inner="eager")."""
    seen = []

    def partition(joint, inputs, **kwargs):
        seen.append(joint)
        from torch._functorch.partitioners import default_partition

        return default_partition(joint, inputs, **kwargs)

    x = torch.randn(4, 8, requires_grad=True)
    aot_function(fn, fw_compiler=_run_boxed, partition_fn=partition)(x).sum().backward()
    return seen[0]


def activation_and_input(gm):
    table = analyse(gm)
    backward = {n for n, t in table.tensors.items() if t.side == BACKWARD}
    (x,) = gm.graph.find_nodes(op="placeholder")[:1]
    return x, backward


@pytest.mark.parametrize("name", sorted(READS_OUTPUT))
def test_these_derivatives_already_read_the_output(name):
    gm = joint_graph(READS_OUTPUT[name])
    x, backward = activation_and_input(gm)
    assert not any(u.name in backward for u in x.users), [u.format_node() for u in x.users]


@pytest.mark.parametrize("name", sorted(LEGAL))
def test_derivatives_reading_the_input_get_an_output_form(name):
    gm = joint_graph(LEGAL[name])
    x, backward = activation_and_input(gm)
    (derivative,) = [u for u in x.users if u.name in backward]
    assert derivative.target in INPLACE_RULES
    y, why = output_form_source(x, backward)
    assert y is not None, why
    assert y.name not in backward and y.args[0] is x


@pytest.mark.parametrize("name", sorted(ILLEGAL))
def test_no_output_form_where_it_would_change_the_gradient(name):
    gm = joint_graph(ILLEGAL[name])
    x, backward = activation_and_input(gm)
    y, why = output_form_source(x, backward)
    assert y is None and why


def _write_in_place_after(gm, node):
    """Append ``node.add_(1.0)`` right after ``node``: a later in-place write, as a mutating forward leaves one."""
    with gm.graph.inserting_after(node):
        gm.graph.call_function(aten.add_.Tensor, (node, 1.0))


@pytest.mark.parametrize("name", ["leaky_relu", "hardtanh", "elu"])
def test_no_output_form_when_the_output_is_written_later(name):
    """y overwritten after the activation: the derivative would read the new value, not the activation's."""
    gm = joint_graph(LEGAL[name])
    x, backward = activation_and_input(gm)
    y, why = output_form_source(x, backward)
    assert y is not None, why
    _write_in_place_after(gm, y)
    found, why = output_form_source(x, backward)
    assert found is None and "cannot read the forward op's output" in why


def test_no_output_form_when_the_input_is_written_in_place():
    gm = joint_graph(LEGAL["leaky_relu"])
    x, backward = activation_and_input(gm)
    _write_in_place_after(gm, x)
    found, why = output_form_source(x, backward)
    assert found is None and "written in place" in why


def adversarial(dtype):
    special = [0.0, -0.0, float("inf"), -float("inf"), float("nan"), -1.0, 1.0, 0.1, 6.0, -30.0, 1e-45, -1e-45]
    return torch.cat([torch.randn(4096) * 4, torch.tensor(special)]).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("forward", "derivative", "output_form"),
    [
        (lambda x: aten.leaky_relu(x, 0.1), lambda g, x: aten.leaky_relu_backward(g, x, 0.1, False),
         lambda g, y: aten.leaky_relu_backward(g, y, 0.1, True)),
        (lambda x: aten.leaky_relu(x, 0.0), lambda g, x: aten.leaky_relu_backward(g, x, 0.0, False),
         lambda g, y: aten.leaky_relu_backward(g, y, 0.0, True)),
        (lambda x: aten.hardtanh(x, 0.0, 6.0), lambda g, x: aten.hardtanh_backward(g, x, 0.0, 6.0),
         lambda g, y: aten.hardtanh_backward(g, y, 0.0, 6.0)),
        (lambda x: aten.threshold(x, 0.1, 0.0), lambda g, x: aten.threshold_backward(g, x, 0.1),
         lambda g, y: aten.threshold_backward(g, y, 0.1)),
        (lambda x: aten.relu(x), lambda g, x: aten.threshold_backward(g, x, 0.5),
         lambda g, y: aten.threshold_backward(g, y, 0.5)),
    ],
    ids=["leaky_relu", "leaky_relu_0", "relu6", "threshold", "relu_positive_threshold"],
)
def test_exact_output_forms_are_bit_exact(forward, derivative, output_form, dtype):
    x = adversarial(dtype)
    g = torch.randn_like(x)
    y = forward(x)
    torch.testing.assert_close(output_form(g, y), derivative(g, x), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize(("alpha", "scale", "input_scale"), [(1.0, 1.0, 1.0), (1.6732632423543772, 1.0507009873554805, 1.0), (0.5, 1.0, 2.0)])
def test_elu_output_form_differs_by_one_rounding(alpha, scale, input_scale):
    x = adversarial(torch.float32)
    g = torch.ones_like(x)
    y = aten.elu(x, alpha, scale, input_scale)
    ref = aten.elu_backward(g, alpha, scale, input_scale, False, x)
    got = aten.elu_backward(g, alpha, scale, input_scale, True, y)
    # the rounding of y + alpha * scale, times input_scale: a few fp32 ulps of alpha * scale * input_scale
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=4 * 1.2e-7 * alpha * scale * input_scale, equal_nan=True)


class ActMLP(nn.Module):
    """Linear layers, each followed by one activation of ``acts``; a squared-sum loss (large gradients)."""

    def __init__(self, acts, dim=128):
        super().__init__()
        self.acts = acts
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(len(acts) + 1))

    def forward(self, x):
        for layer, act in zip(self.layers, self.acts):
            x = act(layer(x))
        return self.layers[-1](x).square().sum()


def make_mlp(names, seed=0):
    torch.manual_seed(seed)
    table = {**READS_OUTPUT, **LEGAL, **ILLEGAL}
    return ActMLP([table[n] for n in names]), (torch.randn(256, 128),)


MIXED = ("leaky_relu", "relu", "hardtanh", "sigmoid", "relu6", "threshold")
DEEPER = ("leaky_relu", "sigmoid", "hardtanh", "tanh", "relu6", "relu", "threshold")
ACT_BYTES = 256 * 128 * 4


def grads_of(model, inputs):
    loss = model(*inputs)
    loss.backward()
    return loss.detach(), {n.removeprefix("_orig_mod."): p.grad.detach().clone() for n, p in model.named_parameters()}


def compiled_step(names, options):
    model, inputs = make_mlp(names)
    loss, grads = grads_of(torch.compile(model, backend="memcompile", options=options), inputs)
    (plan,) = last_plans()
    return loss, grads, plan


def saved_bytes(plan):
    return sum(d.bytes for d in plan.decisions if d.mode == "keep")


def test_inplace_drops_the_saved_activation_inputs_at_no_added_time():
    """No recompute allowed: with inplace, the inputs of leaky_relu, hardtanh, relu6 and threshold are not
    saved; relu and sigmoid already saved their outputs only. Measured peak drops with them."""
    peaks, plans = {}, {}
    for label, modes in (("keep", ("keep",)), ("inplace", ("keep", "inplace"))):
        torch._dynamo.reset()
        clear_plans()
        model, inputs = make_mlp(MIXED)
        compiled = torch.compile(model, backend="memcompile", options={"inner": "eager", "memory_budget": 0.0, "modes": modes})
        compiled(*inputs).backward()
        (plans[label],) = last_plans()
        model.zero_grad(set_to_none=True)
        live = live_bytes_of(model, inputs)
        peaks[label] = measure_peak(lambda: compiled(*inputs).backward(), live_before_bytes=live).peak_bytes
    keep, inplace = plans["keep"], plans["inplace"]
    rewritten = {d.name for d in inplace.decisions if d.mode == "inplace"}
    assert len(rewritten) == 4 and all(d.bytes == ACT_BYTES for d in inplace.decisions if d.mode == "inplace")
    assert saved_bytes(keep) - saved_bytes(inplace) == 4 * ACT_BYTES
    assert rewritten <= {d.name for d in keep.decisions if d.mode == "keep"}
    assert inplace.solution.added_seconds == 0.0  # only free views (detach, t) are rebuilt
    assert all(d.added_seconds == 0.0 for d in inplace.decisions if d.mode == "recompute")
    assert inplace.predicted_peak_bytes < keep.predicted_peak_bytes
    print(f"saved {saved_bytes(keep)} -> {saved_bytes(inplace)} B; measured peak {peaks['keep']} -> {peaks['inplace']} B")
    assert peaks["inplace"] <= peaks["keep"] - 2 * ACT_BYTES
    backward = inplace.backward_code
    assert "leaky_relu_backward" in backward and "True" in backward  # self_is_result
    assert "hardtanh_backward" in backward and "threshold_backward" in backward


@pytest.mark.parametrize("budget", [1.0, 0.5, 0.0])
def test_gradients_equal_eager_with_inplace_and_recompute(budget, no_compile_cache):
    model, inputs = make_mlp(DEEPER)
    ref_loss, ref = grads_of(model, inputs)
    loss, got, plan = compiled_step(DEEPER, {"inner": "eager", "memory_budget": budget})  # default modes: inplace on
    assert "inplace" in plan.config.modes
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=0)
    for name in ref:  # the exact rules: nothing but float reordering may differ (none here)
        torch.testing.assert_close(got[name], ref[name], rtol=1e-6, atol=0, msg=lambda m: f"{name}: {m}")
    used = {d.mode for d in plan.decisions}
    if budget == 1.0:
        assert plan.source == "default" and "inplace" not in used
    else:  # combined with recompute
        assert {"inplace", "recompute"} <= used


def plain_and_mixed(budget):
    """Plans of MIXED at ``budget`` with recompute alone, then with recompute and inplace."""
    _, _, plain = compiled_step(MIXED, {"inner": "eager", "memory_budget": budget, "modes": ("keep", "recompute")})
    torch._dynamo.reset()
    clear_plans()
    _, _, mixed = compiled_step(MIXED, {"inner": "eager", "memory_budget": budget})
    return plain, mixed


@pytest.mark.parametrize("budget", [0.8, 0.6])
def test_inplace_plans_are_faster_than_recompute_alone(budget):
    plain, mixed = plain_and_mixed(budget)
    print(f"fraction {budget}: recompute only +{plain.solution.added_seconds * 1e6:.1f} us, "
          f"{plain.predicted_peak_bytes} B; with inplace +{mixed.solution.added_seconds * 1e6:.1f} us, "
          f"{mixed.predicted_peak_bytes} B")
    assert mixed.solution.inplace and plain.solution.added_seconds > 0
    assert mixed.solution.added_seconds < plain.solution.added_seconds
    assert mixed.budget_bytes == plain.budget_bytes
    assert mixed.predicted_peak_bytes <= mixed.budget_bytes


def test_inplace_never_raises_the_smallest_peak():
    """At the smallest peak the model under-counts a recompute chain that keeping an activation's output
    leads to (simulated 1.57 vs 1.44 MiB here); the partitioner then also builds, and improves by the local moves,
    the floor without inplace. Within 0.1%: the search without inplace is another path, whose repair rounds and
    full descents found a plan 512 B (0.03%) under the one with inplace (2026-12-07)."""
    plain, mixed = plain_and_mixed(0.0)
    assert mixed.predicted_peak_bytes <= plain.predicted_peak_bytes * 1.001


@pytest.mark.parametrize("names", [("elu", "selu", "celu"), ("leaky_relu_negative", "threshold_value_above", "hardsigmoid")],
                         ids=["elu-family", "not-legal"])
def test_gradients_of_the_elu_rule_and_of_illegal_ops(names):
    model, inputs = make_mlp(names)
    ref_loss, ref = grads_of(model, inputs)
    _, got, plan = compiled_step(names, {"inner": "eager", "memory_budget": 0.0, "modes": ("keep", "inplace")})
    inplace = [d for d in plan.decisions if d.mode == "inplace"]
    assert len(inplace) == (3 if names[0] == "elu" else 0)
    for name in ref:  # ELU's output form: one rounding of y + alpha * scale per element
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_report_shows_the_inplace_rows_and_totals():
    _, _, plan = compiled_step(MIXED, {"inner": "eager", "memory_budget": 0.0, "modes": ("keep", "inplace")})
    report = Report((plan,))
    text = report.summary()
    assert "inplace      4 tensors" in text and "not saved" in text
    rows = [t for t in report.to_json()["tensors"] if t["mode"] == "inplace"]
    assert len(rows) == 4 and all(t["added_seconds"] == 0.0 for t in rows)


@pytest.mark.slow
def test_inductor_plans_inplace_with_eager_gradients(no_compile_cache):
    """Through Inductor (issue 18): the activation ops reach the partitioner whole, the plan serves their
    inputs from their outputs, and the gradients equal eager's (Inductor's float reordering only)."""
    names = ("leaky_relu", "hardtanh", "elu", "relu6")  # the model: Linear + these, few layers (compile time)
    model, inputs = make_mlp(names)
    ref_loss, ref = grads_of(model, inputs)
    loss, got, plan = compiled_step(names, {"memory_budget": 0.0})
    # before issue 18: none (the derivatives were decomposed into masks before the rules saw them)
    assert "inplace" in plan.config.modes and len(plan.solution.inplace) >= 2, plan.notes
    rows = [d for d in plan.decisions if d.mode == "inplace"]
    assert len(rows) == len(plan.solution.inplace) and all(d.bytes == ACT_BYTES for d in rows)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-5 * ref[name].abs().max().item(),
                                   msg=lambda m, name=name: f"{name}: {m}")


class NormMLP(nn.Module):
    """Linear -> LayerNorm, three times, then a linear: what a transformer's norms look like to the planner."""

    def __init__(self, dim=128, layers=3):
        super().__init__()
        self.lins = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers + 1))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))

    def forward(self, x):
        for lin, norm in zip(self.lins, self.norms):
            x = norm(lin(x))
        return self.lins[-1](x).square().sum()


@pytest.mark.slow
def test_inductor_memory_sharing_layer_norm(no_compile_cache):
    """LayerNorm through Inductor: the decomposed backward reads x_hat; the plan rebuilds it from the norm's
    output, the report names those tensors, the gradients equal eager's. Keep and inplace only: with recompute
    the floor recomputes each norm's input from the kept output before it (a plan as low, 1,124,356 B simulated,
    without inplace rows)."""
    torch.manual_seed(0)
    model, inputs = NormMLP(), (torch.randn(256, 128),)
    _, ref = grads_of(model, inputs)
    model.zero_grad(set_to_none=True)
    options = {"memory_budget": 0.0, "modes": ("keep", "inplace")}
    _, got = grads_of(torch.compile(model, backend="memcompile", options=options), inputs)
    (plan,) = last_plans()
    rows = [d for d in plan.decisions if d.mode == "inplace"]
    assert len(rows) >= 2 and all(d.bytes == ACT_BYTES for d in rows), plan.notes
    assert "memcompile.nonzero_divisor" in plan.backward_code
    (freed,) = [line for line in Report((plan,)).summary().splitlines() if "freed (rebuilt from an output" in line]
    assert freed.endswith(", ".join(sorted(d.name for d in rows)))
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-5 * ref[name].abs().max().item(),
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("leaky_relu", (0.1,)), ("leaky_relu_backward", (0.1, True)), ("hardtanh", (-1.0, 1.0)),
        ("hardtanh_backward", (0.0, 6.0)), ("threshold_backward", (0.5,)), ("elu", (1.0, 1.0, 1.0)),
        ("elu_backward", (1.0, 1.0, 1.0, True)), ("relu", ()),
    ],
)
def test_ops_kept_whole_are_decomposed_before_inductor_lowers_them(op, args):
    """What the inplace mode keeps out of Inductor's table comes back as Inductor's decomposition (relu,
    which Inductor lowers itself, stays): same values, every new node with meta["val"]."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    from memcompile.passes.rewrite.inplace import KEPT_WHOLE, decompose_leftovers

    target = getattr(aten, op).default
    two = op.endswith("_backward")

    def f(g, x):
        if op == "elu_backward":  # (grad, alpha, scale, input_scale, is_result, self_or_result)
            return target(g, *args, x) * 2
        return (target(g, x, *args) if two else target(x, *args)) * 2

    g, x = torch.randn(7, 33), torch.randn(7, 33)
    with FakeTensorMode() as mode:
        gm = make_fx(f, tracing_mode="real")(mode.from_tensor(g), mode.from_tensor(x))
    assert target in KEPT_WHOLE and any(n.target is target for n in gm.graph.nodes)
    expected = f(g, x)
    assert decompose_leftovers(gm) == (0 if op == "relu" else 1)
    assert any(n.target is target for n in gm.graph.nodes) == (op == "relu")
    assert all("val" in n.meta for n in gm.graph.nodes if n.op == "call_function")
    torch.testing.assert_close(gm(g, x), expected)


def test_the_decomposition_table_keeps_the_rules_ops_only_with_a_budget():
    from memcompile.backend import _decompositions
    from memcompile.config import MemConfig
    from memcompile.passes.rewrite.inplace import KEPT_WHOLE

    assert _decompositions(MemConfig()) is None  # no budget: Inductor's own partition and table
    assert _decompositions(MemConfig(memory_budget=0.5, modes=("keep", "recompute"))) is None
    table = _decompositions(MemConfig(memory_budget=0.5))
    assert table and not KEPT_WHOLE & set(table) and aten.gelu_backward.default in table
    assert aten.native_layer_norm_backward.default in table  # norms stay decomposed: norm_output matches that
