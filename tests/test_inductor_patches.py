"""Inductor options memcompile compiles with: buffer reuse is off when a budget is planned."""

import pytest
import torch

import memcompile
from memcompile.backend import memcompile_backend


@pytest.mark.parametrize("budget, reuse_off", [(None, False), (0.5, True), ("100MB", True)])
def test_buffer_reuse_is_off_under_a_budget(monkeypatch, budget, reuse_off):
    import torch._inductor.compile_fx as cfx

    seen = {}

    def fake_compile_fx(gm, example_inputs, **kwargs):
        seen.update(kwargs.get("config_patches") or {})
        return gm.forward

    monkeypatch.setattr(cfx, "compile_fx", fake_compile_fx)
    gm = torch.fx.symbolic_trace(torch.nn.Linear(4, 4))
    options = {} if budget is None else {"memory_budget": budget}
    memcompile_backend(gm, [torch.randn(2, 4)], options=options)
    assert isinstance(seen["custom_partitioner_fn"], memcompile.partitioner.MemPartitioner)
    assert ("allow_buffer_reuse" in seen and seen["allow_buffer_reuse"] is False) == reuse_off
