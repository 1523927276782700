"""Resolve a URI given on the command line: one checkpoint, or a run root of many."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from cloudckpt.engine.verify import signature_status, verify
from cloudckpt.errors import NotFound
from cloudckpt.format.keys import MANIFEST_KEY, step_dir
from cloudckpt.manager import RunContext, resolve_step
from cloudckpt.manager.index import META_KEY, RunIndex
from cloudckpt.storage import Store, open_store, substore

__all__ = ["checkpoint_store", "is_checkpoint", "rows_for"]


def is_checkpoint(store: Store) -> bool:
    """Whether ``store`` is a single checkpoint (has a manifest) rather than a run root."""
    return store.exists(MANIFEST_KEY)


def checkpoint_store(uri: str, options: Mapping[str, Any] | None, step: int | None) -> Store:
    """The store of one checkpoint: ``uri`` itself, or step ``step`` (default: the latest) of
    the run rooted at ``uri``.

    Raises:
        NotFound: no such checkpoint.
        InvalidURI: ``uri`` (or an archived copy's URI) cannot be opened.
    """
    store = open_store(uri, storage_options=options)
    if step is None and is_checkpoint(store):
        return store
    run = RunContext.open(store, storage_options=options)
    records = run.records()
    chosen = resolve_step(records, "latest" if step is None else step, uri=store.uri)
    if chosen is None:
        raise NotFound(f"no checkpoint at {store.uri}")
    return run.record_store(next(r for r in records if r.step == chosen))


def _iso(t: float | None) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="seconds") if t else ""


def rows_for(uri: str, options: Mapping[str, Any] | None, do_verify: bool) -> list[dict[str, Any]]:
    """One dict per checkpoint under ``uri`` (or for ``uri`` itself): step, time, sizes,
    metrics, tier, status (committed / incomplete / corrupt), signature status, lineage
    generation, uri."""
    store = open_store(uri, storage_options=options)
    if is_checkpoint(store):
        from cloudckpt.engine.commit import read_manifest

        m = read_manifest(store)
        meta = m.metadata.get(META_KEY, {}) if isinstance(m.metadata, dict) else {}
        row = {"step": meta.get("step"), "time": m.created, "raw_bytes": m.raw_bytes,
               "stored_bytes": m.stored_bytes, "metrics": meta.get("metrics", {}), "tier": None,
               "status": "committed", "uri": store.uri, "signature": signature_status(m),
               "generation": meta.get("generation", 0)}
        if do_verify:
            rep = verify(store)
            row["status"] = "committed" if rep.ok else "corrupt"
            row["problems"] = rep.problems
        return [row]
    index = RunIndex(store)
    listing = index.scan()
    rows: dict[int, dict[str, Any]] = {}
    for step, reason in index.quarantined(listing).items():
        rows[step] = {"step": step, "time": "", "raw_bytes": 0, "stored_bytes": 0,
                      "metrics": {}, "tier": None, "status": "quarantined", "signature": "-",
                      "uri": f"{store.uri}/{step_dir(step)}", "problems": [reason]}
    for rec in index.records(listing):
        rows[rec.step] = {"step": rec.step, "time": _iso(rec.time), "raw_bytes": rec.raw_bytes,
                          "stored_bytes": rec.stored_bytes, "metrics": rec.metrics,
                          "tier": rec.tier, "status": "committed", "uri": rec.uri,
                          "location": rec.location, "pinned": rec.pinned,
                          "signature": rec.signature, "generation": rec.generation}
    for step, info in listing.committed.items():
        if step not in rows:
            rows[step] = {"step": step, "time": "", "raw_bytes": 0, "stored_bytes": 0,
                          "metrics": {}, "tier": None, "status": "corrupt", "signature": "-",
                          "uri": f"{store.uri}/{step_dir(step)}",
                          "problems": [f"{info.key}: manifest does not validate"]}
    for step, objs in listing.data.items():
        if step not in rows:
            rows[step] = {"step": step, "time": "", "raw_bytes": 0,
                          "stored_bytes": sum(o.size for o in objs), "metrics": {}, "tier": None,
                          "status": "incomplete", "uri": f"{store.uri}/{step_dir(step)}",
                          "signature": "-"}
    if do_verify:
        for row in rows.values():
            if row["status"] == "committed":
                target = open_store(row["uri"], storage_options=options) \
                    if row.get("location") == "archived" else substore(store, step_dir(row["step"]))
                try:
                    rep = verify(target)
                    problems = rep.problems
                except Exception as e:
                    problems = [str(e)]
                if problems:
                    row["status"], row["problems"] = "corrupt", problems
    return [rows[s] for s in sorted(rows)]
