"""Content-addressed chunk reuse: which stored chunks a new save may reference instead of
uploading. Pure data; the engine's writer looks chunks up, the manager decides which
checkpoints may be referenced (see :mod:`cloudckpt.manager.sharing`).

A chunk is identified by its raw (decoded) bytes' xxh3-128 digest, its raw size, codec and
element size: a chunk with the same identity decodes to the same bytes with the same codec, so
its stored bytes can stand in for it. Only manifests that record 128-bit digests (format 2)
take part. Large tensors are cut into chunks at fixed offsets from their start, so a tensor
that changes in one region shares every other chunk with the previous save.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace

from cloudckpt.format.keys import ref_to, run_key
from cloudckpt.format.manifest import ChunkRecord, Manifest

__all__ = ["ChunkId", "DedupIndex"]

ChunkId = tuple[str, int, str, int]  # raw xxh3-128, raw size, codec, itemsize


@dataclass(frozen=True)
class DedupIndex:
    """Chunks that may be referenced, by identity, each with its record rewritten as a
    reference (``@<checkpoint>/<key>``) valid for any checkpoint under the same parent."""

    entries: Mapping[ChunkId, ChunkRecord] = field(default_factory=dict)

    @classmethod
    def of(cls, sources: Iterable[tuple[str, Manifest]], *,
           blocked: Collection[str] = ()) -> DedupIndex:
        """Index the chunks of ``sources`` (checkpoint name under the parent, its manifest),
        leaving out chunks in objects whose parent-relative key is in ``blocked``. Pure.

        Raises:
            InvalidKey: a manifest holds a reference that leaves the parent (never for a
                validated manifest).
        """
        entries: dict[ChunkId, ChunkRecord] = {}
        for name, m in sources:
            for c in m.chunks:
                if len(c.raw_xxh3) != 32 or c.base is not None:
                    continue  # 64-bit digests (format 1) are no addresses; deltas need a base
                key = run_key(name, c.object)
                if key in blocked:
                    continue
                entries.setdefault((c.raw_xxh3, c.raw_size, c.codec, c.itemsize),
                                   replace(c, object=ref_to(key)))
        return cls(entries)

    def lookup(self, raw_xxh3: str, raw_size: int, codec: str,
               itemsize: int) -> ChunkRecord | None:
        """The reference record for a chunk with this identity, or None."""
        return self.entries.get((raw_xxh3, raw_size, codec, itemsize))

    def __len__(self) -> int:
        return len(self.entries)
