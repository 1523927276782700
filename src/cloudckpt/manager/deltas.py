"""The manager's memory of its previous save, for delta checkpoints
(``IncrementalOptions(delta=True)``): per tensor region, one host copy of the raw bytes it
saved and where they are stored, so that the next save can store changed float chunks as
deltas against them (:mod:`cloudckpt.engine.delta`). Host memory: one copy of the saved float
tensors (those of at least 64 KiB, which get chunks of their own).

Who calls what: :func:`cloudckpt.manager.writing.write_step` hands the cache to the writer
when the previous save it remembers is the one the new save builds on, and refills it after
each commit. Thread-safe (the training thread and the background saver may both use it).
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from cloudckpt.engine.delta import DeltaBase, chain
from cloudckpt.format.keys import ref_to, run_key, step_dir
from cloudckpt.format.manifest import ChunkRecord, Manifest
from cloudckpt.format.tree import Leaf

__all__ = ["DeltaCache"]

_FLOAT_CODECS = frozenset({"bg-zstd", "xor-bg-zstd"})


def _host_bytes(value: Any) -> np.ndarray[Any, Any]:
    if isinstance(value, np.ndarray):
        return np.ascontiguousarray(value).reshape(-1).view(np.uint8)
    t = value.detach().contiguous().reshape(-1).view(torch.uint8)
    out: np.ndarray[Any, Any] = t.cpu().numpy()
    return out


class DeltaCache:
    """See the module docstring. ``full_every``: a chunk's chain (the delta and its bases
    down to a full chunk) is at most this long, so a restore reads at most that many links."""

    def __init__(self, full_every: int) -> None:
        self.full_every = full_every
        self.step: int | None = None
        self._entries: dict[tuple[str, int, int], DeltaBase] = {}
        self._lock = threading.Lock()

    def base_for(self, path: str, start: int, length: int) -> DeltaBase | None:
        with self._lock:
            base = self._entries.get((path, start, length))
        return base if base is not None and len(base.chain) < self.full_every else None

    def remember(self, step: int, manifest: Manifest, leaves: list[Leaf]) -> None:
        """Replace the cache with what the save of ``step`` committed (``manifest``, written
        from ``leaves``, which must still hold the saved values)."""
        here = step_dir(step)

        def as_ref(c: ChunkRecord) -> ChunkRecord:
            return replace(c, object=ref_to(run_key(here, c.object)), base=None)

        entries: dict[tuple[str, int, int], DeltaBase] = {}
        for t, leaf in zip(manifest.tensors, leaves, strict=True):
            flat: np.ndarray[Any, Any] | None = None
            pos = 0
            for seg in t.segments:
                c = manifest.chunks[seg.chunk]
                if seg.offset == 0 and seg.length == c.raw_size and c.codec in _FLOAT_CODECS:
                    flat = _host_bytes(leaf.value) if flat is None else flat
                    links = tuple(as_ref(manifest.chunks[i]) for i in chain(manifest, seg.chunk))
                    entries[(t.path, pos, seg.length)] = DeltaBase(
                        flat[pos:pos + seg.length].copy(), links)
                pos += seg.length
        with self._lock:
            self._entries, self.step = entries, step

    def clear(self) -> None:
        with self._lock:
            self._entries, self.step = {}, None
