"""A view of a store under a key prefix: ``substore(store, "step-1")`` is a Store whose keys
are relative to ``step-1/``. All calls go through the parent (its retries, its faults)."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import replace

from cloudckpt.storage.base import (
    ObjectInfo,
    PendingUpload,
    Store,
    StoreWrapper,
    Upload,
    read_range_into,
)
from cloudckpt.storage.uri import StoreURI, validate_key

__all__ = ["PrefixedStore", "substore"]


class PrefixedStore(StoreWrapper):
    """See the module docstring. Thread-safe if the parent is."""

    def __init__(self, inner: Store, prefix: str) -> None:
        super().__init__(inner)
        self.prefix = validate_key(prefix.strip("/"))

    def _k(self, key: str) -> str:
        return f"{self.prefix}/{validate_key(key)}"

    def _strip(self, info: ObjectInfo) -> ObjectInfo:
        return replace(info, key=info.key[len(self.prefix) + 1:])

    @property
    def uri(self) -> str:
        return f"{self.inner.uri.rstrip('/')}/{self.prefix}"

    @property
    def parsed_uri(self) -> StoreURI | None:
        parent: StoreURI | None = getattr(self.inner, "parsed_uri", None)
        return parent.child(self.prefix) if parent is not None else None

    def put(self, key: str, data: bytes | memoryview, *, create_only: bool = False,
            storage_class: str | None = None) -> None:
        self.inner.put(self._k(key), data, create_only=create_only, storage_class=storage_class)

    def get(self, key: str) -> bytes:
        return self.inner.get(self._k(key))

    def get_range(self, key: str, start: int, end: int) -> bytes:
        return self.inner.get_range(self._k(key), start, end)

    def get_range_into(self, key: str, start: int, out: memoryview) -> memoryview:
        return read_range_into(self.inner, self._k(key), start, out)

    def stat(self, key: str) -> ObjectInfo:
        return self._strip(self.inner.stat(self._k(key)))

    def exists(self, key: str) -> bool:
        return self.inner.exists(self._k(key))

    def list(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        full = self._k(prefix.strip("/")) if prefix.strip("/") else self.prefix
        return [self._strip(o) for o in self.inner.list(full)]

    def delete(self, key: str) -> None:
        self.inner.delete(self._k(key))

    def delete_many(self, keys: Sequence[str]) -> None:
        self.inner.delete_many([self._k(k) for k in keys])

    def copy(self, src_key: str, dst_key: str) -> None:
        self.inner.copy(self._k(src_key), self._k(dst_key))

    def set_storage_class(self, key: str, storage_class: str) -> None:
        self.inner.set_storage_class(self._k(key), storage_class)

    def start_upload(self, key: str, *, create_only: bool = False,
                     storage_class: str | None = None) -> Upload:
        return self.inner.start_upload(self._k(key), create_only=create_only,
                                       storage_class=storage_class)

    def list_pending_uploads(self, prefix: str = "") -> builtins.list[PendingUpload]:
        full = self._k(prefix.strip("/")) if prefix.strip("/") else self.prefix + "/"
        return [replace(p, key=p.key[len(self.prefix) + 1:])
                for p in self.inner.list_pending_uploads(full)]

    def abort_pending_upload(self, pending: PendingUpload) -> None:
        self.inner.abort_pending_upload(replace(pending, key=self._k(pending.key)))


def substore(store: Store, prefix: str) -> Store:
    """The view of ``store`` under ``prefix`` (raises InvalidKey for a bad prefix)."""
    return PrefixedStore(store, prefix)
