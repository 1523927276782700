"""Streamed transfers on any :class:`~cloudckpt.storage.base.Store`: :func:`stream_write`
writes an object from an iterable of byte chunks in bounded parts; :func:`copy_object` copies
one object, server-side within a store, streamed across stores. Any thread may call them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from cloudckpt.errors import InvalidArgument
from cloudckpt.storage.base import Store, iter_parts

__all__ = ["DEFAULT_PART_SIZE", "copy_object", "stream_write"]

DEFAULT_PART_SIZE = 8 * 1024 * 1024
_PART_ALIGN = 256 * 1024  # GCS resumable chunks; harmless elsewhere


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
