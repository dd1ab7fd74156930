"""The offload mode end to end on CPU: not offered for CPU tensors (the plan's notes say why); with the
config's test hook ``_force_offload_on_cpu`` the planner offers it as on a GPU, so these tests check the
rewritten graphs (gradients equal eager exactly, alone and with recompute and inplace), the simulator's
accounting of host and prefetched copies, the report rows, mixed plans against recompute alone, and that
only graphs holding offload ops compile under the rewrite's Inductor config (one slow Inductor test).

What CPU cannot show (copies overlapping compute on a side stream, measured peaks and step times) is
for a GPU: examples/bench_offload.py, docs/BENCHMARKS.md.
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import memcompile.backend as backend_mod
import memcompile.partitioner as partitioner_mod
from memcompile.models import make
from memcompile.backend import clear_plans, last_plans
from memcompile.kernels import offload as offload_ops
from memcompile.passes.rewrite.offload import INDUCTOR_CONFIG, OFFLOAD_META, has_offload
from memcompile.passes.simulate import offload_roles, simulate_step
from memcompile.report import Report

FORCED = {"inner": "eager", "_force_offload_on_cpu": True}
OFFLOAD = ("keep", "offload")
WITH_RECOMPUTE = ("keep", "recompute", "offload")
WITH_INPLACE = ("keep", "recompute", "inplace", "offload")


class ActMLP(nn.Module):
    """Linear layers with activations between them. The derivatives of leaky_relu, hardtanh and relu6
    may read the activation's output (inplace: the output must then stay on the device); relu's and
    tanh's already do, and their outputs, which the next layer's weight gradient reads too, may be
    offloaded (the early layers' are read late in the backward)."""

    def __init__(self, dim=64):
        super().__init__()
        self.acts = [F.relu, torch.tanh, lambda t: F.leaky_relu(t, 0.1), F.relu, F.hardtanh, torch.tanh, F.relu6]
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(len(self.acts) + 1))

    def forward(self, x):
        for layer, act in zip(self.layers, self.acts):
            x = act(layer(x))
        return self.layers[-1](x).square().sum()


def make_model(name):
    if name == "act-mlp":
        torch.manual_seed(0)
        return ActMLP(), (torch.randn(128, 64),)
    return make(name)


def grads_of(model, inputs):
    loss = model(*inputs)
    loss.backward()
    return loss.detach(), {n.removeprefix("_orig_mod."): p.grad.detach().clone() for n, p in model.named_parameters()}


def compiled_step(name, options):
    torch._dynamo.reset()
    clear_plans()
    model, inputs = make_model(name)
    loss, grads = grads_of(torch.compile(model, backend="memcompile", options=options), inputs)
    (plan,) = last_plans()
    return loss, grads, plan


@pytest.mark.parametrize("budget", [1.0, 0.5, 0.0])
@pytest.mark.parametrize(("name", "modes"), [("gpt-tiny", OFFLOAD), ("gpt-tiny", WITH_RECOMPUTE), ("act-mlp", WITH_INPLACE)],
                         ids=["gpt-offload", "gpt-offload-recompute", "mlp-offload-recompute-inplace"])
def test_gradients_equal_eager_exactly_with_offload(name, modes, budget, no_compile_cache):
    model, inputs = make_model(name)
    ref_loss, ref = grads_of(model, inputs)
    loss, got, plan = compiled_step(name, {**FORCED, "memory_budget": budget, "modes": modes})
    assert torch.equal(loss, ref_loss)
    for param in ref:  # host copies hold the same bits: nothing may differ
        assert torch.equal(got[param], ref[param]), param
    assert offload_ops.pending_transfers() == 0  # every handle died with its graph's last use
    used = {d.mode for d in plan.decisions}
    if budget == 1.0:
        assert plan.source == "default" and "offload" not in used
        return
    assert "offload" in used, plan.notes
    assert len(plan.solution.offload) == sum(d.mode == "offload" for d in plan.decisions)
    if "recompute" in modes and name == "gpt-tiny":
        # on the activation MLP, in-place and offload reach the floor without recomputing (since the
        # model stopped counting backward-only reads as forward liveness): the combination is the
        # point, which the exact gradients above check
        assert "recompute" in used
    if "inplace" in modes:
        assert "inplace" in used


def test_offload_is_not_offered_for_cpu_tensors_and_the_plan_says_why():
    _, _, plan = compiled_step("gpt-tiny", {"inner": "eager", "memory_budget": 0.0, "modes": WITH_RECOMPUTE})
    assert "offload" in plan.config.modes and not plan.solution.offload
    assert "offload" not in {d.mode for d in plan.decisions}
    (note,) = [n for n in plan.notes if n.startswith("offload not offered")]
    assert "on cpu: it already lives in host memory, offloading frees nothing" in note
    assert note in Report((plan,)).summary()


def test_report_lists_offloaded_storages_with_their_host_bytes():
    _, _, plan = compiled_step("gpt-tiny", {**FORCED, "memory_budget": 0.0, "modes": OFFLOAD})
    report = Report((plan,))
    rows = [t for t in report.to_json()["tensors"] if t["mode"] == "offload"]
    assert {t["name"] for t in rows} == set(plan.solution.offload)
    for t in rows:  # the whole storage goes to the host: its bytes are the tensor's
        assert t["bytes"] == torch.Size(t["shape"]).numel() * torch.empty((), dtype=getattr(torch, t["dtype"])).element_size()
        assert t["added_seconds"] > 0  # at least the four op calls
    text = report.summary()
    assert f"offload   {len(rows):>4} tensors" in text and "in host memory" in text
    assert any(n.startswith(f"offload: {len(rows)} storages") for n in plan.notes)  # the shared-link check


def test_simulator_counts_prefetched_copies_and_no_host_copy(monkeypatch):
    """The host copy (offload_wait) and the handles are not device memory; the prefetched copy is, from
    its prefetch on, although the graph sees it only from its prefetch_wait."""
    graphs = []

    def recording(fw, bw, **kwargs):
        graphs.append((fw, bw, kwargs))
        return simulate_step(fw, bw, **kwargs)

    monkeypatch.setattr(partitioner_mod, "simulate_step", recording)
    _, _, plan = compiled_step("gpt-tiny", {**FORCED, "memory_budget": 0.0, "modes": OFFLOAD})
    fw, bw, kwargs = next(g for g in graphs if has_offload(g[0]))
    timeline = simulate_step(fw, bw, **kwargs)
    assert timeline.peak_bytes == plan.predicted_peak_bytes
    intervals = {iv.root: iv for iv in timeline.intervals}
    fw_roles, bw_roles = offload_roles(fw), offload_roles(bw)
    assert {role for role, _ in fw_roles.values()} == {"offload", "offload_wait"}
    assert not set(fw_roles) & set(intervals)  # host copies and handles count nothing
    step = {name: i for i, name in enumerate(timeline.steps)}
    waits = [(name, fetch) for name, (role, fetch) in bw_roles.items() if role == "prefetch_wait"]
    assert len(waits) == len(plan.solution.offload)
    for name, fetch in waits:
        copy = intervals.get(name) or intervals[f"bw:{name}"]
        assert copy.alloc_step == step[fetch] < step[name]
        node = next(n for n in bw.graph.nodes if n.name == name)
        assert copy.nbytes == node.meta[OFFLOAD_META]["nbytes"] == node.meta["val"].nbytes
    assert not [n for n in bw_roles if n in intervals and bw_roles[n][0] == "prefetch"]  # the handle


@pytest.mark.parametrize("share", [0.1, 0.4])
def test_mixed_plans_add_no_more_time_than_recompute_alone(share, no_compile_cache):
    """At byte budgets near recompute's smallest peak, with every mode enabled (offload through the
    test hook, CPU figures), the plan's predicted added time is at most the recompute-only plan's (up
    to CBC's 1% stopping gap)."""
    _, _, floor = compiled_step("gpt-tiny", {**FORCED, "memory_budget": 0.0, "modes": ("keep", "recompute")})
    budget = int(floor.predicted_peak_bytes + share * (floor.baseline_peak_bytes - floor.predicted_peak_bytes))
    every = ("keep", "recompute", "inplace", "quantize", "fewbit", "offload")
    _, _, plain = compiled_step("gpt-tiny", {**FORCED, "memory_budget": budget, "modes": ("keep", "recompute")})
    _, _, mixed = compiled_step("gpt-tiny", {**FORCED, "memory_budget": budget, "modes": every})
    print(f"budget {budget} B: recompute only +{plain.solution.added_seconds * 1e6:.2f} us, "
          f"all modes +{mixed.solution.added_seconds * 1e6:.2f} us")
    assert plain.solution.added_seconds > 0
    assert mixed.predicted_peak_bytes <= budget and plain.predicted_peak_bytes <= budget
    assert mixed.solution.added_seconds <= plain.solution.added_seconds * 1.01


def test_only_graphs_with_offload_ops_compile_under_the_offload_config(monkeypatch):
    """The backend's inner compile patches Inductor's config with INDUCTOR_CONFIG for a graph that calls
    the offload ops, and only for the duration of that compile."""
    import torch._inductor.compile_fx as compile_fx_mod
    from torch._inductor import config as inductor_config

    seen = []
    monkeypatch.setattr(compile_fx_mod, "compile_fx_inner",
                        lambda gm, inputs, **kw: seen.append({k: getattr(inductor_config, k) for k in INDUCTOR_CONFIG}))
    graphs = []

    def capture(fw, bw, **kwargs):
        graphs.append((fw, bw))
        return simulate_step(fw, bw, **kwargs)

    monkeypatch.setattr(partitioner_mod, "simulate_step", capture)
    compiled_step("gpt-tiny", {**FORCED, "memory_budget": 0.0, "modes": OFFLOAD})
    plain_fw, _ = graphs[0]  # the default partition: no offload
    offload_fw, offload_bw = next(g for g in graphs if has_offload(g[0]))
    assert not has_offload(plain_fw) and has_offload(offload_bw)
    before = {k: getattr(inductor_config, k) for k in INDUCTOR_CONFIG}
    assert before != INDUCTOR_CONFIG  # Inductor's defaults: the patch changes something
    for gm in (plain_fw, offload_fw, offload_bw):
        backend_mod._inner_compile(gm, [])
    assert seen == [before, INDUCTOR_CONFIG, INDUCTOR_CONFIG]
    assert {k: getattr(inductor_config, k) for k in INDUCTOR_CONFIG} == before


@pytest.mark.slow
def test_inductor_gradients_with_offload(no_compile_cache):
    """Through Inductor (forced on CPU): the offload ops compile, both graphs under INDUCTOR_CONFIG, and the
    gradients equal eager's up to Inductor's own float reordering."""
    model, inputs = make("gpt-tiny")
    ref_loss, ref = grads_of(model, inputs)
    loss, got, plan = compiled_step("gpt-tiny", {"memory_budget": 0.0, "modes": WITH_RECOMPUTE,
                                                  "_force_offload_on_cpu": True})
    assert plan.solution.offload and "offload" in {d.mode for d in plan.decisions}
    assert "memcompile.offload" in plan.forward_code and "memcompile.prefetch" in plan.backward_code
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
    assert offload_ops.pending_transfers() == 0
