"""The GPU scripts (examples/bench_gpu_modes.py, examples/gpu_checks.sh): what can be checked without
a GPU. Their figures come from a CUDA machine (docs/BENCHMARKS.md "GPU")."""

import subprocess
import sys

import pytest
import torch
from _examples import ROOT, load_example

bgm = load_example("bench_gpu_modes.py")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a CUDA device")
def test_bench_gpu_modes_says_it_needs_cuda():
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "bench_gpu_modes.py")],
                          check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "needs a CUDA device" in proc.stderr


def test_variant_names_take_a_budget_after_an_at_sign():
    args = bgm.argparse.Namespace(budget=0.0, offload_budget=0.5)
    assert bgm._options("inductor", args) is None
    assert bgm._options("memcompile", args) == {"memory_budget": 0.0}
    assert bgm._options("quantize@0.5", args) == {"memory_budget": 0.5, "modes": ("keep", "quantize")}
    assert bgm._options("offload", args)["memory_budget"] == 0.5
    assert bgm._options("offload@0.2", args)["memory_budget"] == 0.2
    with pytest.raises(SystemExit):
        bgm.main(["--cpu-dry-run", "--variants", "inductor,nonsense"])


def test_gpu_checks_script_parses():
    assert subprocess.run(["bash", "-n", str(ROOT / "examples" / "gpu_checks.sh")]).returncode == 0


@pytest.mark.slow
def test_bench_gpu_modes_plumbing_on_cpu(capsys, no_compile_cache):
    """The table and the gradient comparison on a tiny model on the CPU: the lossless plan's
    gradients equal Inductor's (float reordering), as the GPU run reports them."""
    rc = bgm.main(["--cpu-dry-run", "--dim", "32", "--layers", "2", "--heads", "2", "--batch", "2", "--seq", "16",
                   "--vocab", "64", "--dtype", "float32", "--steps", "1", "--warmup", "0",
                   "--variants", "inductor,memcompile"])
    assert rc == 0
    rows = {line.split("|")[1].strip(): line.split("|") for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and not line.startswith("| variant")}
    assert set(rows) == {"inductor", "memcompile"}
    assert float(rows["memcompile"][5]) < 1e-5  # grad rel
    assert "recompute:" in rows["memcompile"][6]
