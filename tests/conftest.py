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


@pytest.fixture
def one_thread():
    """One intra-op thread for the test (peaks and scratch sizes depend on the thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
