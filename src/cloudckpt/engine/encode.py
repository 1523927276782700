"""Encoding one chunk of a save into its worker's reused body buffer: plain (the chunk's
codec, straight into the buffer when the codec can) or, with a delta source, as a delta
against the previous copy of the same tensor region when that pays under the read budget.

Who calls what: :mod:`cloudckpt.engine.writer`'s upload workers, each with its own buffer.
"""

from __future__ import annotations

import numpy as np

from cloudckpt.engine.delta import READ_BUDGET, DeltaBase, DeltaSource
from cloudckpt.format.chunking import ChunkPlan
from cloudckpt.format.codecs import XorBGZstdCodec, get_codec

__all__ = ["SLACK", "encode_chunk"]


#: body bytes reserved per chunk beyond its raw size (plane headers); an encoding that needs
#: more grows the worker's buffer
SLACK = 4 + 9 * 16


def encode_chunk(plan: ChunkPlan, raw: memoryview, delta: tuple[DeltaSource, list[str]] | None,
            out: np.ndarray) -> tuple[str, int | bytes, DeltaBase | None]:
    """Encode one chunk into ``out``: (codec, stored size, base if a delta); in place of the
    size, the stored bytes when they do not fit in ``out``. A delta against the previous
    copy of the same tensor region when there is one and its whole chain (what a restore
    reads) stays within ``READ_BUDGET`` times the full chunk's stored size."""
    base = None
    if delta is not None and plan.codec == "bg-zstd" and len(plan.pieces) == 1:
        li, start, end = plan.pieces[0]
        base = delta[0].base_for(delta[1][li], start, end - start)
    # a restore reads the whole chain: it may cost at most READ_BUDGET x the full chunk
    budget = READ_BUDGET * base.chain[-1].stored_size if base is not None else 0.0
    spent = sum(c.stored_size for c in base.chain) if base is not None else 0
    if base is None or base.raw.size != len(raw) or spent >= budget:
        return plan.codec, _encode_plain(plan, raw, out), None
    xor = np.bitwise_xor(np.frombuffer(raw, dtype=np.uint8), base.raw)
    enc = XorBGZstdCodec().encode(xor.data, plan.itemsize)
    if spent + len(enc) > budget:  # weights that moved a lot: a full chunk restores faster
        return plan.codec, _encode_plain(plan, raw, out), None
    return XorBGZstdCodec.name, _place(enc, out), base


def _encode_plain(plan: ChunkPlan, raw: memoryview, out: np.ndarray) -> int | bytes:
    """Codecs with ``encode_into`` write straight into ``out``; others are copied there."""
    codec = get_codec(plan.codec)
    into = getattr(codec, "encode_into", None)
    size = into(raw, plan.itemsize, out) if into is not None else None
    return size if size is not None else _place(codec.encode(raw, plan.itemsize), out)


def _place(enc: bytes | memoryview, out: np.ndarray) -> int | bytes:
    if len(enc) > out.size:
        return bytes(enc)
    out[:len(enc)] = np.frombuffer(enc, dtype=np.uint8)
    return len(enc)
