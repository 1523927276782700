"""``ls``, ``show``, ``verify``, ``diff``: look at checkpoints without changing anything.

``ls``, ``show`` and ``verify`` read manifests and raw bytes only: this module imports torch
(and numpy arrays' comparison) inside ``diff`` alone, so those three start fast.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from cloudckpt.cli.output import human, print_json, print_table, progress
from cloudckpt.cli.session import options_arg
from cloudckpt.cli.targets import (
    Child,
    absence,
    checkpoint_store,
    is_checkpoint,
    iso,
    manifest_meta,
    open_location,
    rows_for,
    survey,
)
from cloudckpt.engine.commit import read_manifest
from cloudckpt.engine.verify import verify
from cloudckpt.errors import CloudckptError
from cloudckpt.format.keys import step_dir
from cloudckpt.storage import open_store, substore

__all__ = ["flatten", "register"]

_RAW = argparse.RawDescriptionHelpFormatter
_LS_EPILOG = """examples:
  cloudckpt ls s3://bucket/runs/exp1                 every checkpoint of a run
  cloudckpt ls s3://bucket/runs/exp1 --metrics val_loss,acc
  cloudckpt ls s3://bucket/runs                      the runs (and checkpoints) under a prefix
  cloudckpt ls s3://bucket/runs/exp1/step-000000000100
  cloudckpt ls ./run --json --verify

Columns: RAW is the tensors' size, STORED what the checkpoint's manifest accounts for, ADDED
the bytes this save uploaded, SHARED the bytes it references in other checkpoints of the run
(incremental saves). A location that does not exist exits 3; one that exists but holds no
checkpoint says so and exits 0."""
_SHOW_EPILOG = """examples:
  cloudckpt show s3://bucket/runs/exp1                the latest checkpoint's tensors
  cloudckpt show s3://bucket/runs/exp1 --step 200 --json
  cloudckpt show ./ckpt | head -5"""
_VERIFY_EPILOG = """examples:
  cloudckpt verify s3://bucket/runs/exp1              every checkpoint of the run
  cloudckpt verify s3://bucket/runs/exp1 --step 200
  cloudckpt verify ./ckpt --json

Exit status 1 when any checksum or size does not match, 3 when there is nothing to verify."""
_DIFF_EPILOG = """examples:
  cloudckpt diff ./run/step-000000000100 ./run/step-000000000200
  cloudckpt diff s3://a/ckpt gs://b/ckpt --b-storage-options '{"token": "anon"}'"""


def _metric_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated metric names, e.g. val_loss,acc")
    return names


def register(sub: Any) -> None:
    p = sub.add_parser("ls", help="list checkpoints under a run root (or one checkpoint, or the "
                                  "runs under a prefix)", epilog=_LS_EPILOG, formatter_class=_RAW)
    p.add_argument("uri", help="a run root, one checkpoint, or a prefix holding runs")
    p.add_argument("--verify", action="store_true", help="check every checksum (reads all data); "
                                                         "exit 1 on damage")
    p.add_argument("--metrics", type=_metric_names, metavar="A,B",
                   help="show only these metrics, one column each (default: all, in one column)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("show", help="the tensor tree of a checkpoint", epilog=_SHOW_EPILOG,
                       formatter_class=_RAW)
    p.add_argument("uri", help="one checkpoint, or a run root (then --step or the latest)")
    p.add_argument("--step", type=int, help="step of a run root (default: latest)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("verify", help="check every checksum; exit 1 on any problem",
                       epilog=_VERIFY_EPILOG, formatter_class=_RAW)
    p.add_argument("uri", help="one checkpoint, or a run root (every checkpoint of it)")
    p.add_argument("--step", type=int, help="only this step of a run root (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("diff", help="compare two checkpoints; exit 1 if they differ",
                       epilog=_DIFF_EPILOG, formatter_class=_RAW)
    p.add_argument("a", help="first checkpoint (or run root: its latest)")
    p.add_argument("b", help="second checkpoint (or run root: its latest)")
    p.add_argument("--b-storage-options", type=options_arg, default=None, metavar="JSON",
                   help="storage options for B, as JSON or @FILE (default: those of -o)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_diff)


def _metrics_cells(metrics: dict[str, Any], chosen: list[str] | None) -> list[str]:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)

    if chosen is None:
        return [" ".join(f"{k}={fmt(v)}" for k, v in metrics.items()) or "-"]
    return [fmt(metrics[k]) if k in metrics else "-" for k in chosen]


def _pick(metrics: Any, chosen: list[str] | None) -> dict[str, Any]:
    metrics = metrics if isinstance(metrics, dict) else {}
    return metrics if chosen is None else {k: metrics[k] for k in chosen if k in metrics}


def _child_rows(uri: str, options: Any, children: tuple[Child, ...],
                chosen: list[str] | None) -> list[dict[str, Any]]:
    """One row per run / checkpoint below a prefix: a checkpoint's own manifest, a run's latest
    step's manifest (one read each) for step, epoch and metrics."""
    root = open_store(uri, storage_options=options)
    rows = []
    for c in children:
        rel = f"{c.name}/{step_dir(c.steps[-1])}" if c.kind == "run" and c.steps else c.name
        meta: dict[str, Any] = {}
        if c.kind == "checkpoint" or c.steps:
            try:
                meta = manifest_meta(read_manifest(substore(root, rel)))
            except CloudckptError as e:
                print(f"cloudckpt: warning: {root.uri}/{rel}: {e}", file=sys.stderr)
        step = c.steps[-1] if c.kind == "run" and c.steps else meta.get("step")
        rows.append({"name": c.name, "kind": c.kind, "uri": f"{root.uri.rstrip('/')}/{c.name}",
                     "checkpoints": len(c.steps) if c.kind == "run" else 1, "step": step,
                     "epoch": meta.get("epoch"), "bytes": c.stored_bytes,
                     "objects": c.objects, "modified": iso(c.modified),
                     "metrics": _pick(meta.get("metrics"), chosen)})
    return rows


def _ls_elsewhere(args: argparse.Namespace) -> int:
    """``ls`` of a location with no checkpoint of its own: the runs and checkpoints below it,
    or one line saying what is there (exit 0), or NotFound when there is nothing at all."""
    store = open_location(args.uri, args.storage_options)
    found = survey(store)
    if not found.exists:
        raise absence(store, args.uri, found)
    if not found.children:
        if args.json:
            print_json([])
        print(f"cloudckpt: {absence(store, args.uri, found)}",
              file=sys.stderr if args.json else sys.stdout)
        return 0
    rows = _child_rows(args.uri, args.storage_options, found.children, args.metrics)
    if args.json:
        print_json(rows)
        return 0
    metric_cols = [m.upper() for m in args.metrics] if args.metrics else ["METRICS"]
    print_table(["NAME", "KIND", "CHECKPOINTS", "STEP", "EPOCH", "SIZE", "MODIFIED",
                 *metric_cols],
                [[r["name"], r["kind"], r["checkpoints"], _dash(r["step"]), _dash(r["epoch"]),
                  human(r["bytes"]), r["modified"] or "-",
                  *_metrics_cells(r["metrics"], args.metrics)] for r in rows])
    return 0


def _dash(v: Any) -> str:
    return "-" if v is None else str(v)


def cmd_ls(args: argparse.Namespace) -> int:
    rows = rows_for(args.uri, args.storage_options, args.verify)
    if not rows:
        return _ls_elsewhere(args)
    for r in rows:
        r["metrics"] = _pick(r["metrics"], args.metrics)
    if args.json:
        print_json(rows)
    else:
        epoch = any(r.get("epoch") is not None for r in rows)
        metric_cols = [m.upper() for m in args.metrics] if args.metrics else ["METRICS"]
        print_table(["STEP", *(["EPOCH"] if epoch else []), "TIME", "RAW", "STORED", "ADDED",
                     "SHARED", *metric_cols, "TIER", "SIGNATURE", "STATUS"], [
            [_dash(r["step"]), *([_dash(r.get("epoch"))] if epoch else []), r["time"] or "-",
             human(r["raw_bytes"]), human(r["stored_bytes"]), human(r["added_bytes"]),
             human(r["shared_bytes"]), *_metrics_cells(r["metrics"], args.metrics),
             r["tier"] or "-", r["signature"].split(" (")[0],
             r["status"] + (" (archived)" if r.get("location") == "archived" else "")]
            for r in rows])
        for r in rows:
            for prob in r.get("problems", []):
                print(f"  step {r['step']}: {prob}", file=sys.stderr)
    return 1 if any(r["status"] != "committed" for r in rows) and args.verify else 0


def cmd_show(args: argparse.Namespace) -> int:
    store = checkpoint_store(args.uri, args.storage_options, args.step)
    m = read_manifest(store)
    stored_per_chunk = [c.stored_size / c.raw_size if c.raw_size else 1.0 for c in m.chunks]
    tensors: list[dict[str, Any]] = []
    for t in m.tensors:
        stored = sum(s.length * stored_per_chunk[s.chunk] for s in t.segments)
        tensors.append({"path": t.path, "kind": t.kind, "dtype": t.dtype, "shape": list(t.shape),
                        "raw_bytes": t.nbytes, "stored_bytes": round(stored),
                        "ratio": round(stored / t.nbytes, 3) if t.nbytes else 1.0})
    out = {"uri": store.uri, "created": m.created, "library_version": m.library_version,
           "raw_bytes": m.raw_bytes, "stored_bytes": m.stored_bytes,
           "added_bytes": m.added_bytes, "shared_bytes": m.shared_bytes,
           "objects": len(m.objects), "metadata": m.metadata, "tensors": tensors}
    if args.json:
        print_json(out)
        return 0
    print(f"{store.uri}  created {m.created}  {len(tensors)} tensors, {human(m.raw_bytes)} raw, "
          f"{human(m.stored_bytes)} stored "
          f"({m.stored_bytes / m.raw_bytes if m.raw_bytes else 1:.3f}; added "
          f"{human(m.added_bytes)}, shared {human(m.shared_bytes)}), {len(m.objects)} objects")
    print_table(["TENSOR", "DTYPE", "SHAPE", "SIZE", "RATIO"], [
        [t["path"].removeprefix("state"), t["dtype"], "x".join(map(str, t["shape"])) or "()",
         human(t["raw_bytes"]), f"{t['ratio']:.3f}"] for t in tensors])
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    store = open_location(args.uri, args.storage_options)
    if args.step is None and not is_checkpoint(store):
        rows = rows_for(args.uri, args.storage_options, True)
        if not rows:
            raise absence(store, args.uri)
        bad = [r for r in rows if r["status"] != "committed"]
        if args.json:
            print_json(rows)
        else:
            for r in rows:
                print(f"step {r['step']}: {r['status']}")
                for prob in r.get("problems", []):
                    print(f"  {prob}")
        return 1 if bad else 0
    target = checkpoint_store(args.uri, args.storage_options, args.step)
    m = read_manifest(target)
    with progress(m.stored_bytes, "verify") as bar:
        rep = verify(target, progress=bar.update)
    if args.json:
        print_json({"uri": rep.uri, "ok": rep.ok, "objects": rep.objects, "chunks": rep.chunks,
                    "stored_bytes": rep.stored_bytes, "problems": rep.problems,
                    "signature": rep.signature})
    else:
        state = "OK" if rep.ok else f"{len(rep.problems)} PROBLEM(S)"
        print(f"{rep.uri}: {state} ({rep.objects} objects, {rep.chunks} chunks, "
              f"{human(rep.stored_bytes)}); signature: {rep.signature}")
        for prob in rep.problems:
            print(f"  {prob}")
    return 0 if rep.ok else 1


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": t}}`` -> ``{"a/b": t}``; lists and tuples by index (a ``torch.Size``
    is a value). For trees loaded by the reader (torch is imported by then)."""
    import torch

    out: dict[str, Any] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}/{k}" if path else str(k))
        elif isinstance(node, (list, tuple)) and not isinstance(node, torch.Size):
            for i, v in enumerate(node):
                walk(v, f"{path}/{i}" if path else str(i))
        else:
            out[path] = node

    walk(tree, prefix)
    return out


def _max_abs_diff(a: Any, b: Any) -> float | None:
    import numpy as np
    import torch

    ta = torch.as_tensor(np.asarray(a)) if isinstance(a, np.ndarray) else a
    tb = torch.as_tensor(np.asarray(b)) if isinstance(b, np.ndarray) else b
    if ta.shape != tb.shape or ta.is_complex() or tb.is_complex():
        return None
    try:
        d = (ta.double() - tb.double()).abs()
    except (RuntimeError, TypeError):
        return None
    return float(d.max()) if d.numel() else 0.0


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    try:
        return bool(a == b) and type(a) is type(b)
    except (TypeError, ValueError):
        return False


def cmd_diff(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from cloudckpt.engine.reader import load

    a = flatten(load(checkpoint_store(args.a, args.storage_options, None)))
    b = flatten(load(checkpoint_store(args.b, args.b_storage_options or args.storage_options,
                                      None)))
    added, removed = sorted(set(b) - set(a)), sorted(set(a) - set(b))
    changed: list[dict[str, Any]] = []
    for k in sorted(set(a) & set(b)):
        x, y = a[k], b[k]
        if isinstance(x, (torch.Tensor, np.ndarray)) or isinstance(y, (torch.Tensor, np.ndarray)):
            if type(x) is not type(y):
                changed.append({"key": k, "change": f"{type(x).__name__} -> {type(y).__name__}"})
                continue
            if x.shape != y.shape or x.dtype != y.dtype:
                changed.append({"key": k, "change": f"{x.dtype}{list(x.shape)} -> "
                                                    f"{y.dtype}{list(y.shape)}"})
                continue
            xb = x.detach().contiguous().reshape(-1).view(torch.uint8) if isinstance(
                x, torch.Tensor) else x.tobytes()
            yb = y.detach().contiguous().reshape(-1).view(torch.uint8) if isinstance(
                y, torch.Tensor) else y.tobytes()
            same = torch.equal(xb, yb) if isinstance(xb, torch.Tensor) else xb == yb
            if not same:
                changed.append({"key": k, "change": "values", "max_abs_diff": _max_abs_diff(x, y)})
        elif not _equal(x, y):
            changed.append({"key": k, "change": f"{x!r} -> {y!r}"[:200]})
    result = {"added": added, "removed": removed, "changed": changed}
    if args.json:
        print_json(result)
    else:
        for k in added:
            print(f"+ {k}")
        for k in removed:
            print(f"- {k}")
        for c in changed:
            extra = f" (max abs diff {c['max_abs_diff']:.6g})" if c.get("max_abs_diff") is not None \
                else ""
            print(f"~ {c['key']}: {c['change']}{extra}")
        if not (added or removed or changed):
            print("identical")
    return 1 if added or removed or changed else 0
