"""``ls``, ``show``, ``verify``, ``diff``: look at checkpoints without changing anything."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

import numpy as np
import torch

from cloudckpt.cli.output import human, print_json, print_table, progress
from cloudckpt.cli.targets import checkpoint_store, is_checkpoint, rows_for
from cloudckpt.engine.commit import read_manifest
from cloudckpt.engine.reader import load
from cloudckpt.engine.verify import verify
from cloudckpt.storage import open_store

__all__ = ["flatten", "register"]


def register(sub: Any) -> None:
    p = sub.add_parser("ls", help="list checkpoints under a run root (or one checkpoint)")
    p.add_argument("uri")
    p.add_argument("--verify", action="store_true", help="check every checksum (reads all data)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("show", help="the tensor tree of a checkpoint")
    p.add_argument("uri")
    p.add_argument("--step", type=int, help="step of a run root (default: latest)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("verify", help="check every checksum; exit 1 on any problem")
    p.add_argument("uri")
    p.add_argument("--step", type=int, help="only this step of a run root (default: all)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("diff", help="compare two checkpoints; exit 1 if they differ")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--b-storage-options", type=__import__("json").loads, default=None,
                   metavar="JSON")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_diff)


def cmd_ls(args: argparse.Namespace) -> int:
    rows = rows_for(args.uri, args.storage_options, args.verify)
    if args.json:
        print_json(rows)
    else:
        print_table(["STEP", "TIME", "RAW", "STORED", "METRICS", "TIER", "SIGNATURE", "STATUS"], [
            [r["step"], r["time"], human(r["raw_bytes"]), human(r["stored_bytes"]),
             " ".join(f"{k}={v:.4g}" for k, v in r["metrics"].items()), r["tier"] or "-",
             r["signature"].split(" (")[0],
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
           "raw_bytes": m.raw_bytes, "stored_bytes": m.stored_bytes, "objects": len(m.objects),
           "metadata": m.metadata, "tensors": tensors}
    if args.json:
        print_json(out)
        return 0
    print(f"{store.uri}  created {m.created}  {len(tensors)} tensors, {human(m.raw_bytes)} raw, "
          f"{human(m.stored_bytes)} stored "
          f"({m.stored_bytes / m.raw_bytes if m.raw_bytes else 1:.3f}), {len(m.objects)} objects")
    print_table(["TENSOR", "DTYPE", "SHAPE", "SIZE", "RATIO"], [
        [t["path"].removeprefix("state"), t["dtype"], "x".join(map(str, t["shape"])) or "()",
         human(t["raw_bytes"]), f"{t['ratio']:.3f}"] for t in tensors])
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    store = open_store(args.uri, storage_options=args.storage_options)
    if args.step is None and not is_checkpoint(store):
        rows = rows_for(args.uri, args.storage_options, True)
        bad = [r for r in rows if r["status"] != "committed"]
        if args.json:
            print_json(rows)
        else:
            for r in rows:
                print(f"step {r['step']}: {r['status']}")
                for prob in r.get("problems", []):
                    print(f"  {prob}")
        return 1 if bad or not rows else 0
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
    """``{"a": {"b": t}}`` -> ``{"a/b": t}``; lists and tuples by index."""
    out: dict[str, Any] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}/{k}" if prefix else str(k)))
    elif isinstance(tree, (list, tuple)) and not isinstance(tree, torch.Size):
        for i, v in enumerate(tree):
            out.update(flatten(v, f"{prefix}/{i}" if prefix else str(i)))
    else:
        out[prefix] = tree
    return out


def _max_abs_diff(a: Any, b: Any) -> float | None:
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
