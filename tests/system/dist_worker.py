"""Worker processes for the torch.distributed tests (spawned, gloo backend, CPU)."""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

SHAPES = {"w": (24, 8), "m": (8, 12), "b": (8,), "ddp": (5, 5)}


@contextlib.contextmanager
def gloo_group(rank: int, world: int, port: int) -> Iterator[None]:
    """This process as rank ``rank`` of a ``world``-rank gloo group rendezvousing on
    127.0.0.1:``port``; the group is destroyed when the block ends, however it ends."""
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            init_method=f"tcp://127.0.0.1:{port}")
    try:
        yield
    finally:
        dist.destroy_process_group()


def _exit_cleanly() -> None:
    """End a spawned rank once its result file is written: skip interpreter finalization, where
    torch's gloo stack can abort ("terminate called without an active exception") while its
    C++ threads wind down. Exit status 0 still tells the parent this rank finished."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def global_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(42)
    return {k: torch.randn(*s, generator=g) for k, s in SHAPES.items()}


def build_state(world: int, mesh: Any, fill: bool) -> dict[str, Any]:
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    full = global_tensors()
    src = full if fill else {k: torch.zeros_like(v) for k, v in full.items()}
    if mesh is None:  # one process, no process group: plain tensors
        return {"model": {"w": src["w"].clone(), "b": src["b"].clone()},
                "optim": {"m": src["m"].clone()}, "ddp": src["ddp"].clone(), "step": 7 if fill else 0}
    return {"model": {"w": distribute_tensor(src["w"], mesh, [Shard(0)]),
                      "b": distribute_tensor(src["b"], mesh, [Replicate()])},
            "optim": {"m": distribute_tensor(src["m"], mesh, [Shard(1)])},
            "ddp": src["ddp"].clone(),  # replicated plain tensor, as DDP keeps it
            "step": 7 if fill else 0}


def run(rank: int, world: int, port: int, mode: str, uri: str, opts_json: str, out: str) -> None:
    warnings.simplefilter("ignore")
    from torch.distributed.device_mesh import init_device_mesh

    import cloudckpt.dcp as cdcp
    from cloudckpt.storage import open_store
    from cloudckpt.testing import FaultPlan, FaultyStore

    opts = json.loads(opts_json)
    with gloo_group(rank, world, port):
        mesh = init_device_mesh("cpu", (world,))
        if mode in ("save", "fail"):
            state = build_state(world, mesh, fill=True)
            target: Any = uri
            if mode == "fail" and rank == world - 1:  # this rank's uploads fail permanently
                uploads = frozenset({"put", "start_upload"})  # local stores stream (issue 14)
                target = FaultyStore(open_store(uri, storage_options=opts),
                                     FaultPlan(ops=uploads, fail_calls=frozenset({0}),
                                               kind="permanent"))
            try:
                dcp.save(state, storage_writer=cdcp.Writer(target, storage_options=opts))
                result = "saved"
            except BaseException as e:  # DCP's CheckpointException is a BaseException
                result = f"failed: {type(e).__name__}"
        else:
            state = build_state(world, mesh, fill=False)
            dcp.load(state, storage_reader=cdcp.Reader(uri, storage_options=opts))
            full = global_tensors()
            got = {"w": state["model"]["w"].full_tensor(), "b": state["model"]["b"].full_tensor(),
                   "m": state["optim"]["m"].full_tensor(), "ddp": state["ddp"]}
            ok = all(torch.equal(got[k], full[k]) for k in full) and state["step"] == 7
            result = "equal" if ok else "DIFFERENT"
        with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
            f.write(result)
    _exit_cleanly()


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))


def digest(model: torch.nn.Module) -> str:
    """SHA-256 of the full (unsharded) parameters."""
    import hashlib

    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                              cpu_offload=False))
    h = hashlib.sha256()
    for k in sorted(sd):
        v = sd[k]
        v = v.full_tensor() if hasattr(v, "full_tensor") else v
        h.update(k.encode() + v.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def manager_job(rank: int, world: int, port: int, mode: str, uri: str, opts_json: str,
                out: str) -> None:
    """Train 3 identical steps on every rank and save through CheckpointManager, or restore."""
    warnings.simplefilter("ignore")
    from cloudckpt import CheckpointManager

    opts = json.loads(opts_json)
    with gloo_group(rank, world, port) if world > 1 else contextlib.nullcontext():
        model = _mlp()
        if mode.endswith("-fsdp2") and world > 1:  # parameters become sharded DTensors
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            fully_shard(model, mesh=init_device_mesh("cpu", (world,)))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        replicas = [uri + "-replica"] if "-replica" in mode else []  # rank 0 copies
        mgr = CheckpointManager(uri, keep_last=2, storage_options=opts, replicas=replicas)
        if mode.startswith("save"):
            g = torch.Generator().manual_seed(1)
            for _ in range(3):
                x = torch.randn(8, 16, generator=g)
                model(x).pow(2).mean().backward()
                opt.step()
                opt.zero_grad()
                sched.step()
            mgr.save(3, model=model, optimizer=opt, scheduler=sched, epoch=0,
                     metrics={"loss": 0.5}, extra={"note": "dist"})
            if "-twice" in mode:  # nothing changed: each rank shares its shards with step 3
                mgr.save(4, model=model, optimizer=opt, scheduler=sched, epoch=0,
                         metrics={"loss": 0.5}, extra={"note": "dist"})
            result = {"digest": digest(model), "last_epoch": sched.last_epoch,
                      "replicated": mgr.wait_replicas(60)}
        else:
            st = mgr.restore(model=model, optimizer=opt, scheduler=sched)
            assert st is not None
            from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

            osd = get_optimizer_state_dict(model, opt)
            result = {"digest": digest(model), "last_epoch": sched.last_epoch, "step": st.step,
                      "extra": st.extra, "opt_steps": sorted(
                          float(s["step"]) for s in osd["state"].values())}
        with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
            f.write(json.dumps(result, sort_keys=True))
    _exit_cleanly()
