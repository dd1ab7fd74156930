"""inline_aten (the quantize rewrite's ATen form, the leftover-derivative decomposition): one make_fx
trace per function and input layout."""

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensorMode

import memcompile.passes.rewrite._lossy as qr
from memcompile.kernels import quantize_decomposed as decomposed


def _graph_with_input(shape, mode):
    graph = fx.Graph()
    x = graph.placeholder("x")
    x.meta["val"] = mode.from_tensor(torch.randn(*shape))
    return graph, x


def test_a_layout_seen_before_reuses_its_trace(monkeypatch):
    traces = []
    monkeypatch.setattr(qr, "_TRACES", {})
    import torch.fx.experimental.proxy_tensor as pt

    real = pt.make_fx

    def counting(*a, **k):
        traces.append(1)
        return real(*a, **k)

    monkeypatch.setattr(pt, "make_fx", counting)
    mode = FakeTensorMode()
    outs = []
    for shape in ((8, 256), (8, 256), (4, 256)):
        graph, x = _graph_with_input(shape, mode)
        q, s = qr.inline_aten(graph, mode, decomposed.quantize_int8, x, 128)
        graph.output((q, s))
        outs.append(graph)
    assert len(traces) == 2  # (8, 256) once, (4, 256) once
    targets = [[n.target for n in g.nodes if n.op == "call_function"] for g in outs]
    assert targets[0] == targets[1]
    # the inlined nodes carry values of the graph's own fake mode, whatever the trace was made under
    q_val = [n for n in outs[1].nodes if n.op == "output"][0].args[0][0].meta["val"]
    assert q_val.fake_mode is mode and q_val.dtype == torch.int8 and q_val.numel() == 8 * 256
    # and they compute what the function computes
    x = torch.randn(8, 256)
    gm = fx.GraphModule(torch.nn.Module(), outs[1])
    got_q, got_s = gm(x)
    want_q, want_s = decomposed.quantize_int8(x, 128)
    assert torch.equal(got_q, want_q) and torch.equal(got_s, want_s)
