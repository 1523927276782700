"""Worker processes for the scale tests (spawned, gloo backend, CPU): many ranks saving small
shards through a throttling proxy, and restores that broadcast replicated tensors."""

from __future__ import annotations

import json
import os
import warnings

import torch
import torch.distributed as dist

from tests.system.dist_worker import _exit_cleanly, gloo_group

#: each rank's shard: this many tensors of 64 KiB, each its own data object (PUT)
TENSORS_PER_RANK = 12
ELEMS = 16 * 1024


#: what the fork server imports once, so each forked rank starts with it loaded: s3fs and
#: its client stack too (~0.8 s of CPU per rank otherwise: 16 ranks importing it on 2 cores
#: start their saves seconds apart, and the throttle test's contention no longer overlaps)
PRELOAD = ["torch", "torch.distributed.checkpoint", "cloudckpt.dcp", "s3fs",
           "tests.system.scale_worker"]


def start_ranks(fn: object, args: tuple[object, ...], world: int) -> None:
    """Run ``fn(rank, *args)`` on ``world`` processes forked from a fork server (a clean,
    single-threaded process that imported :data:`PRELOAD`), never from the test process:
    a fork of the multi-threaded pytest process can copy a lock another thread holds (an
    I/O loop, a pool, a registry) and hang the child; spawning 16 interpreters that each
    import torch takes minutes on 2 cores."""
    import multiprocessing

    import torch.multiprocessing as mp

    multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOAD)
    mp.start_processes(fn, args=args, nprocs=world, join=True, start_method="forkserver")


def rank_state(rank: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + rank)
    return {f"r{rank}.t{i}": torch.randn(ELEMS, generator=g) for i in range(TENSORS_PER_RANK)}


def throttle_job(rank: int, world: int, port: int, uri: str, opts_json: str, out: str) -> None:
    """Save this rank's shard with plain DCP through cloudckpt (one object per tensor) and
    report the process's limiter counters."""
    warnings.simplefilter("ignore")
    import torch.distributed.checkpoint as dcp

    import cloudckpt.dcp as cdcp
    from cloudckpt.storage.throttle import limiters

    opts = json.loads(opts_json)
    with gloo_group(rank, world, port):
        state = rank_state(rank)
        try:
            dcp.save(state, storage_writer=cdcp.Writer(uri, storage_options=opts,
                                                      chunk_size=64 * 1024,
                                                      object_size=64 * 1024))
            result = "saved"
        except BaseException as e:  # DCP's CheckpointException is a BaseException
            result = f"failed: {type(e).__name__}: {e}"[:2000]
        lims = list(limiters().values())
        report = {"result": result,
                  "throttles": sum(lim.throttles for lim in lims),
                  "decreases": sum(lim.decreases for lim in lims),
                  "waited": sum(lim.waited for lim in lims)}
        with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
            f.write(json.dumps(report))
    _exit_cleanly()


#: restore-by-broadcast state: replicated (DDP-like) tensors and one sharded DTensor
REPLICATED = {f"w{i}": 256 * 1024 for i in range(4)}  # 4 x 1 MiB fp32
SHARD_ELEMS = 64 * 1024  # per rank


def broadcast_state(world: int, mesh: object, fill: bool) -> dict[str, object]:
    from torch.distributed.tensor import Shard, distribute_tensor

    g = torch.Generator().manual_seed(7)
    rep = {k: torch.randn(n, generator=g) for k, n in REPLICATED.items()}
    full = torch.randn(world * SHARD_ELEMS, generator=g)
    if not fill:
        rep = {k: torch.zeros_like(v) for k, v in rep.items()}
        full = torch.zeros_like(full)
    return {"ddp": rep, "sharded": distribute_tensor(full, mesh, [Shard(0)])}  # type: ignore[arg-type]


def broadcast_job(rank: int, world: int, port: int, mode: str, uri: str, opts_json: str,
                  out: str) -> None:
    """``save`` the state, or load it with every rank reading (``load-every``) or by
    broadcast (``load-bcast``); report equality and the load's wall time."""
    import time

    warnings.simplefilter("ignore")
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh

    import cloudckpt.dcp as cdcp

    opts = json.loads(opts_json)
    with gloo_group(rank, world, port):
        mesh = init_device_mesh("cpu", (world,))
        report: dict[str, object] = {}
        if mode == "save":
            dcp.save(broadcast_state(world, mesh, True),
                     storage_writer=cdcp.Writer(uri, storage_options=opts, compression="none"))
            report["result"] = "saved"
        else:
            state = broadcast_state(world, mesh, False)
            dist.barrier()
            t0 = time.perf_counter()
            dcp.load(state, storage_reader=cdcp.Reader(uri, storage_options=opts,
                                                       broadcast=mode == "load-bcast"))
            report["seconds"] = time.perf_counter() - t0
            want = broadcast_state(world, mesh, True)
            same = all(torch.equal(state["ddp"][k], want["ddp"][k])  # type: ignore[index]
                       for k in REPLICATED)
            same = same and torch.equal(state["sharded"].to_local(),  # type: ignore[attr-defined]
                                        want["sharded"].to_local())  # type: ignore[attr-defined]
            report["result"] = "equal" if same else "DIFFERENT"
        with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
            f.write(json.dumps(report))
    _exit_cleanly()
