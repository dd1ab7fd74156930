"""examples/unseen_gradients.py: its verdict compares every gradient with eager's, and says so when one differs."""

from __future__ import annotations

import pytest
from _examples import load_example

ug = load_example("unseen_gradients.py")


@pytest.mark.slow
def test_a_model_no_zoo_entry_resembles_trains_with_eager_gradients(no_compile_cache):
    line = ug.run("input_grad", 0.0)
    assert "grads OK" in line and "ERROR" not in line, line


def test_a_gradient_that_differs_is_reported(monkeypatch):
    real = ug.grads
    calls = []

    def skewed(model, inputs, params=None):
        loss, g = real(model, inputs, params)
        calls.append(1)
        if len(calls) > 1:  # the compiled model's gradients (the first call is eager's)
            g = {k: v * 1.01 for k, v in g.items()}
        return loss, g

    monkeypatch.setattr(ug, "grads", skewed)
    monkeypatch.setattr(ug.torch, "compile", lambda model, **_: model)  # no compile: the verdict alone is tested
    line = ug.run("input_grad", 0.5)
    assert "grads BAD" in line, line
