import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # for `examples` (the package itself is installed)


@pytest.fixture(autouse=True)
def _seed_and_reset():
    torch.manual_seed(0)
    torch._dynamo.reset()
    import memcompile.backend

    memcompile.backend.clear_plans()
    yield
    torch._dynamo.reset()


@pytest.fixture
def no_compile_cache():
    """Plans are recorded only when the partitioner runs, so tests that read them bypass Inductor's caches."""
    with torch._inductor.config.patch(force_disable_caches=True):
        yield
