"""Which forward ops may be recomputed: random draws never, a seeded op that draws nothing may be."""

import pytest
import torch
import torch.fx as fx

from memcompile.passes.candidates import recompute_ban

aten = torch.ops.aten


def _node(target, *args, **kwargs) -> fx.Node:
    graph = fx.Graph()
    q = graph.placeholder("q")
    args = tuple(q if a == "q" else a for a in args)
    return graph.call_function(target, args, kwargs)


@pytest.mark.parametrize(
    "target, args, kwargs, expected",
    [
        # SDPA carries the nondeterministic_seeded tag for its dropout; at dropout_p=0 (the
        # default, and what models trained without attention dropout use) it draws nothing,
        # so recomputing it gives the same values
        (aten._scaled_dot_product_flash_attention_for_cpu.default, ("q", "q", "q"), {}, None),
        (aten._scaled_dot_product_flash_attention_for_cpu.default, ("q", "q", "q"), {"dropout_p": 0.0, "is_causal": True}, None),
        (aten._scaled_dot_product_flash_attention_for_cpu.default, ("q", "q", "q", 0.1), {}, "random op"),
        (aten._scaled_dot_product_efficient_attention.default, ("q", "q", "q", None, True, 0.2), {}, "random op"),
        (aten._scaled_dot_product_efficient_attention.default, ("q", "q", "q", None, True), {}, None),
        (aten.native_dropout.default, ("q", 0.0, True), {}, None),
        (aten.native_dropout.default, ("q", 0.5, True), {}, "random op"),
        (aten.rand_like.default, ("q",), {}, "random op"),
        (aten.copy_.default, ("q", "q"), {}, "side effect"),
        (aten.mul.Tensor, ("q", "q"), {}, None),
    ],
)
def test_recompute_ban(target, args, kwargs, expected):
    assert recompute_ban(_node(target, *args, **kwargs)) == expected
