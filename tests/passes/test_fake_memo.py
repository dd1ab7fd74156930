"""The lossy rewrites' fake-value memo (rewrite/_lossy.py): a rewrite on another copy of the same graph reuses
the values an earlier one computed, never gives one value to two nodes of one graph, and sets the values a
fresh dispatch would."""

import pytest
import torch
from memcompile.kernels import quantize_decomposed as decomposed
from memcompile.passes.rewrite import _lossy as lossy
from torch import fx
from torch._subclasses.fake_tensor import FakeTensorMode


@pytest.fixture
def dispatches(monkeypatch):
    """The ops dispatched under a FakeTensorMode (a memo hit dispatches none)."""
    monkeypatch.setattr(lossy, "MEMO_FAKE_VALUES", True)
    seen = []
    real = FakeTensorMode.dispatch

    def counting(self, func, *args, **kwargs):
        seen.append(func)
        return real(self, func, *args, **kwargs)

    monkeypatch.setattr(FakeTensorMode, "dispatch", counting)
    return seen


def _joint(mode, shapes=((8, 256), (8, 256))):
    """A graph of placeholders with fake values (what a joint graph's copies share)."""
    graph = fx.Graph()
    for i, shape in enumerate(shapes):
        graph.placeholder(f"x{i}").meta["val"] = mode.from_tensor(torch.randn(*shape))
    return graph


def _copy(graph):
    """A copy as the partitioner takes one per plan: new nodes, the same meta["val"] objects."""
    new = fx.Graph()
    new.graph_copy(graph, {})
    return new


def _quantize_all(graph, mode):
    """Inline the quantize and dequantize functions on every placeholder, the rewrite's ATen form."""
    outs = []
    for x in list(graph.find_nodes(op="placeholder")):
        q, s = lossy.inline_aten(graph, mode, decomposed.quantize_int8, x, 128)
        (dq,) = lossy.inline_aten(graph, mode, decomposed.dequantize, q, s, tuple(x.meta["val"].shape), torch.float32)
        outs.append(lossy.call(graph, mode, torch.ops.aten.permute.default, dq, [1, 0]))
    graph.output(tuple(outs))
    return graph


def _vals(graph):
    return [n.meta["val"] for n in graph.nodes if n.op == "call_function"]


def _layout(val):
    return (tuple(val.shape), val.stride(), val.dtype, val.storage_offset())


def _aliasing(graph):
    """Which call_function nodes share a storage, by position (what Inductor's passes may read)."""
    vals = _vals(graph)
    return [[j for j, w in enumerate(vals) if w.untyped_storage() is v.untyped_storage()] for v in vals]


def test_a_second_copy_reuses_every_value_and_no_graph_shares_one_between_nodes(dispatches, monkeypatch):
    mode = FakeTensorMode()
    joint = _joint(mode)
    first = _quantize_all(_copy(joint), mode)
    assert dispatches, "the first rewrite computes its values"
    dispatches.clear()
    second = _quantize_all(_copy(joint), mode)
    assert dispatches == []  # every value came from the memo
    assert [v is w for v, w in zip(_vals(first), _vals(second))] == [True] * len(_vals(first))
    for graph in (first, second):  # the two placeholders have one shape: their chains are alike, not shared
        ids = [id(v) for v in _vals(graph)]
        assert len(ids) == len(set(ids))

    # the same values as a fresh dispatch of every op: layouts and aliasing node for node
    monkeypatch.setattr(lossy, "MEMO_FAKE_VALUES", False)
    fresh = _quantize_all(_copy(joint), mode)
    assert [n.target for n in fresh.nodes] == [n.target for n in second.nodes]
    assert [_layout(v) for v in _vals(fresh)] == [_layout(v) for v in _vals(second)]
    assert _aliasing(fresh) == _aliasing(second)


def test_the_same_inputs_twice_in_one_graph_get_fresh_values(dispatches):
    mode = FakeTensorMode()
    graph = _joint(mode, shapes=((8, 256),))
    (x,) = graph.find_nodes(op="placeholder")
    a = lossy.inline_aten(graph, mode, decomposed.quantize_int8, x, 128)
    b = lossy.inline_aten(graph, mode, decomposed.quantize_int8, x, 128)
    c = lossy.call(graph, mode, torch.ops.aten.t.default, x)
    d = lossy.call(graph, mode, torch.ops.aten.t.default, x)
    ids = [id(v) for v in _vals(graph)]
    assert len(ids) == len(set(ids))
    assert _layout(a[0].meta["val"]) == _layout(b[0].meta["val"]) and _layout(c.meta["val"]) == _layout(d.meta["val"])
    other = _copy(graph)  # and in another graph the first of each is reused
    (y,) = other.find_nodes(op="placeholder")
    assert lossy.call(other, mode, torch.ops.aten.t.default, y).meta["val"] is c.meta["val"]


def test_symbolic_sizes_are_not_memoised():
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    mode = FakeTensorMode(shape_env=ShapeEnv())
    graph = fx.Graph()
    x = graph.placeholder("x")
    x.meta["val"] = mode.from_tensor(torch.randn(8, 256), static_shapes=False)
    assert not lossy._static(x.meta["val"])
    lossy.call(graph, mode, torch.ops.aten.t.default, x)
    assert not lossy._memo(mode).calls
