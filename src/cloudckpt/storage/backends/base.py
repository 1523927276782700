"""The per-protocol strategy behind :class:`~cloudckpt.storage.fsspec_store.FsspecStore`.

fsspec does the generic work (read, ranged read, stat, list, delete, copy) identically on every
backend; a ``Backend`` supplies only what differs: how the filesystem is built (timeouts, no
nested retries), create-only and storage-class writes, multipart uploads, and pending uploads.
Backend methods may raise provider exceptions; the store translates them.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, Protocol

from cloudckpt.errors import InvalidArgument, UnsupportedOperation
from cloudckpt.storage.base import ObjectInfo, PendingUpload, Upload

__all__ = ["CONNECT_TIMEOUT", "READ_TIMEOUT", "Backend", "BackendBase", "check_storage_class",
           "generic_object_info",
           "to_datetime"]

#: Default per-request timeouts (seconds) applied to every network backend.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 120.0


class Backend(Protocol):
    """Extension point: one implementation per fsspec protocol family."""

    #: smallest non-final part a multipart upload accepts
    min_part_size: int
    #: canonical names of the storage classes / tiers, or empty when unsupported
    storage_classes: frozenset[str]

    def make_fs(self, options: Mapping[str, Any], bucket: str) -> Any:
        """Build the fsspec filesystem from user ``options`` (which win over our defaults)."""

    def put(self, fs: Any, path: str, data: bytes | memoryview, *, create_only: bool,
            storage_class: str | None) -> None:
        """Write one object whole, atomically create-only when asked."""

    def start_upload(self, fs: Any, path: str, key: str, *, create_only: bool,
                     storage_class: str | None) -> Upload:
        """Begin a multipart / resumable / block upload."""

    def set_storage_class(self, fs: Any, path: str, storage_class: str) -> None:
        """Change an object's storage class in place."""

    def info_to_object(self, fs: Any, path: str, key: str, info: Mapping[str, Any],
                       *, full: bool) -> ObjectInfo:
        """Normalise fsspec's info dict. ``full`` (stat of one object) may spend an extra
        request to learn the storage class; listings never do."""

    def guard(self, root: str, key: str) -> None:
        """Refuse to touch ``key`` under ``root`` when that could leave the root (local: a
        symlink or special file on the way). Called before every operation on a key.

        Raises:
            CorruptCheckpoint: the key leads through a symlink or to a special file.
        """

    def is_internal(self, path: str) -> bool:
        """Whether ``path`` is a temporary object of ours that listings must hide."""

    def after_delete(self, fs: Any, paths: list[str], root: str) -> None:
        """Tidy up after deleting ``paths`` (local: prune directories left empty, up to
        ``root``; object stores: nothing)."""

    def list_pending(self, fs: Any, root: str) -> list[tuple[str, PendingUpload]]:
        """Pending uploads under ``root`` as (fsspec path, record) pairs."""

    def abort_pending(self, fs: Any, path: str, pending: PendingUpload) -> None:
        """Abort one pending upload."""


class BackendBase:
    """The no-op defaults a backend inherits: no storage classes, no internal objects, nothing
    to tidy after deletes, no listable pending uploads. Subclasses supply ``make_fs``,
    ``put``, ``start_upload`` and ``info_to_object``."""

    min_part_size: int = 1
    storage_classes: frozenset[str] = frozenset()
    protocol: str = "this"

    def set_storage_class(self, fs: Any, path: str, storage_class: str) -> None:
        self.no_class(storage_class)
        raise UnsupportedOperation(f"{self.protocol} stores cannot change storage classes")

    def no_class(self, storage_class: str | None) -> None:
        """Refuse a storage class on a backend without any.

        Raises:
            UnsupportedOperation: ``storage_class`` is given.
        """
        if storage_class is not None and not self.storage_classes:
            raise UnsupportedOperation(f"{self.protocol} stores have no storage classes")

    def guard(self, root: str, key: str) -> None:
        return None  # object stores have no links: a key names exactly one object

    def is_internal(self, path: str) -> bool:
        return False

    def after_delete(self, fs: Any, paths: list[str], root: str) -> None:
        return None

    def list_pending(self, fs: Any, root: str) -> list[tuple[str, PendingUpload]]:
        return []

    def abort_pending(self, fs: Any, path: str, pending: PendingUpload) -> None:
        return None

def to_datetime(value: Any) -> datetime | None:
    """Normalise the many mtime spellings of fsspec backends to an aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(float(value), tz=timezone.utc)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


def generic_object_info(key: str, info: Mapping[str, Any], *, etag_field: str,
                        mtime_fields: tuple[str, ...], storage_class: str | None) -> ObjectInfo:
    """Build an :class:`ObjectInfo` from an fsspec info dict."""
    mtime = next((to_datetime(info[f]) for f in mtime_fields if info.get(f) is not None), None)
    etag = info.get(etag_field)
    return ObjectInfo(key=key, size=int(info.get("size") or 0),
                      etag=str(etag) if etag is not None else None, mtime=mtime,
                      storage_class=storage_class)


def check_storage_class(value: str, allowed: frozenset[str], protocol: str) -> str:
    """Return the canonical spelling of ``value`` among ``allowed`` (case-insensitive).

    Raises:
        UnsupportedOperation: the backend has no storage classes.
        InvalidArgument: ``value`` is not one of them.
    """
    if not allowed:
        raise UnsupportedOperation(f"{protocol} stores have no storage classes / tiers")
    by_lower = {c.lower(): c for c in allowed}
    try:
        return by_lower[value.lower()]
    except KeyError:
        raise InvalidArgument(
            f"unknown {protocol} storage class {value!r}; choose one of {sorted(allowed)}"
        ) from None
