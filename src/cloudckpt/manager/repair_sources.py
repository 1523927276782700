"""Where ``repair`` finds intact copies of damaged chunks, and how it checks and rebuilds one
data object from them. Reads only; nothing here writes.

A *donor* is a chunk recorded in some validated manifest the run knows (another checkpoint
of the run, an archived copy, a replica given with ``--from``, or a healthy chunk of the same
checkpoint) whose raw bytes have the same checksum and size as the damaged chunk. Its stored
bytes are read (capped at their recorded size) and verified against the donor's own record;
then they are used as they are when they also match the damaged chunk's stored checksum, or
decoded and re-encoded with the damaged chunk's codec otherwise. Either way the result is
accepted only if it passes every check of the damaged chunk's own record (size, stored and
raw checksums): a donor can never put bytes into a checkpoint that its manifest does not
vouch for.

Who calls what: :mod:`.repair`, on the thread that runs it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cloudckpt.errors import CorruptCheckpoint, NotFound
from cloudckpt.format.checksums import decode_chunk
from cloudckpt.format.codecs import get_codec
from cloudckpt.format.manifest import ChunkRecord, Manifest
from cloudckpt.storage import Store

__all__ = ["Donor", "DonorIndex", "ObjectDamage", "Rebuilt", "check_objects", "chunk_owners",
           "object_chunks", "rebuild_object"]

log = logging.getLogger("cloudckpt.manager")
_MAX_DONORS_PER_CHUNK = 16


@dataclass(frozen=True)
class Donor:
    """A chunk recorded by a validated manifest at ``store``; ``label`` says where, in words."""

    store: Store
    chunk: ChunkRecord
    label: str


@dataclass
class DonorIndex:
    """Donor chunks by (raw checksum, raw size), in the order they were added (callers add
    the cheapest sources first). Filled by one thread, then read."""

    _by_raw: dict[tuple[str, int], list[Donor]] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)

    def add(self, store: Store, manifest: Manifest, label: str) -> None:
        """Offer every chunk of ``manifest`` (the checkpoint at ``store``) that lives in an
        object of its own (sibling references are offered by their owner)."""
        self.sources.append(label)
        for c in manifest.chunks:
            if not c.object.startswith("@"):
                self._by_raw.setdefault((c.raw_xxh3, c.raw_size), []).append(
                    Donor(store, c, label))

    def candidates(self, c: ChunkRecord) -> list[Donor]:
        """Donors whose raw bytes should equal those of ``c``."""
        return self._by_raw.get((c.raw_xxh3, c.raw_size), [])


@dataclass(frozen=True)
class ObjectDamage:
    """One damaged data object: what is wrong, and which chunks (manifest indices) in it do
    not verify. ``bad_chunks`` may be empty when only the object's length is wrong."""

    key: str
    problem: str
    bad_chunks: tuple[int, ...]


@dataclass(frozen=True)
class Rebuilt:
    """A data object rebuilt in memory (``data`` is ``None`` when it could not be): every
    chunk verified; ``sources`` names where restored chunks came from; ``missing`` says which
    chunk found no intact copy."""

    key: str
    data: bytes | None
    sources: tuple[str, ...] = ()
    missing: str = ""


def chunk_owners(m: Manifest) -> dict[int, str]:
    """Per chunk index, up to three tensor paths stored in it, for messages."""
    owners: dict[int, list[str]] = {}
    for t in m.tensors:
        for s in t.segments:
            owners.setdefault(s.chunk, []).append(t.path)
    return {i: ", ".join(sorted(set(p))[:3]) for i, p in owners.items()}


def object_chunks(m: Manifest) -> dict[str, list[int]]:
    """Chunk indices per own data object of ``m`` (sibling references left out)."""
    out: dict[str, list[int]] = {}
    for i, c in enumerate(m.chunks):
        if not c.object.startswith("@"):
            out.setdefault(c.object, []).append(i)
    return out


def _object_size(m: Manifest, ids: list[int]) -> int:
    return max(m.chunks[i].offset + m.chunks[i].stored_size for i in ids)


def _read_own(store: Store, key: str, size: int) -> tuple[bytes, str]:
    """The object's bytes, read capped at ``size + 1``, and what is wrong with its length
    (``""`` if nothing). Unreadable (gone, or refused as unsafe) reads as empty.

    Raises:
        StorageError: the store failed for another reason (never taken for damage).
    """
    try:
        data = store.get_range(key, 0, size + 1)
    except (NotFound, CorruptCheckpoint) as e:
        return b"", f"cannot be read: {e}"
    if len(data) != size:
        return data, f"{len(data)}{'+' if len(data) > size else ''} bytes, expected {size} " \
                     f"({'truncated' if len(data) < size else 'has bytes appended'})"
    return data, ""


def check_objects(store: Store, m: Manifest, max_workers: int = 4) -> list[ObjectDamage]:
    """Every damaged own data object of the checkpoint at ``store`` described by ``m``
    (missing, wrong length, chunks that fail their checks), sorted by key. Reads each object
    once, capped at its declared size + 1, at most ``max_workers`` at a time.

    Raises:
        StorageError: a read failed for a reason other than the object being gone (a
            transient failure is never taken for damage).
    """
    by_obj = object_chunks(m)
    owners = chunk_owners(m)

    def check(key: str) -> ObjectDamage | None:
        ids = by_obj[key]
        data, problem = _read_own(store, key, _object_size(m, ids))
        bad: list[int] = []
        notes: list[str] = []
        for i in ids:
            c = m.chunks[i]
            try:
                decode_chunk(c, data[c.offset:c.offset + c.stored_size])
            except CorruptCheckpoint as e:
                bad.append(i)
                notes.append(f"chunk {i} ({owners.get(i, 'no tensor')}) {e}")
        if not problem and not bad:
            return None
        text = "; ".join(([problem] if problem else []) + notes[:3]
                         + ([f"{len(notes) - 3} more chunks"] if len(notes) > 3 else []))
        return ObjectDamage(key, text, tuple(bad))

    with ThreadPoolExecutor(max(1, min(max_workers, len(by_obj) or 1))) as pool:
        found = [d for d in pool.map(check, sorted(by_obj)) if d is not None]
    return found


def _from_donor(c: ChunkRecord, d: Donor) -> tuple[bytes, str] | None:
    """``c``'s stored bytes made from donor ``d``, fully checked against ``c``; None if the
    donor is gone, damaged or does not re-encode to ``c``'s bytes.

    Raises:
        StorageError: the donor could not be read for another reason than being gone.
    """
    dc = d.chunk
    try:
        stored = d.store.get_range(dc.object, dc.offset, dc.offset + dc.stored_size)
        if dc.stored_xxh3 == c.stored_xxh3 and dc.stored_size == c.stored_size:
            decode_chunk(c, stored)
            return bytes(stored), f"{d.label} (copied)"
        raw = decode_chunk(dc, stored)
        enc = bytes(get_codec(c.codec).encode(memoryview(raw).cast("B"), c.itemsize))
        decode_chunk(c, enc)
        return enc, f"{d.label} (re-encoded)"
    except (NotFound, CorruptCheckpoint) as e:
        log.info("donor chunk %s@%d in %s not usable: %s", dc.object, dc.offset, d.label, e)
        return None


def rebuild_object(store: Store, key: str, m: Manifest, donors: DonorIndex) -> Rebuilt:
    """Rebuild data object ``key`` of the checkpoint at ``store`` (described by ``m``) in
    memory: each chunk from the object's own bytes when they verify, else from the first
    donor that yields bytes passing the chunk's checks. Bytes between chunks (never read by
    a loader) are kept from the object where it has them. Memory: the object plus one chunk.

    Raises:
        StorageError: a read failed for a reason other than missing or damaged data.
    """
    ids = object_chunks(m).get(key, [])
    if not ids:
        return Rebuilt(key, None, missing="not an object of this checkpoint")
    size = _object_size(m, ids)
    own, _problem = _read_own(store, key, size)
    buf = bytearray(own[:size].ljust(size, b"\0"))
    owners = chunk_owners(m)
    sources: list[str] = []
    for i in ids:
        c = m.chunks[i]
        mine = own[c.offset:c.offset + c.stored_size]
        piece: bytes | None = mine
        try:
            decode_chunk(c, mine)
        except CorruptCheckpoint:
            piece = None
            for d in _donors_for(c, donors, store, key):
                got = _from_donor(c, d)
                if got is not None:
                    piece, src = got
                    sources.append(f"chunk {i} from {src}")
                    break
        if piece is None:
            return Rebuilt(key, None, missing=f"chunk {i} ({owners.get(i, 'no tensor')}): no "
                                              "intact copy in the run, its archives or replicas")
        buf[c.offset:c.offset + c.stored_size] = piece
    data = bytes(buf)
    for i in ids:  # overlapping records in a hostile manifest cannot slip through
        c = m.chunks[i]
        try:
            decode_chunk(c, data[c.offset:c.offset + c.stored_size])
        except CorruptCheckpoint as e:
            return Rebuilt(key, None, missing=f"chunk {i}: rebuilt bytes do not verify ({e})")
    return Rebuilt(key, data, tuple(sources))


def _donors_for(c: ChunkRecord, donors: DonorIndex, store: Store, key: str) -> Iterable[Donor]:
    """Donors for ``c``, leaving out the damaged chunk itself; capped in number."""
    out = [d for d in donors.candidates(c)
           if not (d.store.uri == store.uri and d.chunk.object == key
                   and d.chunk.offset == c.offset)]
    return out[:_MAX_DONORS_PER_CHUNK]
