"""The commit protocol: how a checkpoint becomes visible, is read back, copied and deleted.
Every writer (:mod:`cloudckpt.engine.writer`, the DCP adapter, copies) commits through here.

Keys under a checkpoint root are in :mod:`cloudckpt.format.keys`. Roles: any process may read;
exactly one process (the saver, or the DCP coordinator) calls :func:`commit_manifest`, after
every data object of the save is complete.

Commit: data objects first, each complete (size and checksums known) before the manifest is
written; the manifest last with a create-only write, so a committed checkpoint is never
overwritten, not even by a zombie writer. A checkpoint exists iff its manifest exists and
validates. Delete: the manifest first (the checkpoint becomes invisible), then its data; a
crash midway leaves orphans, never a visible broken checkpoint. Orphans are data objects that
the committed manifest (if any) does not reference.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import replace
from typing import Any

from cloudckpt.engine.refs import local_key, resolver
from cloudckpt.engine.trust import resolve_signer, resolve_verifier
from cloudckpt.errors import (
    AlreadyExists,
    CorruptCheckpoint,
    IncompleteCheckpoint,
    NotFound,
    StorageFull,
)
from cloudckpt.format.checksums import matches
from cloudckpt.format.keys import (
    DATA_PREFIX,
    MANIFEST_KEY,
    REF_MARK,
    SAVE_ID_RE,
    SUPERSEDED_PREFIX,
    superseded_key,
)
from cloudckpt.format.manifest import (
    MAX_MANIFEST_BYTES,
    ChunkRecord,
    Manifest,
    decode_manifest,
    encode_manifest,
)
from cloudckpt.format.signing import Signer, Verifier
from cloudckpt.storage import ObjectInfo, Store, copy_object

#: Replaced saves' data outlives the overwrite by this long (seconds), for readers in flight.
SUPERSEDED_GRACE = 3600.0

__all__ = ["SUPERSEDED_GRACE", "commit_manifest", "copy_checkpoint", "delete_checkpoint", "discard",
           "find_orphans", "read_manifest", "read_manifest_bytes", "sweep_superseded"]


def discard(store: Store, keys: Iterable[str]) -> None:
    """Best-effort delete of data objects a failed or superseded save wrote (GC catches
    whatever is left). Only own data keys are touched: never the manifest, never a sibling
    reference. Never raises."""
    own = [k for k in keys if k.startswith(DATA_PREFIX + "/")]
    if own:
        with contextlib.suppress(Exception):
            store.delete_many(own)


def commit_manifest(store: Store, manifest: Manifest, *, overwrite: bool = False,
                    previous: Manifest | None = None, signer: Signer | None = None,
                    grace: float = SUPERSEDED_GRACE, now: float | None = None,
                    protect: Collection[str] = ()) -> None:
    """Make ``manifest`` the committed checkpoint at ``store``: one create-only write (a plain
    write when ``overwrite``), signed by ``signer`` (or the environment's signing key, see
    :mod:`cloudckpt.engine.trust`). Call once, from the one process that owns the save, after
    all of its data objects are complete.

    After an overwrite, the replaced save's data is *not* deleted at once: a reader that read
    the old manifest may still be fetching it. Its data prefix is marked superseded (a
    ``superseded/<save_id>`` object), and the data of saves superseded more than ``grace``
    seconds ago is deleted (:func:`sweep_superseded`). Only ``data/<save_id>/`` objects of
    those saves are ever deleted here, never a manifest, never a key in ``protect`` (data
    that other checkpoints reference).

    Raises:
        AlreadyExists: another save committed first (``overwrite`` false); this save's data
            objects are discarded before raising.
        StorageFull: no space for the manifest; this save's data objects are discarded before
            raising (unless an earlier attempt of the same write had landed: then it committed).
        StorageError: the write failed; nothing was committed.
    """
    body = encode_manifest(manifest, resolve_signer(signer))
    try:
        store.put(MANIFEST_KEY, body, create_only=not overwrite)
    except AlreadyExists:
        discard(store, manifest.objects)
        raise AlreadyExists(f"another save committed {store.uri} first; this one was discarded"
                            ) from None
    except StorageFull:
        landed = _landed(store, body)
        if landed is False:
            discard(store, manifest.objects)
        if not landed:  # None, cannot tell: the data stays (GC sweeps it if uncommitted)
            raise
    if previous is None:
        return  # a first commit: nothing superseded, no extra requests
    if previous.save_id != manifest.save_id and SAVE_ID_RE.match(previous.save_id):
        with contextlib.suppress(Exception):  # housekeeping: GC covers whatever is left
            store.put(superseded_key(previous.save_id), b"{}")
    with contextlib.suppress(Exception):
        sweep_superseded(store, grace, time.time() if now is None else now,
                         keep=manifest.save_id, protect=protect)


def _landed(store: Store, body: bytes) -> bool | None:
    """Whether the manifest at ``store`` is ``body`` (a retried write whose first attempt
    landed before a later one was refused); ``None`` when it cannot be read. Never raises."""
    try:
        return read_manifest_bytes(store) == body
    except NotFound:
        return False
    except Exception:
        return None


def sweep_superseded(store: Store, grace: float, now: float, keep: str | None = None,
                     protect: Collection[str] = ()) -> int:
    """Delete the data of saves superseded (overwritten) more than ``grace`` seconds before
    ``now``, and their markers; ``keep`` (the committed save) and keys in ``protect`` are
    never touched. Returns the
    number of objects deleted. Safe to interrupt and re-run. Any caller.

    Raises:
        StorageError: listing or deleting failed.
    """
    deleted = 0
    for marker in store.list(SUPERSEDED_PREFIX):
        save_id = marker.key[len(SUPERSEDED_PREFIX) + 1:]
        if save_id == keep or not SAVE_ID_RE.match(save_id):
            continue
        if marker.mtime is not None and now - marker.mtime.timestamp() < grace:
            continue
        keys = [o.key for o in store.list(f"{DATA_PREFIX}/{save_id}") if o.key not in protect]
        store.delete_many(keys)
        store.delete(marker.key)
        deleted += len(keys) + 1
    return deleted


def read_manifest_bytes(store: Store, key: str = MANIFEST_KEY) -> bytes:
    """The bytes of a manifest, read capped at the format's size limit. Any caller.

    Raises:
        NotFound: no such object. CorruptCheckpoint: larger than the format allows.
    """
    raw = store.get_range(key, 0, MAX_MANIFEST_BYTES + 1)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise CorruptCheckpoint(f"{store.uri}/{key}: larger than the {MAX_MANIFEST_BYTES} "
                                "bytes a manifest may have")
    return raw


def read_manifest(store: Store, verifier: Verifier | None = None) -> Manifest:
    """Read and validate the committed manifest of the checkpoint rooted at ``store``. With a
    ``verifier`` (or verification keys in the environment, see :mod:`cloudckpt.engine.trust`)
    its signature must verify. Any caller.

    Raises:
        UntrustedCheckpoint: a verification key is set and the signature is missing or bad.
        IncompleteCheckpoint: data objects exist but no manifest (a crashed or in-flight save).
        NotFound: nothing there at all.
        CorruptCheckpoint: the manifest does not validate (the message names its URI).
    """
    try:
        raw = read_manifest_bytes(store)
    except NotFound:
        if store.list(DATA_PREFIX):
            raise IncompleteCheckpoint(
                f"incomplete checkpoint at {store.uri}: data objects exist but no committed "
                f"manifest (a save crashed or is still running); nothing here is loadable"
            ) from None
        raise NotFound(f"no checkpoint at {store.uri} (no {MANIFEST_KEY})") from None
    try:
        return decode_manifest(raw, resolve_verifier(verifier))
    except CorruptCheckpoint as e:
        raise type(e)(f"{store.uri}/{MANIFEST_KEY}: {e}") from e


def find_orphans(store: Store, manifest: Manifest | None) -> list[ObjectInfo]:
    """Data objects under the checkpoint root that ``manifest`` does not reference (all of
    them when there is no committed manifest)."""
    used = set(manifest.objects) if manifest else set()
    return [o for o in store.list(DATA_PREFIX) if o.key not in used]


def delete_checkpoint(store: Store) -> int:
    """Delete the checkpoint at ``store``: manifest first, then every data object. Returns
    the number of objects deleted. Safe to re-run after a crash."""
    objs = store.list(DATA_PREFIX) + store.list(SUPERSEDED_PREFIX)
    store.delete(MANIFEST_KEY)
    store.delete_many([o.key for o in objs])
    return len(objs) + 1


def copy_checkpoint(src: Store, dst: Store, *, storage_class: str | None = None,
                    progress: Callable[[int], None] | None = None,
                    storage_options: Mapping[str, Any] | None = None,
                    check: bool = False, keep: Collection[str] = (),
                    confirm: Callable[[frozenset[str]], bool] | None = None) -> Manifest:
    """Copy the committed checkpoint at ``src`` to ``dst`` (any two backends): data objects
    first (streamed, bounded memory), each size-checked, then the manifest last, create-only.
    With ``check``, each copied object is also read back from ``dst`` (one object in memory
    at a time) and every chunk's stored checksum checked before the manifest is written
    (costs one read of the copy). The copy stands alone: objects that ``src`` references in
    sibling checkpoints (incremental saves) are copied into its own ``data/shared/`` and its
    manifest rewritten to point there (signed with the environment's signing key, unsigned
    without one), except the references in ``keep``: the caller vouches that ``dst``'s parent
    holds those objects (a replica of the run holding the sibling), and they stay references
    if ``confirm(kept)``, asked right before the manifest is written, returns true (else they
    are copied too). Re-running after an interruption completes the copy. Returns the copied
    manifest. Any thread may call this.

    Raises:
        AlreadyExists: ``dst`` holds a *different* committed checkpoint.
        CorruptCheckpoint: a copied object has the wrong size, or (``check``) a chunk of it
            fails its checksum; no manifest was written at ``dst``.
    """
    manifest_bytes = read_manifest_bytes(src)
    manifest = decode_manifest(manifest_bytes)
    resolve = resolver(src, storage_options)
    ends: dict[str, int] = {}
    for c in manifest.chunks:
        ends[c.object] = max(ends.get(c.object, 0), c.offset + c.stored_size)

    def copy(ref: str) -> None:
        store, key = resolve(ref)
        if ref.startswith(REF_MARK):  # only the used head of a shared object (<= object size)
            target = local_key(ref)
            body = store.get_range(key, 0, ends[ref])
            if len(body) != ends[ref]:
                raise CorruptCheckpoint(f"{store.uri}/{key} is shorter than {src.uri} records")
            dst.put(target, body)
            size = len(body)
        else:
            target = ref
            size = copy_object(store, key, dst, target)
        if dst.stat(target).size != size:
            raise CorruptCheckpoint(f"copy of {store.uri}/{key} to {dst.uri} has the wrong size")
        if check:
            _check_copied(dst, target, [c for c in manifest.chunks if c.object == ref], size)
        if storage_class:
            dst.set_storage_class(target, storage_class)
        if progress is not None:
            progress(size)

    kept = frozenset(r for r in manifest.objects if r.startswith(REF_MARK) and r in keep)
    for ref in manifest.objects:
        if ref not in kept:
            copy(ref)
    if kept and confirm is not None and not confirm(kept):
        for ref in sorted(kept):
            copy(ref)
        kept = frozenset()
    if any(ref.startswith(REF_MARK) and ref not in kept for ref in manifest.objects):
        manifest = replace(manifest, chunks=tuple(
            replace(c, object=local_key(c.object))
            if c.object.startswith(REF_MARK) and c.object not in kept else c
            for c in manifest.chunks))
        manifest_bytes = encode_manifest(manifest, resolve_signer(None))
    try:
        dst.put(MANIFEST_KEY, manifest_bytes, create_only=True)
    except AlreadyExists:
        if dst.get(MANIFEST_KEY) != manifest_bytes:
            raise AlreadyExists(f"{dst.uri} holds a different committed checkpoint") from None
    return manifest


def _check_copied(dst: Store, key: str, chunks: list[ChunkRecord], size: int) -> None:
    """Read ``key`` back from ``dst`` (``size`` bytes) and check the stored checksum of each
    of ``chunks`` (the manifest's chunks in that object).

    Raises:
        CorruptCheckpoint: a chunk does not match (the message names the object).
    """
    body = memoryview(dst.get_range(key, 0, size))
    for c in chunks:
        if not matches(body[c.offset:c.offset + c.stored_size], c.stored_xxh3):
            raise CorruptCheckpoint(f"copy at {dst.uri}/{key}: the chunk at offset {c.offset} "
                                    "fails its stored checksum (damaged source or transfer)")
