"""Shared data in a run (incremental checkpoints): which chunks a save may reference, what a
deletion releases, and when released data is deleted.

The protocol (why it cannot lose data: "Shared data" in docs/design.md):

1. A save references only chunks of the newest committed checkpoint of its lineage, minus
   objects a release record lists (:func:`dedup_index`). Right before its commit it checks
   again, from a fresh listing, that every object it references is still referenced by a
   committed manifest and listed by no release record (:func:`referenceable`); if not, it
   writes everything itself.
2. Deleting a checkpoint first writes a release record (``released/<time>-<id>.json``): the
   objects its manifest references, and its own data, that no other committed manifest
   references. Then the manifest goes (the checkpoint becomes invisible).
3. Released objects are deleted only once their record is older than the grace period and a
   fresh listing shows no committed manifest referencing them (:func:`sweep_releases`); then
   the record goes.

Who calls what: the save path calls :func:`dedup_index` and :func:`referenceable`; deletion
(:mod:`.lifecycle`) calls :func:`release_step` then :func:`sweep_releases`; ``gc`` calls
:func:`sweep_releases` and :func:`pending`. Everything here reads the store afresh.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timezone

from cloudckpt.errors import CloudckptError, InvalidKey
from cloudckpt.format.dedup import DedupIndex
from cloudckpt.format.keys import (
    DATA_PREFIX,
    MANIFEST_KEY,
    RELEASED_PREFIX,
    SUPERSEDED_PREFIX,
    released_key,
    run_key,
    step_dir,
    validate_key,
)
from cloudckpt.format.manifest import Manifest
from cloudckpt.manager.context import RunContext
from cloudckpt.manager.index import Listing
from cloudckpt.manager.lineage import live_records

__all__ = ["Release", "dedup_index", "delete_hot", "pending", "read_releases", "referenceable", "referenced",
           "release_step", "sweep_releases"]

log = logging.getLogger("cloudckpt.manager")
MAX_RELEASE_BYTES = 64 * 1024 * 1024
#: the only keys a release record may name: data objects under a step directory
_RELEASABLE = re.compile(rf"^step-\d{{12}}/{DATA_PREFIX}/")


def _releasable(key: str) -> str:
    if not _RELEASABLE.match(validate_key(key)):
        raise ValueError(f"{key!r} is not a data object of a checkpoint")
    return key


@dataclass(frozen=True)
class Release:
    """One release record: ``objects`` (keys under the run root) released at ``time``
    (the store's mtime of the record, seconds since the epoch; None when unknown)."""

    key: str
    time: float | None
    objects: frozenset[str]


def run_objects(m: Manifest, step: int) -> set[str]:
    """The objects (keys under the run root) that the manifest of ``step`` reads."""
    return {run_key(step_dir(step), ref) for ref in m.objects}


def referenced(ctx: RunContext, listing: Listing, *, exclude: int | None = None) -> set[str]:
    """Objects that a committed manifest in ``listing`` (other than ``exclude``'s) reads.
    A manifest that does not validate protects all of its own data (its references are
    unknown). Raises StorageError when a manifest cannot be read."""
    out: set[str] = set()
    for step, info in listing.committed.items():
        if step == exclude:
            continue
        m = ctx.index.manifest(step, info)
        if m is None:
            out |= {o.key for o in listing.data.get(step, [])}
        else:
            out |= run_objects(m, step)
    return out


def read_releases(ctx: RunContext, listing: Listing | None = None) -> list[Release]:
    """Every release record under the run root (those of ``listing`` when given, else one
    LIST); a malformed one is skipped with a WARNING (untrusted input). Raises StorageError
    when listing or reading fails."""
    out: list[Release] = []
    cache = ctx.index.releases
    listed = ctx.store.list(RELEASED_PREFIX) if listing is None else listing.released
    for stale in set(cache) - {(o.key, o.etag) for o in listed}:
        cache.pop(stale, None)
    for o in listed:
        ck = (o.key, o.etag)
        if ck not in cache:
            try:
                d = json.loads(ctx.store.get_range(o.key, 0, MAX_RELEASE_BYTES))
                objs = d["objects"]
                if not isinstance(objs, list) or not all(isinstance(k, str) for k in objs):
                    raise TypeError("objects must be a list of keys")
                cache[ck] = frozenset(_releasable(k) for k in objs)
            except (ValueError, KeyError, TypeError, RecursionError, InvalidKey) as e:
                log.warning("ignoring malformed release record %s/%s: %s", ctx.uri, o.key, e)
                cache[ck] = None
        objs_ok = cache[ck]
        if objs_ok is not None:
            out.append(Release(o.key, o.mtime.timestamp() if o.mtime else None, objs_ok))
    return out


def pending(releases: Collection[Release]) -> set[str]:
    """Objects some release record lists: not to be referenced by new saves."""
    return set().union(*(r.objects for r in releases)) if releases else set()


def dedup_index(ctx: RunContext, step: int, generation: int | None
                ) -> tuple[DedupIndex | None, int | None]:
    """What the save of ``step`` may reference: the chunks of the newest committed hot
    checkpoint (not moved to a colder tier) of the lineage of ``generation`` that is older
    than ``step``, minus released objects, and that checkpoint's step (the base of deltas).
    ``(None, None)`` when dedup and deltas are off or there is nothing. A failure to read is
    logged and means no sharing (the save goes on)."""
    if not (ctx.incremental.dedup or ctx.incremental.delta):
        return None, None
    try:
        listing = ctx.index.scan()
        recs = [r for r in live_records(ctx, ctx.records(listing), of=generation,
                                        listing=listing)
                if r.location == "hot" and r.tier is None and r.step < step
                and r.step in listing.committed]
        if not recs:
            return None, None
        src = recs[-1].step
        m = ctx.index.manifest(src, listing.committed[src])
        if m is None or not ctx.incremental.dedup:
            return None, None if m is None else src
        blocked = pending(read_releases(ctx, listing))
        return DedupIndex.of([(step_dir(src), m)], blocked=blocked), src
    except CloudckptError as e:
        log.warning("incremental save of step %d: cannot index the previous checkpoint (%s); "
                    "writing every chunk", step, e)
        return None, None


def referenceable(ctx: RunContext, step: int, refs: frozenset[str]) -> bool:
    """Whether every reference in ``refs`` (as the manifest of ``step`` holds them) still
    points at an object a committed manifest reads and no release record lists, from a fresh
    listing. Called right before the commit. Never raises (a failure means False)."""
    try:
        keys = {run_key(step_dir(step), r) for r in refs}
        listing = ctx.index.scan()  # one LIST: release records sort before step-*/manifests
        if keys & pending(read_releases(ctx, listing)):
            return False
        return keys <= referenced(ctx, listing, exclude=step)
    except CloudckptError as e:
        log.warning("step %d: cannot re-check its references (%s); writing every chunk", step, e)
        return False


def release_step(ctx: RunContext, step: int) -> Release | None:
    """Before the manifest of ``step`` is deleted: record the objects it reads (and its own
    data) that no other committed manifest reads. Returns the record written, or None when
    nothing is released.

    Raises:
        StorageError: the listing or the write failed (nothing deleted yet).
    """
    listing = ctx.index.scan()
    mine = {o.key for o in listing.data.get(step, [])}
    info = listing.committed.get(step)
    m = ctx.index.manifest(step, info) if info is not None else None
    if m is not None:
        mine |= run_objects(m, step)
    released = {k for k in mine - referenced(ctx, listing, exclude=step)
                if _RELEASABLE.match(k)}
    if not released:
        return None
    token = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"
    key = released_key(token)
    ctx.store.put(key, json.dumps({"step": step, "objects": sorted(released)}).encode())
    return Release(key, ctx.clock(), frozenset(released))


def sweep_releases(ctx: RunContext, grace: float, *, dry_run: bool = False) -> list[str]:
    """Delete released objects whose record is older than ``grace`` seconds (by the store's
    mtime against ``ctx.clock``) and that no committed manifest reads now, then the record.
    Returns the object keys deleted (or, with ``dry_run``, that would be).

    Raises:
        StorageError: a listing or deletion failed; re-run to finish.
    """
    now = ctx.clock()
    due = [r for r in read_releases(ctx)
           if grace <= 0 or r.time is None or now - r.time >= grace]
    if not due:
        return []
    live = referenced(ctx, ctx.index.scan())  # fresh, after the records were read
    doomed = sorted(set().union(*(r.objects for r in due)) - live)
    if not dry_run:
        ctx.store.delete_many(doomed)
        ctx.store.delete_many([r.key for r in due])
    return doomed


def delete_hot(ctx: RunContext, step: int) -> None:
    """Delete the hot checkpoint of ``step``: release its data (:func:`release_step`), delete
    its manifest, then sweep released data past the grace period. Data another committed
    checkpoint reads stays. A step that does not exist is a no-op. Safe to re-run.

    Raises:
        StorageError: a step failed; nothing visible is broken, re-run to finish.
    """
    hot = ctx.step_store(step)
    release_step(ctx, step)
    hot.delete(MANIFEST_KEY)
    sweep_releases(ctx, ctx.incremental.grace)
    hot.delete_many([o.key for o in hot.list(SUPERSEDED_PREFIX)])
