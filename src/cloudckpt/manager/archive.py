"""Archival tiers: a checkpoint leaving the hot set moves to a colder storage class in place,
or is copied to an archive URI (another bucket, prefix or cloud) and removed from the hot root.

Both are safe to interrupt and re-run: an in-place move records ``tier.json`` only after every
data object moved (objects other checkpoints read stay in their tier); a copy stands alone
(objects shared with other checkpoints are copied too), writes data first and the manifest
last (create-only), verifies the copy, writes the ``archived/`` pointer, and only then
deletes the hot copy (manifest first; data others read stays).
"""

from __future__ import annotations

import json

from cloudckpt.engine.commit import copy_checkpoint
from cloudckpt.format.keys import DATA_PREFIX, archived_key, step_dir, tier_key
from cloudckpt.manager.context import RunContext
from cloudckpt.manager.options import ArchivePolicy
from cloudckpt.manager.sharing import delete_hot, referenced
from cloudckpt.storage import open_store

__all__ = ["ArchivePolicy", "archive_checkpoint", "needs_rehydration"]

#: tiers whose objects cannot be read until restored / rehydrated
_OFFLINE = {"GLACIER", "DEEP_ARCHIVE", "ARCHIVE_AZ", "Archive"}


def needs_rehydration(tier: str) -> bool:
    """Whether objects in ``tier`` need a restore before reads (S3 Glacier Flexible / Deep
    Archive, Azure Archive). GCS classes and S3 Glacier Instant Retrieval read directly.
    Pure; any caller."""
    return tier in _OFFLINE


def archive_checkpoint(ctx: RunContext, step: int, policy: ArchivePolicy) -> None:
    """Archive the committed hot checkpoint ``step`` of the run per ``policy`` (see the module
    docstring). Called by retention (after a save, on the saving thread; on the coordinator
    rank) and by operator tools; one caller per run at a time.

    Raises:
        KeyError: ``step`` is not committed (callers check first).
        AlreadyExists: the archive URI holds a different checkpoint for this step.
        StorageError, CorruptCheckpoint: a move or copy failed; re-run to finish.
    """
    sub = ctx.step_store(step)
    if policy.uri is None:
        assert policy.storage_class is not None
        shared = referenced(ctx, ctx.index.scan(), exclude=step)  # stays hot for the others
        for obj in sub.list(DATA_PREFIX):
            if f"{step_dir(step)}/{obj.key}" not in shared:
                sub.set_storage_class(obj.key, policy.storage_class)
        ctx.store.put(tier_key(step), json.dumps({"storage_class": policy.storage_class,
                                                  "time": ctx.clock()}).encode())
        return
    rec = {r.step: r for r in ctx.records()}[step]
    dest = open_store(f"{policy.uri.rstrip('/')}/{step_dir(step)}",
                      storage_options=policy.storage_options)
    copy_checkpoint(sub, dest, storage_class=policy.storage_class,
                    storage_options=ctx.storage_options)  # stands alone: references copied
    pointer = {"uri": dest.uri, "time": rec.time, "epoch": rec.epoch, "metrics": rec.metrics,
               "raw_bytes": rec.raw_bytes, "stored_bytes": rec.stored_bytes,
               "tier": policy.storage_class, "generation": rec.generation}
    ctx.store.put(archived_key(step), json.dumps(pointer).encode())
    delete_hot(ctx, step)
