"""One rank of the 2-process gloo run in test_distributed.py (a module, so that spawn can import it).

Each rank trains one step of the toy GPT on its own batch four ways: eager DDP, DDP compiled with
memcompile, eager FSDP2 and FSDP2 compiled with memcompile, and saves the gradients and plans.
"""

from __future__ import annotations

import copy
import datetime
import os
import traceback
import warnings

import torch
import torch.distributed as dist

BUDGET = 0.0


def _batch(rank: int, like):
    g = torch.Generator().manual_seed(100 + rank)
    return tuple(torch.randint(0, 64, t.shape, generator=g) for t in like)


def _plans():
    import memcompile

    return [{"graph_index": p.graph_index, "source": p.source, "baseline": p.baseline_peak_bytes,
             "predicted": p.predicted_peak_bytes, "notes": p.notes} for p in memcompile.last_plans()]


def _ddp(model, inputs):
    from torch.nn.parallel import DistributedDataParallel as DDP

    import memcompile

    out = {}
    for name in ("eager", "memcompile"):
        torch._dynamo.reset()
        memcompile.clear_plans()
        # One bucket (the default cap), so one graph. A cap under 1 MiB would split it per bucket, but
        # torch 2.13's DDPOptimizer then asserts (it assumes the default 1 MiB first bucket).
        ddp = DDP(copy.deepcopy(model))
        step = ddp
        if name == "memcompile":
            step = torch.compile(ddp, backend="memcompile", options={"inner": "eager", "memory_budget": BUDGET})
        step(*inputs).backward()
        out[name] = {n: p.grad.clone() for n, p in ddp.module.named_parameters()}
    out["plans"] = _plans()
    return out


def _fsdp2(model, inputs, world_size):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    import memcompile

    mesh = init_device_mesh("cpu", (world_size,))
    out = {}
    for name in ("eager", "memcompile"):
        torch._dynamo.reset()
        memcompile.clear_plans()
        sharded = copy.deepcopy(model)
        for block in sharded.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(sharded, mesh=mesh)
        step = sharded
        if name == "memcompile":
            step = torch.compile(sharded, backend="memcompile", options={"inner": "eager", "memory_budget": BUDGET})
        step(*inputs).backward()
        out[name] = {n: p.grad.full_tensor().clone() for n, p in sharded.named_parameters()}
    out["plans"] = _plans()
    return out


def run(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    warnings.simplefilter("ignore")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=120))
    from memcompile.models import make

    model, example = make("gpt-tiny")  # the same weights on every rank (seeded)
    inputs = _batch(rank, example)
    result = {"ddp": _ddp(model, inputs)}
    try:
        result["fsdp2"] = _fsdp2(model, inputs, world_size)
    except Exception:  # noqa: BLE001 - reported by the test as a skip, with the traceback
        result["fsdp2_error"] = traceback.format_exc()
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()
