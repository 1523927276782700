"""Memory over many async saves: does the training process's RSS stay flat?

One process, ``--saves`` (default 50) async saves of the same ``--size-mib`` fp32 model
(``bench/lib/model.py``) to local disk: ``CheckpointManager(dir, keep_last=2).save(step,
blocking=False, model=model)``, one parameter-update step (no matmuls) between saves, so each
save also waits for the previous one. RSS (``/proc/self/status`` VmRSS) is read right after
every ``save`` returns; reported: before the first save, first/last/max, least-squares slope
over saves 10..N (MiB per save; flat = |slope| < 1), ``ru_maxrss`` and ``mgr.staging_bytes``.

Usage (from the repository root)::

    .venv/bin/python -m bench.async_soak --size-mib 512 --saves 50 \\
        --out bench/results/async-soak-512.json
    .venv/bin/python -m bench.async_soak --quick
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

from bench.lib import MiB, cli, stats, worker
from bench.lib.memory import rss_now, rss_peak
from bench.lib.model import QUICK_SIZE_MIB, SIZE_MIB, Trainer, add_model_options, build_model, model_bytes
from bench.lib.report import fmt, md_table, report

WORKER_TIMEOUT_S = 3600


def run_soak(job: dict[str, Any]) -> dict[str, Any]:
    """Worker: ``job["saves"]`` async saves, RSS after each."""
    import cloudckpt

    model = build_model(job["size_mib"])
    trainer = Trainer(model, job["train_threads"])
    mgr = cloudckpt.CheckpointManager(job["uri"], keep_last=2)
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
        mgr.save(step, blocking=False, model=model)
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


def summarize(rec: dict[str, Any]) -> dict[str, Any]:
    rss = [v / MiB for v in rec["rss_after_save"]]
    lo = min(9, len(rss) - 1)  # saves 10..N (1-based)
    return {"rss_before_mib": rec["rss_before_first_save"] / MiB, "rss_first_mib": rss[0],
            "rss_last_mib": rss[-1], "rss_max_mib": max(rss),
            "rss_after_final_wait_mib": rec["rss_after_final_wait"] / MiB,
            "ru_maxrss_mib": rec["rss_peak"] / MiB, "slope_mib_per_save": stats.slope(rss[lo:]),
            "slope_range": [lo + 1, len(rss)],
            "staging_mib": rec["staging_bytes"][-1] / MiB,
            "staging_constant": len(set(rec["staging_bytes"])) == 1,
            "snapshot_s_median": statistics.median(rec["snapshot_s"][1:] or rec["snapshot_s"]),
            "bg_save_s_median": stats.median(rec["bg_save_s"]),
            "wait_s_median": statistics.median(rec["wait_s"][1:] or rec["wait_s"]),
            "raw_mib": rec["raw_bytes"] / MiB, "kept_steps": rec["kept_steps"]}


def table(summ: dict[str, Any], saves: int, elapsed: float) -> str:
    sl = summ["slope_mib_per_save"]
    header = ("RSS before 1st save MiB", "after 1st save", "after last save", "max after a save",
              "ru_maxrss", f"slope saves {summ['slope_range'][0]}..{summ['slope_range'][1]} "
              "MiB/save", "staging_bytes MiB")
    row = (f"{summ['rss_before_mib']:.0f}", f"{summ['rss_first_mib']:.0f}",
           f"{summ['rss_last_mib']:.0f}", f"{summ['rss_max_mib']:.0f}",
           f"{summ['ru_maxrss_mib']:.0f}", f"{sl:+.2f}", f"{summ['staging_mib']:.1f} "
           f"({'constant' if summ['staging_constant'] else 'CHANGED'} over all saves)")
    return "\n".join([
        f"### soak: {saves} async saves of a {summ['raw_mib']:.0f} MiB fp32 model, local disk, "
        "keep_last=2", "", *md_table(header, [row]), "",
        f"- flat (|slope| < 1 MiB/save): {'met' if abs(sl) < 1.0 else 'MISSED'}",
        f"- median snapshot (time in save(), after waiting for the previous save) "
        f"{summ['snapshot_s_median']:.3f} s, median wait for the previous save "
        f"{summ['wait_s_median']:.3f} s, median background save "
        f"{fmt(summ['bg_save_s_median'], '.2f')} s; steps kept at the end "
        f"{summ['kept_steps']}; wall {elapsed:.0f} s"])


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__)
    add_model_options(p)
    p.add_argument("--saves", type=int, help="async saves (default 50)")
    args = cli.settle(p.parse_args(argv), {"size_mib": SIZE_MIB, "saves": 50},
                      {"size_mib": QUICK_SIZE_MIB, "saves": 5})
    with cli.scratch(args, "soak") as workdir:
        job = {"uri": str(workdir / "soak"), "size_mib": args.size_mib, "saves": args.saves,
               "train_threads": args.train_threads}
        t0 = time.perf_counter()
        rec = worker.run("bench.async_soak:run_soak", job, WORKER_TIMEOUT_S)
        elapsed = time.perf_counter() - t0
    if "error" in rec:
        report({"target": "soak", "record": rec}, f"soak ERROR: {rec['error']}", args.out)
        return 1
    summ = summarize(rec)
    report({"target": "soak", "size_mib": args.size_mib, "saves": args.saves,
            "elapsed_s": elapsed, "summary": summ, "record": rec},
           table(summ, args.saves, elapsed), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
