"""``cloudckpt.save``: stream a state tree to a store in encoded, checksummed chunks.

Pipeline (the caller's thread plans; a bounded pool encodes and uploads): the state is encoded
as a JSON tree plus leaves (:mod:`cloudckpt.format.tree`); leaves are cut and packed into chunks and
chunks grouped into objects (:mod:`cloudckpt.format.chunking`); each object is one task that reads
its bytes straight from the tensors (CPU tensors without a copy, device tensors one chunk at
a time), encodes, checksums and uploads them. At most ``memory_budget`` bytes are in flight, so
memory does not grow with the checkpoint. The manifest is written last, create-only.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from cloudckpt.engine.commit import commit_manifest, discard, read_manifest
from cloudckpt.engine.delta import DeltaSource, link_chains
from cloudckpt.engine.encode import SLACK, encode_chunk
from cloudckpt.engine.pool import run_bounded
from cloudckpt.engine.refs import parent_of
from cloudckpt.errors import (
    AlreadyExists,
    CloudckptError,
    CorruptCheckpoint,
    InvalidArgument,
    TransientStorageError,
)
from cloudckpt.format.checksums import checksum
from cloudckpt.format.chunking import (
    ChunkPlan,
    dtype_name,
    leaf_info,
    plan_chunks,
    plan_objects,
    resolve_compression,
    segments_of,
)
from cloudckpt.format.codecs import check_compression
from cloudckpt.format.dedup import DedupIndex
from cloudckpt.format.keys import MANIFEST_KEY, REF_MARK, data_key
from cloudckpt.format.manifest import ChunkRecord, Manifest, Segment, TensorRecord, new_manifest
from cloudckpt.format.signing import Signer
from cloudckpt.format.tree import Leaf, encode_tree
from cloudckpt.format.types import TypeRegistry
from cloudckpt.storage import Store, open_store

__all__ = ["SaveInfo", "WrittenLeaves", "new_save_id", "save", "write_encoded", "write_leaves"]

MiB = 1024 * 1024
DEFAULT_CHUNK_SIZE = 4 * MiB
DEFAULT_OBJECT_SIZE = 16 * MiB
DEFAULT_MEMORY_BUDGET = 256 * MiB


@dataclass(frozen=True)
class SaveInfo:
    """What :func:`save` did."""

    uri: str
    save_id: str
    raw_bytes: int
    stored_bytes: int
    tensors: int
    chunks: int
    objects: int
    seconds: float
    #: stored bytes this save uploaded, and stored bytes it references in other checkpoints
    added_bytes: int = 0
    shared_bytes: int = 0
    #: the committed manifest (records of what was written); None where not kept
    manifest: Manifest | None = field(default=None, repr=False, compare=False)

    @property
    def ratio(self) -> float:
        """Stored bytes over raw bytes (1.0 for an empty state)."""
        return self.stored_bytes / self.raw_bytes if self.raw_bytes else 1.0


def _byte_reader(value: torch.Tensor | np.ndarray) -> Callable[[int, int], memoryview]:
    """A function returning bytes ``[start, end)`` of the leaf's raw (C-order) data."""
    if isinstance(value, np.ndarray):
        flat = np.ascontiguousarray(value).reshape(-1).view(np.uint8)
        return lambda s, e: flat[s:e].data
    t = value.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    flat_t = t.reshape(-1).view(torch.uint8)
    if flat_t.device.type == "cpu":
        arr = flat_t.numpy()
        return lambda s, e: arr[s:e].data
    return lambda s, e: flat_t[s:e].cpu().numpy().data  # one chunk copied to host at a time


def _device(leaf: Leaf) -> str:
    return leaf.device or (str(leaf.value.device) if isinstance(leaf.value, torch.Tensor) else "cpu")


@dataclass(frozen=True)
class WrittenLeaves:
    """What :func:`write_leaves` stored: chunk records, and per leaf its tensor record whose
    segments index into ``chunks``."""

    chunks: tuple[ChunkRecord, ...]
    tensors: tuple[TensorRecord, ...]
    objects: int


def new_save_id() -> str:
    """A sortable, unique id for one save's data prefix."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"


def save(state: Any, uri: str | os.PathLike[str] | Store, *, compression: str = "auto",
         storage_options: Mapping[str, Any] | None = None,
         metadata: Mapping[str, Any] | None = None, overwrite: bool = False,
         chunk_size: int = DEFAULT_CHUNK_SIZE, object_size: int = DEFAULT_OBJECT_SIZE,
         memory_budget: int = DEFAULT_MEMORY_BUDGET, max_workers: int | None = None,
         storage_class: str | None = None, signer: Signer | None = None,
         types: TypeRegistry | None = None,
         base: str | os.PathLike[str] | Store | None = None) -> SaveInfo:
    """Save ``state`` (nested dict/list/tuple of tensors, arrays and plain values) to ``uri``.

    ``compression``: ``"auto"`` (object stores: byte-grouped zstd for floats, zstd for the
    rest, i.e. ``"bg-zstd"``; local disk: ``"none"``, see
    :func:`cloudckpt.format.chunking.resolve_compression`), ``"bg-zstd"``, ``"zstd"``,
    ``"none"``. ``metadata``: JSON-serialisable user data kept in the manifest.
    ``types``: a registry of extra types to store (see :mod:`cloudckpt.format.types`).
    ``base``: a committed checkpoint under the same parent prefix as ``uri`` (a sibling, e.g.
    ``s3://b/exp/v1`` for ``s3://b/exp/v2``): chunks equal to one of the base's are referenced,
    not uploaded again, so the new checkpoint depends on the base's data: keep the base, or
    ``cloudckpt cp`` the new one to make a copy that stands alone.
    ``overwrite``: replace a committed checkpoint at ``uri``; readers see either the old or
    the new one, never a mix. ``signer``: sign the manifest (default: the signing key in the
    environment, see :mod:`cloudckpt.engine.trust`; unsigned when there is none). Any thread
    may call this; the state must not be mutated while it runs (use the manager's async save
    for that).

    Raises:
        AlreadyExists: ``uri`` holds a committed checkpoint and ``overwrite`` is false.
        UnsupportedValue: a value cannot be saved (raised before anything is written).
        InvalidArgument: bad sizes, compression or metadata; ``base`` is not a sibling.
        NotFound, CorruptCheckpoint, UntrustedCheckpoint: ``base`` cannot be read.
        StorageError and subclasses: the store failed; nothing was committed.
    """
    tree, leaves = encode_tree(state, types=types)
    dedup = ref_check = None
    if base is not None:
        store = open_store(uri, storage_options=storage_options)
        dedup, ref_check = base_index(store, base, storage_options)
        uri = store
    return write_encoded(tree, leaves, uri, compression=compression,
                         storage_options=storage_options, metadata=metadata, overwrite=overwrite,
                         chunk_size=chunk_size, object_size=object_size,
                         memory_budget=memory_budget, max_workers=max_workers,
                         storage_class=storage_class, signer=signer, dedup=dedup,
                         ref_check=ref_check)


def write_encoded(tree: Any, leaves: list[Leaf], uri: str | os.PathLike[str] | Store, *,
                  compression: str = "auto", storage_options: Mapping[str, Any] | None = None,
                  metadata: Mapping[str, Any] | None = None, overwrite: bool = False,
                  chunk_size: int = DEFAULT_CHUNK_SIZE, object_size: int = DEFAULT_OBJECT_SIZE,
                  memory_budget: int = DEFAULT_MEMORY_BUDGET, max_workers: int | None = None,
                  storage_class: str | None = None, signer: Signer | None = None,
                  dedup: DedupIndex | None = None,
                  ref_check: Callable[[frozenset[str]], bool] | None = None,
                  protect: Collection[str] = (), delta: DeltaSource | None = None) -> SaveInfo:
    """Write an already encoded state (:func:`cloudckpt.format.tree.encode_tree`) and commit it.
    The background half of :func:`save`, for callers that snapshot the leaves first (async
    saves). Same options and errors as :func:`save`.

    ``dedup``: chunks that may be referenced instead of uploaded. ``ref_check(refs)`` is
    called right before the commit with the references the manifest holds; when it returns
    false (a referenced checkpoint went away meanwhile), everything is written again without
    references and the first attempt's data is discarded. ``protect``: keys of the replaced
    checkpoint's data (``overwrite``) that other checkpoints reference: never swept.
    ``delta``: bases for delta chunks (see :func:`write_leaves`)."""
    t0 = time.perf_counter()
    check_compression(compression)
    if min(chunk_size, object_size, memory_budget) <= 0:
        raise InvalidArgument("chunk_size, object_size and memory_budget must be positive")
    meta = _check_metadata(metadata)
    store = open_store(uri, storage_options=storage_options)
    previous = _previous(store, overwrite)

    opts = {"compression": compression, "chunk_size": chunk_size, "object_size": object_size,
            "memory_budget": memory_budget, "max_workers": max_workers,
            "storage_class": storage_class}
    save_id = new_save_id()
    written = write_leaves(store, leaves, save_id, dedup=dedup, delta=delta,
                           **opts)  # type: ignore[arg-type]
    refs = frozenset(c.object for c in written.chunks if c.object.startswith(REF_MARK))
    if refs and ref_check is not None and not ref_check(refs):
        first = [k for k in dict.fromkeys(c.object for c in written.chunks) if k not in refs]
        save_id = new_save_id()
        written = write_leaves(store, leaves, save_id, **opts)  # type: ignore[arg-type]
        discard(store, first)
    manifest = new_manifest(save_id, tree, written.tensors, written.chunks, meta)
    commit_manifest(store, manifest, overwrite=overwrite, previous=previous, signer=signer,
                    protect=protect)
    return SaveInfo(store.uri, save_id, manifest.raw_bytes, manifest.stored_bytes,
                    len(written.tensors), len(written.chunks), written.objects,
                    time.perf_counter() - t0, manifest.added_bytes, manifest.shared_bytes,
                    manifest)


def base_index(store: Store, base: Any, storage_options: Mapping[str, Any] | None
               ) -> tuple[DedupIndex, Callable[[frozenset[str]], bool]]:
    """For ``save(..., base=base)`` into ``store``: the chunks of the committed checkpoint
    ``base`` as references, and the check, right before the commit, that ``base`` is still
    the same committed checkpoint.

    Raises:
        InvalidArgument: ``base`` is not a sibling of ``store`` under the same parent prefix.
        NotFound, IncompleteCheckpoint, CorruptCheckpoint, UntrustedCheckpoint: ``base``
            cannot be read.
    """
    base_store = base if isinstance(base, Store) else open_store(base,
                                                                 storage_options=storage_options)
    try:
        (parent, _), (bparent, bname) = (parent_of(store, storage_options),
                                         parent_of(base_store, storage_options))
    except CorruptCheckpoint:
        parent = bparent = None  # type: ignore[assignment]
    if parent is None or bparent is None or parent.uri.rstrip("/") != bparent.uri.rstrip("/"):
        raise InvalidArgument(f"base {base_store.uri} must be a checkpoint under the same parent "
                              f"prefix as {store.uri} (e.g. .../exp/v1 for .../exp/v2)")
    m = read_manifest(base_store)

    def still_there(_refs: frozenset[str]) -> bool:
        try:
            return read_manifest(base_store).save_id == m.save_id
        except Exception:
            return False

    return DedupIndex.of([(bname, m)]), still_there



def _check_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    import json

    meta = dict(metadata or {})
    try:
        json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"metadata must be JSON-serialisable (no nan/inf): {e}") from e
    return meta


def _previous(store: Store, overwrite: bool) -> Manifest | None:
    if not store.exists(MANIFEST_KEY):
        return None
    if not overwrite:
        raise AlreadyExists(f"a committed checkpoint exists at {store.uri}; pass overwrite=True "
                            "to replace it")
    try:
        return read_manifest(store)
    except CloudckptError:  # an unreadable old manifest: nothing to clean up after
        return None


def write_leaves(store: Store, leaves: list[Leaf], save_id: str, *, compression: str = "auto",
                 chunk_size: int = DEFAULT_CHUNK_SIZE, object_size: int = DEFAULT_OBJECT_SIZE,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, max_workers: int | None = None,
                 storage_class: str | None = None,
                 dedup: DedupIndex | None = None,
                 delta: DeltaSource | None = None) -> WrittenLeaves:
    """Plan, encode, checksum and upload ``leaves`` as data objects under
    ``data/<save_id>/``, at most ``memory_budget`` bytes in flight; commits nothing. Shared by
    :func:`write_encoded` and the DCP writer (each rank calls it with its own ``save_id``).
    A chunk found in ``dedup`` is recorded as a reference and not uploaded (its raw digest is
    computed anyway, for the manifest: a save where nothing is shared costs nothing more).
    A changed float chunk for which ``delta`` has a base is stored as a delta when that is
    smaller (:mod:`cloudckpt.engine.delta`). On failure the objects written so far are
    discarded.

    Raises:
        StorageError and subclasses: an upload failed.
    """
    infos = [leaf_info(leaf.value) for leaf in leaves]
    compression = resolve_compression(compression, store.protocol, delta=delta is not None)
    chunks = plan_chunks(infos, compression, chunk_size)
    groups = plan_objects(chunks, object_size)
    paths = [leaf.path for leaf in leaves]
    records, chains, objects = _write_objects(store, leaves, chunks, groups, save_id,
                                              object_size, memory_budget, max_workers,
                                              storage_class, dedup,
                                              (delta, paths) if delta else None)
    tensors = tuple(
        TensorRecord(leaf.path, "torch" if isinstance(leaf.value, torch.Tensor) else "numpy",
                     dtype_name(leaf.value.dtype), tuple(leaf.value.shape), infos[i].nbytes,
                     _device(leaf), tuple(Segment(*seg) for seg in segs))
        for i, (leaf, segs) in enumerate(zip(leaves, segments_of(chunks, len(leaves)),
                                             strict=True)))
    return WrittenLeaves(tuple(link_chains(records, chains)), tensors, objects)


def _write_objects(store: Store, leaves: list[Leaf], chunks: list[ChunkPlan],
                   groups: list[list[int]], save_id: str, object_size: int, memory_budget: int,
                   max_workers: int | None, storage_class: str | None,
                   dedup: DedupIndex | None, delta: tuple[DeltaSource, list[str]] | None
                   ) -> tuple[list[ChunkRecord], dict[int, tuple[ChunkRecord, ...]], int]:
    readers = [_byte_reader(leaf.value) for leaf in leaves]
    local = store.protocol == "file"
    # per task: its worker's reused body buffer (local: written from it), else also the copy
    # an upload sends and the HTTP client's buffers (measured: ~4.1 object sizes per task
    # on S3 at 4 GiB): budget three or five object sizes each
    in_flight = max(1, memory_budget // ((3 if local else 5) * object_size))
    workers = max(1, min(in_flight, max_workers or 8, len(groups) or 1))
    results: list[list[ChunkRecord] | None] = [None] * len(groups)
    written: list[str] = []
    chains: dict[int, tuple[ChunkRecord, ...]] = {}
    bodies: dict[int, np.ndarray] = {}  # per worker thread: its body buffer, reused

    def task(n: int) -> None:
        key = data_key(save_id, n)
        need = sum(chunks[ci].raw_size + SLACK for ci in groups[n])
        body = bodies.get(threading.get_ident())
        if body is None or body.size < need:  # fresh memory is slow: allocate once per worker
            body = bodies[threading.get_ident()] = np.empty(max(need, object_size), np.uint8)
        recs: list[ChunkRecord] = []
        offset = 0
        for ci in groups[n]:
            plan = chunks[ci]
            pieces = [readers[li](s, e) for li, s, e in plan.pieces]
            raw = pieces[0] if len(pieces) == 1 else memoryview(b"".join(pieces))
            raw_sum = checksum(raw)
            hit = dedup.lookup(raw_sum, len(raw), plan.codec, plan.itemsize) if dedup else None
            if hit is not None:
                recs.append(hit)
                continue
            codec, size, base = encode_chunk(plan, raw, delta, body[offset:])
            if isinstance(size, bytes):  # did not fit: grow this worker's buffer
                grown = np.empty(max(2 * body.size, need + len(size)), np.uint8)
                grown[:offset] = body[:offset]
                body = bodies[threading.get_ident()] = grown
                body[offset:offset + len(size)] = np.frombuffer(size, np.uint8)
                size = len(size)
            stored_sum = raw_sum if codec == "none" else checksum(body[offset:offset + size])
            recs.append(ChunkRecord(key, offset, size, len(raw), codec, plan.itemsize,
                                    stored_sum, raw_sum, None if base is None else -1))
            if base is not None:
                chains[ci] = base.chain
            offset += size
        results[n] = recs
        if not offset:  # every chunk of this object is a reference
            return
        if local:  # straight from the buffer; one exclusive attempt, never a retried put
            up = store.start_upload(key, storage_class=storage_class)
            try:
                up.finish(body.data[:offset])
            except BaseException:
                with contextlib.suppress(Exception):
                    up.abort()
                raise
        else:  # an immutable copy: a retried or abandoned attempt may outlive this task
            store.put(key, body[:offset].tobytes(), storage_class=storage_class)
        written.append(key)

    err = run_bounded(task, range(len(groups)), in_flight=in_flight, workers=workers,
                      name="cloudckpt-save")
    if err is not None:
        if isinstance(err, TransientStorageError):
            # the store is slow or gone: clean up in the background so the save fails within
            # its deadline (GC removes whatever this cannot)
            threading.Thread(target=discard, args=(store, list(written)), daemon=True,
                             name="cloudckpt-discard").start()
        elif isinstance(err, Exception):  # a real crash (BaseException) cleans nothing up
            discard(store, written)
        raise err
    return [r for group in results for r in (group or [])], chains, len(written)
