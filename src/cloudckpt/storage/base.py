"""The Store contract every backend and wrapper implements.

Call order for a streamed upload (who calls: the writer thread that owns the upload)::

    up = store.start_upload(key, create_only=..., storage_class=...)
    up.write_part(b1); up.write_part(b2); ...   # sequential, each part >= store.min_part_size
    up.finish(tail)                              # last (possibly short or empty) part; commits
    # or on any failure:
    up.abort()

Each method is one retryable unit: a retry wrapper re-runs a failed ``write_part`` alone, never
the whole object. Parts are written in order; an upload is used by one thread at a time.
Stores themselves are safe to call from many threads at once.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

__all__ = ["ObjectInfo", "PendingUpload", "Store", "StoreWrapper", "Upload", "copy_into",
           "read_range_into"]


@dataclass(frozen=True)
class ObjectInfo:
    """What ``stat`` and ``list`` report about one object. ``key`` is relative to the store
    root; ``etag`` is the ETag (S3, Azure), generation (GCS) or a size/mtime token (local);
    ``storage_class`` is the tier when the backend reports one."""

    key: str
    size: int
    etag: str | None = None
    mtime: datetime | None = None
    storage_class: str | None = None


@dataclass(frozen=True)
class PendingUpload:
    """An upload that was started and neither completed nor aborted (S3 multipart upload,
    local temporary file)."""

    key: str
    upload_id: str
    initiated: datetime | None = None


@runtime_checkable
class Upload(Protocol):
    """One streamed upload in progress. See the module docstring for the call order."""

    key: str

    def write_part(self, data: bytes | memoryview) -> None:
        """Upload the next part (at least ``Store.min_part_size`` bytes)."""

    def finish(self, tail: bytes | memoryview = b"") -> None:
        """Upload ``tail`` as the last part and make the object visible.

        Raises:
            AlreadyExists: the upload was create-only and the object exists.
        """

    def abort(self) -> None:
        """Discard the parts uploaded so far. Never raises for an already-finished upload."""


@runtime_checkable
class Store(Protocol):
    """Objects under one root URI. Keys are relative POSIX paths (see ``validate_key``).

    Every method raises our own errors (``cloudckpt.errors``): ``NotFound``,
    ``AccessDenied``, ``AlreadyExists``, ``TransientStorageError``, ``StorageError``,
    ``InvalidKey``, ``UnsupportedOperation``.
    """

    @property
    def uri(self) -> str: ...

    @property
    def protocol(self) -> str: ...

    @property
    def min_part_size(self) -> int: ...

    def put(self, key: str, data: bytes | memoryview, *, create_only: bool = False,
            storage_class: str | None = None) -> None:
        """Write one object whole. ``create_only`` fails with ``AlreadyExists`` if it exists;
        the check and the write are one atomic step on every backend."""

    def get(self, key: str) -> bytes:
        """Read a whole object."""

    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Read bytes ``[start, end)`` of an object. Short reads past the end are returned
        as-is; the caller checks sizes."""

    def get_range_into(self, key: str, start: int, out: memoryview) -> memoryview:
        """Read bytes ``[start, start + len(out))`` of an object into ``out`` (short at the
        object's end; the caller checks sizes) and return a view of the bytes read: ``out[:n]``,
        or new memory when the backend's client hands back a buffer of its own (network
        stores: copying it would only cost time) or when a wrapper abandoned an attempt (a
        store that stopped answering: that attempt may still write into ``out`` later). The
        caller may use ``out`` again only when the result is a view of it
        (``result.obj is out.obj``). Optional: :func:`read_range_into` falls back to
        ``get_range`` for stores without it."""

    def stat(self, key: str) -> ObjectInfo:
        """Size, etag/generation, mtime and storage class of one object."""

    def exists(self, key: str) -> bool:
        """Whether an object exists at ``key``."""

    def list(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        """Every object under ``prefix`` (recursive, all pages), sorted by key."""

    def delete(self, key: str) -> None:
        """Delete one object; deleting a missing object is not an error."""

    def delete_many(self, keys: Sequence[str]) -> None:
        """Delete many objects in batches; missing objects are not an error."""

    def copy(self, src_key: str, dst_key: str) -> None:
        """Server-side copy inside this store."""

    def set_storage_class(self, key: str, storage_class: str) -> None:
        """Move an object to another storage class / access tier in place."""

    def start_upload(self, key: str, *, create_only: bool = False,
                     storage_class: str | None = None) -> Upload:
        """Begin a streamed upload of one object in parts."""

    def list_pending_uploads(self, prefix: str = "") -> builtins.list[PendingUpload]:
        """Uploads started and never completed or aborted."""

    def abort_pending_upload(self, pending: PendingUpload) -> None:
        """Abort one pending upload found by ``list_pending_uploads``."""


class StoreWrapper:
    """Base of stores that wrap another (retries, faults, prefixes): delegates the identity
    properties and any attribute it does not define (``fs``, ``parsed_uri``...) to ``inner``."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (copy/pickle): avoid infinite recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    @property
    def uri(self) -> str:
        return self.inner.uri

    @property
    def protocol(self) -> str:
        return self.inner.protocol

    @property
    def min_part_size(self) -> int:
        return self.inner.min_part_size

    def get_range_into(self, key: str, start: int, out: memoryview) -> memoryview:
        """Through this wrapper's own ``get_range`` (so its faults, counts and retries
        apply); wrappers that only pass calls on override it to keep the inner store's."""
        return copy_into(self.get_range(key, start, start + len(out)), out)


def copy_into(data: bytes | memoryview, out: memoryview) -> memoryview:
    """``data`` (at most ``len(out)`` bytes) copied into ``out``; the view of ``out`` filled.
    Pure helper."""
    n = min(len(data), len(out))
    out[:n] = memoryview(data)[:n]
    return out[:n]


def read_range_into(store: Store, key: str, start: int, out: memoryview) -> memoryview:
    """``store.get_range_into`` when the store's class defines it, else ``get_range``
    copied into ``out`` (stores written before the method existed, and wrappers that pass
    unknown attributes on to another store, whose own ``get_range`` must stay in the path).
    Any thread; raises what the store raises."""
    if callable(getattr(type(store), "get_range_into", None)):
        return store.get_range_into(key, start, out)
    return copy_into(store.get_range(key, start, start + len(out)), out)


def iter_parts(chunks: Iterable[bytes | memoryview], part_size: int) -> Iterable[bytes]:
    """Re-cut a stream of byte chunks into parts of exactly ``part_size`` bytes, the last one
    possibly shorter (and possibly empty when the stream is empty). Pure helper."""
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        while len(buf) >= part_size:
            yield bytes(buf[:part_size])
            del buf[:part_size]
    yield bytes(buf)
