"""Resolve a URI given on the command line: one checkpoint, a run root of many, or a parent
prefix of runs; and say precisely why a location holds no checkpoint (nothing there at all, a
typo'd URI, an empty directory, a prefix of other objects, a run with no checkpoint yet).

Imports no torch: ``ls``, ``show`` and ``verify`` run without it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cloudckpt.engine.commit import read_manifest
from cloudckpt.engine.verify import signature_status, verify
from cloudckpt.errors import CloudckptError, IncompleteCheckpoint, NotFound
from cloudckpt.format.keys import DATA_PREFIX, MANIFEST_KEY, STEP_RE, step_dir
from cloudckpt.format.manifest import Manifest
from cloudckpt.manager import RunContext, resolve_step
from cloudckpt.manager.index import META_KEY, RunIndex
from cloudckpt.manager.sharing import pending, read_releases, referenced
from cloudckpt.storage import ObjectInfo, Store, open_store, parse_uri, substore

__all__ = ["Child", "Survey", "absence", "checkpoint_store", "is_checkpoint", "iso",
           "manifest_meta", "open_location", "rows_for", "survey"]

#: run-layout records (see cloudckpt.format.keys) and the name pattern of their entries
_RUN_RECORDS = {"archived": re.compile(r"^step-\d{12}\.json$"),
                "generations": re.compile(r"^\d{10}\.json$"),
                "pins": STEP_RE, "quarantine": re.compile(r"^step-\d{12}\.json$"),
                "released": re.compile(r".")}
_SCHEME_TYPO = re.compile(r"^(s3a?|gs|gcs|az|abfss?|memory|file)(:?/{1,2})(?=[^/])", re.I)


def open_location(uri: str, options: Mapping[str, Any] | None) -> Store:
    """The store at ``uri`` as given on the command line. Nothing is contacted, except that a
    local path naming a file is refused at once (it can be neither a checkpoint nor a run).

    Raises:
        NotFound: ``uri`` is a local file.
        InvalidURI: ``uri`` cannot be opened.
    """
    store = open_store(uri, storage_options=options)
    parsed = parse_uri(store.uri)
    if parsed.protocol == "file" and os.path.isfile(parsed.prefix):
        raise NotFound(f"no checkpoint at {store.uri}: it is a file, not a checkpoint or run "
                       "directory (cloudckpt import can store it as one)")
    return store


def is_checkpoint(store: Store) -> bool:
    """Whether ``store`` is a single checkpoint (has a manifest) rather than a run root."""
    return store.exists(MANIFEST_KEY)


@dataclass(frozen=True)
class Child:
    """A run or a standalone checkpoint below a prefix, as its keys show it (no reads)."""

    name: str  # path relative to the prefix
    kind: str  # "run" or "checkpoint"
    steps: tuple[int, ...]  # a run's committed hot steps (by key), oldest first
    objects: int
    stored_bytes: int
    modified: float | None


@dataclass(frozen=True)
class Survey:
    """What one recursive listing shows under a location."""

    uri: str
    exists: bool
    objects: int
    run_layout: bool  # run records or step directories at the root itself
    loose_data: int  # data objects of a checkpoint at the root without its manifest
    children: tuple[Child, ...]


def _container(parts: list[str]) -> tuple[str, str, int | None] | None:
    """(kind, path, committed step) of the run or checkpoint an object key belongs to."""
    for i, seg in enumerate(parts):
        rest = parts[i + 1:]
        if STEP_RE.match(seg):
            m = STEP_RE.match(seg)
            step = int(m.group(1)) if m and rest == [MANIFEST_KEY] else None
            return "run", "/".join(parts[:i]), step
        pattern = _RUN_RECORDS.get(seg)
        if pattern is not None and len(rest) == 1 and pattern.match(rest[0]):
            return "run", "/".join(parts[:i]), None
    if parts[-1] == MANIFEST_KEY:
        return "checkpoint", "/".join(parts[:-1]), None
    return None


def survey(store: Store) -> Survey:
    """List everything under ``store`` once and sort it into runs and checkpoints.

    Raises:
        StorageError (NotFound for a missing bucket): the listing failed.
    """
    objs: list[ObjectInfo] = store.list()
    parsed = parse_uri(store.uri)
    local = parsed.protocol == "file"
    exists = bool(objs) or (os.path.isdir(parsed.prefix) if local
                            else parsed.protocol != "memory" and not parsed.prefix)
    groups: dict[tuple[str, str], list[ObjectInfo]] = {}
    steps: dict[tuple[str, str], set[int]] = {}
    loose = 0
    for o in objs:
        parts = o.key.split("/")
        where = _container(parts)
        if where is None:
            loose += parts[0] == DATA_PREFIX
            continue
        kind, path, step = where
        groups.setdefault((kind, path), []).append(o)
        if step is not None:
            steps.setdefault((kind, path), set()).add(step)
    children = tuple(
        Child(path, kind, tuple(sorted(steps.get((kind, path), ()))), len(members),
              sum(o.size for o in members),
              max((o.mtime.timestamp() for o in members if o.mtime), default=None))
        for (kind, path), members in sorted(groups.items(), key=lambda kv: kv[0][1]) if path)
    return Survey(store.uri, exists, len(objs), ("run", "") in groups, loose, children)


def absence(store: Store, text: str, found: Survey | None = None) -> NotFound:
    """The error to raise when ``store`` (given as ``text`` on the command line) holds no
    checkpoint to act on: one line saying what is there instead. Returns, never raises,
    except as :func:`survey` does (one listing unless ``found`` is given)."""
    s = found or survey(store)
    if not s.exists:
        typo = _SCHEME_TYPO.match(text.strip()) if "://" not in text else None
        hint = f" (did you mean {typo.group(1)}://{text.strip()[typo.end():]}?)" if typo else ""
        where = "no such file or directory" if store.protocol == "file" else \
            "no such bucket, container or prefix (no object under it)"
        return NotFound(f"nothing at {store.uri}: {where}{hint}")
    if s.loose_data:
        return IncompleteCheckpoint(f"incomplete checkpoint at {store.uri}: {s.loose_data} data "
                                    "objects and no manifest (a save that crashed or is still "
                                    "running)")
    if s.run_layout:
        return NotFound(f"no checkpoints under {store.uri}: a run root with no committed "
                        "checkpoint")
    runs = [c for c in s.children if c.kind == "run"]
    ckpts = [c for c in s.children if c.kind == "checkpoint"]
    if runs or ckpts:
        return NotFound(f"no checkpoint at {store.uri} itself: it holds {len(runs)} run(s) and "
                        f"{len(ckpts)} checkpoint(s) below it (cloudckpt ls {text} lists them)")
    what = "it is empty" if not s.objects else \
        f"it holds {s.objects} object(s), none of them a checkpoint or a run"
    return NotFound(f"no checkpoints under {store.uri}: {what}")


def checkpoint_store(uri: str, options: Mapping[str, Any] | None, step: int | None) -> Store:
    """The store of one checkpoint: ``uri`` itself, or step ``step`` (default: the latest) of
    the run rooted at ``uri``.

    Raises:
        NotFound: no such checkpoint (the message says what is at ``uri`` instead).
        InvalidURI: ``uri`` (or an archived copy's URI) cannot be opened.
    """
    store = open_location(uri, options)
    if step is None and is_checkpoint(store):
        return store
    run = RunContext.open(store, storage_options=options)
    records = run.records()
    if not records:
        raise absence(store, uri)
    chosen = resolve_step(records, "latest" if step is None else step, uri=store.uri)
    if chosen is None:
        raise absence(store, uri)
    return run.record_store(next(r for r in records if r.step == chosen))


def iso(t: float | None) -> str:
    """A POSIX time as ISO 8601 UTC to the second; ``""`` for none."""
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="seconds") if t else ""


def manifest_meta(m: Manifest) -> dict[str, Any]:
    """The run metadata (step, epoch, metrics, ...) a manager or integration recorded in
    ``m``; ``{}`` when there is none or it is malformed. Pure."""
    meta = m.metadata.get(META_KEY, {}) if isinstance(m.metadata, dict) else {}
    return meta if isinstance(meta, dict) else {}


def _row(step: Any, uri: str, status: str, **kw: Any) -> dict[str, Any]:
    row = {"step": step, "epoch": None, "time": "", "raw_bytes": 0, "stored_bytes": 0,
           "added_bytes": 0, "shared_bytes": 0, "metrics": {}, "tier": None, "status": status,
           "signature": "-", "uri": uri}
    row.update(kw)
    return row


def _checkpoint_row(store: Store, do_verify: bool) -> dict[str, Any]:
    m = read_manifest(store)
    meta = manifest_meta(m)
    metrics = meta.get("metrics")
    row = _row(meta.get("step"), store.uri, "committed", epoch=meta.get("epoch"),
               time=m.created, raw_bytes=m.raw_bytes, stored_bytes=m.stored_bytes,
               added_bytes=m.added_bytes, shared_bytes=m.shared_bytes,
               metrics=metrics if isinstance(metrics, dict) else {},
               signature=signature_status(m), generation=meta.get("generation", 0))
    if do_verify:
        rep = verify(store)
        row["status"] = "committed" if rep.ok else "corrupt"
        row["problems"] = rep.problems
    return row


def rows_for(uri: str, options: Mapping[str, Any] | None, do_verify: bool) -> list[dict[str, Any]]:
    """One dict per checkpoint under ``uri`` (or for ``uri`` itself): step, epoch, time, sizes
    (raw, stored, added by this save, shared with other checkpoints), metrics, tier, status
    (committed / incomplete / corrupt / quarantined), signature status, lineage generation,
    uri. ``[]`` when ``uri`` holds no checkpoint (see :func:`absence` for why).

    Raises:
        StorageError: a listing or a manifest read failed.
    """
    store = open_location(uri, options)
    if is_checkpoint(store):
        return [_checkpoint_row(store, do_verify)]
    index = RunIndex(store)
    listing = index.scan()
    rows: dict[int, dict[str, Any]] = {}
    for step, reason in index.quarantined(listing).items():
        rows[step] = _row(step, f"{store.uri}/{step_dir(step)}", "quarantined",
                          problems=[reason])
    for rec in index.records(listing):
        added, shared = rec.stored_bytes, 0  # an archived copy stands alone
        if rec.location == "hot":
            m = index.manifest(rec.step, listing.committed[rec.step])  # cached by records()
            if m is not None:
                added, shared = m.added_bytes, m.shared_bytes
        rows[rec.step] = _row(rec.step, rec.uri, "committed", epoch=rec.epoch,
                              time=iso(rec.time), raw_bytes=rec.raw_bytes,
                              stored_bytes=rec.stored_bytes, added_bytes=added,
                              shared_bytes=shared, metrics=rec.metrics, tier=rec.tier,
                              location=rec.location, pinned=rec.pinned,
                              signature=rec.signature, generation=rec.generation)
    for step, info in listing.committed.items():
        if step not in rows:
            rows[step] = _row(step, f"{store.uri}/{step_dir(step)}", "corrupt",
                              problems=[f"{info.key}: manifest does not validate"])
    # data of a deleted checkpoint that others still read, or that waits for its grace
    # period, is not an incomplete save (``gc`` reports it)
    kept = set()
    if set(listing.data) - set(rows):
        ctx = RunContext(store, index)
        kept = referenced(ctx, listing) | pending(read_releases(ctx))
    for step, objs in listing.data.items():
        if step not in rows and not {o.key for o in objs} <= kept:
            size = sum(o.size for o in objs)
            rows[step] = _row(step, f"{store.uri}/{step_dir(step)}", "incomplete",
                              stored_bytes=size, added_bytes=size)
    if do_verify:
        for row in rows.values():
            if row["status"] == "committed":
                target = open_store(row["uri"], storage_options=options) \
                    if row.get("location") == "archived" else substore(store, step_dir(row["step"]))
                try:
                    problems = verify(target).problems
                except Exception as e:  # one damaged checkpoint never ends the listing
                    problems = [str(e) if isinstance(e, CloudckptError) else repr(e)]
                if problems:
                    row["status"], row["problems"] = "corrupt", problems
    return [rows[s] for s in sorted(rows)]
