"""examples/bench_planning.py: the depth sweep's growth exponent (its figures live in docs/BENCHMARKS.md)."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "bench_planning.py"


@pytest.fixture(scope="module")
def bench_planning():
    spec = importlib.util.spec_from_file_location("_example_bench_planning", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("power", [0.5, 1.0, 2.0])
def test_growth_exponent_recovers_a_power_law(bench_planning, power):
    sizes = [1_000, 2_000, 4_000, 8_000]
    assert bench_planning.growth_exponent(sizes, [3e-4 * n**power for n in sizes]) == pytest.approx(power)


def test_depth_sweep_model_changes_only_its_depth(bench_planning):
    shallow, _ = bench_planning.make_deep(2)
    deep, inputs = bench_planning.make_deep(4)
    assert len(deep.blocks) == 4 and len(shallow.blocks) == 2
    assert deep.args.dim == shallow.args.dim == bench_planning.DEPTH_ARGS.dim
    assert deep(*inputs).ndim == 0


def test_stage_column_gives_seconds_and_repeats(bench_planning):
    class Plan:
        extra = {"stage_seconds": {"solve": 8.994, "extract": 0.37}, "stage_counts": {"solve": 3, "extract": 1}}

    assert bench_planning._stages(Plan()) == "solve 8.99 (3x), extract 0.37"
