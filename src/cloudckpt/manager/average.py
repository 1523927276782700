"""Checkpoint averaging: the element-wise mean of one object's tensors (the model's weights by
default) over several checkpoints of a run, written as a regular checkpoint, streamed.

Order of work. (1) Choose the checkpoints (the ``best`` K of the live lineage by a metric, or
listed ``steps``) and read their manifests. (2) Plan from the manifests alone
(:mod:`.average_plan`): the object's sub-tree must have the same tensor paths, kinds, dtypes and
shapes and the same non-tensor values in every input; anything else is refused with
:class:`~cloudckpt.errors.InvalidArgument` naming the tensors, before a tensor byte is read or
anything is written. (3) Stream: tensors are processed in batches of at most ``batch_bytes``
raw bytes (a bigger tensor is a batch of its own), integer and bool tensors first. For each
batch, each input's tensors are read (:func:`~cloudckpt.engine.reader.read_leaves`, verified)
and added into accumulators (fp64 for fp32/fp64 inputs, fp32 for 16- and 8-bit floats), then
dropped before the next input's are read; integer and bool tensors must be bit-equal across
inputs. The means are cast back to each tensor's dtype and written as data objects of the
output (:func:`~cloudckpt.engine.writer.write_leaves`) before the next batch is read. (4) The
output manifest is committed last, create-only: until then ``out`` holds no checkpoint, and on
any failure the objects written so far are deleted.

Memory. With ``B = max(batch_bytes, largest tensor)``: one input's batch (B) and the bytes
of its read requests (up to B), the accumulators (2B; 4B for 8-bit floats), one widened copy
of a tensor being added, then the cast outputs (B) and the encoded objects being written (B).
It does not grow with the number of inputs, nor with the model beyond its largest tensor.
Measured (fresh process, 3 inputs of 64 MiB fp32 in 4 MiB tensors, local disk, peak RSS over
the call): 33-57 MiB at B = 4 MiB, 78 MiB at 8 MiB, 131 MiB at 16 MiB, i.e. about 8-10 B
once allocator overhead is counted; averaging whole models would need at least 192 MiB
there (fp64 sums plus the output). The defaults (16 MiB batches) stay near 150 MiB for models
whose tensors are at most 16 MiB.

The output's tree is the averaged object's own (a model's ``state_dict`` with its
``_metadata``), so ``model.load_state_dict(cloudckpt.load(out))`` loads it, and
``cloudckpt export`` exports it. Its manifest metadata records the run, steps and object.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from cloudckpt.engine.commit import commit_manifest, discard, read_manifest
from cloudckpt.engine.reader import read_leaves
from cloudckpt.engine.writer import new_save_id, write_leaves
from cloudckpt.errors import (
    AlreadyExists,
    CloudckptError,
    InvalidArgument,
    NotFound,
    RehydrationRequired,
)
from cloudckpt.format.codecs import check_compression
from cloudckpt.format.dtypes import torch_dtype
from cloudckpt.format.keys import MANIFEST_KEY
from cloudckpt.format.manifest import ChunkRecord, Manifest, Segment, TensorRecord, new_manifest
from cloudckpt.format.signing import Signer, Verifier
from cloudckpt.format.tree import Leaf
from cloudckpt.manager.archive import needs_rehydration
from cloudckpt.manager.average_plan import (
    AverageItem,
    accumulator_dtype,
    batches,
    plan_items,
    show,
    skeleton,
    subtree,
)
from cloudckpt.manager.context import RunContext
from cloudckpt.manager.distributed import is_distributed_checkpoint
from cloudckpt.manager.index import CheckpointRecord
from cloudckpt.manager.lineage import live_records
from cloudckpt.manager.resolve import summarize
from cloudckpt.manager.retention import ranked_by_metric
from cloudckpt.manager.state import TRAINING_FORMAT
from cloudckpt.storage import Store, open_store

__all__ = ["AVERAGE_META_KEY", "AverageInfo", "average", "choose_steps"]

MiB = 1024 * 1024
#: manifest metadata key of an averaged checkpoint: run, steps, object
AVERAGE_META_KEY = "cloudckpt.average"


@dataclass(frozen=True)
class AverageInfo:
    """What :func:`average` wrote."""

    uri: str
    steps: tuple[int, ...]
    obj: str
    tensors: int
    raw_bytes: int
    stored_bytes: int
    seconds: float


def choose_steps(records: Sequence[CheckpointRecord], live: Sequence[CheckpointRecord], *,
                 steps: Sequence[int] | None, best: int | None, metric: str | None,
                 mode: str) -> list[int]:
    """The steps to average, oldest first: the ``best`` K of ``live`` (the live lineage) by
    ``metric``/``mode`` (ties to the newer step), or ``steps``, each committed in
    ``records``. Pure; any caller.

    Raises:
        InvalidArgument: neither or both of ``steps``/``best``; ``best`` < 1 or without a
            metric; fewer than ``best`` checkpoints report the metric; repeated steps.
        NotFound: a listed step is not committed.
    """
    if (steps is None) == (best is None):
        raise InvalidArgument("give either steps=[...] or best=K (with metric=...)")
    if best is not None:
        if isinstance(best, bool) or not isinstance(best, int) or best < 1:
            raise InvalidArgument(f"best must be a positive int, not {best!r}")
        if not metric:
            raise InvalidArgument("best=K needs metric= (the metric to rank checkpoints by)")
        ranked = ranked_by_metric(summarize(live), metric, mode)
        if len(ranked) < best:
            raise InvalidArgument(f"only {len(ranked)} checkpoint(s) of the live run report "
                                  f"metric {metric!r}; cannot pick the best {best}")
        return sorted(c.step for c in ranked[:best])
    assert steps is not None
    chosen = [int(s) for s in steps]
    if not chosen or len(set(chosen)) != len(chosen):
        raise InvalidArgument(f"steps must be distinct and non-empty, not {list(steps)}")
    have = {r.step for r in records}
    missing = [s for s in chosen if s not in have]
    if missing:
        raise NotFound(f"no committed checkpoint for step(s) {missing}; committed: "
                       f"{sorted(have)}")
    return sorted(chosen)


def _open_input(ctx: RunContext, rec: CheckpointRecord, keys: list[str],
                verifier: Verifier | None) -> tuple[Store, Manifest, Any, str]:
    where = f"step {rec.step} ({rec.uri})"
    if rec.tier and needs_rehydration(rec.tier):
        raise RehydrationRequired(f"{where} is in the {rec.tier} tier; restore it first")
    store = ctx.record_store(rec)
    m = read_manifest(store, verifier)
    if is_distributed_checkpoint(m.metadata):
        raise InvalidArgument(f"{where} was written by the distributed (DCP) path; averaging "
                              "reads single-process checkpoints only")
    try:
        fmt = subtree(m.tree, ["format"], where)
    except InvalidArgument:
        fmt = None
    if fmt != TRAINING_FORMAT:
        raise InvalidArgument(f"{where} is not a CheckpointManager checkpoint")
    return store, m, subtree(m.tree, ["objects", *keys], where), where


def _as_torch(value: Any, item: AverageItem) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    arr = np.asarray(value)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    try:
        return torch.from_numpy(arr)
    except TypeError as e:
        raise InvalidArgument(f"{show(item.path)}: cannot average numpy dtype {arr.dtype}") from e


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _mean_batch(batch: list[AverageItem], inputs: list[tuple[Store, Manifest, Any, str]],
                obj: str, storage_options: Mapping[str, Any] | None,
                memory_budget: int) -> list[Any]:
    """The averaged values of ``batch``, reading one input's tensors at a time."""
    acc: list[torch.Tensor | None] = [None] * len(batch)
    for j, (store, m, _node, where) in enumerate(inputs):
        got = read_leaves(m, [it.indices[j] for it in batch], store,
                          storage_options=storage_options, memory_budget=memory_budget)
        for k, it in enumerate(batch):
            x = _as_torch(got.pop(it.indices[j]), it)
            if it.exact:
                if j == 0:
                    acc[k] = x
                elif not torch.equal(_bits(acc[k]), _bits(x)):  # type: ignore[arg-type]
                    raise InvalidArgument(
                        f"{obj}/{show(it.path)}: {x.dtype} tensor differs between "
                        f"{inputs[0][3]} and {where}; integer and bool tensors must be equal "
                        "in every averaged checkpoint")
            elif j == 0:
                acc[k] = x.to(accumulator_dtype(x.dtype))
            else:
                acc[k].add_(x.to(accumulator_dtype(x.dtype)))  # type: ignore[union-attr]
            del x
        del got
    out: list[Any] = []
    for k, it in enumerate(batch):
        t, acc[k] = acc[k], None
        assert t is not None
        if not it.exact:
            t = t.div_(len(inputs)).to(_dtype_of(it.record))
        out.append(t if it.record.kind == "torch"
                   else t.numpy().astype(np.dtype(it.record.dtype), copy=False))
    return out


def _dtype_of(rec: TensorRecord) -> torch.dtype:
    if rec.kind == "torch":
        return torch_dtype(rec.dtype)
    return torch.from_numpy(np.empty(0, dtype=np.dtype(rec.dtype).newbyteorder("="))).dtype


def _remap(node: Any, new_index: Mapping[int, int]) -> Any:
    """A copy of the JSON sub-tree ``node`` with leaf indices renumbered (no recursion)."""
    out = json.loads(json.dumps(node))
    stack = [out]
    while stack:
        n = stack.pop()
        if isinstance(n, dict):
            if n.get("t") == "leaf":
                n["i"] = new_index[n["i"]]
            else:
                stack.extend(n.values())
        elif isinstance(n, list):
            stack.extend(n)
    return out


def average(run: str | os.PathLike[str] | Store, out: str | os.PathLike[str] | Store, *,
            steps: Sequence[int] | None = None, best: int | None = None,
            metric: str | None = None, mode: str = "min", obj: str = "model",
            storage_options: Mapping[str, Any] | None = None,
            out_storage_options: Mapping[str, Any] | None = None, overwrite: bool = False,
            compression: str = "auto", batch_bytes: int = 16 * MiB,
            memory_budget: int = 64 * MiB, signer: Signer | None = None,
            verifier: Verifier | None = None) -> AverageInfo:
    """Average the tensors of object ``obj`` (a name given to ``mgr.save``, or a path below
    one: ``"ema/shadow"``) over checkpoints of the :class:`~cloudckpt.CheckpointManager` run at
    ``run`` and commit the result as a regular checkpoint at ``out`` (any backend; opened with
    ``out_storage_options``, default ``storage_options``). Choose either ``steps=[...]`` or
    ``best=K`` with ``metric=``/``mode=`` (the K best of the live lineage). ``batch_bytes`` and
    ``memory_budget`` bound memory (module docstring); ``compression``, ``signer`` as for
    :func:`cloudckpt.save`; ``verifier`` as for :func:`cloudckpt.load`. Any thread; the inputs
    are only read. Nothing is committed at ``out`` unless every input matched.

    Raises:
        InvalidArgument: bad selection or sizes; an input is not a manager checkpoint, was
            written by the distributed path, or lacks ``obj``; the inputs differ in tensor
            keys, dtypes, shapes or non-tensor values, or an integer/bool tensor differs (the
            message names it); ``out`` is the run root or one of its step directories.
        NotFound: a listed step is not committed. AlreadyExists: ``out`` holds a checkpoint
            and ``overwrite`` is false. RehydrationRequired: an input is in an offline tier.
        CorruptCheckpoint, UntrustedCheckpoint, StorageError: reading or writing failed.
    """
    t0 = time.perf_counter()
    check_compression(compression)
    if min(batch_bytes, memory_budget) <= 0:
        raise InvalidArgument("batch_bytes and memory_budget must be positive")
    keys = [k for k in obj.split("/") if k]
    if not keys:
        raise InvalidArgument("obj must name an object saved with the checkpoints, e.g. 'model'")
    ctx = RunContext.open(run, storage_options=storage_options, mode=mode)
    dst = open_store(out, storage_options=storage_options if out_storage_options is None
                     else out_storage_options)
    root = ctx.uri.rstrip("/")
    if dst.uri.rstrip("/") == root or dst.uri.startswith(f"{root}/step-"):
        raise InvalidArgument(f"{dst.uri}: write the average outside the run's own checkpoints")
    records = ctx.records()
    chosen = choose_steps(records, live_records(ctx, records) if best is not None else records,
                          steps=steps, best=best, metric=metric, mode=mode)
    by_step = {r.step: r for r in records}
    inputs = [_open_input(ctx, by_step[s], keys, verifier) for s in chosen]
    shapes = [(m, skeleton(node, len(m.tensors), where), where) for _st, m, node, where in inputs]
    items = plan_items(shapes, obj)
    previous = _previous(dst, overwrite)

    save_id = new_save_id()
    chunks: list[ChunkRecord] = []
    tensors: list[TensorRecord] = []
    new_index: dict[int, int] = {}
    try:
        for b, batch in enumerate(batches(items, batch_bytes)):
            values = _mean_batch(batch, inputs, obj, ctx.storage_options, memory_budget)
            leaves = [Leaf(f"{obj}/{show(it.path)}", v, len(tensors) + k)
                      for k, (it, v) in enumerate(zip(batch, values, strict=True))]
            del values
            written = write_leaves(dst, leaves, f"{save_id}/b{b:05d}", compression=compression,
                                   memory_budget=memory_budget)
            del leaves
            for it, rec in zip(batch, written.tensors, strict=True):
                new_index[it.indices[0]] = len(tensors)
                tensors.append(replace(rec, segments=tuple(
                    Segment(s.chunk + len(chunks), s.offset, s.length) for s in rec.segments)))
            chunks.extend(written.chunks)
        meta = {AVERAGE_META_KEY: {"run": ctx.uri, "steps": chosen, "object": obj,
                                   "metric": metric, "mode": mode if best else None}}
        manifest = new_manifest(save_id, _remap(inputs[0][2], new_index), tuple(tensors),
                                tuple(chunks), meta)
        commit_manifest(dst, manifest, overwrite=overwrite, previous=previous, signer=signer)
    except Exception:  # nothing committed: remove what this call wrote
        discard(dst, {c.object for c in chunks})
        raise
    return AverageInfo(dst.uri, tuple(chosen), obj, len(tensors), manifest.raw_bytes,
                       manifest.stored_bytes, time.perf_counter() - t0)


def _previous(dst: Store, overwrite: bool) -> Manifest | None:
    if not dst.exists(MANIFEST_KEY):
        return None
    if not overwrite:
        raise AlreadyExists(f"a committed checkpoint exists at {dst.uri}; pass overwrite=True "
                            "(--overwrite) to replace it")
    with contextlib.suppress(CloudckptError):
        return read_manifest(dst)
    return None
