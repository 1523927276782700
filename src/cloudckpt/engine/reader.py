"""``cloudckpt.load`` and ``cloudckpt.inspect``: manifest first, then ranged, parallel,
verified reads decoded straight into preallocated tensors. Nothing is unpickled.

Reads are planned per object: adjacent needed chunks become one request (the whole object when
all of it is needed), at most ``memory_budget`` bytes of requests are in flight, and each chunk
is checked (size, checksum of the stored bytes, checksum of the decoded bytes) before use.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cloudckpt.engine.commit import read_manifest
from cloudckpt.engine.delta import materialize
from cloudckpt.engine.keyselect import select_keys
from cloudckpt.engine.pool import run_bounded
from cloudckpt.engine.refs import resolver
from cloudckpt.errors import CorruptCheckpoint, InvalidArgument
from cloudckpt.format.checksums import decode_chunk
from cloudckpt.format.dtypes import torch_dtype
from cloudckpt.format.keys import REF_MARK
from cloudckpt.format.manifest import Manifest, TensorRecord
from cloudckpt.format.signing import Verifier
from cloudckpt.format.tree import decode_tree, leaf_indices
from cloudckpt.format.types import TypeRegistry
from cloudckpt.storage import Store, open_store
from cloudckpt.storage.base import read_range_into

__all__ = ["inspect", "load", "place", "read_leaves"]

MiB = 1024 * 1024


def inspect(uri: str | os.PathLike[str] | Store, *,
            storage_options: Mapping[str, Any] | None = None,
            verifier: Verifier | None = None) -> Manifest:
    """The validated manifest of the checkpoint at ``uri``; reads no tensor data.

    Raises:
        NotFound, IncompleteCheckpoint, CorruptCheckpoint: see :func:`load`.
    """
    return read_manifest(open_store(uri, storage_options=storage_options), verifier)


def _allocate(rec: TensorRecord) -> tuple[Any, np.ndarray]:
    """An empty leaf of the recorded kind/dtype/shape and a writable uint8 view of it. The
    shape is checked against the recorded size (itself checked against the chunks) before
    anything is allocated."""
    if rec.kind == "torch":
        tdt = torch_dtype(rec.dtype)
        itemsize = torch.empty((), dtype=tdt).element_size()
        if math.prod(rec.shape) * itemsize != rec.nbytes:
            raise CorruptCheckpoint(f"{rec.path}: {rec.nbytes} bytes do not fit {rec.dtype}{list(rec.shape)}")
        t = torch.empty(rec.shape, dtype=tdt)
        return t, t.reshape(-1).view(torch.uint8).numpy()
    try:
        dt = np.dtype(rec.dtype)
    except (TypeError, ValueError, SyntaxError) as e:
        raise CorruptCheckpoint(f"{rec.path}: unknown numpy dtype {rec.dtype!r}") from e
    if dt.hasobject or dt.kind == "V":
        raise CorruptCheckpoint(f"{rec.path}: refusing numpy dtype {rec.dtype!r}")
    if math.prod(rec.shape) * dt.itemsize != rec.nbytes:
        raise CorruptCheckpoint(f"{rec.path}: {rec.nbytes} bytes do not fit {rec.dtype}{list(rec.shape)}")
    a = np.empty(rec.shape, dtype=dt)
    return a, a.reshape(-1).view(np.uint8)


@dataclass(frozen=True)
class _Run:
    """One request: bytes [start, end) of an object, holding chunks ``chunk_ids``."""

    ref: str
    start: int
    end: int
    whole: bool
    chunk_ids: tuple[int, ...]


def _plan_runs(m: Manifest, needed: set[int]) -> list[_Run]:
    ends: dict[str, int] = {}
    for c in m.chunks:
        ends[c.object] = max(ends.get(c.object, 0), c.offset + c.stored_size)
    by_obj: dict[str, list[int]] = {}
    for ci in sorted(needed, key=lambda i: (m.chunks[i].object, m.chunks[i].offset)):
        by_obj.setdefault(m.chunks[ci].object, []).append(ci)
    runs: list[_Run] = []
    for ref, ids in by_obj.items():
        cur: list[int] = []
        for ci in ids:
            c = m.chunks[ci]
            if cur and m.chunks[cur[-1]].offset + m.chunks[cur[-1]].stored_size != c.offset:
                runs.append(_make_run(m, ref, cur, ends[ref]))
                cur = []
            cur.append(ci)
        runs.append(_make_run(m, ref, cur, ends[ref]))
    return runs


def _make_run(m: Manifest, ref: str, ids: list[int], obj_end: int) -> _Run:
    start = m.chunks[ids[0]].offset
    end = m.chunks[ids[-1]].offset + m.chunks[ids[-1]].stored_size
    # a referenced object may hold more chunks than this manifest uses: never "whole"
    whole = start == 0 and end == obj_end and not ref.startswith(REF_MARK)
    return _Run(ref, start, end, whole, tuple(ids))


def load(uri: str | os.PathLike[str] | Store, *, map_location: Any = "cpu",
         keys: list[str] | None = None, verify: bool = True,
         storage_options: Mapping[str, Any] | None = None,
         memory_budget: int = 256 * MiB, max_workers: int | None = None,
         verifier: Verifier | None = None, types: TypeRegistry | None = None) -> Any:
    """Load the checkpoint at ``uri`` and return the state as saved.

    ``map_location``: device for torch tensors (``"cpu"``, ``"cuda:0"``, a ``torch.device``),
    or ``None`` for the device each tensor was saved from when it exists here (else CPU).
    ``keys``: ``/``-separated dict keys of sub-trees to load (``["model"]``,
    ``["optimizer/state"]``); only their bytes are fetched. A segment matches the entry of that
    name or, when there is none, every entry named ``<segment>.*`` (a dotted prefix, so
    ``keys=["encoder"]`` on a flat ``state_dict`` selects ``"encoder.layer.0.weight"``...,
    not ``"encoder2.weight"``; ``"encoder."`` forces the prefix); entries keep their full
    names. The exact rule: :mod:`cloudckpt.engine.keyselect`. ``verify``: check stored and decoded
    checksums (sizes are always checked). ``types``: the registry of extra types the state was
    saved with (see :mod:`cloudckpt.format.types`). ``verifier``: require a valid manifest signature
    (default: the verification keys in the environment, see :mod:`cloudckpt.engine.trust`).
    Any thread may call this.

    Raises:
        NotFound: nothing at ``uri``. IncompleteCheckpoint: data without a committed manifest.
        CorruptCheckpoint: a checksum, size or manifest check failed; names object and tensor.
        UntrustedCheckpoint: a verification key is set and the signature is missing or bad.
        InvalidArgument: a key in ``keys`` selects nothing, or ``keys`` is malformed.
    """
    store = open_store(uri, storage_options=storage_options)
    m = read_manifest(store, verifier)
    try:
        tree = select_keys(m.tree, keys) if keys is not None else m.tree
    except KeyError as e:
        raise InvalidArgument(f"{store.uri}: {e.args[0]}") from None
    need = leaf_indices(tree)
    for i in need:
        if i >= len(m.tensors):
            raise CorruptCheckpoint(f"{store.uri}: tree references leaf {i} of {len(m.tensors)}")
    out = read_leaves(m, need, store, storage_options=storage_options, verify=verify,
                      memory_budget=memory_budget, max_workers=max_workers)
    return decode_tree(tree, lambda i: place(out[i], m.tensors[i], map_location), types=types)


def read_leaves(m: Manifest, indices: list[int], store: Store, *,
                storage_options: Mapping[str, Any] | None = None, verify: bool = True,
                memory_budget: int = 256 * MiB, max_workers: int | None = None) -> dict[int, Any]:
    """Allocate the tensors/arrays numbered ``indices`` in ``m`` and fill them from ``store``
    (ranged, parallel, verified). Shared by :func:`load` and :mod:`cloudckpt.dcp`.

    Raises:
        CorruptCheckpoint: as :func:`load`.
    """
    out: dict[int, Any] = {}
    # chunk -> [(dest view, offset in chunk, length, dest offset, tensor path)]
    jobs: dict[int, list[tuple[np.ndarray, int, int, int, str]]] = {}
    for i in indices:
        rec = m.tensors[i]
        value, view = _allocate(rec)
        out[i] = value
        pos = 0
        for seg in rec.segments:
            jobs.setdefault(seg.chunk, []).append((view, seg.offset, seg.length, pos, rec.path))
            pos += seg.length
    full = {ci for ci in jobs if m.chunks[ci].base is None}
    _fetch_all(m, [*_plan_runs(m, full), *sorted(set(jobs) - full)], jobs,
               resolver(store, storage_options), verify, memory_budget, max_workers, store.uri)
    return out


def place(value: Any, rec: TensorRecord, map_location: Any) -> Any:
    """Move a loaded leaf to ``map_location`` (``None``: the device ``rec`` was saved from,
    when it exists here, else CPU). Used by :func:`load` and by integrations that decode the
    tree themselves. Any caller.

    Raises:
        CorruptCheckpoint: ``rec.device`` is not a device string.
    """
    if not isinstance(value, torch.Tensor):
        return value
    target = map_location
    if target is None:
        try:
            saved = torch.device(rec.device)
        except RuntimeError as e:
            raise CorruptCheckpoint(f"{rec.path}: bad device {rec.device!r}") from e
        ok = saved.type == "cpu" or (saved.type == "cuda" and torch.cuda.is_available()
                                     and (saved.index or 0) < torch.cuda.device_count())
        target = saved if ok else "cpu"
    target = torch.device(target)
    return value if target.type == "cpu" else value.to(target)


def _fetch_all(m: Manifest, runs: list[_Run | int], jobs: dict[int, list[Any]], resolve: Any,
               verify: bool, memory_budget: int, max_workers: int | None, uri: str) -> None:
    """Fetch and decode ``runs``: byte ranges of objects, or (an int) one delta chunk, read
    link by link down its chain (:func:`cloudckpt.engine.delta.materialize`)."""
    biggest = max((r.end - r.start if isinstance(r, _Run) else 3 * m.chunks[r].raw_size
                   for r in runs), default=0)
    in_flight = max(1, memory_budget // max(1, 2 * biggest + MiB))

    scratch: dict[int, np.ndarray] = {}  # per worker thread, reused: fresh memory is slow

    def fetch(run: _Run) -> memoryview:
        st, key = resolve(run.ref)
        # capped at the declared size; one byte more for a whole object detects appended data
        want = run.end - run.start + (1 if run.whole else 0)
        tid = threading.get_ident()
        buf = scratch.get(tid)
        if buf is None or buf.size < want:
            buf = scratch[tid] = np.empty(max(want, biggest + 1), np.uint8)
        out = buf.data[:want]
        data = read_range_into(st, key, run.start, out)
        if data.obj is not out.obj:  # new memory: ``buf`` unused (network stores), or an
            scratch.pop(tid, None)  # abandoned read may still write into it: drop it
        return data

    def task(run: _Run | int) -> None:
        if isinstance(run, int):
            try:
                raw = materialize(m, run, resolve, verify)
            except CorruptCheckpoint as e:
                paths = sorted({j[4] for j in jobs[run]})
                raise CorruptCheckpoint(f"{uri}/{e}; tensor(s) {', '.join(paths[:5])}") from e
            for view, off, length, pos, _path in jobs[run]:
                view[pos:pos + length] = raw[off:off + length]
            return
        data = fetch(run)
        if len(data) != run.end - run.start:
            paths = sorted({j[4] for ci in run.chunk_ids for j in jobs[ci]})
            raise CorruptCheckpoint(
                f"{uri}/{run.ref}: object is {len(data)} bytes where {run.end - run.start} were "
                f"expected (truncated or altered); tensors affected: {', '.join(paths[:5])}")
        for ci in run.chunk_ids:
            _decode_chunk(m, ci, data, run.start, jobs[ci], verify, uri)

    workers = min(in_flight, max_workers or 8, len(runs) or 1)
    err = run_bounded(task, runs, in_flight=in_flight, workers=workers, name="cloudckpt-load")
    if err is not None:
        raise err


def _decode_chunk(m: Manifest, ci: int, mv: memoryview, base: int, jobs: list[Any],
                  verify: bool, uri: str) -> None:
    c = m.chunks[ci]
    stored = mv[c.offset - base:c.offset - base + c.stored_size]
    direct = len(jobs) == 1 and jobs[0][1] == 0 and jobs[0][2] == c.raw_size
    out = jobs[0][0][jobs[0][3]:jobs[0][3] + c.raw_size] if direct else None
    try:  # a chunk that fills one stretch of one tensor is decoded straight into it
        raw = decode_chunk(c, stored, verify=verify, out=out)
    except CorruptCheckpoint as e:
        paths = sorted({j[4] for j in jobs})
        raise CorruptCheckpoint(f"{uri}/{c.object}: chunk {ci} {e}; tensor(s) "
                                f"{', '.join(paths[:5])}") from e
    if not direct:
        for view, off, length, pos, _path in jobs:
            view[pos:pos + length] = raw[off:off + length]
