"""Garbage collection under a run root: data of failed/uncommitted saves and of deleted
checkpoints, leftovers of overwritten saves, stale metadata, and stale multipart uploads.

Data any committed manifest reads is never touched, wherever it lives (incremental saves
share chunks across checkpoints). Data released by a deletion is deleted once its release
record is older than the grace period (:mod:`.sharing`); other unreferenced objects once they
are older than it, so GC never races a writer still in flight. Checkpoints whose manifest
exists but does not validate are left alone (reported): their data may still be worth
recovering by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cloudckpt.format.keys import step_dir
from cloudckpt.manager.context import RunContext
from cloudckpt.manager.sharing import pending, read_releases, referenced, sweep_releases
from cloudckpt.storage import ObjectInfo, PendingUpload

__all__ = ["GCReport", "collect_garbage"]


@dataclass(frozen=True)
class GCReport:
    """What GC found (and deleted unless ``dry_run``)."""

    dry_run: bool
    orphans: list[str] = field(default_factory=list)
    uploads: list[PendingUpload] = field(default_factory=list)
    skipped_corrupt: list[int] = field(default_factory=list)
    bytes: int = 0


def _old(o: ObjectInfo, now: float, grace: float) -> bool:
    return o.mtime is None or now - o.mtime.timestamp() >= grace


def collect_garbage(ctx: RunContext, *, dry_run: bool, grace: float) -> GCReport:
    """Find (and unless ``dry_run``, delete) what the module docstring describes, older than
    ``grace`` seconds by ``ctx.clock``. For operators (CLI ``gc``, a janitor job); any thread.
    Safe to interrupt and re-run.

    Raises:
        StorageError: a listing or deletion failed (nothing half-deleted is visible).
    """
    now = ctx.clock()
    listing = ctx.index.scan()
    live = referenced(ctx, listing)  # by every committed manifest: shared data included
    corrupt = sorted(s for s, info in listing.committed.items()
                     if ctx.index.manifest(s, info) is None)
    # releases read *after* the listing: a checkpoint deleted before it was listed has its
    # release record in place already, so its data waits for the grace period below
    held = pending(read_releases(ctx))
    sizes = {o.key: o.size for objs in listing.data.values() for o in objs}
    orphans: list[ObjectInfo] = [o for _, objs in sorted(listing.data.items()) for o in objs
                                 if o.key not in live and o.key not in held
                                 and _old(o, now, grace)]
    all_objs = {o.key: o for o in ctx.store.list()}
    for step in listing.tiers | listing.pinned:
        if step not in listing.committed and step not in listing.archived:
            for key in (f"{step_dir(step)}/tier.json", f"pins/{step_dir(step)}"):
                if key in all_objs and _old(all_objs[key], now, grace):
                    orphans.append(all_objs[key])
    uploads = [u for u in ctx.store.list_pending_uploads()
               if u.initiated is None or now - u.initiated.timestamp() >= grace]
    released = sweep_releases(ctx, grace, dry_run=dry_run)
    report = GCReport(dry_run, sorted({o.key for o in orphans} | set(released)), uploads,
                      corrupt, sum(o.size for o in orphans) + sum(sizes.get(k, 0)
                                                                 for k in released))
    if not dry_run:
        ctx.store.delete_many([o.key for o in orphans])
        for u in uploads:
            ctx.store.abort_pending_upload(u)
    return report
