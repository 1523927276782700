"""Async saves in a training loop: how long the training thread stalls per save.

What it measures
    A fake training loop holds a ``torch.nn.Module`` of ``--size-mib`` MiB of fp32 parameters
    (``hidden x hidden`` Linear layers, hidden 4096: 64 MiB each, so 512 MiB = 8 layers; no
    optimizer) and saves it with ``CheckpointManager(uri, keep_last=2, blocking=...)
    .save(step, model=model)`` every ``--every`` steps.

    - **Step** (fixed work, calibrated once per process to take ``--step-s`` seconds when
      nothing else runs): an in-place update of every parameter (``p.add_(1e-4)``: the state
      changes between saves, so the async snapshot has to be a real copy) followed by ``k``
      1024x1024 fp32 matmuls on ``--train-threads`` torch threads (default 1: the other vCPU
      is left to the background save, as a GPU job leaves host cores idle).
    - **Stall per save** = wall time the training thread spends in ``mgr.wait()`` (called
      just before each save: the wait for a previous save still in flight, which ``save``
      would otherwise do itself) plus in ``mgr.save(...)``. For ``blocking=True`` this is the
      whole save ("sync save time"); for ``blocking=False`` it is the snapshot into the reused
      staging buffers plus any wait. The last save's wait is timed after its interval.
    - **Background save duration**: ``SaveInfo.seconds`` of each async save (from ``wait``).
    - **Training time lost per save** = stall + the extra time the steps of the following
      interval took over the process's own baseline step time (median of ``--warmup`` steps
      run before any save): on 2 vCPUs the background encode/upload competes with the step.
    - **Correctness**: the parameters' xxh3 digest is taken right before the last save (not
      timed); the next step mutates them; after the loop the last checkpoint is restored into
      a fresh model and must match that digest.

    ``--target local|s3``: each (mode, repeat) runs in a fresh subprocess (this file with
    ``--worker JSON``), sync and async interleaved (sync r0, async r0, sync r1, ...). S3 is a
    moto server on a free 127.0.0.1 port. Reported: median over the steady saves (all but
    the first, whose async snapshot also allocates the staging buffers) of every repeat, the
    first save separately, and the ratio median async stall / median sync save time.

    ``--target soak``: one process, ``--saves`` (default 50) async saves of the same state
    to local disk (keep_last=2), one parameter-update step (no matmuls) between saves, so
    each save also waits for the previous one. RSS (``/proc/self/status`` VmRSS) is read
    right after every ``save`` returns; reported: before the first save, first/last/max,
    least-squares slope over saves 10..N (MiB per save), ``ru_maxrss`` and
    ``mgr.staging_bytes``.

    ``--target contention`` (diagnostic for the "extra step time" column): in one process, the
    matmul rate and on-CPU share of a 1-thread matmul loop (a) alone, (b) while a blocking
    ``cloudckpt.save`` of the same model runs on another thread of that process (what the
    async background save does), (c) while the same save runs in a separate process (same
    CPU demand, no shared GIL). Median of ``--repeats`` (default 3) fresh processes.

Usage::

    .venv/bin/python bench/bench_async.py --target local --size-mib 512 \\
        --out bench/results/async-local-512.json
    .venv/bin/python bench/bench_async.py --target s3 --size-mib 512 \\
        --out bench/results/async-s3-512.json
    .venv/bin/python bench/bench_async.py --target soak --size-mib 512 --saves 50 \\
        --out bench/results/async-soak-512.json
    .venv/bin/python bench/bench_async.py --target contention --size-mib 512 \\
        --out bench/results/async-contention-512.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from typing import Any

import workers

MiB = 1 << 20
REPO = Path(__file__).resolve().parent.parent
BUCKET = "cloudckpt-bench"
CREDS = workers.CREDS
HIDDEN = 4096
WORKER_TIMEOUT_S = 3600

# Per target: seconds per step and steps per save (interval = step_s * every). Chosen so the
# background save finishes within the interval on this machine (see docs/benchmarks.md).
DEFAULTS = {"local": {"step_s": 2.0, "every": 3, "saves": 5, "repeats": 3},
            "s3": {"step_s": 2.0, "every": 5, "saves": 5, "repeats": 3},
            "soak": {"step_s": 0.0, "every": 1, "saves": 50, "repeats": 1}}


def rss_now() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found")


def rss_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --------------------------------------------------------------------------------------------
# The model and the step
# --------------------------------------------------------------------------------------------


def build_model(size_mib: int) -> Any:
    """``size_mib / 64`` Linear(4096, 4096) layers (fp32, with bias), built in place."""
    import torch

    layers = max(1, round(size_mib * MiB / (HIDDEN * HIDDEN * 4)))
    model = torch.nn.Sequential(*[torch.nn.Linear(HIDDEN, HIDDEN, device="meta")
                                  for _ in range(layers)])
    model = model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=g)
    return model


def empty_model(size_mib: int) -> Any:
    import torch

    layers = max(1, round(size_mib * MiB / (HIDDEN * HIDDEN * 4)))
    model = torch.nn.Sequential(*[torch.nn.Linear(HIDDEN, HIDDEN, device="meta")
                                  for _ in range(layers)])
    return model.to_empty(device="cpu")


def model_bytes(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def model_digest(model: Any) -> str:
    import torch
    import xxhash

    h = xxhash.xxh3_64()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


class Trainer:
    """The fake step: in-place parameter update + ``k`` fixed matmuls."""

    def __init__(self, model: Any, threads: int, work: str = "matmul") -> None:
        import torch

        torch.set_num_threads(threads)
        self.model = model
        self.work = work
        self.sleep_s = 0.0
        g = torch.Generator().manual_seed(1)
        self.a = torch.randn(1024, 1024, generator=g)
        self.b = torch.randn(1024, 1024, generator=g)
        self.k = 0

    def update(self) -> None:
        import torch

        with torch.no_grad():
            for p in self.model.parameters():
                p.add_(1e-4)

    def step(self) -> None:
        self.update()
        if self.work == "sleep":
            time.sleep(self.sleep_s)
            return
        c = self.a
        for _ in range(self.k):
            c = self.a @ self.b
        del c

    def calibrate(self, step_s: float) -> dict[str, float]:
        """Choose ``k`` so that one step takes ~``step_s`` s on an idle machine."""
        self.update()  # warm
        t0 = time.perf_counter()
        self.update()
        upd = time.perf_counter() - t0
        self.a @ self.b  # warm
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 0.5:
            self.a @ self.b
            n += 1
        mm = (time.perf_counter() - t0) / n
        self.k = max(0, round((step_s - upd) / mm)) if step_s > 0 else 0
        self.sleep_s = max(0.0, step_s - upd)
        return {"update_s": upd, "matmul_s": mm, "k": self.k, "sleep_s": self.sleep_s}


# --------------------------------------------------------------------------------------------
# Workers (fresh process each)
# --------------------------------------------------------------------------------------------


def _storage_options(endpoint: str | None) -> dict[str, Any] | None:
    return {"endpoint_url": endpoint, **CREDS} if endpoint else None


def run_loop(job: dict[str, Any]) -> dict[str, Any]:
    import cloudckpt

    blocking = job["mode"] == "sync"
    model = build_model(job["size_mib"])
    trainer = Trainer(model, job["train_threads"], job["work"])
    calib = trainer.calibrate(job["step_s"])
    mgr = cloudckpt.CheckpointManager(job["uri"], keep_last=2, blocking=blocking,
                                      storage_options=_storage_options(job["endpoint"]))
    baseline_steps, baseline_cpu = [], []
    for _ in range(job["warmup"]):
        t0, c0 = time.perf_counter(), time.thread_time()
        trainer.step()
        baseline_steps.append(time.perf_counter() - t0)
        baseline_cpu.append(time.thread_time() - c0)
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
        info = mgr.save(step, model=model)
        t2 = time.perf_counter()
        rec.update(wait_s=t1 - t0, save_call_s=t2 - t1, rss_after=rss_now())
        if i > 0 and not blocking:
            saves[-1]["wait_next_s"] = rec["wait_s"]
            if prev is not None:
                saves[-1]["bg_save_s"] = prev.seconds
        if info is not None:
            rec["sync_info_s"] = info.seconds
            rec["stored_bytes"] = info.stored_bytes
        steps, cpu = [], []
        for _ in range(job["every"]):
            t0, c0 = time.perf_counter(), time.thread_time()
            trainer.step()
            steps.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
            step += 1
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
    last_step = saves[-1]["step"]
    fresh = empty_model(job["size_mib"])
    mgr.restore(last_step, model=fresh, rng=False)
    verified = model_digest(fresh) == digest_before_last
    mgr.close()
    return {"calibration": calib, "base_step_s": base_step, "baseline_steps": baseline_steps,
            "base_step_cpu_s": base_cpu,
            "raw_bytes": model_bytes(model), "rss_before_first_save": rss_before,
            "rss_peak": peak, "staging_bytes": staging, "saves": saves,
            "verified_last_checkpoint": verified}


def run_soak(job: dict[str, Any]) -> dict[str, Any]:
    import cloudckpt

    model = build_model(job["size_mib"])
    trainer = Trainer(model, job["train_threads"])
    mgr = cloudckpt.CheckpointManager(job["uri"], keep_last=2, blocking=False)
    rss_before = rss_now()
    rss: list[int] = []
    stalls: list[float] = []
    bg: list[float] = []
    staging: list[int] = []
    waits: list[float] = []
    t_start = time.perf_counter()
    for step in range(job["saves"]):
        t0 = time.perf_counter()
        info = mgr.wait()  # the previous save (what save() would wait for itself)
        t1 = time.perf_counter()
        mgr.save(step, model=model)
        stalls.append(time.perf_counter() - t1)
        waits.append(t1 - t0)
        if info is not None:
            bg.append(info.seconds)
        rss.append(rss_now())
        staging.append(mgr.staging_bytes)
        trainer.update()
    last = mgr.wait()
    if last is not None:
        bg.append(last.seconds)
    elapsed = time.perf_counter() - t_start
    rss_end = rss_now()
    kept = mgr.steps()
    mgr.close()
    return {"raw_bytes": model_bytes(model), "rss_before_first_save": rss_before,
            "rss_after_save": rss, "rss_after_final_wait": rss_end, "rss_peak": rss_peak(),
            "staging_bytes": staging, "snapshot_s": stalls, "wait_s": waits, "bg_save_s": bg,
            "elapsed_s": elapsed, "kept_steps": kept}


def _matmul_while(trainer: Trainer, busy: Any) -> dict[str, float]:
    """1024x1024 matmuls on this thread while ``busy()``; rate and this thread's CPU share."""
    n, t0, c0 = 0, time.perf_counter(), time.thread_time()
    while busy():
        trainer.a @ trainer.b
        n += 1
    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    return {"matmul_per_s": n / wall, "cpu_share": cpu / wall, "wall_s": wall}


def run_contention(job: dict[str, Any]) -> dict[str, Any]:
    """Matmul rate of the training thread (a) alone, (b) while ``cloudckpt.save`` of the model
    runs on another thread of this process (what an async save does), (c) while the same save
    runs in another process (no shared GIL)."""
    import threading

    import cloudckpt

    model = build_model(job["size_mib"])
    trainer = Trainer(model, job["train_threads"])
    trainer.a @ trainer.b
    out: dict[str, Any] = {}
    end = time.perf_counter() + 3.0
    out["alone"] = _matmul_while(trainer, lambda: time.perf_counter() < end)
    loc = Path(job["uri"])
    shutil.rmtree(loc, ignore_errors=True)
    res: dict[str, float] = {}

    def bg() -> None:
        t0 = time.perf_counter()
        cloudckpt.save(model.state_dict(), str(loc / "thread"))
        res["save_s"] = time.perf_counter() - t0

    th = threading.Thread(target=bg)
    th.start()
    out["save_in_thread"] = {**_matmul_while(trainer, th.is_alive), **res}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker",
           json.dumps({"kind": "save_once", "size_mib": job["size_mib"],
                       "uri": str(loc / "process")})]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=workers.worker_env())
    assert proc.stdin is not None and proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.stdin.write("go\n")
    proc.stdin.flush()
    out["save_in_process"] = _matmul_while(trainer, lambda: proc.poll() is None)
    lines = [ln for ln in proc.stdout.read().splitlines() if ln.startswith("{")]
    out["save_in_process"].update(json.loads(lines[-1]) if lines else {"error": "no result"})
    shutil.rmtree(loc, ignore_errors=True)
    return out


def run_save_once(job: dict[str, Any]) -> dict[str, Any]:
    """Child of :func:`run_contention`: build the model, say ready, save on "go"."""
    import cloudckpt

    model = build_model(job["size_mib"])
    print("ready", flush=True)
    sys.stdin.readline()
    t0 = time.perf_counter()
    cloudckpt.save(model.state_dict(), job["uri"])
    return {"save_s": time.perf_counter() - t0}


def worker_main(spec: str) -> int:
    job = json.loads(spec)
    try:
        result = {"soak": run_soak, "loop": run_loop, "contention": run_contention,
                  "save_once": run_save_once}[job["kind"]](job)
    except BaseException as e:  # reported to the parent, which keeps going
        import traceback

        result = {"error": f"{type(e).__name__}: {e}"[:2000],
                  "traceback": traceback.format_exc()[-3000:]}
    print(json.dumps(result), flush=True)
    return 0


def run_worker(job: dict[str, Any]) -> dict[str, Any]:
    """Run ``job`` in a fresh interpreter (see bench/workers.py)."""
    return workers.run_worker(__file__, job, WORKER_TIMEOUT_S)


# --------------------------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------------------------


def _med(vals: list[float]) -> float | None:
    return statistics.median(vals) if vals else None


def _fmt(v: float | None, spec: str, scale: float = 1.0) -> str:
    return "n/a" if v is None else format(v / scale, spec)


def _s3fs(endpoint: str) -> Any:
    import s3fs

    return s3fs.S3FileSystem(endpoint_url=endpoint, **CREDS)


def run_loops(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Any], str]:
    target = args.target
    d = DEFAULTS[target]
    step_s = args.step_s if args.step_s is not None else d["step_s"]
    every = args.every or d["every"]
    saves = args.saves or d["saves"]
    repeats = args.repeats or d["repeats"]
    emu = None
    records: list[dict[str, Any]] = []
    moto_rss: list[int] = []
    t_start = time.perf_counter()
    try:
        endpoint = None
        if target == "s3":
            from cloudckpt.testing import emulators

            emu = emulators.start("s3", workdir / "logs", REPO)
            endpoint = emu.endpoint
            _s3fs(endpoint).mkdir(BUCKET)
        for r in range(repeats):
            for mode in ("sync", "async"):
                uri = (f"s3://{BUCKET}/{mode}-r{r}" if endpoint
                       else str(workdir / f"{mode}-r{r}"))
                job = dict(kind="loop", mode=mode, uri=uri, endpoint=endpoint,
                           size_mib=args.size_mib, step_s=step_s, every=every, saves=saves,
                           warmup=args.warmup, train_threads=args.train_threads,
                           work=args.work)
                rec = {"mode": mode, "repeat": r, **run_worker(job)}
                if emu is not None:
                    m = rss_of(emu.proc.pid)
                    if m is not None:
                        moto_rss.append(m)
                    fs = _s3fs(endpoint or "")
                    fs.invalidate_cache()
                    if fs.exists(uri):
                        fs.rm(uri, recursive=True)
                else:
                    shutil.rmtree(uri, ignore_errors=True)
                _log(rec)
                records.append(rec)
    finally:
        if emu is not None:
            emu.stop()
    elapsed = time.perf_counter() - t_start
    summary = summarize(records)
    config = {"target": target, "size_mib": args.size_mib, "step_s": step_s, "every": every,
              "saves": saves, "repeats": repeats, "warmup": args.warmup,
              "train_threads": args.train_threads, "work": args.work}
    table = loop_table(config, summary)
    result = {**config, "elapsed_s": elapsed, "summary": summary, "records": records,
              "moto_rss_max": max(moto_rss) if moto_rss else None}
    return result, table


def _log(rec: dict[str, Any]) -> None:
    if "error" in rec:
        msg = f"ERROR {rec['error'][:300]}"
    else:
        stalls = ", ".join(f"{s['stall_s']:.3f}" for s in rec["saves"])
        bgs = ", ".join(f"{s.get('bg_save_s', 0):.2f}" for s in rec["saves"])
        msg = (f"base step {rec['base_step_s']:.2f} s, stalls [{stalls}] s, bg [{bgs}] s, "
               f"verified {rec['verified_last_checkpoint']}")
    print(f"  r{rec['repeat']} {rec['mode']:5} {msg}", file=sys.stderr, flush=True)


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in ("sync", "async"):
        recs = [r for r in records if r["mode"] == mode and "error" not in r]
        steady = [s for r in recs for s in r["saves"][1:]]
        first = [r["saves"][0] for r in recs]
        out[mode] = {
            "ok_runs": len(recs), "runs": sum(r["mode"] == mode for r in records),
            "errors": sorted({r["error"] for r in records if r["mode"] == mode and "error" in r}),
            "stall_s": _med([s["stall_s"] for s in steady]),
            "stall_max_s": max((s["stall_s"] for s in steady), default=None),
            "save_call_s": _med([s["save_call_s"] for s in steady]),
            "wait_s": _med([s.get("wait_next_s", 0.0) if mode == "async" else s["wait_s"]
                            for s in steady]),
            "first_stall_s": _med([s["stall_s"] for s in first]),
            "bg_save_s": _med([s["bg_save_s"] for r in recs for s in r["saves"]
                               if "bg_save_s" in s]),
            "sync_info_s": _med([s["sync_info_s"] for r in recs for s in r["saves"]
                                 if "sync_info_s" in s]),
            "extra_step_s": _med([s["extra_step_s"] for s in steady]),
            "extra_step_cpu_s": _med([s["extra_step_cpu_s"] for s in steady]),
            "lost_s": _med([s["lost_s"] for s in steady]),
            "base_step_s": _med([r["base_step_s"] for r in recs]),
            "stored_bytes": _med([s["stored_bytes"] for r in recs for s in r["saves"]
                                  if "stored_bytes" in s]),
            "raw_bytes": recs[0]["raw_bytes"] if recs else None,
            "staging_bytes": max((r["staging_bytes"] for r in recs), default=None),
            "rss_above_before_max": max((r["rss_peak"] - r["rss_before_first_save"]
                                         for r in recs), default=None),
            "verified": [r["verified_last_checkpoint"] for r in recs],
            "n_steady": len(steady),
        }
    s, a = out["sync"], out["async"]
    out["ratio_stall"] = a["stall_s"] / s["stall_s"] if a["stall_s"] and s["stall_s"] else None
    out["ratio_lost"] = a["lost_s"] / s["stall_s"] if a["lost_s"] and s["stall_s"] else None
    return out


TARGETS = {"local": 0.10, "s3": 0.03}


def loop_table(cfg: dict[str, Any], sm: dict[str, Any]) -> str:
    s, a = sm["sync"], sm["async"]
    raw = s["raw_bytes"] or a["raw_bytes"]
    head = (f"### {cfg['target']}: {_fmt(raw, '.0f', MiB)} MiB fp32 model, step "
            f"{cfg['step_s']:.1f} s ({cfg['work']}) x {cfg['every']} steps between saves, "
            f"{cfg['saves']} saves x {cfg['repeats']} runs per mode (median of "
            f"{s['n_steady']} / {a['n_steady']} steady saves)")
    lines = [head, "",
             "| mode | stall per save s (median) | max s | first save s | of which in save() s "
             "| waiting for previous s | save duration s (SaveInfo.seconds) | extra step time s "
             "(of which on-CPU) | training time lost per save s | verified |",
             "|" + "---|" * 10]
    for mode, r in (("sync (blocking=True)", s), ("async (blocking=False)", a)):
        name = mode if r["ok_runs"] == r["runs"] else f"{mode} (ok {r['ok_runs']}/{r['runs']})"
        bg = r["bg_save_s"] if "async" in mode else r["sync_info_s"]
        lines.append(
            f"| {name} | {_fmt(r['stall_s'], '.3f')} | {_fmt(r['stall_max_s'], '.3f')} | "
            f"{_fmt(r['first_stall_s'], '.3f')} | {_fmt(r['save_call_s'], '.3f')} | "
            f"{_fmt(r['wait_s'], '.3f')} | {_fmt(bg, '.2f')} | {_fmt(r['extra_step_s'], '.2f')} "
            f"({_fmt(r['extra_step_cpu_s'], '.2f')})"
            f" | {_fmt(r['lost_s'], '.2f')} | {all(r['verified']) and bool(r['verified'])} |")
    tgt = TARGETS.get(cfg["target"])
    ratio = sm["ratio_stall"]
    verdict = "n/a" if ratio is None or tgt is None else (
        f"{'met' if ratio <= tgt else 'MISSED'} (target <= {tgt:.0%})")
    lines += ["", f"- stall ratio async / sync = {_fmt(ratio, '.4f')} "
                  f"({_fmt(None if ratio is None else ratio * 100, '.2f')}%): {verdict}",
              f"- training time lost per save, async / sync = {_fmt(sm['ratio_lost'], '.3f')}",
              f"- baseline step {_fmt(a['base_step_s'], '.2f')} s; staging buffers "
              f"{_fmt(a['staging_bytes'], '.1f', MiB)} MiB; stored "
              f"{_fmt(a['stored_bytes'], '.1f', MiB)} MiB per checkpoint; peak RSS above the RSS "
              f"before the first save (max over runs): sync "
              f"{_fmt(s['rss_above_before_max'], '.0f', MiB)} MiB, async "
              f"{_fmt(a['rss_above_before_max'], '.0f', MiB)} MiB"]
    for mode in ("sync", "async"):
        for err in sm[mode]["errors"]:
            lines.append(f"- {mode} error: `{err[:500]}`")
    return "\n".join(lines)


def slope(ys: list[float]) -> float:
    """Least-squares slope of ``ys`` against 0..n-1."""
    n = len(ys)
    xm, ym = (n - 1) / 2, sum(ys) / n
    num = sum((i - xm) * (y - ym) for i, y in enumerate(ys))
    den = sum((i - xm) ** 2 for i in range(n))
    return num / den if den else 0.0


def run_soak_target(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Any], str]:
    saves = args.saves or DEFAULTS["soak"]["saves"]
    job = dict(kind="soak", uri=str(workdir / "soak"), endpoint=None, size_mib=args.size_mib,
               saves=saves, train_threads=args.train_threads)
    t0 = time.perf_counter()
    rec = run_worker(job)
    elapsed = time.perf_counter() - t0
    if "error" in rec:
        return {"target": "soak", "record": rec}, f"soak ERROR: {rec['error']}"
    rss = [v / MiB for v in rec["rss_after_save"]]
    lo = min(9, len(rss) - 1)  # saves 10..N (1-based)
    sl = slope(rss[lo:])
    summ = {"rss_before_mib": rec["rss_before_first_save"] / MiB, "rss_first_mib": rss[0],
            "rss_last_mib": rss[-1], "rss_max_mib": max(rss),
            "rss_after_final_wait_mib": rec["rss_after_final_wait"] / MiB,
            "ru_maxrss_mib": rec["rss_peak"] / MiB, "slope_mib_per_save": sl,
            "slope_range": [lo + 1, len(rss)],
            "staging_mib": rec["staging_bytes"][-1] / MiB,
            "staging_constant": len(set(rec["staging_bytes"])) == 1,
            "snapshot_s_median": statistics.median(rec["snapshot_s"][1:] or rec["snapshot_s"]),
            "bg_save_s_median": statistics.median(rec["bg_save_s"]) if rec["bg_save_s"] else None,
            "wait_s_median": statistics.median(rec["wait_s"][1:] or rec["wait_s"]),
            "raw_mib": rec["raw_bytes"] / MiB, "kept_steps": rec["kept_steps"]}
    flat = abs(sl) < 1.0
    table = "\n".join([
        f"### soak: {saves} async saves of a {summ['raw_mib']:.0f} MiB fp32 model, local disk, "
        "keep_last=2", "",
        "| RSS before 1st save MiB | after 1st save | after last save | max after a save | "
        "ru_maxrss | slope saves "
        f"{summ['slope_range'][0]}..{summ['slope_range'][1]} MiB/save | staging_bytes MiB |",
        "|" + "---|" * 7,
        f"| {summ['rss_before_mib']:.0f} | {summ['rss_first_mib']:.0f} | "
        f"{summ['rss_last_mib']:.0f} | {summ['rss_max_mib']:.0f} | {summ['ru_maxrss_mib']:.0f} | "
        f"{sl:+.2f} | {summ['staging_mib']:.1f} "
        f"({'constant' if summ['staging_constant'] else 'CHANGED'} over all saves) |", "",
        f"- flat (|slope| < 1 MiB/save): {'met' if flat else 'MISSED'}",
        f"- median snapshot (time in save(), after waiting for the previous save) "
        f"{summ['snapshot_s_median']:.3f} s, median wait for the previous save "
        f"{summ['wait_s_median']:.3f} s, median background save "
        f"{_fmt(summ['bg_save_s_median'], '.2f')} s; steps kept at the end "
        f"{summ['kept_steps']}; wall {elapsed:.0f} s"])
    return {"target": "soak", "size_mib": args.size_mib, "saves": saves, "elapsed_s": elapsed,
            "summary": summ, "record": rec}, table


def run_contention_target(args: argparse.Namespace,
                          workdir: Path) -> tuple[dict[str, Any], str]:
    repeats = args.repeats or 3
    recs = []
    for r in range(repeats):
        rec = run_worker(dict(kind="contention", uri=str(workdir / f"cont-r{r}"),
                              size_mib=args.size_mib, train_threads=args.train_threads))
        print(f"  r{r} {json.dumps(rec)[:400]}", file=sys.stderr, flush=True)
        recs.append(rec)
    ok = [r for r in recs if "error" not in r]
    cases = ("alone", "save_in_thread", "save_in_process")
    summ = {c: {k: _med([r[c][k] for r in ok if k in r[c]])
                for k in ("matmul_per_s", "cpu_share", "save_s")} for c in cases}
    base = summ["alone"]["matmul_per_s"]
    lines = [f"### contention: training thread ({args.train_threads} torch thread) doing "
             f"1024x1024 fp32 matmuls while a {args.size_mib} MiB local cloudckpt.save runs, "
             f"median of {len(ok)}/{repeats}", "",
             "| case | matmuls/s | relative to alone | training thread CPU share | save s |",
             "|" + "---|" * 5]
    names = {"alone": "alone (no save)", "save_in_thread": "save on another thread, same "
             "process (= async save)", "save_in_process": "save in another process"}
    for c in cases:
        v = summ[c]
        rel = v["matmul_per_s"] / base if v["matmul_per_s"] and base else None
        lines.append(f"| {names[c]} | {_fmt(v['matmul_per_s'], '.1f')} | {_fmt(rel, '.2f')} | "
                     f"{_fmt(v['cpu_share'], '.2f')} | {_fmt(v['save_s'], '.2f')} |")
    return {"target": "contention", "size_mib": args.size_mib, "repeats": repeats,
            "summary": summ, "records": recs}, "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--target", choices=("local", "s3", "soak", "contention"), default="local")
    p.add_argument("--size-mib", type=int, default=512, help="fp32 model size (64 MiB layers)")
    p.add_argument("--saves", type=int, help="saves per run (default: local 5, s3 5, soak 50)")
    p.add_argument("--repeats", type=int, help="runs per mode (default 3)")
    p.add_argument("--step-s", type=float, help="seconds of work per step (default 2.0)")
    p.add_argument("--every", type=int, help="steps between saves (default: local 3, s3 5)")
    p.add_argument("--warmup", type=int, default=2, help="steps before the first save")
    p.add_argument("--train-threads", type=int, default=1, help="torch threads of the step")
    p.add_argument("--work", choices=("matmul", "sleep"), default="matmul",
                   help="step after the parameter update: CPU matmuls, or a sleep (a GPU-bound "
                   "step, where the host thread mostly waits)")
    p.add_argument("--workdir", type=Path, default=REPO / "bench" / ".scratch")
    p.add_argument("--out", type=Path)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    workdir = args.workdir.resolve() / f"async-{os.getpid()}"
    workdir.mkdir(parents=True)
    try:
        if args.target == "soak":
            result, table = run_soak_target(args, workdir)
        elif args.target == "contention":
            result, table = run_contention_target(args, workdir)
        else:
            result, table = run_loops(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    workers.report(result, table, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
