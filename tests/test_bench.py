"""memcompile.bench: one process per run, a row for every run (failures included), table, JSON, plot."""

import json

import pytest
import torch
import torch.nn as nn

from memcompile import bench

LOSSLESS = [m for m in bench.METHODS if m != "memcompile-lossy"]


def run_main(tmp_path, *args):
    out = tmp_path / "bench.json"
    rc = bench.main([*args, "--json", str(out)])
    assert rc == 0
    return json.loads(out.read_text())


def rows_by_label(data):
    return {r["method"] if r["budget"] is None else f"{r['method']}@{r['budget']:g}": r for r in data["rows"]}


def assert_sane(row):
    assert row["status"] == "ok", row
    assert row["live_before_bytes"] > 0
    assert row["peak_bytes"] > row["live_before_bytes"], "a training step allocates activations and grads"
    assert row["step_seconds"] >= row["step_min_seconds"] > 0
    assert row["first_step_seconds"] > 0
    assert row["compile_seconds"] >= 0
    assert row["wall_seconds"] > 0


@pytest.mark.slow
def test_every_method_gives_a_sane_row_on_the_tiniest_preset(tmp_path, capsys):
    """Every lossless method in its own process (memcompile-lossy, one more compile: the next test)."""
    plot_path = tmp_path / "bench.png"
    data = run_main(tmp_path, "--model", "gpt-tiny", "--budgets", "0.5", "--steps", "2", "--warmup", "1",
                    "--plot", str(plot_path))
    rows = rows_by_label(data)
    expected = ["eager", "inductor", "torch-budget@0.5", "checkpoint", "checkpoint-compiled", "save-on-cpu",
                "memcompile@0.5"]
    assert list(rows) == expected
    for label in expected:
        assert_sane(rows[label])
    # Every lossless method computes the same first-step loss (Inductor may reorder float sums).
    losses = torch.tensor([rows[label]["loss"] for label in expected])
    torch.testing.assert_close(losses, losses[:1].expand_as(losses), rtol=1e-5, atol=1e-6)
    # memcompile ran the real backend and planned the graph itself.
    ours = rows["memcompile@0.5"]
    assert ours["plan_seconds"] is not None and ours["predicted_peak_bytes"] > 0
    assert "plan source" in ours["note"]
    assert "model.blocks" in rows["checkpoint"]["note"]
    table = capsys.readouterr().out
    for method in LOSSLESS:
        assert f"\n| {method} |" in table
    assert data["meta"]["torch"] == torch.__version__
    assert data["meta"]["command"].startswith("python -m memcompile.bench --model gpt-tiny")
    assert plot_path.stat().st_size > 1000


def test_the_lossy_method_plans_with_the_lossy_modes(monkeypatch):
    """memcompile-lossy's row, run in this process with the plan's graphs executed eagerly (``inner``)
    instead of compiled by Inductor: the child's code path is the same up to that option."""
    from memcompile import backend

    compiled_with = {}
    real_compile = torch.compile

    def compile_eagerly(model, *, backend, options):
        compiled_with.update(options)
        return real_compile(model, backend=backend, options={**options, "inner": "eager"})

    monkeypatch.setattr(torch, "compile", compile_eagerly)
    torch._dynamo.reset()
    row = bench.run_child(bench.RunSpec(method="memcompile-lossy", budget=0.5, model="gpt-tiny", device="cpu",
                                         dtype="float32", steps=1, warmup=0))
    torch._dynamo.reset()
    assert compiled_with["modes"] == bench.LOSSY_MODES and compiled_with["memory_budget"] == 0.5
    assert row.status == "ok" and row.peak_bytes > row.live_before_bytes
    assert row.plan_seconds is not None and row.predicted_peak_bytes > 0
    assert "plan source" in row.note
    plans = backend.last_plans()
    assert plans and set(plans[0].config.modes) == set(bench.LOSSY_MODES)


def test_eager_methods_fill_the_table_json_and_plot(tmp_path, capsys):
    plot_path = tmp_path / "bench.png"
    data = run_main(tmp_path, "--model", "gpt-tiny", "--methods", "eager,checkpoint", "--budgets", "1.0,0.0",
                    "--steps", "2", "--warmup", "0", "--threads", "1", "--plot", str(plot_path))
    rows = rows_by_label(data)
    assert list(rows) == ["eager", "checkpoint"]  # neither takes a budget: one run each
    for row in rows.values():
        assert_sane(row)
    out = capsys.readouterr()
    assert "| eager | — |" in out.out and "| checkpoint | — |" in out.out
    assert "[1/2] eager: peak" in out.err and "[2/2] checkpoint: peak" in out.err
    assert "1 thread(s) per run" in out.out and data["meta"]["threads"] == 1
    assert plot_path.stat().st_size > 1000


def test_budgeted_methods_run_once_per_budget():
    args = bench.make_parser().parse_args(["--methods", "all", "--budgets", "1.0,0.3,0.0", "--lossy", "--threads", "1"])
    runs = bench.plan_runs(args)
    assert {spec.threads for spec in runs} == {1}
    labels = [spec.label for spec in runs]
    assert labels == [
        "eager", "inductor", "torch-budget@1", "torch-budget@0.3", "torch-budget@0", "checkpoint",
        "checkpoint-compiled", "save-on-cpu", "memcompile@1", "memcompile@0.3", "memcompile@0",
        "memcompile-lossy@1", "memcompile-lossy@0.3", "memcompile-lossy@0",
    ]


def test_a_model_failing_in_its_step_gives_an_error_row_not_a_crash(tmp_path):
    model_file = tmp_path / "broken.py"
    model_file.write_text(
        "import torch\n"
        "class Broken(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        raise RuntimeError('no weights here')\n"
        "def factory():\n    return Broken(), (torch.ones(2),)\n"
    )
    data = run_main(tmp_path, "--model", f"{model_file}:factory", "--methods", "eager", "--steps", "1")
    (row,) = data["rows"]
    assert row["status"] == "error"
    assert row["error"] == "RuntimeError: no weights here"
    assert row["peak_bytes"] is None


USER_MODEL = """
import torch
import torch.nn as nn


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 64), nn.Linear(64, 4)

    def forward(self, x, y):
        return nn.functional.cross_entropy(self.b(torch.tanh(self.a(x))), y)


def factory():
    return TwoLayer(), (torch.randn(8, 16), torch.randint(0, 4, (8,)))
"""


def test_a_users_file_is_taken_positionally_as_inspect_takes_it(tmp_path, capsys):
    model_file = tmp_path / "user_model.py"
    model_file.write_text(USER_MODEL)
    spec = f"{model_file}:factory"
    data = run_main(tmp_path, spec, "--methods", "eager", "--steps", "1", "--warmup", "0")
    (row,) = data["rows"]
    assert_sane(row)
    assert data["meta"]["model"] == spec
    assert f"model {spec} (float32)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "body, message",
    [
        ("def factory():\n    raise RuntimeError('no weights here')\n", "raised RuntimeError: no weights here"),
        ("def factory():\n    return 3\n", "must return (model, example_inputs)"),
        ("import torch\ndef factory():\n    return torch.nn.Linear(2, 2), torch.ones(2)\n",
         "example_inputs a tuple or list"),
        ("x = 1\n", "has no callable 'factory'"),
    ],
)
def test_a_factory_breaking_the_contract_exits_2_before_any_run(tmp_path, capsys, body, message):
    model_file = tmp_path / "bad_model.py"
    model_file.write_text(body)
    assert bench.main([f"{model_file}:factory", "--methods", "eager"]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "[1/" not in err, "no child process is started for a model that cannot be built"


def test_two_different_models_on_one_command_line_exit_2(tmp_path, capsys):
    model_file = tmp_path / "user_model.py"
    model_file.write_text(USER_MODEL)
    assert bench.main([f"{model_file}:factory", "--model", "gpt-tiny"]) == 2
    assert "two models given" in capsys.readouterr().err


def test_a_child_past_its_timeout_gives_a_timeout_row(tmp_path):
    data = run_main(tmp_path, "--model", "gpt-tiny", "--methods", "eager", "--timeout", "0.05")
    (row,) = data["rows"]
    assert row["status"] == "timeout"
    assert "0.05 s" in row["error"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--methods", "eager,fast"], "--methods: unknown"),
        (["--budgets", "0.5,1.5"], "outside [0, 1]"),
        (["--model", "gpt-huge"], "unknown model preset 'gpt-huge'"),
        (["--model", "missing.py:factory"], "no such file"),
    ],
)
def test_bad_command_lines_exit_2_with_a_message(args, message, capsys):
    assert bench.main(args) == 2
    assert message in capsys.readouterr().err


def test_blocks_are_found_by_name_then_by_size():
    from memcompile.models import make

    model, _ = make("gpt-tiny")
    name, blocks = bench.find_blocks(model)
    assert name == "blocks" and blocks is model.blocks

    class Unnamed(nn.Module):
        def __init__(self):
            super().__init__()
            self.small = nn.ModuleList([nn.Linear(2, 2)])
            self.big = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])

    assert bench.find_blocks(Unnamed())[0] == "big"
    with pytest.raises(ValueError, match="no nn.ModuleList of blocks in Linear"):
        bench.find_blocks(nn.Linear(2, 2))


def test_checkpointed_blocks_give_eager_gradients():
    from memcompile.models import make

    model, inputs = make("gpt-tiny")
    model(*inputs).backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    assert bench.checkpoint_blocks(model) == "blocks"
    model(*inputs).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], msg=lambda m: f"{n}: {m}")


def test_table_shows_errors_and_ratios_to_inductor():
    rows = [
        bench.RunResult(method="inductor", budget=None, status="ok", peak_bytes=200_000_000, step_seconds=0.1),
        bench.RunResult(method="memcompile", budget=0.5, status="ok", peak_bytes=150_000_000, step_seconds=0.12),
        bench.RunResult(method="torch-budget", budget=0.0, status="error", error="RuntimeError: a | b"),
    ]
    table = bench.markdown_table(rows).splitlines()
    assert table[2].startswith("| inductor | — | 200.00 | 1.000 | 100.0 |")
    assert table[3].startswith("| memcompile | 0.5 | 150.00 | 0.750 | 120.0 |")
    assert table[4].endswith("**error**: RuntimeError: a \\| b |")
