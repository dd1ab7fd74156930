"""Lossy modes (quantize, fewbit) end to end: options, rewritten graphs, gradients within stated
bounds of eager, plans never slower than recompute alone, short training runs, measured memory.

Bounds (measured on gpt-tiny and llama-tiny, seeds 0-2, budget 0.0, inner="eager"; README "Lossy modes"):
- quantize (int8, absmax per group of 128): largest per-parameter relative gradient error 1.3%,
  all gradients together 0.44%;
- fewbit (2-bit GELU/SiLU derivative): largest per-parameter 24% (a LayerNorm weight whose whole
  gradient passes through one GELU derivative), all gradients together 2.3%.
The forward is unchanged by both, so the loss equals eager's exactly.
"""

import dataclasses
import functools

import pytest
import torch

import memcompile.partitioner as partitioner_mod
import memcompile.passes.planner.search as search_mod
from memcompile.models import PRESETS, Transformer, make
from memcompile.backend import clear_plans, last_plans
from memcompile.config import MemConfig
from memcompile.kernels.sizes import fewbit_nbytes, quantized_nbytes
from memcompile.measure import live_bytes_of, measure_peak

ALL = ("keep", "recompute", "quantize", "fewbit")
# (largest per-parameter relative error, relative error of all gradients together); about 2x what we measure
GRAD_BOUNDS = {"quantize": (0.03, 0.01), "fewbit": (0.40, 0.05)}


def grads_of(model, inputs):
    loss = model(*inputs)
    loss.backward()
    return loss.detach(), {n.removeprefix("_orig_mod."): p.grad.detach().clone() for n, p in model.named_parameters()}


def relative_errors(got, ref):
    per_param = {n: ((got[n] - ref[n]).norm() / ref[n].norm()).item() for n in ref if ref[n].norm() > 0}
    flat_got = torch.cat([got[n].flatten() for n in ref])
    flat_ref = torch.cat([ref[n].flatten() for n in ref])
    return per_param, ((flat_got - flat_ref).norm() / flat_ref.norm()).item()


def compiled_grads(name, options, *, seed=0):
    model, inputs = make(name, seed=seed)
    return grads_of(torch.compile(model, backend="memcompile", options=options), inputs)


def test_lossy_modes_are_opt_in():
    assert "quantize" not in MemConfig().modes and "fewbit" not in MemConfig().modes
    assert MemConfig(modes=ALL).modes == ALL
    assert MemConfig(modes=("fewbit",)).modes == ("keep", "fewbit")
    with pytest.raises(ValueError, match="modes"):
        MemConfig(modes=("keep", "offload_to_disk"))


@pytest.mark.parametrize("name", ["gpt-tiny", "llama-tiny"])
@pytest.mark.parametrize("mode", ["quantize", "fewbit"])
def test_gradients_within_stated_bounds(name, mode, no_compile_cache):
    model, inputs = make(name)
    ref_loss, ref = grads_of(model, inputs)
    loss, got = compiled_grads(name, {"inner": "eager", "memory_budget": 0.0, "modes": ("keep", "recompute", mode)})
    assert torch.equal(loss, ref_loss)  # the forward is not changed, only what the backward reads
    (plan,) = last_plans()
    lossy_rows = [d for d in plan.decisions if d.mode == mode]
    assert lossy_rows, f"the plan used no {mode}"
    for d in lossy_rows:  # the packed layout's bytes: int8 codes + fp32 scale per 128, or 4 codes per byte
        numel = torch.Size(d.shape).numel()
        assert d.bytes == (quantized_nbytes(numel) if mode == "quantize" else fewbit_nbytes(numel, bits=2)), d
    per_param, overall = relative_errors(got, ref)
    worst = max(per_param, key=per_param.get)
    bound_param, bound_all = GRAD_BOUNDS[mode]
    assert per_param[worst] < bound_param, (worst, per_param[worst])
    assert overall < bound_all, overall
    assert overall > 0  # the mode was really applied


def test_without_recompute_nothing_is_recomputed_at_a_cost(no_compile_cache):
    compiled_grads("gpt-tiny", {"inner": "eager", "memory_budget": 0.0, "modes": ("keep", "quantize")})
    (plan,) = last_plans()
    assert plan.solution is not None and plan.solution.quantize
    assert all(d.added_seconds == 0.0 for d in plan.decisions if d.mode == "recompute")
    assert plan.solution.added_seconds == pytest.approx(sum(d.added_seconds for d in plan.decisions if d.mode == "quantize"))


def test_rewritten_joint_graph_has_consistent_fake_values(no_compile_cache, monkeypatch):
    """Every node's meta['val'] equals what fake-tensor propagation of the rewritten graph gives."""
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    from memcompile.passes.rewrite._lossy import fake_mode_of

    seen = []
    original = partitioner_mod._rewrite_lossy

    def spy(joint, sol, backward_nodes, problem, **kwargs):
        out = original(joint, sol, backward_nodes, problem, **kwargs)
        seen.append((out[0], sol))
        return out

    monkeypatch.setattr(partitioner_mod, "_rewrite_lossy", spy)
    compiled_grads("llama-tiny", {"inner": "eager", "memory_budget": 0.0, "modes": ALL})
    assert seen
    gm, sol = seen[-1]
    assert sol.quantize and sol.fewbit
    targets = {str(n.target) for n in gm.graph.nodes}
    assert {"memcompile.quantize_int8.default", "memcompile.dequantize.default",
            "memcompile.fewbit_silu.default", "memcompile.fewbit_backward.default"} <= targets
    assert "aten.silu_backward.default" not in targets or len(sol.fewbit) < 2
    stored = {n.name: n.meta["val"] for n in gm.graph.nodes if isinstance(n.meta.get("val"), torch.Tensor)}
    mode = fake_mode_of(gm.graph)
    placeholders = [n.meta["val"] for n in gm.graph.find_nodes(op="placeholder")]
    FakeTensorProp(gm, mode).propagate_dont_convert_inputs(*placeholders)
    for node in gm.graph.nodes:
        if node.name in stored:
            old, new = stored[node.name], node.meta["val"]
            assert (old.shape, old.stride(), old.dtype) == (new.shape, new.stride(), new.dtype), node.name


def test_aten_form_of_quantize_gives_the_kernel_forms_gradients(no_compile_cache, monkeypatch):
    """The rewrite's "aten" form (quantize/dequantize inlined as ATen ops, for Inductor to fuse into
    the producer and the readers) computes what the custom ops compute: run eagerly, the same plan
    gives bit-identical gradients, and no memcompile op is left in the graph. gpt-tiny has storages
    whose size is not a multiple of the group, so the padded path is taken too."""
    from memcompile.passes.rewrite.quantize import quantize_storages

    grads, targets = {}, {}
    original = partitioner_mod._rewrite_lossy

    def spy(joint, sol, backward_nodes, problem, **kwargs):
        out = original(joint, sol, backward_nodes, problem, **kwargs)
        targets[form] = {str(n.target) for n in out[0].graph.nodes}
        return out

    monkeypatch.setattr(partitioner_mod, "_rewrite_lossy", spy)
    for form in ("kernel", "aten"):
        monkeypatch.setattr(partitioner_mod, "quantize_storages", functools.partial(quantize_storages, form=form))
        torch._dynamo.reset()
        clear_plans()
        _, grads[form] = compiled_grads("gpt-tiny", {"inner": "eager", "memory_budget": 0.0, "modes": ("keep", "quantize")})
        (plan,) = last_plans()
        assert any(d.mode == "quantize" for d in plan.decisions), form
    assert "memcompile.quantize_int8.default" in targets["kernel"]
    assert not any(t.startswith("memcompile.") for t in targets["aten"])
    for name, g in grads["kernel"].items():
        assert torch.equal(grads["aten"][name], g), name


@pytest.mark.parametrize("name", ["gpt-tiny", "llama-tiny"])
def test_lossy_plan_never_slower_than_recompute_alone_at_the_same_budget(name, no_compile_cache):
    compiled_grads(name, {"inner": "eager", "memory_budget": 0.2})
    (plain,) = last_plans()
    budget = plain.budget_bytes
    assert plain.solution is not None and plain.solution.added_seconds > 0
    clear_plans()
    torch._dynamo.reset()
    compiled_grads(name, {"inner": "eager", "memory_budget": budget, "modes": ALL})
    (lossy,) = last_plans()
    assert lossy.predicted_peak_bytes <= budget
    assert lossy.solution.quantize or lossy.solution.fewbit
    print(f"{name} at {budget} B: recompute only +{plain.solution.added_seconds * 1e6:.1f} us, "
          f"with lossy modes +{lossy.solution.added_seconds * 1e6:.1f} us")
    assert lossy.solution.added_seconds <= plain.solution.added_seconds


# A toy GPT whose activations outweigh its weights (gpt-tiny's layers, batch 8x64), so the
# smallest-peak plan stores most of them lossily.
TRAIN_ARGS = dataclasses.replace(PRESETS["gpt-tiny"], batch_size=8, seq_len=64, max_seq_len=64)


def markov_batches(steps, args, seed=0):
    """Next token drawn uniformly from 4 fixed successors of the current one: loss floor ln 4 = 1.386."""
    g = torch.Generator().manual_seed(seed)
    successors = torch.randint(0, args.vocab_size, (args.vocab_size, 4), generator=g)
    for _ in range(steps):
        x = torch.empty(args.batch_size, args.seq_len + 1, dtype=torch.long)
        x[:, 0] = torch.randint(0, args.vocab_size, (args.batch_size,), generator=g)
        choice = torch.randint(0, 4, (args.batch_size, args.seq_len), generator=g)
        for t in range(args.seq_len):
            x[:, t + 1] = successors[x[:, t], choice[:, t]]
        yield x[:, :-1], x[:, 1:]


TRAIN_STEPS = 300


def train(options, steps=TRAIN_STEPS, lr=1e-2):
    torch._dynamo.reset()
    clear_plans()
    torch.manual_seed(0)
    model = Transformer(TRAIN_ARGS)
    step = torch.compile(model, backend="memcompile", options=options)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for idx, targets in markov_batches(steps, TRAIN_ARGS):
        loss = step(idx, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return sum(losses[-20:]) / 20


def test_training_with_lossy_modes_reaches_the_lossless_loss(no_compile_cache, one_thread, monkeypatch):
    """The kernels run as on a CPU (reference.py), also under TRITON_INTERPRET=1 (CI): interpreted, the
    quantize run took ten times the others' time; tests/kernels checks the Triton kernels against
    reference.py, and test_gradients_within_stated_bounds runs them in a compiled step."""
    import memcompile.kernels._dispatch as dispatch

    monkeypatch.setattr(dispatch, "TRITON_INTERPRET", False)
    lossless = train({"inner": "eager"})
    assert lossless < 1.7  # learned most of the task (floor 1.386; 4.16 at the start)
    for mode in ("quantize", "fewbit"):
        final = train({"inner": "eager", "memory_budget": 0.0, "modes": ("keep", mode)})
        (plan,) = last_plans()
        stored = [d for d in plan.decisions if d.mode == mode]
        if mode == "fewbit":
            assert len(stored) == TRAIN_ARGS.n_layers  # every GELU input
        else:
            assert sum(d.bytes for d in stored) > 0.25 * sum(d.bytes for d in plan.decisions if d.mode == "keep")
        print(f"final loss (mean of last 20 of {TRAIN_STEPS} steps): lossless {lossless:.4f}, {mode} {final:.4f} "
              f"({(final - lossless) / lossless:+.2%})")
        assert abs(final - lossless) <= 0.02 * lossless


def _gpt_small_activations(options: dict) -> tuple[int, int]:
    """gpt-small compiled with ``options``: (measured, predicted) activation bytes of a step after a warm one (the
    peak less the parameters and the batch)."""
    torch._dynamo.reset()
    clear_plans()
    model, inputs = make("gpt-small")
    compiled = torch.compile(model, backend="memcompile", options=options)
    compiled(*inputs).backward()
    for p in model.parameters():
        p.grad = None
    live = live_bytes_of(model, inputs)
    peak = measure_peak(lambda: compiled(*inputs).backward(), live_before_bytes=live).peak_bytes
    (plan,) = last_plans()
    return peak - live, plan.predicted_peak_bytes - live


def test_quantize_halves_measured_activation_memory(no_compile_cache, one_thread, monkeypatch):
    """gpt-small, inner="eager": activation bytes (measured peak less parameters and batch) of the
    smallest-peak plans with quantize, alone and with recompute, are at most half of keep-all's.

    The kernels run as they do on a CPU (reference.py), also under TRITON_INTERPRET=1 (CI): the
    Triton interpreter's own temporaries are no memory a CPU run would use (with them quantize
    alone measured 83.4 MB).

    Measured 2026-11-25 (README "Lossy modes"; eager's simulated peak matches to the byte):
    keep-all 151.3 MB, recompute 53.1, recompute+quantize 47.8 (3.2x), quantize alone 59.2 (2.6x).
    Before the QKV split's slices counted as views of the projection's storage (so that storage
    is quantized whole) quantize alone measured 77.9 MB (1.9x); before the CPU reference kernels
    stopped allocating input-sized temporaries, 95.3 MB, and recompute+quantize 53.1 MB against
    recompute's 52.1.
    """
    import memcompile.kernels._dispatch as dispatch

    monkeypatch.setattr(dispatch, "TRITON_INTERPRET", False)
    activations, predicted = {}, {}
    for label, options in (
        ("keep-all", {"inner": "eager"}),
        ("recompute+quantize", {"inner": "eager", "memory_budget": 0.0, "modes": ("keep", "recompute", "quantize")}),
        ("quantize", {"inner": "eager", "memory_budget": 0.0, "modes": ("keep", "quantize")}),
    ):
        activations[label], predicted[label] = _gpt_small_activations(options)
    print({k: f"{v / 1e6:.2f} MB (predicted {predicted[k] / 1e6:.2f})" for k, v in activations.items()})
    assert 2 * activations["recompute+quantize"] <= activations["keep-all"]
    assert 2 * activations["quantize"] <= activations["keep-all"]


def test_quantize_never_raises_the_smallest_peak_of_recompute_alone(no_compile_cache, one_thread, monkeypatch):
    """gpt-small, inner="eager": the smallest-peak plan with quantize measures no higher than recompute alone's (its
    options are a superset). The lossy floor's own search ended above it (47.92 against 47.84 MB of activations,
    2026-12-06: the local moves leave a plan with a quantized storage as it is); the search now also builds the floor
    without the lossy options (search.LOSSLESS_FLOOR), and on this model that lossless plan runs lowest (46.79 MB,
    2026-12-07)."""
    import memcompile.kernels._dispatch as dispatch

    monkeypatch.setattr(dispatch, "TRITON_INTERPRET", False)
    activations = {}
    for label, modes in (("recompute", ("keep", "recompute")), ("recompute+quantize", ("keep", "recompute", "quantize"))):
        activations[label], _ = _gpt_small_activations({"inner": "eager", "memory_budget": 0.0, "modes": modes})
    assert activations["recompute+quantize"] <= activations["recompute"]


@pytest.mark.slow
def test_quantize_halves_measured_activation_memory_through_inductor(no_compile_cache, one_thread, monkeypatch):
    """gpt-small through Inductor (the default inner compiler; on CPU the quantize rewrite's ATen form):
    quantize alone at budget 0.0 at most halves keep-all's activation bytes, with gradients within
    the quantize bounds.

    1.82x before: GELU's decomposed derivative, which reads x only and which the joint graph places
    after the whole forward, was kept whole, charged from the forward's end while Inductor computes
    it in the GELU's kernel; in plans with lossy modes a kept pointwise value now counts from its
    producers' step (candidates.py), so it is quantized instead. Measured 2026-11-25: keep-all
    146.8 MB, quantize 68.1.
    """
    import memcompile.kernels._dispatch as dispatch

    monkeypatch.setattr(dispatch, "TRITON_INTERPRET", False)
    model, inputs = make("gpt-small")
    _, ref = grads_of(model, inputs)
    activations = {}
    for label, options in (("keep-all", {}), ("quantize", {"memory_budget": 0.0, "modes": ("keep", "quantize")})):
        torch._dynamo.reset()
        clear_plans()
        model, inputs = make("gpt-small")
        compiled = torch.compile(model, backend="memcompile", options=options)
        _, got = grads_of(compiled, inputs)
        for p in model.parameters():
            p.grad = None
        live = live_bytes_of(model, inputs)
        activations[label] = measure_peak(lambda: compiled(*inputs).backward(), live_before_bytes=live).peak_bytes - live
        if label == "quantize":
            (plan,) = last_plans()
            assert plan.solution.quantize and not plan.solution.fewbit
            per_param, overall = relative_errors(got, ref)
            assert max(per_param.values()) < GRAD_BOUNDS["quantize"][0]
            assert overall < GRAD_BOUNDS["quantize"][1]
    print({k: f"{v / 1e6:.2f} MB" for k, v in activations.items()})
    assert 2 * activations["quantize"] <= activations["keep-all"]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "form", "modes"), [("gpt-tiny", "kernel", ("keep", "quantize", "fewbit")),
                                                     ("llama-tiny", "aten", ALL)])
def test_inductor_gradients_within_bounds_with_all_modes(name, form, modes, no_compile_cache, monkeypatch):
    """form: the quantize rewrite's form ("aten": inlined ATen ops that Inductor lowers and fuses). gpt-tiny plans
    without recompute: with it, its floor is a lossless plan (the lossy plans simulate no lower), and this test is
    about lossy plans through Inductor."""
    from memcompile.passes.rewrite.quantize import quantize_storages

    monkeypatch.setattr(partitioner_mod, "quantize_storages", functools.partial(quantize_storages, form=form))
    model, inputs = make(name)
    ref_loss, ref = grads_of(model, inputs)
    loss, got = compiled_grads(name, {"memory_budget": 0.0, "modes": modes})
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    (plan,) = last_plans()
    assert plan.solution.quantize or plan.solution.fewbit
    per_param, overall = relative_errors(got, ref)
    assert max(per_param.values()) < GRAD_BOUNDS["fewbit"][0]
    assert overall < GRAD_BOUNDS["fewbit"][1]


@pytest.mark.slow
def test_recompute_from_a_dequantized_copy_keeps_gradients_within_bounds(no_compile_cache, monkeypatch):
    """llama-tiny through Inductor, keep + recompute + quantize at 0.0: a recomputed value's input is rebuilt in
    the backward from its dequantized copy (problem.quantized_input), and the gradients stay within the quantize
    bounds. The floor's lossless guard is off (search.LOSSLESS_FLOOR): this test is about the rewrite of a lossy
    plan, whichever floor runs lower (gpt-tiny's floor is a lossless plan even without the guard)."""
    monkeypatch.setattr(search_mod, "LOSSLESS_FLOOR", False)
    handed = []
    rewrite_lossy = partitioner_mod._rewrite_lossy
    quantize = partitioner_mod.quantize_storages

    def spy_rewrite(joint, sol, backward_nodes, problem, **kwargs):
        handed.append({"recompute": set(sol.recompute), "backward": set(backward_nodes), "quantize_readers": set()})
        return rewrite_lossy(joint, sol, backward_nodes, problem, **kwargs)

    def spy_quantize(gm, roots, *, backward, **kwargs):
        handed[-1]["quantize_readers"] |= set(backward)
        return quantize(gm, roots, backward=backward, **kwargs)

    monkeypatch.setattr(partitioner_mod, "_rewrite_lossy", spy_rewrite)
    monkeypatch.setattr(partitioner_mod, "quantize_storages", spy_quantize)
    model, inputs = make("llama-tiny")
    ref_loss, ref = grads_of(model, inputs)
    loss, got = compiled_grads("llama-tiny", {"memory_budget": 0.0, "modes": ("keep", "recompute", "quantize")})
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    (plan,) = last_plans()
    assert plan.solution.quantize
    last = handed[-1]
    assert (last["quantize_readers"] - last["backward"]) & last["recompute"], "no recomputed value read a quantized copy"
    per_param, overall = relative_errors(got, ref)
    assert max(per_param.values()) < GRAD_BOUNDS["quantize"][0]
    assert overall < GRAD_BOUNDS["quantize"][1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("budget", [0.0, 0.5])
@pytest.mark.parametrize("name", ["gpt-tiny", "llama-tiny"])
def test_fewbit_predicted_peak_within_5_percent_of_measured(name, budget, dtype, no_compile_cache, one_thread,
                                                            monkeypatch):
    """fp32 and bf16 models, inner="eager", keep + recompute + fewbit (gpt-tiny in bf16: keep + fewbit): the plan's
    predicted peak is within 5% of the measured one, the forward computes each few-bit GELU/SiLU once (the
    op's own f(x), not a second aten call), and the gradients stay within the few-bit bounds. gpt-tiny's
    recompute floor in bf16 is set by oneDNN's matmul scratch, which the ILP counts and few-bit codes cannot
    lower, so with recompute its search takes no few-bit; without recompute they are the way down.

    Before, gpt-tiny measured +8.0% at both budgets: the CPU reference of fewbit_backward held int32
    codes and fp32 factors per element (about 9 bytes per element) inside the op, unseen by the
    simulator. In bf16, +21%: oneDNN's matmul scratchpad, unseen until costs.scratch_bytes
    (docs/BENCHMARKS.md, issue 16). The floor's descent from the plan that recomputes all it can is off: on
    llama-tiny in bf16 it finds a lossless plan lower than every few-bit plan, and this test is about a few-bit
    plan's prediction and rewrite.
    """
    import re

    import memcompile.kernels._dispatch as dispatch
    from memcompile.passes.planner import tuning

    monkeypatch.setattr(dispatch, "TRITON_INTERPRET", False)  # the CPU reference kernels, as a CPU run uses
    monkeypatch.setattr(tuning, "POLISH_FROM_ALL_RECOMPUTE", False)
    model, inputs = make(name, dtype=dtype)
    _, ref = grads_of(model, inputs)
    clear_plans()
    model, inputs = make(name, dtype=dtype)
    compiled = torch.compile(model, backend="memcompile",
                             options={"inner": "eager", "memory_budget": budget,
                                      "modes": ("keep", "fewbit") if (name, dtype) == ("gpt-tiny", torch.bfloat16)
                                      else ("keep", "recompute", "fewbit")})
    _, got = grads_of(compiled, inputs)
    (plan,) = last_plans()
    assert plan.solution is not None and plan.solution.fewbit, "the plan used no fewbit"
    calls = re.findall(r"memcompile\.fewbit_(gelu|silu)\.default\((\w+), ", plan.forward_code)
    assert len(calls) == len(plan.solution.fewbit), plan.forward_code
    for kind, x in calls:
        assert f"aten.{kind}.default({x})" not in plan.forward_code, f"{kind}({x}) computed twice"
    per_param, overall = relative_errors(got, ref)
    assert max(per_param.values()) < GRAD_BOUNDS["fewbit"][0]
    assert overall < GRAD_BOUNDS["fewbit"][1]
    for p in model.parameters():
        p.grad = None
    live = live_bytes_of(model, inputs)
    measured = measure_peak(lambda: compiled(*inputs).backward(), live_before_bytes=live).peak_bytes
    predicted = plan.predicted_peak_bytes
    print(f"{name} at {budget}: predicted {predicted} B, measured {measured} B ({(measured - predicted) / predicted:+.1%})")
    assert abs(measured - predicted) <= 0.05 * predicted, (predicted, measured)
