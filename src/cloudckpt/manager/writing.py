"""The single-process save path: validate the call, build the training tree and the index
metadata, write and commit one step. (The distributed path, :mod:`.distributed`, shares the
validation and the metadata.)

Who calls what: :meth:`CheckpointManager.save` calls :func:`check_save_args` and
:func:`encode_step` on the training thread, then :func:`write_step` there (blocking) or on the
background thread (async, with the leaves already staged); retention follows the commit
(:func:`cloudckpt.manager.lifecycle.retain_after_commit`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any

from cloudckpt.engine.writer import SaveInfo, write_encoded
from cloudckpt.errors import InvalidArgument
from cloudckpt.format.chunking import resolve_compression
from cloudckpt.format.keys import step_dir
from cloudckpt.format.tree import Leaf, encode_tree
from cloudckpt.manager.context import RunContext
from cloudckpt.manager.deltas import DeltaCache
from cloudckpt.manager.index import META_KEY
from cloudckpt.manager.sharing import dedup_index, referenceable, referenced
from cloudckpt.manager.state import capture

__all__ = ["RESERVED", "check_save_args", "encode_step", "index_metadata", "write_step"]

log = logging.getLogger("cloudckpt.manager")

#: names the training tree uses itself; objects cannot take them
RESERVED = frozenset({"step", "epoch", "metrics", "extra", "rng"})

History = list[tuple[int, dict[str, float]]]


def check_save_args(step: Any, objects: Mapping[str, Any]) -> None:
    """Validate a save call before anything is captured. Pure; any caller.

    Raises:
        InvalidArgument: ``step`` is not a non-negative int, or an object takes a reserved name.
    """
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise InvalidArgument(f"step must be a non-negative int, got {step!r}")
    clash = RESERVED & set(objects)
    if clash:
        raise InvalidArgument(f"reserved names cannot be objects: {sorted(clash)}")


def index_metadata(ctx: RunContext, step: int, epoch: int | None,
                   metrics: Mapping[str, float], generation: int = 0) -> dict[str, Any]:
    """The manifest metadata the run index reads back (step, epoch, finite metrics, commit
    time by ``ctx.clock``, lineage generation). Any caller; no I/O."""
    return {META_KEY: {"step": step, "epoch": epoch,
                       "metrics": {k: v for k, v in metrics.items() if math.isfinite(v)},
                       "time": ctx.clock(), "generation": generation}}


def encode_step(ctx: RunContext, step: int, objects: Mapping[str, Any], *, epoch: int | None,
                metrics: Mapping[str, float], history: History, extra: Mapping[str, Any] | None,
                rng: bool) -> tuple[Any, list[Leaf], dict[str, Any]]:
    """Capture ``objects`` (and RNG states when ``rng``) into ``(tree, leaves, metadata)``.
    On the training thread; the leaves still point at live tensors.

    Raises:
        UnsupportedValue, InvalidArgument: a value cannot be checkpointed; nothing written.
    """
    tree, leaves = encode_tree(
        capture(step, objects, epoch=epoch, metrics=dict(metrics),
                history=[[s, m] for s, m in history], extra=extra, rng=rng))
    return tree, leaves, index_metadata(ctx, step, epoch, metrics)


def write_step(ctx: RunContext, step: int, tree: Any, leaves: list[Leaf],
               meta: Mapping[str, Any], *, overwrite: bool = False,
               generation: int | None = None, deltas: DeltaCache | None = None) -> SaveInfo:
    """Write and commit ``step`` under the run root: create-only, or replacing the checkpoint
    there when ``overwrite`` (one not in the saver's lineage, see :mod:`.lineage`). Chunks
    equal to the previous checkpoint's in the lineage of ``generation`` are referenced, not
    uploaded (``ctx.incremental``; the protocol is in :mod:`.sharing`); with ``deltas``, a
    changed float chunk may be stored as a delta against the previous save (when the cache
    remembers the checkpoint this save builds on), and the cache is refilled after the
    commit. On the training thread (blocking) or the background thread (async); one call
    per step at a time.

    Raises:
        AlreadyExists: ``step`` is already committed in this run's lineage (another writer of
            the same generation won).
        StorageError: the save failed; nothing committed.
    """
    protect: set[str] = set()
    if overwrite:  # the replaced save's data that other checkpoints read is never swept
        own = step_dir(step) + "/"
        protect = {k[len(own):] for k in referenced(ctx, ctx.index.scan(), exclude=step)
                   if k.startswith(own)}
    if isinstance(meta.get(META_KEY), dict):  # wall clock, like the manifest's ``created``:
        # together they give the save's duration (data upload up to the manifest) for reports
        meta = {**meta, META_KEY: {**meta[META_KEY], "write_started": time.time()}}
    dedup, src = dedup_index(ctx, step, generation)
    base = deltas if deltas is not None and src is not None and deltas.step == src else None
    try:
        info = write_encoded(tree, leaves, ctx.step_store(step), metadata=meta,
                             compression=resolve_compression(  # deltas: from the first save
                                 ctx.compression, ctx.store.protocol, delta=deltas is not None),
                             overwrite=overwrite, dedup=dedup,
                             ref_check=lambda refs: _check_refs(ctx, step, refs),
                             protect=protect, delta=base)
    except BaseException:
        if deltas is not None:
            deltas.clear()
        raise
    if deltas is not None and info.manifest is not None:
        deltas.remember(step, info.manifest, leaves)
    log.info("committed step %d to %s (%.1f MiB stored: %.1f MiB new, %.1f MiB referenced)",
             step, info.uri, info.stored_bytes / 2**20, info.added_bytes / 2**20,
             info.shared_bytes / 2**20)
    return info


def _check_refs(ctx: RunContext, step: int, refs: frozenset[str]) -> bool:
    ok = referenceable(ctx, step, refs)
    if not ok:
        log.warning("step %d: data it would share was released meanwhile (retention or gc "
                    "elsewhere); writing every chunk of it", step)
    return ok
