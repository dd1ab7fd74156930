import pytest
import torch


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
