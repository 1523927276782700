"""Async saves in a training loop: how long the training thread stalls per save, sync against
async, on local disk or S3 (a moto server).

What it measures
    A fake training loop (``bench/lib/model.py``) holds a ``--size-mib`` MiB fp32 model (64 MiB
    Linear layers, no optimizer) and saves it with ``CheckpointManager(uri, keep_last=2)
    .save(step, blocking=..., model=model)`` every ``--every`` steps. A step (calibrated once
    per process to take ``--step-s`` seconds when nothing else runs) updates every parameter
    in place, then does ``k`` 1024x1024 fp32 matmuls on ``--train-threads`` torch threads
    (default 1: the other vCPU is left to the background save, as a GPU job leaves host cores
    idle), or sleeps (``--work sleep``).

    - **Stall per save** = wall time the training thread spends in ``mgr.wait()`` (called just
      before each save: the wait for a previous save still in flight) plus in
      ``mgr.save(...)``. For ``blocking=True`` this is the whole save; for ``blocking=False``
      the snapshot into the reused staging buffers plus any wait. The last save's wait is
      timed after its interval.
    - **Background save duration**: ``SaveInfo.seconds`` of each async save (from ``wait``).
    - **Training time lost per save** = stall + the extra time the steps of the following
      interval took over the process's own baseline step (median of ``--warmup`` steps).
    - **Correctness**: the parameters' xxh3 digest is taken right before the last save; after
      the loop the last checkpoint is restored into a fresh model and must match it.

    Each (mode, repeat) runs in a fresh worker, sync and async interleaved (sync r0, async r0,
    sync r1, ...). Reported: median over the steady saves (all but the first, whose async
    snapshot also allocates the staging buffers) of every repeat, the first save separately,
    and the ratio median async stall / median sync save time.

Usage (from the repository root)::

    .venv/bin/python -m bench.async_stall --store local --size-mib 512 \\
        --out bench/results/async-local-512.json
    .venv/bin/python -m bench.async_stall --store s3 --size-mib 512 --work sleep \\
        --out bench/results/async-s3-512-sleep.json
    .venv/bin/python -m bench.async_stall --store s3 --quick
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

from bench.lib import MiB, cli, stats, worker
from bench.lib.memory import rss_now, rss_peak
from bench.lib.model import (
    QUICK_SIZE_MIB,
    SIZE_MIB,
    Trainer,
    add_model_options,
    build_model,
    empty_model,
    model_bytes,
    model_digest,
)
from bench.lib.report import error_lines, fmt, md_table, progress, report
from bench.lib.stores import open_place, storage_options

WORKER_TIMEOUT_S = 3600
# Per store: seconds per step and steps per save (interval = step_s * every). Chosen so the
# background save finishes within the interval on the machine of docs/benchmarks.md.
DEFAULTS = {"local": {"step_s": 2.0, "every": 3}, "s3": {"step_s": 2.0, "every": 5}}
COMMON = {"size_mib": SIZE_MIB, "saves": 5, "repeats": 3, "warmup": 2}
QUICK = {"size_mib": QUICK_SIZE_MIB, "step_s": 0.2, "every": 2, "saves": 3, "repeats": 1,
         "warmup": 1}
#: the async stall must be at most this fraction of the sync save time
TARGETS = {"local": 0.10, "s3": 0.03}


def _timed_steps(trainer: Trainer, n: int) -> tuple[list[float], list[float]]:
    """Run ``n`` steps; the wall and thread-CPU seconds of each."""
    wall, cpu = [], []
    for _ in range(n):
        t0, c0 = time.perf_counter(), time.thread_time()
        trainer.step()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    return wall, cpu


def run_loop(job: dict[str, Any]) -> dict[str, Any]:
    """Worker: one training loop with ``job["saves"]`` saves in mode sync or async."""
    import cloudckpt

    blocking = job["mode"] == "sync"
    model = build_model(job["size_mib"])
    trainer = Trainer(model, job["train_threads"], job["work"])
    calib = trainer.calibrate(job["step_s"])
    mgr = cloudckpt.CheckpointManager(job["uri"], keep_last=2,
                                      storage_options=storage_options(job["endpoint"]))
    baseline_steps, baseline_cpu = _timed_steps(trainer, job["warmup"])
    base_step = statistics.median(baseline_steps)
    base_cpu = statistics.median(baseline_cpu)
    rss_before = rss_now()
    saves: list[dict[str, Any]] = []
    step = 0
    digest_before_last = None
    for i in range(job["saves"]):
        rec: dict[str, Any] = {"step": step}
        if i == job["saves"] - 1:
            digest_before_last = model_digest(model)
        t0 = time.perf_counter()
        prev = mgr.wait()  # the previous async save, if still in flight
        t1 = time.perf_counter()
        info = mgr.save(step, blocking=blocking, model=model)
        t2 = time.perf_counter()
        rec.update(wait_s=t1 - t0, save_call_s=t2 - t1, rss_after=rss_now())
        if i > 0 and not blocking:
            saves[-1]["wait_next_s"] = rec["wait_s"]
            if prev is not None:
                saves[-1]["bg_save_s"] = prev.seconds
        if info is not None:
            rec["sync_info_s"] = info.seconds
            rec["stored_bytes"] = info.stored_bytes
        steps, cpu = _timed_steps(trainer, job["every"])
        step += job["every"]
        rec["step_s"] = steps
        rec["step_cpu_s"] = cpu
        rec["extra_step_s"] = sum(max(0.0, s - base_step) for s in steps)
        rec["extra_step_cpu_s"] = sum(c - base_cpu for c in cpu)
        saves.append(rec)
    t0 = time.perf_counter()
    last = mgr.wait()
    final_wait = time.perf_counter() - t0
    if last is not None and not blocking:
        saves[-1]["bg_save_s"] = last.seconds
        saves[-1]["stored_bytes"] = last.stored_bytes
    saves[-1]["wait_next_s"] = final_wait
    for rec in saves:
        if blocking:
            rec["stall_s"] = rec["save_call_s"] + rec["wait_s"]
        else:
            rec["stall_s"] = rec["save_call_s"] + rec.get("wait_next_s", 0.0)
        rec["lost_s"] = rec["stall_s"] + rec["extra_step_s"]
    staging = mgr.staging_bytes
    peak = rss_peak()
    fresh = empty_model(job["size_mib"])
    mgr.restore(saves[-1]["step"], model=fresh, rng=False)
    verified = model_digest(fresh) == digest_before_last
    mgr.close()
    return {"calibration": calib, "base_step_s": base_step, "baseline_steps": baseline_steps,
            "base_step_cpu_s": base_cpu,
            "raw_bytes": model_bytes(model), "rss_before_first_save": rss_before,
            "rss_peak": peak, "staging_bytes": staging, "saves": saves,
            "verified_last_checkpoint": verified}


def _describe(rec: dict[str, Any]) -> str:
    stalls = ", ".join(f"{s['stall_s']:.3f}" for s in rec["saves"])
    bgs = ", ".join(f"{s.get('bg_save_s', 0):.2f}" for s in rec["saves"])
    return (f"base step {rec['base_step_s']:.2f} s, stalls [{stalls}] s, bg [{bgs}] s, "
            f"verified {rec['verified_last_checkpoint']}")


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    med = stats.median
    for mode in ("sync", "async"):
        recs = [r for r in records if r["mode"] == mode and "error" not in r]
        steady = [s for r in recs for s in r["saves"][1:]]
        every = [s for r in recs for s in r["saves"]]
        out[mode] = {
            "ok_runs": len(recs), "runs": sum(r["mode"] == mode for r in records),
            "errors": sorted({r["error"] for r in records if r["mode"] == mode and "error" in r}),
            "stall_s": med(s["stall_s"] for s in steady),
            "stall_max_s": stats.maximum(s["stall_s"] for s in steady),
            "save_call_s": med(s["save_call_s"] for s in steady),
            "wait_s": med(s.get("wait_next_s", 0.0) if mode == "async" else s["wait_s"]
                          for s in steady),
            "first_stall_s": med(r["saves"][0]["stall_s"] for r in recs),
            "bg_save_s": med(s["bg_save_s"] for s in every if "bg_save_s" in s),
            "sync_info_s": med(s["sync_info_s"] for s in every if "sync_info_s" in s),
            "extra_step_s": med(s["extra_step_s"] for s in steady),
            "extra_step_cpu_s": med(s["extra_step_cpu_s"] for s in steady),
            "lost_s": med(s["lost_s"] for s in steady),
            "base_step_s": med(r["base_step_s"] for r in recs),
            "stored_bytes": med(s["stored_bytes"] for s in every if "stored_bytes" in s),
            "raw_bytes": recs[0]["raw_bytes"] if recs else None,
            "staging_bytes": stats.maximum(r["staging_bytes"] for r in recs),
            "rss_above_before_max": stats.maximum(r["rss_peak"] - r["rss_before_first_save"]
                                                  for r in recs),
            "verified": [r["verified_last_checkpoint"] for r in recs],
            "n_steady": len(steady),
        }
    s, a = out["sync"], out["async"]
    out["ratio_stall"] = stats.ratio(a["stall_s"], s["stall_s"])
    out["ratio_lost"] = stats.ratio(a["lost_s"], s["stall_s"])
    return out


def loop_table(cfg: dict[str, Any], sm: dict[str, Any]) -> str:
    s, a = sm["sync"], sm["async"]
    raw = s["raw_bytes"] or a["raw_bytes"]
    head = (f"### {cfg['target']}: {fmt(raw, '.0f', MiB)} MiB fp32 model, step "
            f"{cfg['step_s']:.1f} s ({cfg['work']}) x {cfg['every']} steps between saves, "
            f"{cfg['saves']} saves x {cfg['repeats']} runs per mode (median of "
            f"{s['n_steady']} / {a['n_steady']} steady saves)")
    header = ("mode", "stall per save s (median)", "max s", "first save s",
              "of which in save() s", "waiting for previous s",
              "save duration s (SaveInfo.seconds)", "extra step time s (of which on-CPU)",
              "training time lost per save s", "verified")
    body = []
    for mode, r in (("sync (blocking=True)", s), ("async (blocking=False)", a)):
        name = mode if r["ok_runs"] == r["runs"] else f"{mode} (ok {r['ok_runs']}/{r['runs']})"
        bg = r["bg_save_s"] if "async" in mode else r["sync_info_s"]
        body.append((name, fmt(r["stall_s"], ".3f"), fmt(r["stall_max_s"], ".3f"),
                     fmt(r["first_stall_s"], ".3f"), fmt(r["save_call_s"], ".3f"),
                     fmt(r["wait_s"], ".3f"), fmt(bg, ".2f"),
                     f"{fmt(r['extra_step_s'], '.2f')} ({fmt(r['extra_step_cpu_s'], '.2f')})",
                     fmt(r["lost_s"], ".2f"), all(r["verified"]) and bool(r["verified"])))
    tgt = TARGETS.get(cfg["target"])
    ratio = sm["ratio_stall"]
    verdict = "n/a" if ratio is None or tgt is None else (
        f"{'met' if ratio <= tgt else 'MISSED'} (target <= {tgt:.0%})")
    lines = [head, "", *md_table(header, body), "",
             f"- stall ratio async / sync = {fmt(ratio, '.4f')} "
             f"({fmt(None if ratio is None else ratio * 100, '.2f')}%): {verdict}",
             f"- training time lost per save, async / sync = {fmt(sm['ratio_lost'], '.3f')}",
             f"- baseline step {fmt(a['base_step_s'], '.2f')} s; staging buffers "
             f"{fmt(a['staging_bytes'], '.1f', MiB)} MiB; stored "
             f"{fmt(a['stored_bytes'], '.1f', MiB)} MiB per checkpoint; peak RSS above the RSS "
             f"before the first save (max over runs): sync "
             f"{fmt(s['rss_above_before_max'], '.0f', MiB)} MiB, async "
             f"{fmt(a['rss_above_before_max'], '.0f', MiB)} MiB"]
    for mode in ("sync", "async"):
        lines += error_lines(mode, sm[mode]["errors"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__)
    p.add_argument("--store", choices=tuple(DEFAULTS), default="local",
                   help="local disk, or S3 on a moto server started for the run")
    add_model_options(p)
    p.add_argument("--saves", type=int, help="saves per run (default 5)")
    p.add_argument("--repeats", type=int, help="runs per mode (default 3)")
    p.add_argument("--step-s", type=float, help="seconds of work per step (default 2.0)")
    p.add_argument("--every", type=int, help="steps between saves (default: local 3, s3 5)")
    p.add_argument("--warmup", type=int, help="steps before the first save (default 2)")
    p.add_argument("--work", choices=("matmul", "sleep"), default="matmul",
                   help="step after the parameter update: CPU matmuls, or a sleep (a GPU-bound "
                   "step, where the host thread mostly waits)")
    args = p.parse_args(argv)
    cli.settle(args, {**COMMON, **DEFAULTS[args.store]}, QUICK)
    config = {"target": args.store, "size_mib": args.size_mib, "step_s": args.step_s,
              "every": args.every, "saves": args.saves, "repeats": args.repeats,
              "warmup": args.warmup, "train_threads": args.train_threads, "work": args.work}
    records: list[dict[str, Any]] = []
    moto_rss: list[int] = []
    t_start = time.perf_counter()
    with cli.scratch(args, "async") as workdir, open_place(args.store, workdir) as place:
        for r in range(args.repeats):
            for mode in ("sync", "async"):
                uri = place.location(f"{mode}-r{r}")
                job = {**config, "mode": mode, "uri": uri, "endpoint": place.endpoint}
                rec = {"mode": mode, "repeat": r,
                       **worker.run("bench.async_stall:run_loop", job, WORKER_TIMEOUT_S)}
                server = place.server_rss()
                if server is not None:
                    moto_rss.append(server)
                place.remove(uri)
                progress(f"r{r} {mode:5}", rec, _describe)
                records.append(rec)
    summary = summarize(records)
    result = {**config, "elapsed_s": time.perf_counter() - t_start, "summary": summary,
              "records": records, "moto_rss_max": max(moto_rss) if moto_rss else None}
    report(result, loop_table(config, summary), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
