"""Where a checkpoint's objects live, and how a checkpoint becomes visible or goes away.

Under a checkpoint URI::

    manifest.json                  the commit record, written last (create-only)
    data/<save_id>/<n>.bin         data objects of the save with that id

Commit: data objects first, each complete (size and checksums known) before the manifest is
written; the manifest last with a create-only write, so a committed checkpoint is never
overwritten, not even by a zombie writer. A checkpoint exists iff its manifest exists and
validates. Delete: the manifest first (the checkpoint becomes invisible), then its data; a
crash midway leaves orphans, never a visible broken checkpoint. Orphans are data objects that
the committed manifest (if any) does not reference.
"""

from __future__ import annotations

from collections.abc import Callable

from cloudckpt.errors import AlreadyExists, CorruptCheckpoint, IncompleteCheckpoint, NotFound
from cloudckpt.manifest import Manifest, decode_manifest
from cloudckpt.storage import ObjectInfo, Store, copy_object

__all__ = ["DATA_PREFIX", "MANIFEST_KEY", "copy_checkpoint", "data_key", "delete_checkpoint",
           "find_orphans", "read_manifest"]

MANIFEST_KEY = "manifest.json"
DATA_PREFIX = "data"


def data_key(save_id: str, n: int) -> str:
    return f"{DATA_PREFIX}/{save_id}/{n:06d}.bin"


def read_manifest(store: Store) -> Manifest:
    """Read and validate the committed manifest of the checkpoint rooted at ``store``.

    Raises:
        IncompleteCheckpoint: data objects exist but no manifest (a crashed or in-flight save).
        NotFound: nothing there at all.
        CorruptCheckpoint: the manifest does not validate (the message names its URI).
    """
    try:
        raw = store.get(MANIFEST_KEY)
    except NotFound:
        if store.list(DATA_PREFIX):
            raise IncompleteCheckpoint(
                f"incomplete checkpoint at {store.uri}: data objects exist but no committed "
                f"manifest (a save crashed or is still running); nothing here is loadable"
            ) from None
        raise NotFound(f"no checkpoint at {store.uri} (no {MANIFEST_KEY})") from None
    try:
        return decode_manifest(raw)
    except CorruptCheckpoint as e:
        raise CorruptCheckpoint(f"{store.uri}/{MANIFEST_KEY}: {e}") from e


def find_orphans(store: Store, manifest: Manifest | None) -> list[ObjectInfo]:
    """Data objects under the checkpoint root that ``manifest`` does not reference (all of
    them when there is no committed manifest)."""
    used = set(manifest.objects) if manifest else set()
    return [o for o in store.list(DATA_PREFIX) if o.key not in used]


def delete_checkpoint(store: Store) -> int:
    """Delete the checkpoint at ``store``: manifest first, then every data object. Returns
    the number of objects deleted. Safe to re-run after a crash."""
    objs = store.list(DATA_PREFIX)
    store.delete(MANIFEST_KEY)
    store.delete_many([o.key for o in objs])
    return len(objs) + 1


def copy_checkpoint(src: Store, dst: Store, *, storage_class: str | None = None,
                    progress: Callable[[int], None] | None = None) -> Manifest:
    """Copy the committed checkpoint at ``src`` to ``dst`` (any two backends): data objects
    first (streamed, bounded memory), each size-checked, then the manifest last, create-only.
    Re-running after an interruption completes the copy. Returns the manifest.

    Raises:
        AlreadyExists: ``dst`` holds a *different* committed checkpoint.
        CorruptCheckpoint: a copied object has the wrong size.
    """
    manifest_bytes = src.get(MANIFEST_KEY)
    manifest = decode_manifest(manifest_bytes)
    for key in manifest.objects:
        if key.startswith("@"):
            raise CorruptCheckpoint(f"{src.uri}: sibling references cannot be copied alone")
        size = copy_object(src, key, dst, key)
        if dst.stat(key).size != size:
            raise CorruptCheckpoint(f"copy of {src.uri}/{key} to {dst.uri} has the wrong size")
        if storage_class:
            dst.set_storage_class(key, storage_class)
        if progress is not None:
            progress(size)
    try:
        dst.put(MANIFEST_KEY, manifest_bytes, create_only=True)
    except AlreadyExists:
        if dst.get(MANIFEST_KEY) != manifest_bytes:
            raise AlreadyExists(f"{dst.uri} holds a different committed checkpoint") from None
    return manifest
