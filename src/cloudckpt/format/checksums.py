"""Chunk checksums and the one place a stored chunk is checked and decoded. Pure: callers
bring the bytes.

New saves record xxh3-128 (32 hex digits): the raw checksum doubles as the content address
that incremental saves deduplicate by (:mod:`cloudckpt.format.dedup`), where 64 bits would
leave accidental collisions within reach of very large runs. Manifests written before record
xxh3-64 (16 hex digits); both are verified by the length of the recorded digest.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xxhash

from cloudckpt.errors import CorruptCheckpoint
from cloudckpt.format.codecs import get_codec
from cloudckpt.format.manifest import ChunkRecord

__all__ = ["checksum", "decode_chunk", "matches"]

Buffer = bytes | memoryview | np.ndarray[Any, Any]


def checksum(data: Buffer) -> str:
    """The xxh3-128 hex digest new manifests record for ``data``. Any caller."""
    return xxhash.xxh3_128_hexdigest(data)  # type: ignore[arg-type]  # ndarray is a buffer


def matches(data: Buffer, recorded: str) -> bool:
    """Whether ``data`` has the digest ``recorded`` (xxh3-128 for 32 hex digits, xxh3-64 for
    16, as older manifests record). Any caller."""
    if len(recorded) == 16:
        return xxhash.xxh3_64_hexdigest(data) == recorded  # type: ignore[arg-type]
    return checksum(data) == recorded


def decode_chunk(c: ChunkRecord, stored: bytes | memoryview, *, verify: bool = True,
                 out: np.ndarray[Any, Any] | None = None,
                 base_raw: Buffer | None = None) -> Any:
    """Check ``stored`` against ``c`` and decode it: into ``out`` (a writable uint8 array of
    ``c.raw_size`` bytes) when given, else into new memory, which is returned. Decoding never
    allocates more than ``c.raw_size`` bytes. A delta chunk (``c.base`` set) needs
    ``base_raw``, the decoded bytes of its base; without it only the stored bytes and their
    encoding are checked, and the XOR is returned (for repair, which works on stored bytes).
    Any thread may call this.

    Raises:
        CorruptCheckpoint: wrong size, a checksum fails (``verify``), or the codec cannot
            decode the bytes; the message says which, without naming the object.
    """
    if len(stored) != c.stored_size:
        raise CorruptCheckpoint(f"is {len(stored)} bytes where {c.stored_size} were recorded")
    if verify and not matches(stored, c.stored_xxh3):
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
    if c.base is not None:
        if base_raw is None:
            return raw
        base = np.frombuffer(base_raw, dtype=np.uint8)
        if base.size != c.raw_size:
            raise CorruptCheckpoint("its base has another size")
        if not raw.flags.writeable:
            raw = raw.copy()
        np.bitwise_xor(raw, base, out=raw)
    if verify and c.codec != "none" and not matches(raw, c.raw_xxh3):
        raise CorruptCheckpoint("decoded bytes fail their checksum")
    return raw
