"""Report on real plans (inner="eager"): JSON, summary, binding step, plot, report_dir, graph breaks."""

import json
import math
import sys
import warnings

import pytest
import torch

import memcompile
from memcompile.models import make
from memcompile import MemcompileError, MemoryBudgetError, Report
from memcompile.backend import last_plans

STABLE_KEYS = {"budget_bytes", "baseline_peak_bytes", "predicted_peak_bytes", "solver", "tensors"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def gpt_report():
    torch._dynamo.reset()
    model, inputs = make("gpt-tiny")
    return memcompile.inspect(model, inputs, memory_budget=0.3)


class TwoGraphs(torch.nn.Module):
    """A graph break between two MLPs: dynamo hands the backend two graphs."""

    def __init__(self):
        super().__init__()
        self.first = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 16))
        self.second = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 16))

    def forward(self, x):
        h = torch.tanh(self.first(x))
        torch._dynamo.graph_break()
        return self.second(h).pow(2).mean()


def test_json_has_the_stable_keys_and_the_plan_figures(gpt_report):
    (plan,) = gpt_report.plans
    out = gpt_report.to_json()
    assert set(out) == STABLE_KEYS | {"binding_step"}
    assert out["budget_bytes"] == plan.budget_bytes
    assert out["baseline_peak_bytes"] == plan.baseline.peak_bytes
    assert out["predicted_peak_bytes"] == plan.planned.peak_bytes < plan.baseline.peak_bytes
    assert out["solver"] == {
        "status": plan.solution.status, "seconds": plan.solution.solve_seconds, "objective": plan.solution.objective,
    }
    assert [t["name"] for t in out["tensors"]] == [d.name for d in plan.decisions]
    assert [t["mode"] for t in out["tensors"]] == [d.mode for d in plan.decisions]
    assert [tuple(t["shape"]) for t in out["tensors"]] == [d.shape for d in plan.decisions]
    json.dumps(out, allow_nan=False)  # strict JSON


def test_binding_step_is_the_planned_peak_and_lists_what_is_live(gpt_report):
    (plan,) = gpt_report.plans
    step = gpt_report.binding_step()
    assert step.index == plan.planned.peak_index
    assert step.node == plan.planned.steps[step.index]
    assert step.side == plan.planned.sides[step.index]
    assert step.live_bytes == plan.predicted_peak_bytes
    assert step.held_bytes + sum(t.bytes for t in step.live) == step.live_bytes
    assert [t.bytes for t in step.live] == sorted((t.bytes for t in step.live), reverse=True)
    kept = {d.name for d in plan.decisions if d.mode == "keep" and d.bytes > 0}
    # at a backward step, every storage still live from the forward is one the backward reads
    if step.side == "backward":
        assert {t.name for t in step.live if t.role == "keep"} <= kept


def test_summary_lists_every_tensor_with_storage_and_the_figures(gpt_report):
    (plan,) = gpt_report.plans
    text = gpt_report.summary()
    for d in plan.decisions:
        assert (f"  {d.name} " in text) == (d.bytes > 0), d.name
    views = sum(d.bytes == 0 for d in plan.decisions)
    assert f"({views} views of other tensors" in text
    assert all(f"  {d.name} " in gpt_report.summary(all_tensors=True) for d in plan.decisions)
    assert f"solver: {plan.solution.status}" in text
    step = gpt_report.binding_step()
    assert f"binding step: #{step.index} {step.node} ({step.side})" in text
    recomputed = [d for d in plan.decisions if d.mode == "recompute" and d.bytes > 0]
    assert f"recompute {len(recomputed):>4} tensors" in text


def test_plot_writes_a_png(gpt_report, tmp_path):
    import matplotlib.image

    path = gpt_report.plot(tmp_path / "timeline.png")
    assert open(path, "rb").read(8) == PNG_MAGIC
    assert matplotlib.image.imread(path).shape[1] > 600


def test_plot_without_matplotlib_says_how_to_install_it(gpt_report, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install memcompile\[plot\]"):
        gpt_report.plot(tmp_path / "x.png")
    paths = gpt_report.write(tmp_path / "reports", stem="r")  # the JSON alone when matplotlib is missing
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["r.json"]


def test_inspect_runs_no_backward():
    model, inputs = make("llama-tiny")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = memcompile.inspect(model, inputs, memory_budget=0.0)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    (plan,) = report.plans
    assert report.predicted_peak_bytes == plan.predicted_peak_bytes <= plan.baseline_peak_bytes


def test_inspect_raises_the_budget_error_itself():
    model, inputs = make("gpt-tiny")
    with pytest.raises(MemoryBudgetError, match="cannot be met") as info:
        memcompile.inspect(model, inputs, memory_budget="1KB")
    assert info.value.min_peak_bytes > 1000


def test_inspect_with_nothing_to_differentiate_says_so():
    model, inputs = make("gpt-tiny")
    model.requires_grad_(False)
    with pytest.raises(MemcompileError, match="no graph was planned"):
        memcompile.inspect(model, inputs, memory_budget=0.5)


def test_bad_option_raises_before_compiling():
    model, inputs = make("gpt-tiny")
    with pytest.raises(ValueError, match="modes: unknown mode"):
        memcompile.inspect(model, inputs, memory_budget=0.5, modes=("keep", "teleport"))


def test_graph_breaks_give_one_entry_per_graph(tmp_path):
    torch.manual_seed(0)
    model, x = TwoGraphs(), torch.randn(32, 16)
    report = memcompile.inspect(model, (x,), memory_budget=0.0)
    assert len(report.plans) == 2
    out = report.to_json()
    assert set(out) == STABLE_KEYS | {"binding_step", "graphs"}
    assert [g["graph_index"] for g in out["graphs"]] == [0, 1]
    for g, plan in zip(out["graphs"], report.plans):
        assert STABLE_KEYS | {"binding_step"} <= set(g)
        assert g["predicted_peak_bytes"] == plan.predicted_peak_bytes
    assert out["predicted_peak_bytes"] == max(p.predicted_peak_bytes for p in report.plans)
    assert out["baseline_peak_bytes"] == max(p.baseline_peak_bytes for p in report.plans)
    assert len(out["tensors"]) == sum(len(g["tensors"]) for g in out["graphs"])
    assert {t["name"].split("/")[0] for t in out["tensors"]} == {"g0", "g1"}
    assert math.isclose(out["solver"]["seconds"], sum(g["solver"]["seconds"] for g in out["graphs"]))
    assert out["binding_step"]["graph"] == report.binding_plan.graph_index
    assert report.summary().count("binding step:") == 2
    report.plot(tmp_path / "two.png")


def test_report_dir_writes_json_and_png_per_graph(tmp_path, no_compile_cache):
    model, inputs = make("gpt-tiny")
    compiled = torch.compile(model, backend="memcompile",
                             options={"inner": "eager", "memory_budget": 0.5, "report_dir": str(tmp_path)})
    compiled(*inputs).backward()
    (plan,) = last_plans()
    (json_path,) = tmp_path.glob("*.json")
    assert json_path.with_suffix(".png").read_bytes()[:8] == PNG_MAGIC
    written = json.loads(json_path.read_text())
    assert written == json.loads(json.dumps(memcompile.last_report().to_json()))
    assert written["predicted_peak_bytes"] == plan.predicted_peak_bytes


def test_a_report_that_cannot_be_written_warns_and_keeps_the_plan(tmp_path, no_compile_cache):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    model, inputs = make("gpt-tiny")
    compiled = torch.compile(model, backend="memcompile",
                             options={"inner": "eager", "memory_budget": 0.5, "report_dir": str(blocker)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled(*inputs).backward()
    messages = [str(w.message) for w in caught if w.category is RuntimeWarning]
    assert any("could not write the report" in m for m in messages)
    assert not any("planning graph" in m for m in messages)  # the plan was used, not the fallback partition
    (plan,) = last_plans()
    assert plan.budget_bytes is not None


def test_last_report_needs_a_compile():
    with pytest.raises(LookupError, match="no plan recorded"):
        memcompile.last_report()


def test_report_needs_plans():
    with pytest.raises(TypeError, match="non-empty tuple of memcompile.Plan"):
        Report(())
