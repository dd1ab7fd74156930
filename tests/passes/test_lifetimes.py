"""Lifetime facts on small hand-made graphs."""

import operator

import pytest
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


def _split_graph(split):
    def f(x):
        y = aten.mul.Tensor(x, 2)              # 6x4 floats = 96 bytes
        parts = split(y)
        return tuple(aten.add.Tensor(p, 1) for p in parts)

    return _joint(f, torch.randn(6, 4))


SPLIT_VIEWS = {
    "split": lambda y: aten.split.Tensor(y, 2),
    "split_with_sizes": lambda y: aten.split_with_sizes.default(y, [2, 4]),
    "unbind": lambda y: aten.unbind.int(y),
    "chunk": lambda y: aten.chunk.default(y, 3),
    "unsafe_split": lambda y: aten.unsafe_split.Tensor(y, 2),  # no alias in its schema, a view in fact
}


@pytest.mark.parametrize("name", list(SPLIT_VIEWS))
def test_getitems_of_a_list_returning_view_op_share_the_input_storage(name):
    # The schema's list return (``Tensor(a)[]``) carries the alias set on its element type, which
    # returns[0].alias_info does not expose: before this was read, each getitem counted as a new
    # storage (the three slices of a fused QKV projection, 6 MB a layer on gpt-small).
    gm = _split_graph(SPLIT_VIEWS[name])
    table = analyse(gm)
    mul = next(n for n in gm.graph.nodes if n.target == aten.mul.Tensor)
    getitems = [n for n in gm.graph.nodes if n.target is operator.getitem]
    assert getitems
    for g in getitems:
        assert table.tensors[g.name].alias_root == mul.name
        assert table.tensors[g.name].nbytes == 0
    # the storage lives until the last read of any slice
    last_reader = max(table.tensors[u.name].index for g in getitems for u in g.users)
    assert max(table.tensors[g.name].last_use for g in getitems) == last_reader


def test_getitems_of_a_copying_split_own_their_storage():
    gm = _split_graph(lambda y: aten.split_with_sizes_copy.default(y, [2, 4]))
    table = analyse(gm)
    sizes = sorted(table.tensors[n.name].nbytes for n in gm.graph.nodes if n.target is operator.getitem)
    assert sizes == [2 * 4 * 4, 4 * 4 * 4]
    assert all(table.tensors[n.name].alias_root == n.name for n in gm.graph.nodes if n.target is operator.getitem)


def test_only_the_aliasing_output_of_a_multi_output_op_is_a_view():
    def f(x):
        values, indices = aten.sort.default(aten.mul.Tensor(x, 2))  # neither output aliases
        return (values, indices)

    table = analyse(_joint(f, torch.randn(5)))
    getitems = [t for t in table.tensors.values() if t.producer == str(operator.getitem)]
    assert len(getitems) == 2 and all(t.alias_root == t.name and t.nbytes > 0 for t in getitems)


def test_ops_whose_schema_has_a_list_default_are_analysed():
    # amax(Tensor self, int[1] dim=[], bool keepdim=False): its FunctionSchema cannot be hashed
    def f(x):
        m = aten.amax.default(x, [1])
        return (aten.sub.Tensor(x, aten.unsqueeze.default(m, 1)),)

    gm = _joint(f, torch.randn(4, 8))
    table = analyse(gm)
    amax = next(n for n in gm.graph.nodes if n.target == aten.amax.default)
    assert table.tensors[amax.name].alias_root == amax.name
    assert table.tensors[amax.name].nbytes == 4 * 4
