"""One storage layer for local paths, ``file://``, ``memory://``, ``s3://``, ``gs://`` and
``az://`` / ``abfs://``, extensible with :func:`register_backend`.

Entry points (any thread may call them):

- :func:`open_store` turns a URI into a retrying :class:`Store`.
- :func:`stream_write` writes an object from an iterable of byte chunks in bounded parts.
- :func:`copy_object` copies one object, server-side within a store, streamed across stores.
"""

from __future__ import annotations

from cloudckpt.storage.base import ObjectInfo, PendingUpload, Store, Upload
from cloudckpt.storage.prefixed import substore
from cloudckpt.storage.registry import BackendSpec, backend_for, open_store, register_backend
from cloudckpt.storage.retry import RetryingStore, RetryPolicy
from cloudckpt.storage.transfer import DEFAULT_PART_SIZE, copy_object, stream_write
from cloudckpt.storage.uri import StoreURI, parse_uri, validate_key

__all__ = [
    "DEFAULT_PART_SIZE",
    "BackendSpec",
    "ObjectInfo",
    "PendingUpload",
    "RetryPolicy",
    "RetryingStore",
    "Store",
    "StoreURI",
    "Upload",
    "backend_for",
    "copy_object",
    "open_store",
    "parse_uri",
    "register_backend",
    "stream_write",
    "substore",
    "validate_key",
]
