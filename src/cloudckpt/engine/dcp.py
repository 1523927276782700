"""``torch.distributed.checkpoint`` storage backed by cloudckpt.

``dcp.save(state_dict, storage_writer=cloudckpt.dcp.Writer("s3://bucket/ckpt"))`` and
``dcp.load(state_dict, storage_reader=cloudckpt.dcp.Reader("s3://bucket/ckpt"))``: DCP's
planners deduplicate replicated tensors (DDP state is written once) and reshard on load (any
world size); cloudckpt streams each rank's items with its codecs and checksums, in parallel.

Call order (DCP drives it; "all" = every rank, "coord" = the coordinator only)::

    save: all reset -> all set_up_storage_writer -> all prepare_local_plan
          -> coord prepare_global_plan -> all write_data -> coord finish (commit)
    load: all reset -> all read_metadata -> all set_up_storage_reader -> all prepare_local_plan
          -> coord prepare_global_plan -> all read_data

Commit: ranks write data objects only; the coordinator writes the manifest last, create-only,
in ``finish``, which DCP calls only after every rank's ``write_data`` succeeded: a failure on any
rank means no commit. The manifest is a regular cloudckpt manifest (``cloudckpt ls/verify/show``
work on it) whose metadata holds DCP's ``Metadata`` encoded as JSON: our metadata is never
pickled, and neither are non-tensor values: DCP's planners would ``torch.save`` them into
"bytes" items and ``torch.load`` them back (an unpickle of whatever the bucket holds). Here the
writer stores each such value with cloudckpt's own tree encoding (JSON, :data:`SAFE_BYTES_MAGIC`
first), and the reader decodes it with the same safe decoder before handing DCP a stream it
built itself from the decoded plain values; a bytes item in any other encoding (a pickle) is
refused with :class:`~cloudckpt.errors.CorruptCheckpoint`, whatever the manifest claims.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch.distributed.checkpoint.metadata import (
    Metadata,
    MetadataIndex,
    StorageMeta,
)
from torch.distributed.checkpoint.planner import (
    LoadPlan,
    LoadPlanner,
    SavePlan,
    SavePlanner,
    WriteItemType,
)
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult
from torch.futures import Future

from cloudckpt.engine import dcp_broadcast
from cloudckpt.engine.commit import commit_manifest, discard, read_manifest
from cloudckpt.engine.dcp_metadata import decode_metadata, encode_metadata
from cloudckpt.engine.reader import read_leaves
from cloudckpt.engine.writer import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MEMORY_BUDGET,
    DEFAULT_OBJECT_SIZE,
    base_index,
    write_leaves,
)
from cloudckpt.errors import (
    AlreadyExists,
    CorruptCheckpoint,
    InvalidURI,
    TransientStorageError,
    UnsupportedValue,
)
from cloudckpt.format.dedup import DedupIndex
from cloudckpt.format.keys import MANIFEST_KEY, REF_MARK
from cloudckpt.format.manifest import ChunkRecord, Manifest, Segment, TensorRecord, new_manifest
from cloudckpt.format.signing import Signer, Verifier
from cloudckpt.format.tree import Leaf, decode_tree, encode_tree
from cloudckpt.storage import Store, open_store, parse_uri

__all__ = ["Reader", "Writer"]

DCP_KEY = "cloudckpt.dcp"
#: First bytes of a non-tensor value stored by :class:`Writer` (JSON tree encoding follows).
SAFE_BYTES_MAGIC = b"cloudckpt-tree/1\n"


def _encode_value(item: Any, planner: SavePlanner) -> np.ndarray[Any, Any]:
    """A bytes item's value in the safe encoding: the original object (not DCP's pickle).

    Raises:
        UnsupportedValue: the planner cannot hand out the original object, or the value
            holds tensors or types the tree encoding cannot store.
    """
    lookup = getattr(planner, "lookup_object", None)
    if lookup is None:
        raise UnsupportedValue(
            f"{item.index.fqn}: non-tensor values need a planner with lookup_object (DCP's "
            "DefaultSavePlanner has it); cloudckpt never stores them pickled")
    tree, leaves = encode_tree(lookup(item.index))
    if leaves:
        raise UnsupportedValue(f"{item.index.fqn}: tensors inside a non-tensor value")
    body = SAFE_BYTES_MAGIC + json.dumps(tree, separators=(",", ":"), allow_nan=False).encode()
    return np.frombuffer(body, dtype=np.uint8).copy()


def _decode_value(raw: bytes, fqn: str) -> io.BytesIO:
    """Decode a stored bytes item safely and return the stream DCP's ``load_bytes`` expects.
    The stream is ``torch.save`` of the decoded plain values, built here: DCP's planner
    loads it, and nothing it unpickles came from storage.

    Raises:
        CorruptCheckpoint: not in the safe encoding (e.g. a pickle), or malformed.
    """
    if not raw.startswith(SAFE_BYTES_MAGIC):
        raise CorruptCheckpoint(f"{fqn}: stored non-tensor value is not in cloudckpt's safe "
                                "encoding (refusing to unpickle it)")
    try:
        tree = json.loads(raw[len(SAFE_BYTES_MAGIC):])
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise CorruptCheckpoint(f"{fqn}: stored non-tensor value is not valid JSON") from e

    def no_leaf(i: int) -> Any:
        raise CorruptCheckpoint(f"{fqn}: stored non-tensor value references tensor {i}")

    value = decode_tree(tree, no_leaf)
    buf = io.BytesIO()
    torch.save(value, buf)
    buf.seek(0)
    return buf


@dataclass(frozen=True)
class _RankPrefix:
    """Per-rank object name prefix, assigned by the coordinator's global plan."""

    prefix: str


@dataclass(frozen=True)
class _ItemLocation:
    """Where one written item lives: its own chunk records and segments (plain data)."""

    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    is_bytes: bool
    chunks: tuple[ChunkRecord, ...]
    segments: tuple[tuple[int, int, int], ...]  # (index into chunks, offset, length)


class _Target:
    """Where a Writer/Reader points: a URI (opened lazily, per call) or a given Store."""

    def __init__(self, uri: str | os.PathLike[str] | Store | None,
                 storage_options: Mapping[str, Any] | None) -> None:
        self._given: Store | None = None if uri is None or isinstance(uri, (str, os.PathLike)) \
            else uri
        self.uri: str | None = self._given.uri if self._given is not None else (
            None if uri is None else os.fspath(uri))  # type: ignore[arg-type]
        self.storage_options = storage_options

    def _store(self) -> Store:
        if self._given is not None:
            return self._given
        if self.uri is None:
            raise InvalidURI("no checkpoint URI: pass one to the constructor or as checkpoint_id")
        return open_store(self.uri, storage_options=self.storage_options)

    def _retarget(self, checkpoint_id: str | os.PathLike[str] | None) -> None:
        if checkpoint_id is not None:
            self.uri, self._given = os.fspath(checkpoint_id), None


class Writer(_Target, StorageWriter):
    """Writes a DCP checkpoint to ``uri`` (any cloudckpt URI). ``overwrite`` replaces a
    committed checkpoint. Options (``signer``, ``base``) as for :func:`cloudckpt.save`: with
    ``base`` (a sibling checkpoint) each rank references the base's chunks equal to its own
    instead of uploading them, and the coordinator checks before the commit that the base is
    still committed (``dedup``/``ref_check`` instead: the manager's run-wide rules)."""

    def __init__(self, uri: str | os.PathLike[str] | Store | None = None, *,
                 storage_options: Mapping[str, Any] | None = None, compression: str = "auto",
                 overwrite: bool = False, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 object_size: int = DEFAULT_OBJECT_SIZE,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET,
                 metadata: Mapping[str, Any] | None = None, signer: Signer | None = None,
                 base: str | os.PathLike[str] | Store | None = None,
                 dedup: DedupIndex | None = None,
                 ref_check: Callable[[frozenset[str]], bool] | None = None) -> None:
        _Target.__init__(self, uri, storage_options)
        self.signer, self.base, self.dedup, self.ref_check = signer, base, dedup, ref_check
        self.compression, self.overwrite = compression, overwrite
        self.chunk_size, self.object_size = chunk_size, object_size
        self.memory_budget = memory_budget
        self.user_metadata = dict(metadata or {})
        self.save_id = uuid.uuid4().hex[:12]
        self.is_coordinator = False

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        self._retarget(checkpoint_id)
        self.save_id = uuid.uuid4().hex[:12]

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.is_coordinator = is_coordinator

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        if self.is_coordinator and not self.overwrite and self._store().exists(MANIFEST_KEY):
            raise AlreadyExists(f"a committed checkpoint exists at {self.uri}; pass "
                                "overwrite=True to replace it")
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        return [replace(p, storage_data=_RankPrefix(f"r{i:05d}")) for i, p in enumerate(plans)]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        store = self._store()
        prefix = plan.storage_data.prefix if isinstance(plan.storage_data, _RankPrefix) else "r"
        leaves: list[Leaf] = []
        for i, item in enumerate(plan.items):
            if item.type == WriteItemType.BYTE_IO:
                value: Any = _encode_value(item, planner)
            else:
                value = planner.resolve_data(item).detach()
            leaves.append(Leaf(f"{item.index.fqn}", value, i))
        dedup = self.dedup if self.base is None else \
            base_index(store, self.base, self.storage_options)[0]
        written = write_leaves(store, leaves, f"{self.save_id}-{prefix}",
                               compression=self.compression, chunk_size=self.chunk_size,
                               object_size=self.object_size, memory_budget=self.memory_budget,
                               dedup=dedup)
        results = []
        for item, rec in zip(plan.items, written.tensors, strict=True):
            used = sorted({seg.chunk for seg in rec.segments})
            remap = {ci: n for n, ci in enumerate(used)}
            loc = _ItemLocation(
                dtype=rec.dtype if rec.kind == "torch" else "uint8", shape=rec.shape,
                nbytes=rec.nbytes, is_bytes=item.type == WriteItemType.BYTE_IO,
                chunks=tuple(written.chunks[ci] for ci in used),
                segments=tuple((remap[seg.chunk], seg.offset, seg.length)
                               for seg in rec.segments))
            results.append(WriteResult(index=item.index, size_in_bytes=rec.nbytes,
                                       storage_data=loc))
        fut: Future[list[WriteResult]] = Future()  # DCP waits on torch futures
        fut.set_result(results)
        return fut

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        store = self._store()
        chunks: list[ChunkRecord] = []
        where: dict[tuple[str, int], int] = {}
        tensors: list[TensorRecord] = []
        index: list[Any] = []
        for rank_results in results:
            for wr in rank_results:
                loc: _ItemLocation = wr.storage_data
                gmap = []
                for c in loc.chunks:
                    k = (c.object, c.offset)
                    if k not in where:
                        where[k] = len(chunks)
                        chunks.append(c)
                    gmap.append(where[k])
                offset = list(wr.index.offset) if wr.index.offset is not None else None
                tensors.append(TensorRecord(
                    path=f"{wr.index.fqn}@{offset}", kind="torch", dtype=loc.dtype,
                    shape=loc.shape, nbytes=loc.nbytes, device="cpu",
                    segments=tuple(Segment(gmap[ci], off, n) for ci, off, n in loc.segments)))
                index.append([wr.index.fqn, offset, len(tensors) - 1, loc.is_bytes])
        tree: dict[str, list[Any]] = {}
        for fqn, _offset, ti, _b in index:
            tree.setdefault(fqn, []).append({"t": "leaf", "i": ti})
        json_tree = {"t": "dict", "items": [[k, {"t": "list", "items": v}] for k, v in tree.items()]}
        meta = {**self.user_metadata, DCP_KEY: encode_metadata(metadata, index)}
        manifest = new_manifest(self.save_id, json_tree, tuple(tensors), tuple(chunks), meta)
        check = self.ref_check if self.base is None else \
            base_index(store, self.base, self.storage_options)[1]
        refs = frozenset(c.object for c in chunks if c.object.startswith(REF_MARK))
        if refs and check is not None and not check(refs):
            discard(store, manifest.objects)
            raise TransientStorageError(f"{store.uri}: data this save shares was released "
                                        "meanwhile (retention or gc elsewhere); save again")
        commit_manifest(store, manifest, overwrite=self.overwrite, signer=self.signer)

    def storage_meta(self) -> StorageMeta | None:
        return StorageMeta(checkpoint_id=self.uri, save_id=self.save_id)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        try:
            parse_uri(checkpoint_id)
        except InvalidURI:
            return False
        return True


class Reader(_Target, StorageReader):
    """Reads a DCP checkpoint written by :class:`Writer`, verifying every chunk. With
    ``broadcast`` (for ``dcp.load`` on the default process group only), a stored item every
    rank reads is fetched by one rank and broadcast to the others
    (:mod:`cloudckpt.engine.dcp_broadcast`)."""

    def __init__(self, uri: str | os.PathLike[str] | Store | None = None, *,
                 storage_options: Mapping[str, Any] | None = None, verify: bool = True,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET,
                 verifier: Verifier | None = None, broadcast: bool = False) -> None:
        _Target.__init__(self, uri, storage_options)
        self.verifier, self.broadcast = verifier, broadcast
        self.verify, self.memory_budget = verify, memory_budget
        self._manifest: Manifest | None = None
        self._storage: dict[MetadataIndex, int] = {}

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        self._retarget(checkpoint_id)
        self._manifest = None

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        m = read_manifest(self._store(), self.verifier)
        if DCP_KEY not in m.metadata:
            raise CorruptCheckpoint(f"{self.uri} is a cloudckpt checkpoint but not a DCP one; "
                                    "use cloudckpt.load")
        self._manifest = m
        md, self._storage = decode_metadata(m.metadata[DCP_KEY])
        return md

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any,
                              **kwargs: Any) -> None:
        if self._manifest is None:
            self.read_metadata()
        if isinstance(metadata.storage_data, dict):
            self._storage = metadata.storage_data

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        if not self.broadcast or len(plans) < 2 or self._manifest is None:
            return plans
        needs = [{self._lookup(i.storage_index) for i in p.items if i.type.name == "TENSOR"}
                 for p in plans]
        plan = dcp_broadcast.assign(needs, self._manifest)
        return [replace(p, storage_data=plan) for p in plans]

    def _lookup(self, index: MetadataIndex) -> int:
        key = MetadataIndex(fqn=index.fqn, offset=index.offset)
        if key not in self._storage:
            raise CorruptCheckpoint(f"{self.uri}: no stored item for {index.fqn} at {index.offset}")
        return self._storage[key]

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        if self._manifest is None:
            self.read_metadata()
        m = self._manifest
        assert m is not None
        store = self._store()
        shared = plan.storage_data if isinstance(plan.storage_data,
                                                 dcp_broadcast.Broadcasts) else None
        mine = {self._lookup(item.storage_index) for item in plan.items}
        values: dict[int, Any] = {}
        error: BaseException | None = None
        try:
            values = read_leaves(m, dcp_broadcast.to_fetch(
                mine, shared, torch.distributed.get_rank() if shared else 0), store,
                storage_options=self.storage_options, verify=self.verify,
                memory_budget=self.memory_budget)
        except Exception as e:  # told to the other ranks before any broadcast
            error = e
        values = dcp_broadcast.exchange(values, shared, m, error)
        for item in plan.items:
            src = values[self._lookup(item.storage_index)]
            if item.type.name == "BYTE_IO":
                planner.load_bytes(item, _decode_value(src.numpy().tobytes(), item.storage_index.fqn))
                continue
            for dim, (off, length) in enumerate(zip(item.storage_offsets, item.lengths,
                                                    strict=True)):
                src = src.narrow(dim, off, length)
            target = planner.resolve_tensor(item).detach()
            if target.shape != src.shape:
                raise CorruptCheckpoint(f"{item.storage_index.fqn}: stored shard {list(src.shape)}"
                                        f" does not fit the requested {list(target.shape)}")
            target.copy_(src)
            planner.commit_tensor(item, target)
        fut: Future[None] = Future()
        fut.set_result(None)
        return fut

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return Writer.validate_checkpoint_id(checkpoint_id)
