"""One storage layer for local paths, ``file://``, ``memory://``, ``s3://``, ``gs://`` and
``az://`` / ``abfs://``.

Entry points (any thread may call them):

- :func:`open_store` turns a URI into a retrying :class:`Store`.
- :func:`stream_write` writes an object from an iterable of byte chunks in bounded parts.
- :func:`copy_object` copies one object, server-side within a store, streamed across stores.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from typing import Any

from cloudckpt.errors import InvalidArgument
from cloudckpt.storage.azure import AzureBackend
from cloudckpt.storage.backend import Backend
from cloudckpt.storage.base import ObjectInfo, PendingUpload, Store, Upload, iter_parts
from cloudckpt.storage.fsspec_store import FsspecStore
from cloudckpt.storage.gcs import GCSBackend
from cloudckpt.storage.local import LocalBackend, MemoryBackend
from cloudckpt.storage.prefixed import substore
from cloudckpt.storage.retry import RetryingStore, RetryPolicy
from cloudckpt.storage.s3 import S3Backend
from cloudckpt.storage.uri import StoreURI, parse_uri, validate_key

__all__ = [
    "DEFAULT_PART_SIZE",
    "ObjectInfo",
    "PendingUpload",
    "RetryPolicy",
    "RetryingStore",
    "Store",
    "StoreURI",
    "Upload",
    "copy_object",
    "open_store",
    "parse_uri",
    "stream_write",
    "substore",
    "validate_key",
]

DEFAULT_PART_SIZE = 8 * 1024 * 1024
_PART_ALIGN = 256 * 1024  # GCS resumable chunks; harmless elsewhere

_BACKENDS: Mapping[str, Backend] = {
    "file": LocalBackend(),
    "memory": MemoryBackend(),
    "s3": S3Backend(),
    "gcs": GCSBackend(),
    "az": AzureBackend(),
}


def open_store(uri: str | os.PathLike[str] | Store, *,
               storage_options: Mapping[str, Any] | None = None,
               retry: RetryPolicy | None = None) -> Store:
    """Open the store rooted at ``uri``.

    ``storage_options`` go to the fsspec filesystem (``endpoint_url``, ``key``/``secret``,
    ``token``, ``connection_string``, ``anon``, ...); each cloud's standard environment
    variables and credential chains apply as usual. A :class:`Store` passes through unchanged.
    Nothing is contacted until the first operation.

    Raises:
        InvalidURI: malformed URI, unknown scheme, missing bucket.
        ImportError: the extra for that cloud (``cloudckpt[s3]``...) is not installed.
    """
    if not isinstance(uri, (str, os.PathLike)):
        return uri
    parsed = parse_uri(uri)
    backend = _BACKENDS[parsed.protocol]
    opts = dict(storage_options or {})
    if parsed.protocol == "az" and "@" in parsed.original.split("://", 1)[1].split("/", 1)[0]:
        host = parsed.original.split("://", 1)[1].split("/", 1)[0].split("@", 1)[1]
        opts.setdefault("account_name", host.split(".", 1)[0])
    fs = backend.make_fs(opts, parsed.bucket)
    return RetryingStore(FsspecStore(parsed, backend, fs), retry)


def stream_write(store: Store, key: str, chunks: Iterable[bytes | memoryview], *,
                 part_size: int = DEFAULT_PART_SIZE, create_only: bool = False,
                 storage_class: str | None = None) -> int:
    """Write ``key`` from ``chunks`` in parts of ``part_size`` bytes (rounded up to the
    backend's minimum and to 256 KiB), holding at most about two parts in memory. Returns the
    number of bytes written. On any error the upload is aborted and nothing becomes visible.

    Raises:
        AlreadyExists: ``create_only`` and the object exists.
        InvalidArgument: ``part_size`` is not positive.
    """
    if part_size <= 0:
        raise InvalidArgument(f"part_size must be positive, got {part_size}")
    part_size = max(part_size, store.min_part_size)
    part_size = -(-part_size // _PART_ALIGN) * _PART_ALIGN
    up = store.start_upload(key, create_only=create_only, storage_class=storage_class)
    total = 0
    try:
        pending: bytes | None = None
        for part in iter_parts(chunks, part_size):
            if pending is not None:
                up.write_part(pending)
            pending = part
            total += len(part)
        up.finish(pending or b"")
    except BaseException:
        with contextlib.suppress(BaseException):
            up.abort()
        raise
    return total


def copy_object(src: Store, src_key: str, dst: Store, dst_key: str, *,
                part_size: int = DEFAULT_PART_SIZE, create_only: bool = False) -> int:
    """Copy one object; server-side when both keys are in the same store, otherwise streamed
    in ranged reads of ``part_size`` (bounded memory, any pair of backends). Returns its size.

    Raises:
        NotFound: the source does not exist. AlreadyExists: ``create_only`` and dst exists.
    """
    size = src.stat(src_key).size
    if src is dst and not create_only:
        src.copy(src_key, dst_key)
        return size

    def chunks() -> Iterable[bytes]:
        for start in range(0, size, part_size):
            yield src.get_range(src_key, start, min(size, start + part_size))

    return stream_write(dst, dst_key, chunks(), part_size=part_size, create_only=create_only)
