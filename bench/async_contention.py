"""What a background save costs the training thread on a small machine (diagnostic for the
"extra step time" of ``async_stall``).

In one worker process, the matmul rate and on-CPU share of a 1-thread 1024x1024 fp32 matmul
loop (a) alone for 3 s, (b) while a blocking ``cloudckpt.save`` of the same ``--size-mib``
model runs on another thread of that process (what the async background save does), (c) while
the same save runs in a separate process (same CPU demand, no shared GIL). Median of
``--repeats`` (default 3) fresh worker processes.

Usage (from the repository root)::

    .venv/bin/python -m bench.async_contention --size-mib 512 \\
        --out bench/results/async-contention-512.json
    .venv/bin/python -m bench.async_contention --quick
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.lib import cli, stats, worker
from bench.lib.model import QUICK_SIZE_MIB, SIZE_MIB, Trainer, add_model_options, build_model
from bench.lib.report import fmt, md_table, report

WORKER_TIMEOUT_S = 3600
CASES = {"alone": "alone (no save)",
         "save_in_thread": "save on another thread, same process (= async save)",
         "save_in_process": "save in another process"}


def run_contention(job: dict[str, Any]) -> dict[str, Any]:
    """Worker: the matmul rate in the three cases."""
    import cloudckpt

    model = build_model(job["size_mib"])
    trainer = Trainer(model, job["train_threads"])
    trainer.a @ trainer.b
    out: dict[str, Any] = {}
    end = time.perf_counter() + 3.0
    out["alone"] = trainer.matmul_while(lambda: time.perf_counter() < end)
    loc = Path(job["uri"])
    shutil.rmtree(loc, ignore_errors=True)
    res: dict[str, float] = {}

    def bg() -> None:
        t0 = time.perf_counter()
        cloudckpt.save(model.state_dict(), str(loc / "thread"))
        res["save_s"] = time.perf_counter() - t0

    th = threading.Thread(target=bg)
    th.start()
    out["save_in_thread"] = {**trainer.matmul_while(th.is_alive), **res}
    proc = worker.spawn("bench.async_contention:save_once",
                        {"size_mib": job["size_mib"], "uri": str(loc / "process")})
    assert proc.stdin is not None and proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.stdin.write("go\n")
    proc.stdin.flush()
    out["save_in_process"] = trainer.matmul_while(lambda: proc.poll() is None)
    out["save_in_process"].update(worker.last_json(proc.stdout.read()) or {"error": "no result"})
    shutil.rmtree(loc, ignore_errors=True)
    return out


def save_once(job: dict[str, Any]) -> dict[str, Any]:
    """Child of :func:`run_contention`: build the model, say ready, save on "go"."""
    import cloudckpt

    model = build_model(job["size_mib"])
    print("ready", flush=True)
    sys.stdin.readline()
    t0 = time.perf_counter()
    cloudckpt.save(model.state_dict(), job["uri"])
    return {"save_s": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__)
    add_model_options(p)
    p.add_argument("--repeats", type=int, help="fresh processes (default 3)")
    args = cli.settle(p.parse_args(argv), {"size_mib": SIZE_MIB, "repeats": 3},
                      {"size_mib": QUICK_SIZE_MIB, "repeats": 1})
    recs = []
    with cli.scratch(args, "contention") as workdir:
        for r in range(args.repeats):
            rec = worker.run("bench.async_contention:run_contention",
                             {"uri": str(workdir / f"cont-r{r}"), "size_mib": args.size_mib,
                              "train_threads": args.train_threads}, WORKER_TIMEOUT_S)
            print(f"  r{r} {json.dumps(rec)[:400]}", file=sys.stderr, flush=True)
            recs.append(rec)
    ok = [r for r in recs if "error" not in r]
    summ = {c: {k: stats.median(r[c][k] for r in ok if k in r[c])
                for k in ("matmul_per_s", "cpu_share", "save_s")} for c in CASES}
    base = summ["alone"]["matmul_per_s"]
    body = [(name, fmt(summ[c]["matmul_per_s"], ".1f"),
             fmt(stats.ratio(summ[c]["matmul_per_s"], base), ".2f"),
             fmt(summ[c]["cpu_share"], ".2f"), fmt(summ[c]["save_s"], ".2f"))
            for c, name in CASES.items()]
    table = "\n".join([
        f"### contention: training thread ({args.train_threads} torch thread) doing 1024x1024 "
        f"fp32 matmuls while a {args.size_mib} MiB local cloudckpt.save runs, median of "
        f"{len(ok)}/{args.repeats}", "",
        *md_table(("case", "matmuls/s", "relative to alone", "training thread CPU share",
                   "save s"), body)])
    report({"target": "contention", "size_mib": args.size_mib, "repeats": args.repeats,
            "summary": summ, "records": recs}, table, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
