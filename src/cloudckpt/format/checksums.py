"""Chunk checksums (xxh3-64, hex) and the one place a stored chunk is checked and decoded.
Pure: callers bring the bytes."""

from __future__ import annotations

from typing import Any

import numpy as np
import xxhash

from cloudckpt.errors import CorruptCheckpoint
from cloudckpt.format.codecs import get_codec
from cloudckpt.format.manifest import ChunkRecord

__all__ = ["checksum", "decode_chunk"]


def checksum(data: bytes | memoryview | np.ndarray[Any, Any]) -> str:
    """The xxh3-64 hex digest the manifest records for ``data``. Any caller."""
    return xxhash.xxh3_64_hexdigest(data)  # type: ignore[arg-type]  # ndarray is a buffer


def decode_chunk(c: ChunkRecord, stored: bytes | memoryview, *, verify: bool = True,
                 out: np.ndarray[Any, Any] | None = None) -> Any:
    """Check ``stored`` against ``c`` and decode it: into ``out`` (a writable uint8 array of
    ``c.raw_size`` bytes) when given, else into new memory, which is returned. Decoding never
    allocates more than ``c.raw_size`` bytes. Any thread may call this.

    Raises:
        CorruptCheckpoint: wrong size, a checksum fails (``verify``), or the codec cannot
            decode the bytes; the message says which, without naming the object.
    """
    if len(stored) != c.stored_size:
        raise CorruptCheckpoint(f"is {len(stored)} bytes where {c.stored_size} were recorded")
    if verify and checksum(stored) != c.stored_xxh3:
        raise CorruptCheckpoint("stored bytes fail their checksum")
    codec = get_codec(c.codec)
    try:
        if out is not None:
            codec.decode_into(stored, out, c.itemsize)
            raw: Any = out
        else:
            raw = np.frombuffer(codec.decode(stored, c.raw_size, c.itemsize), dtype=np.uint8)
    except CorruptCheckpoint as e:
        raise CorruptCheckpoint(f"cannot be decoded ({e})") from e
    if verify and c.codec != "none" and checksum(raw) != c.raw_xxh3:
        raise CorruptCheckpoint("decoded bytes fail their checksum")
    return raw
