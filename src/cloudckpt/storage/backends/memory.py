"""``memory://``: fsspec's process-wide in-memory filesystem, for fast unit tests."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import fsspec

from cloudckpt.storage.backends.base import BackendBase, generic_object_info
from cloudckpt.storage.base import ObjectInfo, Upload

__all__ = ["MemoryBackend"]


class _MemoryUpload:
    def __init__(self, backend: MemoryBackend, fs: Any, path: str, key: str,
                 create_only: bool) -> None:
        self.key = key
        self._backend, self._fs, self._path, self._create_only = backend, fs, path, create_only
        self._parts: list[bytes] = []

    def write_part(self, data: bytes | memoryview) -> None:
        self._parts.append(bytes(data))

    def finish(self, tail: bytes | memoryview = b"") -> None:
        self._parts.append(bytes(tail))
        self._backend.put(self._fs, self._path, b"".join(self._parts),
                          create_only=self._create_only, storage_class=None)
        self._parts = []

    def abort(self) -> None:
        self._parts = []


class MemoryBackend(BackendBase):
    """``memory://``: fsspec's process-wide in-memory filesystem, for fast unit tests."""

    protocol = "memory"

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def make_fs(self, options: Mapping[str, Any], bucket: str) -> Any:
        return fsspec.filesystem("memory", **options)

    def put(self, fs: Any, path: str, data: bytes | memoryview, *, create_only: bool,
            storage_class: str | None) -> None:
        self.no_class(storage_class)
        with self._lock:  # make check-and-create atomic across threads
            fs.pipe_file(path, bytes(data), mode="create" if create_only else "overwrite")

    def start_upload(self, fs: Any, path: str, key: str, *, create_only: bool,
                     storage_class: str | None) -> Upload:
        self.no_class(storage_class)
        return _MemoryUpload(self, fs, path, key, create_only)

    def info_to_object(self, fs: Any, path: str, key: str, info: Mapping[str, Any],
                       *, full: bool) -> ObjectInfo:
        return generic_object_info(key, {**info, "etag": f"{info.get('created')}-{info.get('size')}"},
                                   etag_field="etag", mtime_fields=("created",), storage_class=None)
