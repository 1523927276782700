"""The per-protocol strategy behind :class:`~cloudckpt.storage.fsspec_store.FsspecStore`.

fsspec does the generic work (read, ranged read, stat, list, delete, copy) identically on every
backend; a ``Backend`` supplies only what differs: how the filesystem is built (timeouts, no
nested retries), create-only and storage-class writes, multipart uploads, and pending uploads.
Backend methods may raise provider exceptions; the store translates them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from cloudckpt.storage.base import ObjectInfo, PendingUpload, Upload

__all__ = ["Backend"]

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

    def is_internal(self, path: str) -> bool:
        """Whether ``path`` is a temporary object of ours that listings must hide."""

    def after_delete(self, fs: Any, paths: list[str], root: str) -> None:
        """Tidy up after deleting ``paths`` (local: prune directories left empty, up to
        ``root``; object stores: nothing)."""

    def list_pending(self, fs: Any, root: str) -> list[tuple[str, PendingUpload]]:
        """Pending uploads under ``root`` as (fsspec path, record) pairs."""

    def abort_pending(self, fs: Any, path: str, pending: PendingUpload) -> None:
        """Abort one pending upload."""
