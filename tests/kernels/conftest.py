"""Fixtures that say which implementation a kernel test exercises.

Two kinds of test live here:
- kernel-vs-reference tests take ``kernel_device``: the device where the Triton kernel
  (not reference.py) runs. CUDA, or CPU when the run was started with TRITON_INTERPRET=1;
  otherwise they skip, since comparing the reference with itself proves nothing.
- behaviour tests (error bounds, closed forms, autograd, torch.compile, opcheck) take
  ``device`` and go through the public ops, whichever implementation they dispatch to:
  the kernel under TRITON_INTERPRET=1 or on CUDA, reference.py otherwise.

NOTE: triton decides at ``@triton.jit`` time whether a kernel is interpreted, and
memcompile.kernels reads TRITON_INTERPRET once at import, so the variable has to be in
the environment of the pytest process; setting it from here would be too late whenever
another test module imported the kernels first.
"""

import pytest
import torch


def pytest_runtest_setup(item):
    # A hook rather than a fixture so that it runs before session fixtures skip for
    # other reasons; conftest runtest hooks apply to the tests below this folder only.
    if item.get_closest_marker("cuda") and not torch.cuda.is_available():
        pytest.skip("marked cuda: needs a CUDA device")


@pytest.fixture(scope="session")
def kernel_device() -> str:
    """Device on which the Triton path runs; skips where only reference.py can run."""
    from memcompile.kernels import _dispatch

    if not _dispatch.HAS_TRITON:
        pytest.skip("triton is not installed: only reference.py can run")
    if torch.cuda.is_available() and not _dispatch.TRITON_INTERPRET:
        return "cuda"
    if not _dispatch.TRITON_INTERPRET:
        pytest.skip(
            "no CUDA device and TRITON_INTERPRET is not 1: the ops use reference.py; "
            "run with TRITON_INTERPRET=1 in the environment to test the Triton kernels on CPU"
        )
    return "cpu"


@pytest.fixture(scope="session")
def device() -> str:
    """Device for behaviour tests of the public ops (kernel or reference, as dispatched)."""
    return "cuda" if torch.cuda.is_available() else "cpu"
