"""Multi-rank saves with ``torch.distributed.checkpoint``: cloudckpt's DCP writer against
DCP's own ``FileSystemWriter``, at world sizes 1, 2 and 4, on local disk.

What it measures
    ``world`` processes (``torch.multiprocessing.start_processes(..., start_method="spawn")``,
    gloo, ``init_method=tcp://127.0.0.1:PORT``) each hold a ``DeviceMesh("cpu", (world,))``
    and the same deterministic ``--size-mib`` MiB fp32 "model + Adam moments" state as the
    ``save_load_*`` scenarios (``bench/lib/state.py``, 76 tensors), every tensor of dimension
    >= 1 turned into a DTensor with ``distribute_tensor(t, mesh, [Shard(0)],
    src_data_rank=None)`` (each rank keeps its own row block; the 19 scalar ``step`` tensors
    stay plain, replicated tensors that DCP writes once). So each rank writes about 1/world
    of the bytes.

    Timed on rank 0: ``barrier(); t0; dcp.save(state, storage_writer=W); barrier(); t1``.
    Throughput = raw state bytes / (t1 - t0). Each rank also reports its process CPU time
    (all its threads) inside ``dcp.save``; "CPU-s / wall" = the sum over ranks / (t1 - t0).
    Writers ``W`` (``bench/lib/peers.py``): ``cloudckpt`` (``cloudckpt.dcp.Writer(dir)``),
    ``cloudckpt-none`` (``compression="none"``), ``dcp-fs`` (``FileSystemWriter(dir,
    sync_files=True, thread_count=2)``, durable like cloudckpt's local store).

    Every (repeat, world, writer) is a fresh group of processes, interleaved: for each repeat,
    every world size, every writer. The checkpoint directory (under ``bench/.scratch``, not a
    tmpfs) is measured (bytes on disk) and deleted afterwards. Reported: median over repeats,
    throughput of the median, ratios against cloudckpt at the same world size, and scaling
    against the same writer at world 1.

Usage (from the repository root)::

    .venv/bin/python -m bench.dist --size-mib 1024 --repeats 3 --out bench/results/dist-1g.json
    .venv/bin/python -m bench.dist --quick
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench.lib import MiB, cli, stats
from bench.lib.peers import DCP_WRITERS, dcp_writer
from bench.lib.report import error_lines, fmt, md_table, progress, report
from bench.lib.state import build_state, raw_bytes

WORLDS = (1, 2, 4)
TIMEOUT_S = 900


def rank_main(rank: int, world: int, port: int, job: dict[str, Any]) -> None:
    """One rank: build the sharded state, time one dcp.save, rank 0 writes the result."""
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        full = build_state(job["size_mib"], "fp32")
        raw = raw_bytes(full.values())
        state: dict[str, Any] = {}
        for name, t in full.items():
            state[name] = (distribute_tensor(t, mesh, [Shard(0)], src_data_rank=None)
                           if t.dim() >= 1 else t)
        local = sum(v.to_local().numel() * 4 if hasattr(v, "to_local") else v.numel() * 4
                    for v in state.values())
        writer = dcp_writer(job["writer"], job["loc"])
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
    """One group of ``world`` fresh rank processes; rank 0's result or an error."""
    import torch.multiprocessing as mp

    from cloudckpt.testing import emulators

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


def _describe(rec: dict[str, Any]) -> str:
    return (f"{rec['seconds']:.3f} s, {rec['raw_bytes'] / MiB / rec['seconds']:.0f} MiB/s, "
            f"stored {rec['stored_bytes'] / MiB:.0f} MiB")


def run_matrix(writers: list[str], worlds: list[int], size_mib: int, repeats: int,
               workdir: Path) -> list[dict[str, Any]]:
    records = []
    for r in range(repeats):
        for world in worlds:
            for w in writers:
                loc = workdir / f"{w}-w{world}-r{r}"
                shutil.rmtree(loc, ignore_errors=True)
                job = {"writer": w, "loc": str(loc), "size_mib": size_mib,
                       "result": str(workdir / "result.json")}
                rec: dict[str, Any] = {"writer": w, "world": world, "repeat": r,
                                       **run_one(world, job)}
                if "error" not in rec:
                    files = [p for p in loc.rglob("*") if p.is_file()]
                    rec["stored_bytes"] = sum(p.stat().st_size for p in files)
                    rec["files"] = len(files)
                shutil.rmtree(loc, ignore_errors=True)
                progress(f"r{r} world {world} {w:15}", rec, _describe)
                records.append(rec)
    return records


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    order = {w: i for i, w in enumerate(DCP_WRITERS)}
    for world, _, w in sorted({(r["world"], order.get(r["writer"], 9), r["writer"])
                               for r in records}):
        recs = [r for r in records if r["world"] == world and r["writer"] == w]
        ok = [r for r in recs if "error" not in r]
        secs = stats.median(r["seconds"] for r in ok)
        raw = ok[0]["raw_bytes"] if ok else None
        rows.append({"world": world, "writer": w, "seconds": secs,
                     "min_s": min((r["seconds"] for r in ok), default=None),
                     "max_s": stats.maximum(r["seconds"] for r in ok),
                     "mib_s": raw / MiB / secs if raw and secs else None, "raw_bytes": raw,
                     "stored_bytes": stats.median(r["stored_bytes"] for r in ok),
                     "files": ok[0]["files"] if ok else None,
                     "cpu_s": stats.median(r["cpu_s"] for r in ok),
                     "ok": len(ok), "runs": len(recs),
                     "errors": sorted({r["error"] for r in recs if "error" in r})})
    by = {(r["world"], r["writer"]): r for r in rows}
    for row in rows:
        base = by.get((row["world"], "cloudckpt"))
        w1 = by.get((1, row["writer"]))
        row["vs_cloudckpt"] = stats.ratio(row["seconds"], base and base["seconds"])
        row["speedup_vs_world1"] = stats.ratio(w1 and w1["seconds"], row["seconds"])
    return rows


def markdown(rows: list[dict[str, Any]], repeats: int) -> str:
    raw = next((r["raw_bytes"] for r in rows if r["raw_bytes"]), None)
    header = ("world", "writer", "save s (median)", "min-max s", "MiB/s",
              "time vs cloudckpt (same world)", "speed-up vs world 1", "CPU-s, all ranks",
              "CPU-s / wall s", "stored MiB", "files")
    body = []
    for r in rows:
        name = r["writer"] if r["ok"] == r["runs"] else f"{r['writer']} (ok {r['ok']}/{r['runs']})"
        body.append((r["world"], name, fmt(r["seconds"], ".2f"),
                     f"{fmt(r['min_s'], '.2f')}-{fmt(r['max_s'], '.2f')}", fmt(r["mib_s"], ".0f"),
                     fmt(r["vs_cloudckpt"], ".2f"), fmt(r["speedup_vs_world1"], ".2f"),
                     fmt(r["cpu_s"], ".2f"), fmt(stats.ratio(r["cpu_s"], r["seconds"]), ".2f"),
                     fmt(r["stored_bytes"], ".1f", MiB), r["files"]))
    lines = [f"### DCP save, local disk, {fmt(raw, '.1f', MiB)} MiB fp32 sharded over the "
             f"ranks, median of {repeats}", "", *md_table(header, body)]
    for r in rows:
        lines += error_lines(f"world {r['world']} {r['writer']}", r["errors"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__)
    p.add_argument("--size-mib", type=int, help="fp32 size of the whole state (default 1024)")
    p.add_argument("--repeats", type=int, help="default 3")
    p.add_argument("--worlds", help="comma-separated world sizes (default 1,2,4)")
    p.add_argument("--writers", help=f"comma-separated subset of {','.join(DCP_WRITERS)}")
    defaults = {"size_mib": 1024, "repeats": 3, "worlds": ",".join(map(str, WORLDS))}
    args = cli.settle(p.parse_args(argv), defaults, {"size_mib": 16, "repeats": 1, "worlds": "1,2"})
    writers = args.writers.split(",") if args.writers else list(DCP_WRITERS)
    worlds = [int(w) for w in args.worlds.split(",")]
    t0 = time.perf_counter()
    with cli.scratch(args, "dist") as workdir:
        records = run_matrix(writers, worlds, args.size_mib, args.repeats, workdir)
    rows = summarize(records)
    report({"size_mib": args.size_mib, "repeats": args.repeats,
            "elapsed_s": time.perf_counter() - t0, "summary": rows, "records": records},
           markdown(rows, args.repeats), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
