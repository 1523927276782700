"""One reconciliation pass of a replica with the primary run (see :mod:`.replicas`).

A replica is a run of its own under the replica's root, with the primary's layout: the same
``step-N/`` keys and data keys, the primary's lineage claims (``generations/``), references
between checkpoints only where the replica holds their target. So
``CheckpointManager(replica_uri).restore()`` works on it alone, and an incremental run costs
the replica about what it costs the primary.

A pass (:func:`sync_replica`), in this order:

1. List the primary: the hot, readable checkpoints of its live lineage are the *wanted* set.
   If the listing fails, the pass stops here (nothing at the replica is touched).
2. Copy the lineage claims the replica lacks (create-only; they are immutable), so the
   replica's lineage matches the primary's before any manifest that names a generation.
3. Copy each wanted checkpoint the replica lacks, oldest first, with
   :func:`~cloudckpt.engine.commit.copy_checkpoint`: data objects first, each read back and
   its chunks' checksums checked (``check``), the manifest last, create-only. A reference
   into a sibling checkpoint stays a reference when the replica's committed copy of that
   sibling holds the object (its key names the save, so it is the same object), re-checked
   right before the manifest is written as a save re-checks its references
   (:func:`.sharing.referenceable`); otherwise the object is copied into the checkpoint's
   own ``data/shared/``. A copy killed
   midway leaves data without a manifest: invisible to listings and restores, overwritten by
   the next pass (same keys), or swept by GC once older than the grace period. A replica
   checkpoint of a step whose primary checkpoint differs (another ``save_id``: the primary
   replaced it) or that does not validate is deleted (run-level path) and copied again.
4. Only if every wanted checkpoint is at the replica now: delete at the replica, through the
   run-level deletion path (:func:`.sharing.delete_hot`, release records and grace period),
   the checkpoints the primary no longer retains; never when the primary shows no
   checkpoint at all (a wiped or wrongly configured primary must not empty its replicas).
   Then sweep released data past the grace period, and uncommitted leftovers of earlier
   passes past it (:func:`.gc.collect_garbage`).

Who calls what: the replica's worker thread (:mod:`.replicas`) runs passes one at a time per
replica. Nothing here holds state between passes except the contexts' caches.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass, field

from cloudckpt.engine.commit import copy_checkpoint
from cloudckpt.errors import AlreadyExists, CloudckptError, NotFound
from cloudckpt.format.keys import REF_MARK, run_key, step_dir
from cloudckpt.format.manifest import Manifest
from cloudckpt.manager.archive import needs_rehydration
from cloudckpt.manager.context import RunContext
from cloudckpt.manager.gc import collect_garbage
from cloudckpt.manager.index import CheckpointRecord, Listing
from cloudckpt.manager.lineage import live_records
from cloudckpt.manager.sharing import delete_hot, referenceable, sweep_releases

__all__ = ["SyncReport", "sync_replica", "wanted_records"]

log = logging.getLogger("cloudckpt.manager")
_MAX_CLAIM_BYTES = 4096  # as manager.lineage reads them


@dataclass(frozen=True)
class SyncReport:
    """What one pass did at one replica: steps ``copied`` (newest first), ``deleted`` (not
    retained by the primary any more), ``failed`` (step -> reason; the pass is then not
    complete and nothing was deleted), ``vanished`` (deleted at the primary mid-copy), and
    ``wanted``: the primary's live hot steps as listed at the start."""

    replica: str
    wanted: tuple[int, ...] = ()
    copied: tuple[int, ...] = ()
    deleted: tuple[int, ...] = ()
    vanished: tuple[int, ...] = ()
    failed: dict[int, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Every wanted checkpoint is at the replica (as of the primary listing)."""
        return not self.failed


def wanted_records(primary: RunContext, listing: Listing) -> list[CheckpointRecord]:
    """The checkpoints of ``primary`` a replica should hold: hot ones of the live lineage
    that can be read directly (not in an offline archive tier), oldest first.

    Raises:
        StorageError: a listing or manifest read failed.
    """
    records = primary.records(listing)
    return [r for r in live_records(primary, records, listing=listing)
            if r.location == "hot" and not (r.tier and needs_rehydration(r.tier))]


def _copy_claims(primary: RunContext, replica: RunContext, plisting: Listing,
                 rlisting: Listing) -> None:
    have = {o.key for o in rlisting.generations}
    for o in plisting.generations:
        if o.key in have:
            continue
        body = primary.store.get_range(o.key, 0, _MAX_CLAIM_BYTES)
        with contextlib.suppress(AlreadyExists):  # another copier was first; claims never change
            replica.store.put(o.key, body, create_only=True)


def _manifest(ctx: RunContext, listing: Listing, step: int) -> Manifest | None:
    info = listing.committed.get(step)
    return ctx.index.manifest(step, info) if info is not None else None


def _own(m: Manifest | None, step: int) -> set[str]:
    """Run keys of the objects the checkpoint of ``step`` holds itself (not references)."""
    return set() if m is None else {run_key(step_dir(step), o) for o in m.objects
                                    if not o.startswith(REF_MARK)}


def sync_replica(primary: RunContext, replica: RunContext, *, check: bool = True) -> SyncReport:
    """One pass (see the module docstring) bringing ``replica`` in line with ``primary``.
    ``check``: read every copied object back and check its chunks before each manifest.
    Call from one thread per replica at a time (the replica's worker); safe to interrupt and
    re-run.

    Raises:
        StorageError: the primary or the replica could not be listed, or a deletion at the
            replica failed (nothing visible is broken; the next pass finishes the job).
        CorruptCheckpoint: a replica record does not parse (not raised for a checkpoint that
            fails to copy: that one is reported in ``failed``).
    """
    plisting = primary.index.scan()
    wanted = {r.step: r for r in wanted_records(primary, plisting)}
    rlisting = replica.index.scan()
    _copy_claims(primary, replica, plisting, rlisting)
    copied: list[int] = []
    vanished: list[int] = []
    failed: dict[int, str] = {}
    here = {s: _manifest(replica, rlisting, s) for s in rlisting.committed}
    own = {s: _own(m, s) for s, m in here.items()}  # objects references may keep pointing at
    for step in sorted(wanted):  # oldest first: newer copies can reference older ones
        source = _manifest(primary, plisting, step)
        if step in here:
            mine = here[step]
            if mine is not None and source is not None and mine.save_id == source.save_id:
                continue  # already there, the same save
            log.warning("replica %s: step %d differs from the primary's (replaced there, or "
                        "damaged here); copying it again", replica.uri, step)
            delete_hot(replica, step)
            own.pop(step, None)
        held = set().union(*own.values()) if own else set()
        keep = {r for r in (source.objects if source is not None else ())
                if r.startswith(REF_MARK) and r[len(REF_MARK):] in held}
        try:
            m = copy_checkpoint(primary.step_store(step), replica.step_store(step), check=check,
                                storage_options=primary.storage_options, keep=keep,
                                confirm=functools.partial(referenceable, replica, step))
        except NotFound as e:  # retention at the primary deleted it meanwhile
            log.info("replica %s: step %d vanished at the primary while copying (%s)",
                     replica.uri, step, e)
            vanished.append(step)
            continue
        except CloudckptError as e:
            log.warning("replica %s: could not copy step %d from %s (will retry): %s",
                        replica.uri, step, primary.uri, e)
            failed[step] = str(e)
            continue
        own[step] = _own(m, step)
        copied.append(step)
        log.info("replicated step %d from %s to %s", step, primary.uri, replica.uri)
    deleted = _retain(replica, rlisting, set(wanted), failed)
    return SyncReport(replica.uri, tuple(sorted(wanted)), tuple(copied), tuple(deleted),
                      tuple(vanished), failed)


def _retain(replica: RunContext, rlisting: Listing, wanted: set[int],
            failed: dict[int, str]) -> list[int]:
    """Step 4 of the module docstring; returns the steps deleted at the replica."""
    doomed = sorted(s for s in rlisting.committed if s not in wanted)
    if failed:
        if doomed:
            log.warning("replica %s: keeping steps %s the primary no longer retains until "
                        "steps %s are copied", replica.uri, doomed, sorted(failed))
        return []
    if not wanted:
        if doomed:
            log.warning("replica %s: the primary shows no checkpoint; keeping the replica's "
                        "steps %s", replica.uri, doomed)
        return []
    for s in doomed:
        delete_hot(replica, s)
    if doomed:
        log.info("replica %s: deleted steps %s (no longer retained at the primary)",
                 replica.uri, doomed)
    elif rlisting.released:
        sweep_releases(replica, replica.incremental.grace)
    if set(rlisting.data) - set(rlisting.committed) - wanted:
        collect_garbage(replica, dry_run=False, grace=replica.incremental.grace)
    return doomed
