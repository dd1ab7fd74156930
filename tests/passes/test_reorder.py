"""The extraction's backward reordering (rewrite/recompute._reorder_like_autograd) against torch's own."""

import operator

import torch
from memcompile.passes.rewrite.recompute import _reorder_like_autograd
from torch import fx
from torch._functorch import partitioners as tp
from torch.fx._lazy_graph_module import _LazyGraphModule, _use_lazy_graph_module

aten = torch.ops.aten


def _backward_with_recompute_up_front() -> fx.GraphModule:
    """A backward whose recomputed forward values sit before the first tangent use, as extraction leaves
    them: torch's reordering moves each to just before its first reader."""
    g = fx.Graph()
    p = g.placeholder("primals_1")
    t = g.placeholder("tangents_1")
    r1 = g.call_function(aten.sin.default, (p,))
    r2 = g.call_function(aten.cos.default, (r1,))
    r3 = g.call_function(aten.exp.default, (p,))
    g1 = g.call_function(aten.mul.Tensor, (t, 2))
    g2 = g.call_function(aten.mul.Tensor, (g1, r2))
    parts = g.call_function(aten.split.Tensor, (g2, 2))
    first = g.call_function(operator.getitem, (parts, 0))
    g3 = g.call_function(aten.mul.Tensor, (first, r3))
    g.output((g3,))
    for node, shape in zip(g.nodes, [(4,)] * 7 + [None, (2,), (2,)]):
        if shape is not None:
            node.meta["val"] = torch.empty(shape, device="meta")
    return fx.GraphModule(torch.nn.Module(), g)


def test_reorder_gives_torchs_order():
    gm = _backward_with_recompute_up_front()
    theirs = tp.reordering_to_mimic_autograd_engine(gm)
    ours = _reorder_like_autograd(gm)
    assert [n.name for n in ours.graph.nodes] == [n.name for n in theirs.graph.nodes]
    names = [n.name for n in ours.graph.nodes]
    assert names.index("exp_default") > names.index("getitem")  # moved to its reader: the test can fail


def test_reorder_makes_a_lazy_module_under_lazy_mode():
    with _use_lazy_graph_module(True):
        ours = _reorder_like_autograd(_backward_with_recompute_up_front())
    assert isinstance(ours, _LazyGraphModule)
    assert "exp_default" in ours.code  # and it still generates its code when asked
