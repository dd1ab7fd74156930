"""Two CPU processes over gloo: DDP and FSDP2 compiled with memcompile give eager's gradients."""

from __future__ import annotations


import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from _helpers import assert_same_grads

WORLD_SIZE = 2

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Both ranks' results of one spawn (DDP and FSDP2 share it: starting the processes is most of the cost)."""
    import _dist_worker

    out = tmp_path_factory.mktemp("dist")
    mp.spawn(_dist_worker.run, args=(WORLD_SIZE, str(out / "init"), str(out)), nprocs=WORLD_SIZE, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)]


def test_ddp_gradients_equal_eager_ddp(ranks):
    for rank in ranks:
        assert_same_grads(rank["ddp"]["memcompile"], rank["ddp"]["eager"])
        plans = rank["ddp"]["plans"]
        assert plans and all(p["source"] != "fallback" for p in plans), plans
        assert any(p["predicted"] < p["baseline"] for p in plans), plans
    # the gradients were all-reduced: both ranks hold the same average of two different batches
    assert_same_grads(ranks[0]["ddp"]["memcompile"], ranks[1]["ddp"]["memcompile"])


def test_fsdp2_gradients_equal_eager_fsdp2(ranks):
    if "fsdp2_error" in ranks[0]:
        pytest.skip(f"FSDP2 (fully_shard) did not run on CPU/gloo here:\n{ranks[0]['fsdp2_error']}")
    for rank in ranks:
        assert_same_grads(rank["fsdp2"]["memcompile"], rank["fsdp2"]["eager"])
        # dynamo compiles each FSDP unit's forward (the Block) on its own; the hooks run eagerly
        plans = rank["fsdp2"]["plans"]
        assert plans and all(p["source"] != "fallback" for p in plans), plans
        assert any(p["predicted"] < p["baseline"] for p in plans), plans
    assert_same_grads(ranks[0]["fsdp2"]["memcompile"], ranks[1]["fsdp2"]["memcompile"])
