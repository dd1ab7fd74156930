"""torch.autocast through the backend: gradients equal eager autocast's, and byte sizes follow the real dtypes."""

from __future__ import annotations

import math

import torch

import memcompile
from _helpers import assert_same_grads, compiled_copy, train_step
from memcompile.models import make


def test_bfloat16_autocast_plans_with_real_dtype_sizes(no_compile_cache):
    model, inputs = make("gpt-tiny")

    def step(m):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return m(*inputs)

    ref_loss, ref = train_step(model, step)
    _, compiled = compiled_copy(model, memory_budget=0.3)
    loss, got = train_step(compiled, step)
    # the same bf16 ops in the same order (inner="eager"): only a recompute could change a rounding, and it does not
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert_same_grads(got, ref)
    (plan,) = memcompile.last_plans()
    assert plan.source in ("ilp", "ilp+local"), plan.notes
    owning = [d for d in plan.decisions if d.bytes]  # views own no bytes
    dtypes = {d.dtype for d in owning}
    assert {"bfloat16", "float32"} <= dtypes, dtypes  # matmuls in bf16; layer norms, softmax stats in fp32
    for d in owning:
        assert d.bytes == math.prod(d.shape) * getattr(torch, d.dtype).itemsize, d
    assert any(d.dtype == "bfloat16" and d.mode == "recompute" for d in owning)
    assert any(d.dtype == "bfloat16" and d.mode == "keep" for d in owning)
