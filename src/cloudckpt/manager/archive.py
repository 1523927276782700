"""Archival tiers: a checkpoint leaving the hot set moves to a colder storage class in place,
or is copied to an archive URI (another bucket, prefix or cloud) and removed from the hot root.

Both are safe to interrupt and re-run: an in-place move records ``tier.json`` only after every
data object moved; a copy writes data first and the manifest last (create-only), verifies the
copy, writes the ``archived/`` pointer, and only then deletes the hot copy (manifest first).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cloudckpt.engine.commit import copy_checkpoint, delete_checkpoint
from cloudckpt.errors import InvalidArgument
from cloudckpt.format.keys import DATA_PREFIX, archived_key, step_dir, tier_key
from cloudckpt.storage import open_store, substore

if TYPE_CHECKING:
    from cloudckpt.manager.core import CheckpointManager

__all__ = ["ArchivePolicy", "archive_checkpoint", "needs_rehydration"]

#: tiers whose objects cannot be read until restored / rehydrated
_OFFLINE = {"GLACIER", "DEEP_ARCHIVE", "ARCHIVE_AZ", "Archive"}


def needs_rehydration(tier: str) -> bool:
    """Whether objects in ``tier`` need a restore before reads (S3 Glacier Flexible / Deep
    Archive, Azure Archive). GCS classes and S3 Glacier Instant Retrieval read directly."""
    return tier in _OFFLINE


@dataclass(frozen=True)
class ArchivePolicy:
    """Where checkpoints leaving the hot set go: ``storage_class`` (in place: S3
    ``STANDARD_IA``/``GLACIER_IR``/``GLACIER``/``DEEP_ARCHIVE``, GCS ``NEARLINE``/
    ``COLDLINE``/``ARCHIVE``, Azure ``Cool``/``Cold``/``Archive``) or ``uri`` (copied there,
    optionally with ``storage_class`` applied to the copy)."""

    storage_class: str | None = None
    uri: str | None = None
    storage_options: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.storage_class and not self.uri:
            raise InvalidArgument("ArchivePolicy needs a storage_class, a uri, or both")


def archive_checkpoint(mgr: CheckpointManager, step: int, policy: ArchivePolicy) -> None:
    """Archive one hot checkpoint per ``policy`` (see the module docstring)."""
    sub = substore(mgr.store, step_dir(step))
    if policy.uri is None:
        assert policy.storage_class is not None
        for obj in sub.list(DATA_PREFIX):
            sub.set_storage_class(obj.key, policy.storage_class)
        mgr.store.put(tier_key(step), json.dumps({"storage_class": policy.storage_class,
                                                  "time": mgr.clock()}).encode())
        return
    rec = {r.step: r for r in mgr.checkpoints()}[step]
    dest = open_store(f"{policy.uri.rstrip('/')}/{step_dir(step)}",
                      storage_options=policy.storage_options)
    copy_checkpoint(sub, dest, storage_class=policy.storage_class)
    pointer = {"uri": dest.uri, "time": rec.time, "epoch": rec.epoch, "metrics": rec.metrics,
               "raw_bytes": rec.raw_bytes, "stored_bytes": rec.stored_bytes,
               "tier": policy.storage_class}
    mgr.store.put(archived_key(step), json.dumps(pointer).encode())
    delete_checkpoint(sub)
