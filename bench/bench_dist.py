"""Multi-rank saves with ``torch.distributed.checkpoint``: cloudckpt's DCP writer against
DCP's own ``FileSystemWriter``, at world sizes 1, 2 and 4, on local disk.

What it measures
    ``world`` processes (``torch.multiprocessing.start_processes(..., start_method="spawn")``,
    gloo, ``init_method=tcp://127.0.0.1:PORT``) each hold a ``DeviceMesh("cpu", (world,))``
    and the same deterministic ``--size-mib`` MiB fp32 "model + Adam moments" state as
    ``bench_save_load.py`` (76 tensors), every tensor of dimension >= 1 turned into a DTensor
    with ``distribute_tensor(t, mesh, [Shard(0)], src_data_rank=None)`` (each rank keeps its
    own row block; the 19 scalar ``step`` tensors stay plain, replicated tensors that DCP
    writes once). So each rank writes about 1/world of the bytes.

    Timed on rank 0: ``barrier(); t0; dcp.save(state, storage_writer=W); barrier(); t1``.
    Throughput = raw state bytes / (t1 - t0). Each rank also reports its process CPU time
    (all its threads) inside ``dcp.save``; "CPU-s / wall" = the sum over ranks / (t1 - t0),
    i.e. how many of the 2 vCPUs were busy on average. Writers ``W``:

    - ``cloudckpt``: ``cloudckpt.dcp.Writer(dir)`` (default ``compression="auto"``)
    - ``cloudckpt-none``: ``cloudckpt.dcp.Writer(dir, compression="none")``
    - ``dcp-fs``: ``torch.distributed.checkpoint.FileSystemWriter(dir, sync_files=True,
      thread_count=2)`` (durable like cloudckpt's local store, which fsyncs every file and its
      directory; thread_count as in ``bench_save_load.py``)

    Every (repeat, world, writer) is a fresh group of processes, interleaved: for each repeat,
    every world size, every writer. The checkpoint directory (under ``bench/.scratch``, not a
    tmpfs) is measured (bytes on disk) and deleted afterwards. Reported: median over repeats,
    throughput of the median, ratios against cloudckpt at the same world size, and scaling
    against the same writer at world 1.

Usage::

    .venv/bin/python bench/bench_dist.py --size-mib 1024 --repeats 3 \\
        --out bench/results/dist-1g.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from cloudckpt.testing import emulators

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workers

MiB = 1 << 20
REPO = Path(__file__).resolve().parent.parent
WRITERS = ("cloudckpt", "cloudckpt-none", "dcp-fs")
WORLDS = (1, 2, 4)
TIMEOUT_S = 900


def make_writer(name: str, loc: str) -> Any:
    if name == "dcp-fs":
        import torch.distributed.checkpoint as dcp

        return dcp.FileSystemWriter(loc, sync_files=True, thread_count=2)
    import cloudckpt.dcp

    return cloudckpt.dcp.Writer(loc, compression="none" if name == "cloudckpt-none" else "auto")


def rank_main(rank: int, world: int, port: int, job: dict[str, Any]) -> None:
    """One rank: build the sharded state, time one dcp.save, rank 0 writes the result."""
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_save_load import build_state

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        full = build_state(job["size_mib"], "fp32")
        raw = sum(t.numel() * t.element_size() for t in full.values())
        state: dict[str, Any] = {}
        for name, t in full.items():
            state[name] = (distribute_tensor(t, mesh, [Shard(0)], src_data_rank=None)
                           if t.dim() >= 1 else t)
        local = sum(v.to_local().numel() * 4 if hasattr(v, "to_local") else v.numel() * 4
                    for v in state.values())
        writer = make_writer(job["writer"], job["loc"])
        dist.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        dcp.save(state, storage_writer=writer)
        own, cpu = time.perf_counter() - t0, time.process_time() - c0
        dist.barrier()
        seconds = time.perf_counter() - t0
        per_rank: list[Any] = [None] * world
        dist.all_gather_object(per_rank, {"local_bytes": local, "save_s": own, "cpu_s": cpu})
        if rank == 0:
            Path(job["result"]).write_text(json.dumps(
                {"seconds": seconds, "raw_bytes": raw, "ranks": per_rank,
                 "cpu_s": sum(r["cpu_s"] for r in per_rank),
                 "torch_threads": torch.get_num_threads()}))
    finally:
        dist.destroy_process_group()


def run_one(world: int, job: dict[str, Any]) -> dict[str, Any]:
    import torch.multiprocessing as mp

    port = emulators.free_port()
    result = Path(job["result"])
    result.unlink(missing_ok=True)
    t0 = time.perf_counter()
    try:
        ctx = mp.start_processes(rank_main, args=(world, port, job), nprocs=world, join=False,
                                 start_method="spawn")
        while not ctx.join(timeout=5):
            if time.perf_counter() - t0 > TIMEOUT_S:
                for pid in ctx.pids():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, 9)
                return {"error": f"timed out after {TIMEOUT_S} s"}
    except Exception as e:  # a rank raised: reported, never dropped
        return {"error": f"{type(e).__name__}: {e}"[-2000:]}
    if not result.exists():
        return {"error": "rank 0 wrote no result"}
    out: dict[str, Any] = json.loads(result.read_text())
    out["wall_with_spawn_s"] = time.perf_counter() - t0
    return out


def dir_bytes(loc: str) -> int:
    return sum(p.stat().st_size for p in Path(loc).rglob("*") if p.is_file())


def run_matrix(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    records = []
    writers = args.writers.split(",") if args.writers else list(WRITERS)
    worlds = [int(w) for w in args.worlds.split(",")] if args.worlds else list(WORLDS)
    for r in range(args.repeats):
        for world in worlds:
            for w in writers:
                loc = workdir / f"{w}-w{world}-r{r}"
                shutil.rmtree(loc, ignore_errors=True)
                job = {"writer": w, "loc": str(loc), "size_mib": args.size_mib,
                       "result": str(workdir / "result.json")}
                rec: dict[str, Any] = {"writer": w, "world": world, "repeat": r,
                                       **run_one(world, job)}
                if "error" not in rec:
                    rec["stored_bytes"] = dir_bytes(str(loc))
                    rec["files"] = sum(1 for p in loc.rglob("*") if p.is_file())
                shutil.rmtree(loc, ignore_errors=True)
                if "error" in rec:
                    msg = f"ERROR {rec['error'][:300]}"
                else:
                    msg = (f"{rec['seconds']:.3f} s, {rec['raw_bytes'] / MiB / rec['seconds']:.0f}"
                           f" MiB/s, stored {rec['stored_bytes'] / MiB:.0f} MiB")
                print(f"  r{r} world {world} {w:15} {msg}", file=sys.stderr, flush=True)
                records.append(rec)
    return records


def _fmt(v: float | None, spec: str, scale: float = 1.0) -> str:
    return "n/a" if v is None else format(v / scale, spec)


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    keys = sorted({(r["world"], WRITERS.index(r["writer"]) if r["writer"] in WRITERS else 9,
                    r["writer"]) for r in records})
    for world, _, w in keys:
        recs = [r for r in records if r["world"] == world and r["writer"] == w]
        ok = [r for r in recs if "error" not in r]
        secs = statistics.median([r["seconds"] for r in ok]) if ok else None
        raw = ok[0]["raw_bytes"] if ok else None
        rows.append({"world": world, "writer": w, "seconds": secs,
                     "min_s": min((r["seconds"] for r in ok), default=None),
                     "max_s": max((r["seconds"] for r in ok), default=None),
                     "mib_s": raw / MiB / secs if raw and secs else None, "raw_bytes": raw,
                     "stored_bytes": statistics.median([r["stored_bytes"] for r in ok])
                     if ok else None,
                     "files": ok[0]["files"] if ok else None,
                     "cpu_s": statistics.median([r["cpu_s"] for r in ok]) if ok else None,
                     "ok": len(ok), "runs": len(recs),
                     "errors": sorted({r["error"] for r in recs if "error" in r})})
    by = {(r["world"], r["writer"]): r for r in rows}
    for row in rows:
        base = by.get((row["world"], "cloudckpt"))
        w1 = by.get((1, row["writer"]))
        row["vs_cloudckpt"] = (row["seconds"] / base["seconds"]
                               if base and base["seconds"] and row["seconds"] else None)
        row["speedup_vs_world1"] = (w1["seconds"] / row["seconds"]
                                    if w1 and w1["seconds"] and row["seconds"] else None)
    return rows


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    raw = next((r["raw_bytes"] for r in rows if r["raw_bytes"]), None)
    lines = [f"### DCP save, local disk, {_fmt(raw, '.1f', MiB)} MiB fp32 sharded over the "
             f"ranks, median of {args.repeats}", "",
             "| world | writer | save s (median) | min-max s | MiB/s | time vs cloudckpt "
             "(same world) | speed-up vs world 1 | CPU-s, all ranks | CPU-s / wall s | "
             "stored MiB | files |", "|" + "---|" * 11]
    for r in rows:
        name = r["writer"] if r["ok"] == r["runs"] else f"{r['writer']} (ok {r['ok']}/{r['runs']})"
        busy = r["cpu_s"] / r["seconds"] if r["cpu_s"] and r["seconds"] else None
        lines.append(
            f"| {r['world']} | {name} | {_fmt(r['seconds'], '.2f')} | "
            f"{_fmt(r['min_s'], '.2f')}-{_fmt(r['max_s'], '.2f')} | {_fmt(r['mib_s'], '.0f')} | "
            f"{_fmt(r['vs_cloudckpt'], '.2f')} | {_fmt(r['speedup_vs_world1'], '.2f')} | "
            f"{_fmt(r['cpu_s'], '.2f')} | {_fmt(busy, '.2f')} | "
            f"{_fmt(r['stored_bytes'], '.1f', MiB)} | {r['files']} |")
    for r in rows:
        for err in r["errors"]:
            lines.append(f"\n- world {r['world']} {r['writer']} error: `{err[:500]}`")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--size-mib", type=int, default=1024, help="fp32 size of the whole state")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--worlds", help="comma-separated world sizes (default 1,2,4)")
    p.add_argument("--writers", help=f"comma-separated subset of {','.join(WRITERS)}")
    p.add_argument("--workdir", type=Path, default=REPO / "bench" / ".scratch")
    p.add_argument("--out", type=Path)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = args.workdir.resolve() / f"dist-{os.getpid()}"  # only this is removed afterwards
    workdir.mkdir(parents=True)
    t0 = time.perf_counter()
    try:
        records = run_matrix(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows = summarize(records)
    table = markdown(rows, args)
    workers.report({"size_mib": args.size_mib, "repeats": args.repeats,
                    "elapsed_s": time.perf_counter() - t0, "summary": rows, "records": records},
                   table, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
