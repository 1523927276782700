"""Delta chunks: a changed float chunk stored as the XOR of its bit patterns with the same
tensor region in an earlier checkpoint (codec ``xor-bg-zstd``), and how one is read back.

A delta's manifest record names its base by index (``ChunkRecord.base``); the base is a chunk
record of the same manifest (usually a reference into the earlier checkpoint), itself full or
a delta, so a manifest carries each chain whole and a reader needs nothing else. Chains are
bounded in length (a full chunk at least every ``IncrementalOptions.full_every`` saves;
manifests with chains longer than ``MAX_CHAIN`` are refused) and in bytes: a delta is written
only while the chain a restore reads stays within ``READ_BUDGET`` (1.3) times the full chunk,
so deltas go to tensors that change little (weights between nearby steps) and fast-moving
state (Adam moments) is stored whole.

Who calls what: the writer asks a :class:`DeltaSource` (the manager's cache of the previous
save) for a base per chunk; the reader and ``verify`` call :func:`materialize`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from cloudckpt.errors import CorruptCheckpoint
from cloudckpt.format.checksums import decode_chunk
from cloudckpt.format.manifest import ChunkRecord, Manifest
from cloudckpt.storage import Store

__all__ = ["READ_BUDGET", "DeltaBase", "DeltaSource", "chain", "link_chains", "materialize"]

#: a delta is written only while its whole chain (what a restore reads for that chunk) stays
#: within this many times the stored size of the full chunk at the chain's end
READ_BUDGET = 1.3


@dataclass(frozen=True)
class DeltaBase:
    """What a new delta is taken against: the base's raw bytes (uint8) and its chain of
    records, the base first, down to a full chunk (``base`` fields are re-linked on write)."""

    raw: np.ndarray[Any, Any]
    chain: tuple[ChunkRecord, ...]


class DeltaSource(Protocol):
    """Bases for deltas, by tensor region."""

    def base_for(self, path: str, start: int, length: int) -> DeltaBase | None:
        """The base for bytes ``[start, start + length)`` of the tensor at ``path``, or None
        (no earlier copy, or its chain is as long as allowed: write a full chunk)."""


def chain(m: Manifest, ci: int) -> list[int]:
    """Chunk ``ci`` and its bases, down to the full chunk (validated manifests only)."""
    out = [ci]
    while m.chunks[out[-1]].base is not None:
        out.append(m.chunks[out[-1]].base)  # type: ignore[arg-type]
    return out


def materialize(m: Manifest, ci: int, resolve: Callable[[str], tuple[Store, str]],
                verify: bool = True) -> np.ndarray[Any, Any]:
    """The decoded bytes of chunk ``ci`` of ``m``: each link of its chain read (ranged, capped
    at its stored size) and decoded from the full chunk up. Memory: two chunks. Any thread.

    Raises:
        CorruptCheckpoint: a link is short or fails its checks. StorageError: a read failed.
    """
    raw: np.ndarray[Any, Any] | None = None
    for i in reversed(chain(m, ci)):
        c = m.chunks[i]
        store, key = resolve(c.object)
        stored = store.get_range(key, c.offset, c.offset + c.stored_size)
        try:
            raw = decode_chunk(c, stored, verify=verify, base_raw=raw)
        except CorruptCheckpoint as e:
            raise CorruptCheckpoint(f"{c.object}: chunk {i} {e}") from e
    assert raw is not None
    return raw


def link_chains(records: list[ChunkRecord],
                chains: dict[int, tuple[ChunkRecord, ...]]) -> list[ChunkRecord]:
    """``records`` (one per planned chunk; deltas among them) with each delta's chain of
    bases appended once and every ``base`` index set. Pure."""
    out = list(records)
    where: dict[tuple[str, int], int] = {}
    for ci in sorted(chains):
        prev = ci
        for rec in chains[ci]:
            key = (rec.object, rec.offset)
            if key in where:
                out[prev] = replace(out[prev], base=where[key])
                break
            where[key] = len(out)
            out.append(replace(rec, base=None))
            out[prev] = replace(out[prev], base=where[key])
            prev = where[key]
    return out
