"""Bring an archived checkpoint back: the inverse of :mod:`cloudckpt.manager.archive`.

- A checkpoint moved to a colder storage class in place (``tier.json``) has each of its own
  data objects set to the hot class (``STANDARD`` on S3 and GCS, ``Hot`` on Azure, or the
  class asked for), then its ``tier.json`` removed. Objects in an offline tier (S3 Glacier
  Flexible / Deep Archive) cannot be copied before the provider restored them: that raises
  :class:`~cloudckpt.errors.RehydrationRequired` and changes nothing further; Azure starts
  the rehydration of an Archive blob on the tier change and serves reads once it completes.
- A checkpoint copied to an archive URI (``archived/step-N.json``) is copied back under the
  run root (data first, manifest last, create-only; the copy stands alone), verified, and only
  then is the ``archived/`` pointer removed. The archive copy itself stays where it is.

Both are safe to interrupt and re-run. One caller per run at a time (an operator tool).
"""

from __future__ import annotations

from dataclasses import dataclass

from cloudckpt.engine.commit import copy_checkpoint, delete_checkpoint
from cloudckpt.engine.verify import verify
from cloudckpt.errors import CorruptCheckpoint, NotFound, UnsupportedOperation
from cloudckpt.format.keys import DATA_PREFIX, MANIFEST_KEY, archived_key, tier_key
from cloudckpt.manager.context import RunContext
from cloudckpt.storage import Store

__all__ = ["HOT_CLASS", "Rehydrated", "rehydrate_checkpoint"]

#: the hot (standard) storage class of each protocol that has classes
HOT_CLASS = {"s3": "STANDARD", "gcs": "STANDARD", "az": "Hot"}


@dataclass(frozen=True)
class Rehydrated:
    """What :func:`rehydrate_checkpoint` did. ``action``: ``"tier"`` (classes changed in
    place), ``"copied"`` (copied back from an archive URI) or ``"none"`` (already hot);
    ``source``: the tier or archive URI it came from; ``objects``: objects changed or copied."""

    step: int
    action: str
    source: str | None
    storage_class: str | None
    objects: int


def rehydrate_checkpoint(ctx: RunContext, step: int, *,
                         storage_class: str | None = None) -> Rehydrated:
    """Make the committed checkpoint ``step`` of the run hot again (see the module docstring).
    ``storage_class``: the class to move to (default: :data:`HOT_CLASS` of the run's store).

    Raises:
        NotFound: ``step`` is not a committed checkpoint of the run.
        RehydrationRequired: its objects sit in an offline tier the provider must restore first.
        CorruptCheckpoint: the copy brought back does not verify (it is removed again; the
            archived copy and its pointer stay).
        AlreadyExists: the hot location holds a different committed checkpoint.
        StorageError: a read, copy or class change failed; re-run to finish.
    """
    listing = ctx.index.scan()
    rec = {r.step: r for r in ctx.records(listing)}.get(step)
    if rec is None:
        raise NotFound(f"no committed checkpoint for step {step} under {ctx.uri}")
    hot = ctx.step_store(step)
    if rec.location == "archived":
        src = ctx.record_store(rec)
        manifest = copy_checkpoint(src, hot, storage_class=storage_class,
                                   storage_options=ctx.archive_storage_options)
        _verified_or_removed(hot, step, src.uri)
        ctx.store.delete(archived_key(step))
        return Rehydrated(step, "copied", rec.uri, storage_class, len(manifest.objects) + 1)
    if step in listing.archived:  # copied back by an interrupted earlier run: finish it
        _verified_or_removed(hot, step, "its archive")
        ctx.store.delete(archived_key(step))
        return Rehydrated(step, "copied", None, storage_class, 0)
    if step not in listing.tiers:
        return Rehydrated(step, "none", None, None, 0)
    target = storage_class or HOT_CLASS.get(ctx.store.protocol)
    if target is None:
        raise UnsupportedOperation(f"{ctx.store.protocol} stores have no storage classes")
    changed = 0
    for obj in hot.list(DATA_PREFIX):
        if obj.storage_class != target:
            hot.set_storage_class(obj.key, target)
            changed += 1
    if not hot.exists(MANIFEST_KEY):  # the checkpoint went away meanwhile: keep its record
        raise NotFound(f"step {step} under {ctx.uri} disappeared while it was rehydrated")
    ctx.store.delete(tier_key(step))
    return Rehydrated(step, "tier", rec.tier, target, changed)


def _verified_or_removed(hot: Store, step: int, source: str) -> None:
    report = verify(hot)
    if not report.ok:
        delete_checkpoint(hot)
        raise CorruptCheckpoint(f"the copy of step {step} brought back from {source} does not "
                                f"verify: {report.problems[0]}; left archived")
