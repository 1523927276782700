"""Plan how leaves are cut into chunks and chunks grouped into data objects. Pure functions.

Leaves of at least ``PACK_LIMIT`` bytes get chunks of their own, cut at multiples of
``chunk_size`` from their start (aligned to the element size), so the same tensor is cut the
same way in every save and its unchanged regions keep their chunks (incremental saves share
them, :mod:`cloudckpt.format.dedup`). Smaller leaves are packed together with others of the
same codec and element size, so 10,000 tiny tensors become a handful of chunks. Chunks are
grouped in order into objects of about ``object_size`` raw bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["PACK_LIMIT", "ChunkPlan", "LeafInfo", "choose_codec", "dtype_name", "leaf_info", "plan_chunks",
           "plan_objects", "resolve_compression", "segments_of"]

#: leaves smaller than this are packed with others; larger ones get chunks of their own
PACK_LIMIT = 64 * 1024

_FLOATS = {torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64,
           torch.complex128, torch.complex32}


@dataclass(frozen=True)
class LeafInfo:
    """What the planner needs to know about one leaf."""

    nbytes: int
    itemsize: int
    floating: bool


@dataclass
class ChunkPlan:
    """One chunk: byte ranges ``(leaf, start, end)`` concatenated, encoded with ``codec``."""

    codec: str
    itemsize: int
    pieces: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def raw_size(self) -> int:
        return sum(e - s for _, s, e in self.pieces)


def dtype_name(dtype: torch.dtype | np.dtype[Any]) -> str:
    """The manifest's spelling of a dtype: ``"bfloat16"`` for torch, ``"<f4"`` for numpy."""
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    return dtype.str


def leaf_info(value: torch.Tensor | np.ndarray) -> LeafInfo:
    if isinstance(value, torch.Tensor):
        item = value.element_size()
        floating = value.dtype in _FLOATS
        if value.is_complex():
            item //= 2  # byte-group each real component
        return LeafInfo(value.numel() * value.element_size(), item, floating)
    item = value.dtype.itemsize
    floating = value.dtype.kind in "fc"
    if value.dtype.kind == "c":
        item //= 2
    return LeafInfo(value.nbytes, item, floating)


#: protocols whose writes are faster than encoding: ``compression="auto"`` stores raw bytes there
FAST_PROTOCOLS = frozenset({"file"})


def resolve_compression(compression: str, protocol: str, *, delta: bool = False) -> str:
    """The codec choice ``compression="auto"`` stands for on a store of ``protocol``; any
    other choice is returned as it is. Measured on 2 vCPUs (docs/benchmarks.md, issue 14):
    byte-grouped zstd encodes fp32 weights at ~1-1.3 GB/s per core and decodes at ~1.3 GB/s,
    for 0.75-0.85 of the bytes. A local disk (page cache, NVMe) takes writes and serves reads
    faster than that, so there compression costs more time than the bytes it saves, and
    ``"auto"`` is ``"none"`` (1 GiB fp32 on local disk: load 1.19 s raw vs 1.72 s
    compressed, ``readinto`` 1.20 s; save 2.89 vs 3.17 s). Object stores move bytes slower
    per connection and bill them, so there ``"auto"`` is ``"bg-zstd"`` (floats
    byte-grouped, the rest zstd). Deltas need the float
    codec (``delta=True``): ``"bg-zstd"`` everywhere. Pure; any caller."""
    if compression != "auto":
        return compression
    return "none" if protocol in FAST_PROTOCOLS and not delta else "bg-zstd"


def choose_codec(info: LeafInfo, compression: str) -> tuple[str, int]:
    """(codec, itemsize) for a leaf under the user's ``compression`` choice."""
    if compression == "none":
        return "none", info.itemsize  # the element size keeps packs of one kind
    if info.floating and info.itemsize >= 2 and compression in ("auto", "bg-zstd"):
        return "bg-zstd", info.itemsize
    if compression in ("auto", "zstd", "bg-zstd"):
        return "zstd", 1
    return compression, info.itemsize  # a registered codec, used for every chunk


def plan_chunks(infos: list[LeafInfo], compression: str, chunk_size: int) -> list[ChunkPlan]:
    """Cut and pack leaves into chunks (see the module docstring)."""
    chunks: list[ChunkPlan] = []
    packs: dict[tuple[str, int], ChunkPlan] = {}
    for idx, info in enumerate(infos):
        codec, item = choose_codec(info, compression)
        if info.nbytes == 0:
            continue
        if info.nbytes >= min(chunk_size, PACK_LIMIT):
            step = max(item, chunk_size - chunk_size % item)
            for start in range(0, info.nbytes, step):
                chunks.append(ChunkPlan(codec, item, [(idx, start, min(info.nbytes, start + step))]))
            continue
        pack = packs.get((codec, item))
        if pack is None or pack.raw_size + info.nbytes > chunk_size:
            pack = packs[(codec, item)] = ChunkPlan(codec, item)
            chunks.append(pack)
        pack.pieces.append((idx, 0, info.nbytes))
    return chunks


def plan_objects(chunks: list[ChunkPlan], object_size: int) -> list[list[int]]:
    """Group chunk indices, in order, into objects of about ``object_size`` raw bytes."""
    groups: list[list[int]] = []
    size = object_size
    for i, c in enumerate(chunks):
        if size >= object_size:
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += c.raw_size
    return groups


def segments_of(chunks: list[ChunkPlan], n_leaves: int) -> list[list[tuple[int, int, int]]]:
    """Per leaf, the ``(chunk, offset in the decoded chunk, length)`` stretches that make up
    its bytes, in order: the inverse of the chunk plan, which the manifest records."""
    out: list[list[tuple[int, int, int]]] = [[] for _ in range(n_leaves)]
    for ci, plan in enumerate(chunks):
        pos = 0
        for li, s, e in plan.pieces:
            out[li].append((ci, pos, e - s))
            pos += e - s
    return out
