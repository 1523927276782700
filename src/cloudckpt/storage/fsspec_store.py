"""The one fsspec adapter that serves every backend (see :mod:`cloudckpt.storage.backends.base`)."""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from cloudckpt.errors import NotFound
from cloudckpt.storage.backends.base import Backend
from cloudckpt.storage.base import ObjectInfo, PendingUpload, Upload
from cloudckpt.storage.translate import translate_error
from cloudckpt.storage.uri import StoreURI, validate_key

__all__ = ["FsspecStore"]

T = TypeVar("T")
_DELETE_BATCH = 1000


class _TranslatingUpload:
    """Wraps a backend upload so that provider errors surface as ours."""

    def __init__(self, inner: Upload, uri: str) -> None:
        self._inner, self._uri = inner, uri
        self.key = inner.key

    def _run(self, op: str, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as e:
            raise translate_error(e, op, self._uri) from e

    def write_part(self, data: bytes | memoryview) -> None:
        self._run("upload part of", self._inner.write_part, data)

    def finish(self, tail: bytes | memoryview = b"") -> None:
        self._run("complete upload of", self._inner.finish, tail)

    def abort(self) -> None:
        self._run("abort upload of", self._inner.abort)


class FsspecStore:
    """A :class:`~cloudckpt.storage.base.Store` over an fsspec filesystem rooted at a URI.

    Thread-safe: fsspec's async backends run their requests on one event-loop thread, and
    every method here is a self-contained request sequence. Not retried: wrap it in
    :class:`~cloudckpt.storage.retry.RetryingStore` (``open_store`` does).
    """

    def __init__(self, uri: StoreURI, backend: Backend, fs: Any) -> None:
        self._uri, self._backend, self.fs = uri, backend, fs
        self._root = uri.root.rstrip("/") if uri.root != "/" else ""

    @property
    def uri(self) -> str:
        return self._uri.canonical

    @property
    def parsed_uri(self) -> StoreURI:
        return self._uri

    @property
    def protocol(self) -> str:
        return self._uri.protocol

    @property
    def min_part_size(self) -> int:
        return self._backend.min_part_size

    @property
    def storage_classes(self) -> frozenset[str]:
        return self._backend.storage_classes

    def __repr__(self) -> str:
        return f"FsspecStore({self.uri!r})"

    def _path(self, key: str) -> str:
        self._backend.guard(self._root, validate_key(key))
        return f"{self._root}/{key}"

    def _key_uri(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{key}"

    def _call(self, op: str, key: str, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        try:
            return fn(*args, **kw)
        except Exception as e:
            raise translate_error(e, op, self._key_uri(key)) from e

    # -- objects -------------------------------------------------------------------------------
    def put(self, key: str, data: bytes | memoryview, *, create_only: bool = False,
            storage_class: str | None = None) -> None:
        path = self._path(key)
        op = "create-only write of" if create_only else "write of"
        self._call(op, key, self._backend.put, self.fs, path, data, create_only=create_only,
                   storage_class=storage_class)

    def get(self, key: str) -> bytes:
        return bytes(self._call("read of", key, self.fs.cat_file, self._path(key)))

    def get_range(self, key: str, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        return bytes(self._call("ranged read of", key, self.fs.cat_file, self._path(key),
                                start=start, end=end))

    def get_range_into(self, key: str, start: int, out: memoryview) -> memoryview:
        if not len(out):
            return out
        read_into = getattr(self._backend, "read_into", None)
        if read_into is None:  # the backend's client hands back its own new bytes: no copy
            return memoryview(self.get_range(key, start, start + len(out)))
        n = self._call("ranged read of", key, read_into, self._path(key), start, out)
        return out[:n]

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        info = self._call("stat of", key, self.fs.info, path)
        if info.get("type") != "file":
            raise NotFound(f"stat of {self._key_uri(key)}: not an object (a prefix)")
        return self._call("stat of", key, self._backend.info_to_object, self.fs, path, key, info,
                          full=True)

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except NotFound:
            return False
        return True

    def list(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        base = self._path(prefix.rstrip("/")) if prefix.strip("/") else self._root
        found = self._call("list of", prefix, self.fs.find, base or "/", detail=True)
        out = []
        cut = len(self._root) + 1
        for path, info in found.items():
            norm = path if path.startswith("/") or not self._root.startswith("/") else "/" + path
            if info.get("type", "file") != "file" or self._backend.is_internal(norm):
                continue
            key = norm[cut:]
            if not key or (prefix.strip("/") and not key.startswith(prefix.strip("/") + "/")):
                continue
            out.append(self._backend.info_to_object(self.fs, norm, key, info, full=False))
        return sorted(out, key=lambda o: o.key)

    def delete(self, key: str) -> None:
        self._delete_one(key)
        self._backend.after_delete(self.fs, [self._path(key)], self._root)

    def _delete_one(self, key: str) -> None:
        with contextlib.suppress(NotFound):
            self._call("delete of", key, self.fs.rm_file, self._path(key))

    def delete_many(self, keys: Sequence[str]) -> None:
        paths = [self._path(k) for k in keys]
        if self.protocol in ("file", "memory"):
            for k in keys:
                self._delete_one(k)
            self._backend.after_delete(self.fs, paths, self._root)
            return
        for i in range(0, len(paths), _DELETE_BATCH):
            batch = paths[i:i + _DELETE_BATCH]
            try:
                self._call("batch delete under", keys[i], self.fs.rm, batch)
            except NotFound:
                for k in keys[i:i + _DELETE_BATCH]:
                    self._delete_one(k)

    def copy(self, src_key: str, dst_key: str) -> None:
        if self.protocol in ("file", "memory"):  # atomic publish through put
            self.put(dst_key, self.get(src_key))
            return
        self._call("copy to", dst_key, self.fs.copy, self._path(src_key), self._path(dst_key))

    def set_storage_class(self, key: str, storage_class: str) -> None:
        self._call("storage-class change of", key, self._backend.set_storage_class, self.fs,
                   self._path(key), storage_class)

    # -- uploads -------------------------------------------------------------------------------
    def start_upload(self, key: str, *, create_only: bool = False,
                     storage_class: str | None = None) -> Upload:
        up = self._call("start upload of", key, self._backend.start_upload, self.fs,
                        self._path(key), key, create_only=create_only, storage_class=storage_class)
        return _TranslatingUpload(up, self._key_uri(key))

    def list_pending_uploads(self, prefix: str = "") -> builtins.list[PendingUpload]:
        pend = self._call("list uploads of", prefix, self._backend.list_pending, self.fs,
                          self._root or "/")
        return [p for _, p in pend if p.key.startswith(prefix)]

    def abort_pending_upload(self, pending: PendingUpload) -> None:
        for path, p in self._call("list uploads of", pending.key, self._backend.list_pending,
                                  self.fs, self._root or "/"):
            if p.upload_id == pending.upload_id:
                self._call("abort upload of", pending.key, self._backend.abort_pending, self.fs,
                           path, p)
