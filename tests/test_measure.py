"""memcompile.measure on CPU: the profiler method counts a step's allocations and prints nothing of its own."""

import subprocess
import sys
import textwrap

import torch

from memcompile.measure import measure_peak


def test_cpu_peak_counts_a_known_allocation():
    def step():
        big = torch.empty(1 << 20, dtype=torch.uint8)  # 1 MiB live at once, then freed
        del big

    measured = measure_peak(step, live_before_bytes=1000)
    assert measured.live_before_bytes == 1000
    assert 1000 + (1 << 20) <= measured.peak_bytes < 1000 + (1 << 20) + 4096


def test_profiler_start_and_stop_lines_are_not_printed_and_stderr_still_works():
    script = textwrap.dedent(
        """
        import sys, torch
        from memcompile.measure import measure_peak
        x = torch.randn(64, 64, requires_grad=True)
        def step():
            print("inside the step", file=sys.stderr, flush=True)
            (x @ x).sum().backward()
        measure_peak(step, live_before_bytes=0)
        print("after", file=sys.stderr)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "profiler_start" not in proc.stderr and "profiler_stop" not in proc.stderr, proc.stderr
    assert "inside the step" in proc.stderr, "the user's step keeps its stderr"
    assert "after" in proc.stderr
