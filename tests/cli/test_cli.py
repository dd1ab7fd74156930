"""The ``memcompile`` command line, run as a subprocess the way a user runs it."""

import json
import os
import subprocess
import sys
import tempfile
import types

import pytest

from memcompile import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOY = os.path.join(ROOT, "examples", "toy_transformer.py")
STABLE_KEYS = {"budget_bytes", "baseline_peak_bytes", "predicted_peak_bytes", "solver", "tensors"}
TENSOR_KEYS = {"name", "shape", "dtype", "bytes", "mode", "added_seconds"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_cli(*args, cwd=None, timeout=240):
    # Never from the repository root: `python -m` puts the working directory on sys.path, where the
    # root's kernels/ would shadow PyPI's `kernels`; a user runs the installed package from anywhere.
    cwd = cwd or tempfile.gettempdir()
    return subprocess.run(
        [sys.executable, "-m", "memcompile.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def inspected(tmp_path_factory):
    out = tmp_path_factory.mktemp("inspect")
    result = run_cli("inspect", f"{TOY}:gpt_tiny", "--budget", "0.3", "--json", str(out / "plan.json"),
                     "--plot", str(out / "plan.png"), "--graph")
    return result, out


def test_inspect_json_has_the_stable_keys_and_a_consistent_plan(inspected):
    result, out = inspected
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "plan.json").read_text())
    assert set(report) == STABLE_KEYS | {"binding_step"}  # one graph: no "graphs"
    assert set(report["solver"]) == {"status", "seconds", "objective"}
    assert report["solver"]["status"] in ("Optimal", "Feasible", "Greedy")  # a solver chose this plan
    assert report["tensors"] and all(set(t) == TENSOR_KEYS for t in report["tensors"])
    assert {t["mode"] for t in report["tensors"]} == {"keep", "recompute"}
    # a fraction below 1 resolves to bytes below the default partition's peak, and the plan lowers the peak
    assert report["budget_bytes"] < report["baseline_peak_bytes"]
    assert report["predicted_peak_bytes"] < report["baseline_peak_bytes"]
    assert all(t["added_seconds"] == 0.0 for t in report["tensors"] if t["mode"] == "keep")
    assert sum(t["added_seconds"] for t in report["tensors"] if t["mode"] == "recompute") > 0.0


def test_inspect_names_the_binding_step(inspected):
    result, out = inspected
    step = json.loads((out / "plan.json").read_text())["binding_step"]
    assert step["live_bytes"] == json.loads((out / "plan.json").read_text())["predicted_peak_bytes"]
    assert step["held_bytes"] + sum(t["bytes"] for t in step["live"]) == step["live_bytes"]
    sizes = [t["bytes"] for t in step["live"]]
    assert sizes == sorted(sizes, reverse=True)
    assert step["side"] in ("forward", "backward")
    assert f"binding step: #{step['index']} {step['node']} ({step['side']})" in result.stdout


def test_inspect_prints_a_table_and_the_rewritten_code(inspected):
    result, _ = inspected
    lines = result.stdout.splitlines()
    assert lines[1].split() == ["name", "shape", "dtype", "bytes", "mode", "added", "ms"]
    rows = lines[2:lines.index(next(line for line in lines if line.startswith("keep ")))]
    assert {"keep", "recompute"} == {line.split()[-2] for line in rows if not line.startswith("  (")}
    assert "solver: Optimal" in result.stdout
    assert "# graph 0: forward" in result.stdout and "# graph 0: backward" in result.stdout
    assert "def forward(self" in result.stdout


def test_inspect_plot_is_a_png_matplotlib_reads_back(inspected):
    import matplotlib.image

    _, out = inspected
    data = (out / "plan.png").read_bytes()
    assert data[:8] == PNG_MAGIC
    image = matplotlib.image.imread(out / "plan.png")
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 600


def test_check_passes_on_a_correct_plan():
    result = run_cli("check", f"{TOY}:gpt_tiny", "--budget", "0.3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: 29 gradients and the loss match eager" in result.stdout
    assert "peak: measured" in result.stdout and "predicted" in result.stdout


DIFFERENT_WHEN_COMPILED = """
import torch

class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x):
        y = torch.nn.functional.gelu(self.lin(x))
        if torch.compiler.is_compiling():
            y = y * 2  # the compiled program computes something else than eager
        return y.pow(2).mean()

def factory():
    torch.manual_seed(0)
    return Model(), (torch.randn(4, 8),)
"""


def test_check_fails_when_the_compiled_step_differs(tmp_path):
    (tmp_path / "differs.py").write_text(DIFFERENT_WHEN_COMPILED)
    result = run_cli("check", f"{tmp_path / 'differs.py'}:factory", "--budget", "0.0")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "DIFFERS" in result.stdout and "FAIL: 3 of 3 differ" in result.stdout


FACTORIES = """
import torch

def raises():
    raise RuntimeError("no weights here")

def model_only():
    return torch.nn.Linear(2, 2)

def not_a_module():
    return "model", (torch.zeros(2),)

not_callable = 3
"""


@pytest.mark.parametrize(
    "args, message",
    [
        (["inspect", "no/such/file.py:factory"], "no such file: no/such/file.py"),
        (["inspect", "{factories}"], "expected FILE.py:FACTORY"),
        (["inspect", "{factories}:missing"], "has no callable 'missing'"),
        (["inspect", "{factories}:not_callable"], "has no callable 'not_callable'"),
        (["inspect", "{factories}:raises"], "raised RuntimeError: no weights here"),
        (["inspect", "{factories}:model_only"], "must return (model, example_inputs); it returned Linear"),
        (["check", "{factories}:not_a_module"], "model a torch.nn.Module; got str"),
        (["inspect", "{toy}:gpt_tiny", "--budget", "lots"], "cannot parse 'lots' as a byte count"),
        (["inspect", "{toy}:gpt_tiny", "--budget", "2.5"], "neither a fraction in [0, 1] nor a whole number"),
        (["inspect", "{toy}:gpt_tiny", "--modes", "keep,teleport"], "unknown mode(s) ['teleport']"),
        (["check", "{toy}:gpt_tiny", "--tol", "-1"], "--tol: expected a non-negative number"),
        (["inspect", "{toy}:gpt_tiny", "--json", "no/such/dir/plan.json"], "--json: directory"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_2(tmp_path, args, message):
    (tmp_path / "factories.py").write_text(FACTORIES)
    args = [a.format(factories=tmp_path / "factories.py", toy=TOY) for a in args]
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("memcompile")]
    assert len(errors) == 1 and message in errors[0], result.stderr


def test_a_byte_budget_no_plan_meets_is_exit_1_with_the_smallest_peak():
    result = run_cli("inspect", f"{TOY}:gpt_tiny", "--budget", "1KB")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "cannot be met" in result.stderr and "the smallest peak memcompile reaches is" in result.stderr


@pytest.mark.parametrize("command", [[], ["inspect"], ["check"]])
def test_help_describes_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    if not command:
        assert all(name in text for name in ("inspect", "check", "bench", "Exit codes"))
    else:
        assert "FILE.py:FACTORY" in text and "--budget" in text and "activation_memory_budget" in text


def test_bench_forwards_every_argument(monkeypatch):
    seen = []
    fake = types.ModuleType("memcompile.bench")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "memcompile.bench", fake)
    assert cli.main(["bench", "--model", "gpt-tiny", "--help"]) == 0
    assert seen == [["--model", "gpt-tiny", "--help"]]


def test_bench_returns_its_exit_code(monkeypatch):
    fake = types.ModuleType("memcompile.bench")
    fake.main = lambda argv: 3
    monkeypatch.setitem(sys.modules, "memcompile.bench", fake)
    assert cli.main(["bench"]) == 3


def test_bench_missing_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "memcompile.bench", None)  # import then raises ImportError
    assert cli.main(["bench", "--model", "gpt-tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("memcompile bench: error: bench is not available")


@pytest.mark.slow
def test_check_through_inductor():
    result = run_cli("check", f"{TOY}:gpt_tiny", "--budget", "0.3", "--inner", "inductor", "--tol", "1e-4")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK:" in result.stdout and "inner=inductor" in result.stdout
    assert "no plan was recorded" not in result.stdout


# ---------------------------------------------------------------------- issue 16: state the forward mutates
MUTATING = os.path.join(ROOT, "tests", "fixtures", "mutating_models.py")


@pytest.mark.parametrize("factory", ["bn_resnet", "input_mutating", "ema_buffer"])
def test_check_passes_on_models_that_mutate_state_in_place(factory):
    """BatchNorm (running statistics), an input doubled in place, an EMA buffer: the eager reference
    and the compiled run each read their own copy of the example inputs, and the buffers agree too."""
    result = run_cli("check", f"{MUTATING}:{factory}", "--budget", "0.3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK:" in result.stdout and "DIFFERS" not in result.stdout
    if factory == "bn_resnet":
        assert "running_mean (buffer)" in result.stdout and "buffers and the loss match eager" in result.stdout


def test_each_check_run_gets_its_own_copy_of_the_example_inputs():
    import torch

    x, w = torch.ones(2, 4), torch.ones(3, requires_grad=True)
    first, second = cli._fresh((x, [w, 5])), cli._fresh((x, [w, 5]))
    first[0].mul_(2)
    assert torch.equal(x, torch.ones(2, 4)) and torch.equal(second[0], torch.ones(2, 4))
    assert second[1][0].requires_grad and second[1][0] is not w and second[1][1] == 5


@pytest.mark.parametrize(("text", "expected"), [("0.5", 0.5), ("1.0", 1.0), ("0", 0.0), ("1e9", 10**9),
                                                ("800000000", 800_000_000), ("6GiB", 6 * 2**30)])
def test_cli_and_api_read_a_budget_the_same_way(text, expected):
    from memcompile.config import MemConfig

    assert cli._budget(text) == expected
    config = MemConfig(memory_budget=text)
    assert (config.budget_fraction if isinstance(expected, float) else config.budget_bytes) == expected


@pytest.mark.parametrize("text", ["0.4B", "2.5", "-0.5", "inf", "nan"])
def test_cli_and_api_refuse_the_same_budgets(text):
    from memcompile.config import MemConfig

    with pytest.raises(cli._UsageError, match="--budget"):
        cli._budget(text)
    with pytest.raises(ValueError, match="memory_budget"):
        MemConfig(memory_budget=text)
