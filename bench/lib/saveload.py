"""The interleaved save/load matrix of the ``save_load_*`` scenarios.

Every (method, op, repeat) runs in a fresh worker (:func:`measure`), so ``ru_maxrss`` is that
run's own peak. Save: the worker builds the state in place (no temporaries), reads its RSS as
the baseline, saves, then reads ``ru_maxrss``; "RSS above state" = peak - baseline. Load: the
baseline is the RSS after the method's imports; reported = peak - baseline - raw bytes of the
loaded state (the loaded state is itself resident). Timed load = the call plus reading one
element of every 4 KiB page of every tensor, so lazily mapped results (safetensors
``load_file`` maps the file) are charged for their first read. DCP loads into a state dict it
allocates inside the timed region. Each worker checks an xxh3 digest of every tensor (after
timing) against the saver's, so a wrong load is an error.

Interleaving: for each repeat, every method saves, then every method loads (then its
files/objects are deleted). Reported: median over repeats of time, max over repeats of RSS
above state, and ratios of medians against cloudckpt (``> 1`` means slower than cloudckpt).
A peer that fails (or is not installed) is reported with its error, never dropped.
"""

from __future__ import annotations

import importlib
import time
from typing import Any

from bench.lib import MiB, cli, peers, stats, worker
from bench.lib.memory import rss_now, rss_peak
from bench.lib.report import error_lines, fmt, md_table, progress, report
from bench.lib.state import DTYPES, build_state, digest, raw_bytes, touch
from bench.lib.stores import Place, open_place

WORKER_TIMEOUT_S = 1800


def measure(job: dict[str, Any]) -> dict[str, Any]:
    """Worker: one op (``save``/``load``) of one method; time, RSS and digests."""
    method = peers.METHODS[job["store"]][job["method"]]
    ctx = peers.Ctx(job["endpoint"], job["size_mib"], job["dtype"])
    for mod in method.modules:
        importlib.import_module(mod)
    out: dict[str, Any] = {}
    if job["op"] == "save":
        state = build_state(ctx.size_mib, ctx.dtype)
        base = rss_now()
        t0 = time.perf_counter()
        method.save(state, job["loc"], ctx)
        out["seconds"] = time.perf_counter() - t0
        out["rss_above"] = rss_peak() - base
    else:
        base = rss_now()
        t0 = time.perf_counter()
        state = method.load(job["loc"], ctx)
        touch(state)
        out["seconds"] = time.perf_counter() - t0
        out["rss_above"] = rss_peak() - base - raw_bytes(state.values())
    out.update(raw_bytes=raw_bytes(state.values()), rss_base=base, rss_peak=rss_peak(),
               digest=digest(state))
    return out


def _run_op(kind: str, method: str, op: str, r: int, loc: str, size_mib: int, dtype: str,
            place: Place) -> dict[str, Any]:
    missing = peers.METHODS[kind][method].missing()
    if missing:
        result: dict[str, Any] = {"error": f"not installed: {missing}"}
    else:
        job = dict(store=kind, method=method, op=op, loc=loc, size_mib=size_mib, dtype=dtype,
                   endpoint=place.endpoint)
        result = worker.run("bench.lib.saveload:measure", job, WORKER_TIMEOUT_S)
    return {"method": method, "op": op, "repeat": r, **result}


def _describe(rec: dict[str, Any]) -> str:
    return f"{rec['seconds']:.3f} s, RSS above state {rec['rss_above'] / MiB:.0f} MiB"


def _log(rec: dict[str, Any]) -> None:
    progress(f"r{rec['repeat']} {rec['op']:4} {rec['method']:18}", rec, _describe)


def run_matrix(kind: str, methods: list[str], size_mib: int, dtype: str, repeats: int,
               place: Place) -> list[dict[str, Any]]:
    """For each repeat: every method saves, then every method loads; returns all records."""
    records: list[dict[str, Any]] = []
    for r in range(repeats):
        saved: dict[str, dict[str, Any]] = {}
        locs = {m: place.location(f"{m.replace('+', '-').replace('.', '-')}-r{r}")
                for m in methods}
        for m in methods:
            place.remove(locs[m])
            rec = _run_op(kind, m, "save", r, locs[m], size_mib, dtype, place)
            if "error" not in rec:
                rec["stored_bytes"] = place.stored_bytes(locs[m])
                saved[m] = rec
            _log(rec)
            records.append(rec)
        for m in methods:
            if m not in saved:
                records.append({"method": m, "op": "load", "repeat": r,
                                "error": "skipped: save failed"})
                continue
            rec = _run_op(kind, m, "load", r, locs[m], size_mib, dtype, place)
            if "error" not in rec and rec["digest"] != saved[m]["digest"]:
                rec = {**rec, "error": "loaded tensors differ from the saved ones"}
            place.remove(locs[m])
            _log(rec)
            records.append(rec)
    for rec in records:
        rec.pop("digest", None)
    return records


def summarize(records: list[dict[str, Any]], methods: list[str]) -> list[dict[str, Any]]:
    """Per method: median times, max RSS above state, stored bytes, ratios to cloudckpt."""
    rows = []
    for m in methods:
        saves = [r for r in records if r["method"] == m and r["op"] == "save"]
        loads = [r for r in records if r["method"] == m and r["op"] == "load"]
        ok_s = [r for r in saves if "error" not in r]
        ok_l = [r for r in loads if "error" not in r]
        rows.append({"method": m, "save_s": stats.median(r["seconds"] for r in ok_s),
                     "load_s": stats.median(r["seconds"] for r in ok_l),
                     "save_rss_above": stats.maximum(r["rss_above"] for r in ok_s),
                     "load_rss_above": stats.maximum(r["rss_above"] for r in ok_l),
                     "stored_bytes": stats.median(r["stored_bytes"] for r in ok_s),
                     "raw_bytes": stats.median(r["raw_bytes"] for r in ok_s),
                     "ok": (len(ok_s), len(ok_l)),
                     "errors": sorted({r["error"] for r in saves + loads if "error" in r})})
    base = next((r for r in rows if r["method"] == "cloudckpt"), None)
    for row in rows:
        for op in ("save", "load"):
            row[f"{op}_ratio"] = stats.ratio(row[f"{op}_s"], base and base[f"{op}_s"])
    return rows


def markdown_table(rows: list[dict[str, Any]], repeats: int) -> str:
    header = ("method", "save median s", "load median s", "save ratio vs cloudckpt",
              "load ratio vs cloudckpt", "peak RSS above state save / load MiB", "stored MiB")
    body = []
    for r in rows:
        rss = f"{fmt(r['save_rss_above'], '.0f', MiB)} / {fmt(r['load_rss_above'], '.0f', MiB)}"
        name = r["method"] if r["ok"] == (repeats, repeats) else (
            f"{r['method']} (ok {r['ok'][0]}/{repeats} saves, {r['ok'][1]}/{repeats} loads)")
        body.append((name, fmt(r["save_s"], ".2f"), fmt(r["load_s"], ".2f"),
                     fmt(r["save_ratio"], ".2f"), fmt(r["load_ratio"], ".2f"), rss,
                     fmt(r["stored_bytes"], ".1f", MiB)))
    lines = md_table(header, body)
    for r in rows:
        lines += error_lines(r["method"], r["errors"])
    return "\n".join(lines)


def main(name: str, kind: str, doc: str | None, argv: list[str] | None, *,
         defaults: dict[str, Any], quick: dict[str, Any],
         default_methods: list[str] | None = None) -> int:
    """A ``save_load_*`` scenario: the methods of store ``kind`` (see :mod:`peers`), titled
    ``name``; ``defaults``/``quick`` give ``size_mib`` and ``repeats``."""
    table_methods = peers.METHODS[kind]
    p = cli.parser(doc)
    p.add_argument("--size-mib", type=int, help=f"fp32 raw size of the state (default "
                   f"{defaults['size_mib']}; --quick {quick['size_mib']}); bf16 uses the same "
                   "shapes")
    p.add_argument("--dtype", choices=DTYPES, default="fp32")
    p.add_argument("--repeats", type=int, help=f"default {defaults['repeats']}")
    p.add_argument("--methods", help="comma-separated subset of "
                   f"{','.join(table_methods)} (default: {','.join(default_methods or ['all'])})")
    args = cli.settle(p.parse_args(argv), defaults, quick)
    methods = (args.methods.split(",") if args.methods
               else default_methods or list(table_methods))
    unknown = set(methods) - set(table_methods)
    if unknown:
        raise SystemExit(f"unknown methods for {kind}: {sorted(unknown)}")
    with cli.scratch(args, "run") as workdir, open_place(kind, workdir) as place:
        t0 = time.perf_counter()
        records = run_matrix(kind, methods, args.size_mib, args.dtype, args.repeats, place)
        elapsed = time.perf_counter() - t0
    rows = summarize(records, methods)
    raw = rows[0]["raw_bytes"] if rows and rows[0]["raw_bytes"] else None
    title = (f"{name}, {args.dtype}, size-mib {args.size_mib} (raw {fmt(raw, '.1f', MiB)} "
             f"MiB), median of {args.repeats}")
    result = {"target": name, "size_mib": args.size_mib, "dtype": args.dtype,
              "repeats": args.repeats, "methods": methods, "elapsed_s": elapsed,
              "summary": rows, "records": records}
    import safetensors

    report(result, f"### {title}\n\n{markdown_table(rows, args.repeats)}", args.out,
           safetensors=safetensors.__version__)
    return 0
