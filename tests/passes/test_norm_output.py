"""Memory-sharing norms (rewrite/norm_output.py) on traced joint graphs, no torch.compile: which values
the rule rebuilds from a norm's output and from what, where it must not apply (the output mutated,
not saved anyway, no weight), the rebuilt values' error, the zero-weight guard, and the planner's
option for them."""

import pytest
import torch
import torch.nn.functional as F
from memcompile.passes.lifetimes import BACKWARD, analyse
from memcompile.passes.rewrite.inplace import inplace_source, output_form_values
from memcompile.passes.rewrite.norm_output import (
    ZERO_DIVISOR_MESSAGE,
    nonzero_divisor,
    norm_output_source,
)
from torch import nn
from torch._functorch.aot_autograd import aot_function, make_boxed_func
from torch._inductor.decomposition import select_decomp_table

from memcompile.models import RMSNorm

aten = torch.ops.aten
ROWS, DIM = 16, 64


def joint_of(fn, *inputs, decomposed=True):
    """The joint graph AOT autograd builds for ``fn`` (with Inductor's decompositions: what the partitioner
    sees through Inductor), after the partitioner's CSE, and its backward node names."""
    from memcompile.partitioner import _prepare_joint

    seen = []

    def partition(joint, joint_inputs, **kwargs):
        from torch._functorch.partitioners import default_partition

        seen.append(_prepare_joint(joint))
        return default_partition(seen[-1], joint_inputs, **kwargs)

    aot_function(fn, fw_compiler=lambda gm, _: make_boxed_func(gm.forward), partition_fn=partition,
                 decompositions=select_decomp_table() if decomposed else {})(*inputs)[0].sum().backward()
    gm = seen[0]
    table = analyse(gm)
    return gm, {n for n, t in table.tensors.items() if t.side == BACKWARD}


def layer_norm_then_linear(x, w, b, lin):
    y = F.layer_norm(x, (DIM,), w, b)
    return (y @ lin,)


def rms_norm_then_linear(x_in, w, lin):
    x = x_in @ lin  # the norm's input a forward value (a graph input is never planned)
    return ((x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w) @ lin,)


def params(*, bias=True):
    """Trained-looking affine parameters: |w| in [0.5, 1.5] either sign, |b| about 0.1 (the bias inverse's
    error grows with |b / w|: module docstring of norm_output)."""
    x = torch.randn(ROWS, DIM, requires_grad=True)
    w = (torch.empty(DIM).uniform_(0.5, 1.5) * torch.where(torch.rand(DIM) < 0.5, -1.0, 1.0)).requires_grad_()
    b = (0.1 * torch.randn(DIM)).requires_grad_()
    lin = (torch.randn(DIM, DIM) / DIM**0.5).requires_grad_()
    return (x, w, b, lin) if bias else (x, w, lin)


def sources(gm, backward):
    """name -> (y name, link kinds) for every forward value the rule applies to."""
    out = {}
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.name in backward:
            continue
        y, how, _ = norm_output_source(node, backward)
        if y is not None:
            out[node.name] = (y.name, tuple(link.kind for link in how.links))
    return out


def test_layer_norm_decomposed_rebuilds_x_hat_from_the_output():
    gm, backward = joint_of(layer_norm_then_linear, *params())
    found = sources(gm, backward)
    # x_hat = (x - mean) * rstd is what the decomposed backward reads; y = x_hat * w + b
    ((name, (y, kinds)),) = found.items()
    assert kinds == ("mul", "add")
    node = next(n for n in gm.graph.nodes if n.name == name)
    assert node.target is aten.mul.Tensor and node.args[0].target is aten.sub.Tensor
    y_node = next(n for n in gm.graph.nodes if n.name == y)
    assert y_node.target is aten.add.Tensor and y_node.args[1].op == "placeholder"


def test_rms_norm_rebuilds_the_input_and_x_hat_from_the_output():
    gm, backward = joint_of(rms_norm_then_linear, *params(bias=False))
    found = sources(gm, backward)
    # x by two links, x * rstd by one, and pow(x, 1.0) * 2.0 (the derivative's) as those ops on rebuilt x
    assert sorted(kinds for _, kinds in found.values()) == [("mul",), ("mul", "mul"), ("mul", "mul")]
    assert len({y for y, _ in found.values()}) == 1
    nodes = {n.name: n for n in gm.graph.nodes}
    scaled = next(nodes[n] for n in found if nodes[n].target is aten.mul.Scalar)
    assert scaled.args[0].target is aten.pow.Tensor_Scalar and scaled.args[0].args[0].target is aten.mm.default


def test_layer_norm_not_decomposed_has_no_chain():
    """inner="eager": native_layer_norm_backward reads x whole; nothing to rebuild (stated in docs/modes.md)."""
    gm, backward = joint_of(layer_norm_then_linear, *params(), decomposed=False)
    assert sources(gm, backward) == {}


def test_not_when_the_output_is_not_saved_anyway():
    """y * 2 is what the matmul reads: the backward reads neither y nor a view of it."""
    gm, backward = joint_of(lambda x, w, b, lin: ((F.layer_norm(x, (DIM,), w, b) * 2).square(),), *params())
    assert sources(gm, backward) == {}


def test_not_when_the_output_is_mutated_later():
    gm, backward = joint_of(layer_norm_then_linear, *params())
    ((name, (y_name, _)),) = sources(gm, backward).items()
    nodes = {n.name: n for n in gm.graph.nodes}
    y = nodes[y_name]
    with gm.graph.inserting_after(y):
        gm.graph.call_function(aten.add_.Tensor, (y, 1.0))
    found, _, why = norm_output_source(nodes[name], backward)
    assert found is None and "anyway" in why


@pytest.mark.parametrize("written", ["input", "weight"])
def test_not_when_the_input_or_a_link_operand_is_written_in_place(written):
    """x_hat (or the weight it is divided by) overwritten after the norm: the inverse would rebuild the new
    value, not the one the derivative was traced with."""
    gm, backward = joint_of(layer_norm_then_linear, *params())
    ((name, (y_name, _)),) = sources(gm, backward).items()
    nodes = {n.name: n for n in gm.graph.nodes}
    x_hat = nodes[name]
    (scaled,) = [u for u in x_hat.users if u.name not in backward]  # x_hat * w, then + b = y
    target = x_hat if written == "input" else next(a for a in scaled.all_input_nodes if a.op == "placeholder")
    with gm.graph.inserting_after(nodes[y_name]):
        gm.graph.call_function(aten.add_.Tensor, (target, 1.0))
    found, _, why = norm_output_source(nodes[name], backward)
    assert found is None and why


def test_not_without_an_affine_weight():
    """LayerNorm without weight: y is x_hat itself (plus b at most), the backward already reads what it saves."""
    gm, backward = joint_of(lambda x, w, b, lin: (F.layer_norm(x, (DIM,), None, b) @ lin,), *params())
    assert sources(gm, backward) == {}


def test_not_through_a_full_size_operand():
    """x * h with h as large as x (a gate, not a statistic or a parameter): h is not saved for free."""
    def gated(x, w, lin):
        h = torch.sigmoid(x @ lin)
        return (((x * h) * w) @ lin,)

    gm, backward = joint_of(gated, *params(bias=False))
    found = sources(gm, backward)
    # x * h is rebuilt from (x * h) * w; h (or x) from x * h never: the other factor is full size
    assert [kinds for _, kinds in found.values()] == [("mul",)]
    assert not any(n.startswith("sigmoid") for n in found)


@pytest.mark.parametrize("case", ["layer_norm", "rms_norm"])
def test_rewritten_graph_gives_the_same_gradients(case):
    torch.manual_seed(1)
    fn, inputs = ((layer_norm_then_linear, params()) if case == "layer_norm"
                  else (rms_norm_then_linear, params(bias=False)))
    gm, backward = joint_of(fn, *inputs)
    names = sorted(sources(gm, backward))
    ref = gm.graph.python_code("self").src
    done = output_form_values(gm, names, backward=backward)
    assert set(done.applied) == set(names) and not done.skipped
    assert gm.graph.python_code("self").src != ref
    # every backward read of a rebuilt value now reads the nodes the rewrite added
    nodes = {n.name: n for n in gm.graph.nodes}
    for name in names:
        assert not any(u.name in backward for u in nodes[name].users)
    # run the joint graph (primals, tangents) before and after: same values up to rounding
    args = [t.detach() for t in inputs] + [torch.ones(ROWS, DIM)]
    fresh, _ = joint_of(fn, *inputs)
    for got, want in zip(gm(*args), fresh(*args)):
        if isinstance(want, torch.Tensor):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rebuilt_x_hat_error(dtype):
    """RMSNorm's x_hat = y / w within 2 roundings; LayerNorm's (y - b) / w exact where b = 0 and within
    eps * (1 + |b / (w x_hat)|) otherwise (the bound docs/modes.md states)."""
    eps = torch.finfo(dtype).eps
    x_hat = torch.randn(4096, DIM, dtype=torch.float64).to(dtype)
    w = (torch.rand(DIM, dtype=torch.float64) + 0.1).to(dtype) * torch.where(torch.rand(DIM) < 0.5, -1, 1).to(dtype)
    b = torch.randn(DIM, dtype=torch.float64).to(dtype)
    rebuilt = (x_hat * w) / w
    assert ((rebuilt.double() - x_hat.double()).abs() <= 2 * eps * x_hat.double().abs()).all()
    rebuilt = ((x_hat * w + b) - b) / w
    bound = 2 * eps * (x_hat.double().abs() + (b.double() / w.double()).abs()) + 1e-30
    assert ((rebuilt.double() - x_hat.double()).abs() <= bound).all()


@pytest.mark.parametrize("bad", [0.0, -0.0, 1e-40, float("inf"), float("nan")])
def test_zero_weight_guard_raises(bad):
    w = torch.ones(DIM)
    w[3] = bad
    with pytest.raises(RuntimeError, match="cannot be recovered from the output"):
        nonzero_divisor(w)
    assert "modes" in ZERO_DIVISOR_MESSAGE


def test_zero_weight_guard_passes_normal_weights_through():
    w = torch.randn(DIM)
    out = nonzero_divisor(w)
    assert torch.equal(out, w) and out.data_ptr() != w.data_ptr()


class NormStack(nn.Module):
    """Linear -> RMSNorm, four times, then a linear and a squared sum: the saved norm inputs dominate."""

    def __init__(self, layers=4):
        super().__init__()
        self.lins = nn.ModuleList(nn.Linear(DIM, DIM) for _ in range(layers + 1))
        self.norms = nn.ModuleList(RMSNorm(DIM) for _ in range(layers))

    def forward(self, x):
        for lin, norm in zip(self.lins, self.norms):
            x = norm(lin(x))
        return self.lins[-1](x).square().sum()


def test_norm_stack_plans_inplace_with_eager_gradients():
    """inner="eager" (the hand-written RMSNorm is decomposed there too): the norm inputs are not saved,
    the predicted peak drops, and the gradients equal eager's within fp32 rtol 1e-5 of each tensor's scale."""
    from memcompile.backend import clear_plans, last_plans

    peaks, rows, plans = {}, {}, {}
    for modes in (("keep",), ("keep", "inplace")):
        torch._dynamo.reset()
        clear_plans()
        torch.manual_seed(0)
        model, x = NormStack(), torch.randn(1024, DIM)
        model(x).backward()
        ref = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        compiled = torch.compile(model, backend="memcompile", options={"inner": "eager", "memory_budget": 0.0, "modes": modes})
        compiled(x).backward()
        for name, p in model.named_parameters():
            # rtol 1e-5 of the tensor's scale: the rebuilt x is 3 roundings from x, as a reordered sum would be
            scale = ref[name].abs().max().item()
            torch.testing.assert_close(p.grad, ref[name], rtol=1e-5, atol=1e-5 * scale,
                                       msg=lambda m, name=name: f"{name}: {m}")
        (plans[modes],) = last_plans()
        peaks[modes], rows[modes] = plans[modes].predicted_peak_bytes, [d for d in plans[modes].decisions if d.mode == "inplace"]
    inplace = rows[("keep", "inplace")]
    # norm inputs (the linears' outputs) among them, each rows x DIM fp32 (which ones the ILP takes varies
    # with its tie-breaking: the last norm's input is not read after its output's last use)
    assert sum(d.name.startswith("addmm") for d in inplace) >= 3 and all(d.bytes == 1024 * DIM * 4 for d in inplace)
    assert peaks[("keep", "inplace")] < peaks[("keep",)]
    # the Report names the tensors freed this way, in the text summary and the JSON rows
    from memcompile.report import Report

    report = Report((plans[("keep", "inplace")],))
    (freed,) = [line for line in report.summary().splitlines() if "freed (rebuilt from an output" in line]
    assert freed.split(": ", 1)[1].split(", ") == sorted(d.name for d in inplace)
    assert sorted(t["name"] for t in report.to_json()["tensors"] if t["mode"] == "inplace") == sorted(d.name for d in inplace)
    assert not any("freed" in line for line in Report((plans[("keep",)],)).summary().splitlines())


def test_zero_weight_at_run_time_raises_in_the_compiled_step():
    """Planned with weights of ones, run with one weight set to 0: the backward raises, never a wrong gradient."""
    torch.manual_seed(0)

    model = NormStack()
    x = torch.randn(1024, DIM)
    compiled = torch.compile(model, backend="memcompile",
                             options={"inner": "eager", "memory_budget": 0.0, "modes": ("keep", "inplace")})
    compiled(x).backward()
    from memcompile.backend import last_plans

    (plan,) = last_plans()
    assert plan.solution.inplace, plan.notes
    assert {d.name for d in plan.decisions if d.mode == "inplace"}
    with torch.no_grad():
        model.norms[2].weight[5] = 0.0
    with pytest.raises(RuntimeError, match="cannot be recovered from the output"):
        compiled(x).backward()


def test_inplace_source_prefers_the_activation_rule():
    gm, backward = joint_of(lambda x, w, lin: (F.leaky_relu(x @ lin, 0.1) @ lin,), *params(bias=False),
                            decomposed=False)
    mm = next(n for n in gm.graph.nodes if n.target is aten.mm.default)
    y, why = inplace_source(mm, backward)
    assert y is not None and y.target is aten.leaky_relu.default, why
