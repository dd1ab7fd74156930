"""Lifetime facts on small hand-made graphs."""

import sympy
import torch
import torch.fx as fx
from torch.fx.experimental.proxy_tensor import make_fx

from memcompile.passes.lifetimes import BACKWARD, FORWARD, INPUT, analyse

aten = torch.ops.aten


def _joint(fn, *args):
    return make_fx(fn)(*args)


def test_view_of_saved_tensor_shares_its_root_and_costs_no_bytes():
    def f(x, tangents_1):
        y = aten.mul.Tensor(x, x)          # 4x8 floats = 128 bytes
        v = aten.view.default(y, [32])     # view of y
        t = aten.t.default(y)              # another view
        g = aten.mul.Tensor(tangents_1, aten.sum.dim_IntList(t, [1]))
        return (aten.sum.default(v), g)

    gm = _joint(f, torch.randn(4, 8), torch.randn(8))
    table = analyse(gm)
    mul = next(n for n in gm.graph.nodes if n.target == aten.mul.Tensor)
    views = [n for n in gm.graph.nodes if n.target in (aten.view.default, aten.t.default)]
    assert table.tensors[mul.name].nbytes == 4 * 8 * 4
    for v in views:
        info = table.tensors[v.name]
        assert info.alias_root == mul.name
        assert info.nbytes == 0
    # the storage is counted once: its aliases add nothing
    assert sum(table.tensors[n].nbytes_hint for n in table.aliases_of(mul.name)) == 128


def test_in_place_result_aliases_its_input():
    def f(x):
        y = aten.mul.Tensor(x, 2)
        z = aten.add_.Tensor(y, 1)
        return (z,)

    gm = _joint(f, torch.randn(3))
    table = analyse(gm)
    add_ = next(n for n in gm.graph.nodes if n.target == aten.add_.Tensor)
    mul = next(n for n in gm.graph.nodes if n.target == aten.mul.Tensor)
    assert table.tensors[add_.name].alias_root == mul.name
    assert table.tensors[add_.name].nbytes == 0
    # the in-place op reads y, so y's last use is the add_
    assert table.tensors[mul.name].last_use == table.tensors[add_.name].index


def test_tensor_used_only_in_backward_is_forward_side_and_saved():
    def f(primals_1, primals_2, tangents_1):
        h = aten.mm.default(primals_1, primals_2)       # forward
        out = aten.relu.default(h)                       # forward output
        mask = aten.gt.Scalar(h, 0)                      # read only by the backward
        grad = aten.mul.Tensor(tangents_1, mask)         # backward
        return (out, grad)

    gm = _joint(f, torch.randn(4, 4), torch.randn(4, 4), torch.randn(4, 4))
    table = analyse(gm)
    by_target = {n.target: n.name for n in gm.graph.nodes if n.op == "call_function"}
    mask = table.tensors[by_target[aten.gt.Scalar]]
    grad = table.tensors[by_target[aten.mul.Tensor]]
    assert mask.side == FORWARD
    assert grad.side == BACKWARD
    (tangent,) = [t for t in table.tensors.values() if t.is_tangent]
    assert tangent.side == INPUT and tangent.users == (grad.name,)
    assert mask.users == (grad.name,)
    assert mask.first_use == mask.last_use == grad.index
    saved = table.saved_for_backward()
    assert mask.name in saved
    assert by_target[aten.relu.default] not in saved  # read by no backward node


def test_dynamic_batch_dimension_gives_a_sympy_size():
    # symbolic tracing makes every size a symbol (batch 6 and width 16 here)
    gm = make_fx(lambda t: (aten.mul.Tensor(t, t),), tracing_mode="symbolic")(torch.randn(6, 16))
    table = analyse(gm)
    mul = next(n for n in gm.graph.nodes if n.op == "call_function" and n.target == aten.mul.Tensor)
    info = table.tensors[mul.name]
    assert isinstance(info.nbytes, sympy.Expr) and len(info.nbytes.free_symbols) == 2
    rows, cols = (s.node.expr for s in mul.meta["val"].shape)
    assert sympy.simplify(info.nbytes - 4 * rows * cols) == 0
    assert info.nbytes_hint == 6 * 16 * 4
    assert info.shape == (rows, cols)


def test_first_and_last_use_follow_execution_order():
    def f(x):
        a = aten.sin.default(x)
        b = aten.cos.default(x)
        c = aten.add.Tensor(a, b)
        d = aten.mul.Tensor(a, c)
        return (d,)

    gm = _joint(f, torch.randn(5))
    table = analyse(gm)
    names = {n.target: n.name for n in gm.graph.nodes if n.op == "call_function"}
    a = table.tensors[names[aten.sin.default]]
    assert a.first_use == table.tensors[names[aten.add.Tensor]].index
    assert a.last_use == table.tensors[names[aten.mul.Tensor]].index
    x = next(t for t in table.tensors.values() if t.producer == "placeholder")
    assert x.last_use == table.tensors[names[aten.cos.default]].index
