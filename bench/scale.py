"""Scale (issue 16): restore by broadcast vs every rank reading, and the coordinator's cost at
1, 4 and 16 ranks, against S3 (moto) on 127.0.0.1.

What it measures
    ``broadcast``: ``--world`` ranks (forked, gloo, CPU) save once a state of ``--replicated-mib``
    MiB of replicated (DDP-like) fp32 tensors (16 tensors) plus ``--sharded-mib`` MiB of one
    DTensor sharded over the ranks, ``compression="none"``. Then ``dcp.load`` with
    ``cloudckpt.dcp.Reader(broadcast=False)`` (every rank fetches what it needs) and
    ``broadcast=True``, alternating, ``--repeats`` times each, each a fresh group of
    processes behind a ``FreezableProxy`` that counts the bytes moto sent (HTTP included).
    Time: ``barrier(); t0; dcp.load(...); t1`` on every rank, the slowest rank's reported.

    ``coordinator``: at 1, 4 and 16 ranks, each rank saves 12 tensors of 64 KiB (its own
    keys; one 64 KiB data object each) with plain DCP. Reported: the manifest's size, the
    commit latency (``Writer.finish`` on the coordinator: assemble the manifest, encode,
    checksum, create-only PUT), the save's wall time on rank 0, and the listing cost (one
    ``Store.list`` of the checkpoint: objects and seconds, median of 5), with a least-squares
    line over the world sizes for each.

Both run on this machine's 2 cores with every rank and moto on them: absolute times are this
machine's, the slopes (bytes or requests per rank) carry over.

Usage (from the repository root)::

    .venv/bin/python -m bench.scale --out bench/results/scale.json
    .venv/bin/python -m bench.scale --quick
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp

import cloudckpt.dcp as cdcp
from cloudckpt.storage import open_store
from cloudckpt.testing import emulators
from cloudckpt.testing.emulators import free_port
from cloudckpt.testing.proxy import FreezableProxy

MiB = 1 << 20
PROJECT = Path(__file__).resolve().parent.parent


def _exit() -> None:
    os._exit(0)  # skip gloo's teardown at interpreter exit (see tests/system/dist_worker.py)


def _state(world: int, mesh: Any, rep_mib: float, shard_mib: float, fill: bool) -> dict[str, Any]:
    from torch.distributed.tensor import Shard, distribute_tensor

    g = torch.Generator().manual_seed(3)
    n = int(rep_mib * MiB / 4 / 16)
    rep = {f"w{i}": torch.randn(n, generator=g) for i in range(16)}
    full = torch.randn(world * int(shard_mib * MiB / 4 / world), generator=g)
    if not fill:
        rep = {k: torch.zeros_like(v) for k, v in rep.items()}
        full = torch.zeros_like(full)
    return {"ddp": rep, "sharded": distribute_tensor(full, mesh, [Shard(0)])}


def _bcast_rank(rank: int, world: int, port: int, mode: str, uri: str, opts: str,
                rep_mib: float, shard_mib: float, out: str) -> None:
    warnings.simplefilter("ignore")
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", rank=rank, world_size=world,
                            init_method=f"tcp://127.0.0.1:{port}")
    mesh = init_device_mesh("cpu", (world,))
    o = json.loads(opts)
    rep: dict[str, Any] = {}
    if mode == "save":
        dcp.save(_state(world, mesh, rep_mib, shard_mib, True),
                 storage_writer=cdcp.Writer(uri, storage_options=o, compression="none"))
    else:
        state = _state(world, mesh, rep_mib, shard_mib, False)
        dist.barrier()
        t0 = time.perf_counter()
        dcp.load(state, storage_reader=cdcp.Reader(uri, storage_options=o,
                                                   broadcast=mode == "broadcast"))
        rep["seconds"] = time.perf_counter() - t0
        want = _state(world, mesh, rep_mib, shard_mib, True)
        rep["equal"] = all(torch.equal(state["ddp"][k], want["ddp"][k]) for k in want["ddp"]) \
            and torch.equal(state["sharded"].to_local(), want["sharded"].to_local())
    Path(out, f"{rank}.json").write_text(json.dumps(rep))
    dist.destroy_process_group()
    _exit()


class _TimedWriter(cdcp.Writer):
    """Records how long the coordinator's ``finish`` (the commit) takes."""

    finish_seconds = 0.0

    def finish(self, metadata: Any, results: Any) -> None:
        t0 = time.perf_counter()
        super().finish(metadata, results)
        _TimedWriter.finish_seconds = time.perf_counter() - t0


def _coord_rank(rank: int, world: int, port: int, uri: str, opts: str, out: str) -> None:
    warnings.simplefilter("ignore")
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            init_method=f"tcp://127.0.0.1:{port}")
    g = torch.Generator().manual_seed(rank)
    state = {f"r{rank}.t{i}": torch.randn(16 * 1024, generator=g) for i in range(12)}
    dist.barrier()
    t0 = time.perf_counter()
    dcp.save(state, storage_writer=_TimedWriter(uri, storage_options=json.loads(opts),
                                                chunk_size=64 * 1024, object_size=64 * 1024))
    dist.barrier()
    Path(out, f"{rank}.json").write_text(json.dumps({"save": time.perf_counter() - t0,
                                                     "commit": _TimedWriter.finish_seconds}))
    dist.destroy_process_group()
    _exit()


def _spawn(fn: Any, world: int, *args: Any) -> list[dict[str, Any]]:
    out = tempfile.mkdtemp(prefix="bench-scale-")
    mp.start_processes(fn, args=(world, free_port(), *args, out), nprocs=world, join=True,
                       start_method="fork")
    return [json.loads(Path(out, f"{r}.json").read_text()) for r in range(world)]


def _fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``y = a + b x``: (a, b)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / \
        sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def bench_broadcast(endpoint: str, opts: dict[str, Any], world: int, rep_mib: float,
                    shard_mib: float, repeats: int) -> dict[str, Any]:
    bucket = f"scale-{uuid.uuid4().hex[:8]}"
    open_store(f"s3://{bucket}", storage_options=opts).fs.mkdir(bucket)  # type: ignore[attr-defined]
    uri = f"s3://{bucket}/bcast"
    _spawn(_bcast_rank, world, "save", uri, json.dumps(opts), rep_mib, shard_mib)
    runs: dict[str, list[dict[str, float]]] = {"every-rank": [], "broadcast": []}
    for _ in range(repeats):
        for mode in runs:
            with FreezableProxy(endpoint) as proxy:
                reps = _spawn(_bcast_rank, world, mode, uri,
                              json.dumps({**opts, "endpoint_url": proxy.endpoint}),
                              rep_mib, shard_mib)
                fetched = proxy.bytes_down
            assert all(r["equal"] for r in reps), (mode, reps)
            runs[mode].append({"seconds": max(r["seconds"] for r in reps),
                               "mib_fetched": fetched / MiB})
    return {"world": world, "replicated_mib": rep_mib, "sharded_mib": shard_mib,
            "runs": runs, "median": {m: {k: statistics.median(r[k] for r in rs)
                                         for k in ("seconds", "mib_fetched")}
                                     for m, rs in runs.items()}}


def bench_coordinator(opts: dict[str, Any], worlds: list[int]) -> dict[str, Any]:
    bucket = f"scale-{uuid.uuid4().hex[:8]}"
    open_store(f"s3://{bucket}", storage_options=opts).fs.mkdir(bucket)  # type: ignore[attr-defined]
    rows = []
    for world in worlds:
        uri = f"s3://{bucket}/w{world}"
        reps = _spawn(_coord_rank, world, uri, json.dumps(opts))
        store = open_store(uri, storage_options=opts)
        manifest = store.stat("manifest.json").size
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            listed = store.list("")
            times.append(time.perf_counter() - t0)
        rows.append({"world": world, "manifest_bytes": manifest, "objects": len(listed),
                     "list_seconds": statistics.median(times),
                     "commit_seconds": reps[0]["commit"], "save_seconds": reps[0]["save"]})
    fits = {}
    for key in ("manifest_bytes", "objects", "list_seconds", "commit_seconds", "save_seconds"):
        a, b = _fit([r["world"] for r in rows], [float(r[key]) for r in rows])
        fits[key] = {"intercept": a, "per_rank": b}
    return {"rows": rows, "fits": fits}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", type=int, default=4)
    ap.add_argument("--replicated-mib", type=float, default=64)
    ap.add_argument("--sharded-mib", type=float, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--worlds", default="1,4,16")
    ap.add_argument("--quick", action="store_true", help="8 + 4 MiB, 1 repeat, worlds 1,4")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    if a.quick:
        a.replicated_mib, a.sharded_mib, a.repeats, a.worlds = 8, 4, 1, "1,4"
    logdir = Path(tempfile.mkdtemp(prefix="bench-scale-emu-"))
    emu = emulators.start("s3", logdir, PROJECT)
    try:
        opts = {"endpoint_url": emu.endpoint, "key": "testing", "secret": "testing"}
        result = {"broadcast": bench_broadcast(emu.endpoint, opts, a.world, a.replicated_mib,
                                               a.sharded_mib, a.repeats),
                  "coordinator": bench_coordinator(opts, [int(w) for w in a.worlds.split(",")])}
    finally:
        emu.stop()
    text = json.dumps(result, indent=1)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
