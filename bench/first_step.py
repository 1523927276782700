"""Time to first step on a fresh node (issue 14): restore of model + AdamW state, then one
training step, cloudckpt against DCP and one plain GET of the raw bytes, interleaved.

What it measures
    A real small training setup (``bench/lib/trainstep.py``): ``TransformerEncoderLayer``
    blocks + AdamW, ``--size-mib`` the fp32 size of params + both moments. One worker process
    trains 2 steps and saves the state once per method to the store (``--store s3``: a moto
    server on a free 127.0.0.1 port; ``local``: the scratch directory): ``cloudckpt``
    (``CheckpointManager(uri).save(2, model=, optimizer=)``, every default), ``dcp``
    (``dcp.save({"model", "optim"})`` of ``get_state_dict(model, optim)`` with ``FsspecWriter``
    on S3, ``FileSystemWriter`` locally), ``raw-get`` (the params, ``exp_avg``, ``exp_avg_sq``
    and ``step`` tensors' bytes as one object/file, ``bench/lib/rawio.py``); then it takes one
    more step: the reference loss and state digest.

    Each measurement is a fresh interpreter (a "fresh node"; ``bench.lib.worker``), timed in
    phases: **imports** (torch, ``torch._dynamo``, which the first optimizer construction
    imports anyway, and the method's modules), **build** (model on the meta device
    + ``to_empty``, AdamW, the fixed batch), **restore** (download + decode + copy):
    ``cloudckpt``: ``CheckpointManager(uri).restore(model=, optimizer=)``; ``dcp``:
    ``get_state_dict`` (which initialises AdamW's state with a zero-lr step), ``dcp.load``
    with ``FsspecReader``/``FileSystemReader``, ``set_state_dict``; ``raw-get``: empty AdamW
    state tensors, then one plain ``GET`` (local: ``readinto``) straight into params and
    state; **step** (zero_grad, forward, MSE, backward, ``optimizer.step()``). Time to first
    step (TTFS) = imports + build + restore + step; interpreter start-up (parent's spawn to
    the worker function) is reported apart, the same for every method. ``step-only`` fills
    the state with arbitrary values (untimed) and takes the step: the step alone, to subtract.

    Checks (untimed): the restored params and optimizer state hash (xxh3) to the saver's, or
    the run is an error; after the step, the state digest and loss are compared with the
    saver's reference step (reported; bit-equality also needs the same kernels and threads).

    Interleaved: for each repeat every method runs once, in an order rotated per repeat.
    Reported: medians over repeats (also of the restore's process CPU time, all threads, and
    of restore + step), max of the RSS figures (above the restored state's raw bytes after the
    restore, and the process peak), ratios of medians against ``raw-get`` (restore, restore +
    step, TTFS), and the load average before and after the run.

Usage (from the repository root)::

    .venv/bin/python -m bench.first_step --size-mib 256 --repeats 3 \\
        --out bench/results/first-step-s3-256.json
    .venv/bin/python -m bench.first_step --store local --size-mib 256 --repeats 3
    .venv/bin/python -m bench.first_step --quick
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from bench.lib import MiB, cli, stats, trainstep, worker
from bench.lib.report import error_lines, fmt, md_table, progress, report
from bench.lib.stores import Place, open_place

WORKER_TIMEOUT_S = 1200
PHASES = ("startup_s", "imports_s", "build_s", "restore_s", "restore_cpu_s", "step_s",
          "restore_step_s", "ttfs_s")


def _locs(place: Place) -> dict[str, str]:
    return {m: place.location(f"first-step-{m}") for m in trainstep.METHODS if m != "step-only"}


def _describe(rec: dict[str, Any]) -> str:
    return (f"imports {rec['imports_s']:.2f} build {rec['build_s']:.2f} restore "
            f"{rec['restore_s']:.2f} step {rec['step_s']:.2f} = TTFS {rec['ttfs_s']:.2f} s")


def run_all(place: Place, methods: list[str], size_mib: int, repeats: int,
            threads: int | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Save once, then ``repeats`` rounds of fresh-process first steps; (saver, records)."""
    locs = _locs(place)
    for loc in locs.values():
        place.remove(loc)
    saved = worker.run("bench.lib.trainstep:save_all",
                       {"endpoint": place.endpoint, "size_mib": size_mib, "locs": locs,
                        "threads": threads},
                       WORKER_TIMEOUT_S)
    if "error" in saved:
        raise SystemExit(f"saving the checkpoints failed: {saved['error']}\n"
                         f"{saved.get('traceback', '')}")
    saved["stored_bytes"] = {m: place.stored_bytes(loc) for m, loc in locs.items()}
    print(f"  saved: d={saved['width']}, {saved['params']:,} params, raw "
          f"{saved['raw_bytes'] / MiB:.1f} MiB; save s "
          + ", ".join(f"{m} {s:.2f}" for m, s in saved["save_s"].items()), file=sys.stderr)
    records: list[dict[str, Any]] = []
    for r in range(repeats):
        k = r % len(methods)
        for m in methods[k:] + methods[:k]:
            job = {"method": m, "endpoint": place.endpoint, "size_mib": size_mib,
                   "threads": threads,
                   "loc": locs.get(m), "digest": saved["digest"],
                   "post_digest": saved["post_digest"], "loss": saved["loss"],
                   "spawn_wall": time.time()}
            rec = {"method": m, "repeat": r,
                   **worker.run("bench.lib.trainstep:first_step", job, WORKER_TIMEOUT_S)}
            progress(f"r{r} {m:10}", rec, _describe)
            records.append(rec)
    for loc in locs.values():
        place.remove(loc)
    return saved, records


def summarize(records: list[dict[str, Any]], methods: list[str]) -> list[dict[str, Any]]:
    """Per method: median of each phase, max RSS, checks, ratios against ``raw-get``."""
    rows = []
    for m in methods:
        recs = [r for r in records if r["method"] == m]
        ok = [r for r in recs if "error" not in r]
        row: dict[str, Any] = {ph: stats.median(r[ph] for r in ok) for ph in PHASES}
        row.update(method=m, ok=len(ok), runs=len(recs),
                   restore_rss_above=stats.maximum(r["restore_rss_above"] for r in ok),
                   rss_peak=stats.maximum(r["rss_peak"] for r in ok),
                   state_ok=sum(1 for r in ok if r.get("state_ok")),
                   post_step_same=sum(1 for r in ok if r.get("post_step_same")),
                   errors=sorted({r["error"] for r in recs if "error" in r}))
        rows.append(row)
    base = next((r for r in rows if r["method"] == "raw-get"), None)
    for row in rows:
        for key in ("restore", "restore_step", "ttfs"):
            row[f"{key}_ratio"] = stats.ratio(row[f"{key}_s"],
                                              base[f"{key}_s"] if base else None)
    return rows


def _threads(records: list[dict[str, Any]]) -> str:
    got = sorted({r["threads"] for r in records if "threads" in r})
    return f"torch threads {','.join(map(str, got)) or 'n/a'}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = ("method", "start-up s", "imports s", "build s", "restore s",
              "restore CPU s", "step s",
              "restore + step s", "TTFS s", "restore vs raw-get", "restore + step vs raw-get",
              "TTFS vs raw-get",
              "RSS above state after restore / peak MiB", "checks: state, post-step")
    body = []
    for r in rows:
        name = r["method"] if r["ok"] == r["runs"] else f"{r['method']} (ok {r['ok']}/{r['runs']})"
        checks = ("n/a" if r["method"] == "step-only"
                  else f"{r['state_ok']}/{r['ok']}, {r['post_step_same']}/{r['ok']}")
        body.append((name, *(fmt(r[ph], ".2f") for ph in PHASES),
                     fmt(r["restore_ratio"], ".2f"), fmt(r["restore_step_ratio"], ".2f"),
                     fmt(r["ttfs_ratio"], ".2f"),
                     f"{fmt(r['restore_rss_above'], '.0f', MiB)} / {fmt(r['rss_peak'], '.0f', MiB)}",
                     checks))
    lines = md_table(header, body)
    for r in rows:
        lines += error_lines(r["method"], r["errors"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__)
    p.add_argument("--store", choices=("s3", "local"), default="s3")
    p.add_argument("--size-mib", type=int,
                   help="fp32 size of params + AdamW moments (default 256; --quick 8)")
    p.add_argument("--repeats", type=int, help="default 3 (--quick 1)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads of the saver and of "
                   "every worker (default: torch's default)")
    p.add_argument("--methods", help=f"comma-separated subset of {','.join(trainstep.METHODS)} "
                   "(default: all)")
    args = cli.settle(p.parse_args(argv), {"size_mib": 256, "repeats": 3},
                      {"size_mib": 8, "repeats": 1})
    methods = args.methods.split(",") if args.methods else list(trainstep.METHODS)
    unknown = set(methods) - set(trainstep.METHODS)
    if unknown:
        raise SystemExit(f"unknown methods: {sorted(unknown)}")
    load_before = os.getloadavg()
    with cli.scratch(args, "first-step") as workdir, open_place(args.store, workdir) as place:
        t0 = time.perf_counter()
        saved, records = run_all(place, methods, args.size_mib, args.repeats,
                                 args.threads)
        elapsed = time.perf_counter() - t0
    load_after = os.getloadavg()
    rows = summarize(records, methods)
    title = (f"Time to first step, {args.store}, size-mib {args.size_mib} (d={saved['width']}, "
             f"{saved['params']:,} params, raw {saved['raw_bytes'] / MiB:.1f} MiB), median of "
             f"{args.repeats}, {_threads(records)}; load average before {load_before[0]:.2f}, after "
             f"{load_after[0]:.2f}")
    stored = ", ".join(f"{m} {b / MiB:.1f} MiB" for m, b in saved["stored_bytes"].items())
    result = {"target": "first_step", "store": args.store, "size_mib": args.size_mib,
              "repeats": args.repeats, "threads": args.threads, "methods": methods, "elapsed_s": elapsed,
              "load_before": load_before, "load_after": load_after, "saved": saved,
              "summary": rows, "records": records}
    report(result, f"### {title}\n\nStored: {stored}.\n\n{markdown_table(rows)}", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
