"""The restore path: pick the checkpoint (falling back past damaged ones for ``"latest"``),
load it into the caller's objects, and report the training state.

Who calls what: :meth:`CheckpointManager.restore` calls :func:`restore_run` on the training
thread (on every rank, with the step the coordinator chose, in a distributed run).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cloudckpt.engine.commit import read_manifest
from cloudckpt.engine.reader import load
from cloudckpt.errors import CorruptCheckpoint, NotFound, RehydrationRequired
from cloudckpt.manager.archive import needs_rehydration
from cloudckpt.manager.context import RunContext
from cloudckpt.manager.distributed import (
    is_distributed_checkpoint,
    restore_distributed,
    split_objects,
)
from cloudckpt.manager.index import CheckpointRecord, Listing
from cloudckpt.manager.lineage import live_records
from cloudckpt.manager.resolve import check_which, resolve_step
from cloudckpt.manager.state import restore_into

__all__ = ["TrainingState", "load_record", "restore_run"]

log = logging.getLogger("cloudckpt.manager")
_RELISTS = 4  # restores that find their checkpoint deleted under them look again this often


@dataclass(frozen=True)
class TrainingState:
    """What :meth:`CheckpointManager.restore` returns besides loading the objects."""

    step: int
    epoch: int | None
    metrics: dict[str, float]
    metrics_history: list[tuple[int, dict[str, float]]]
    best_step: int | None
    best_metric: float | None
    extra: dict[str, Any] = field(default_factory=dict)
    uri: str = ""
    generation: int = 0  # lineage generation of the restored checkpoint


def restore_run(ctx: RunContext, which: int | str, objects: Mapping[str, Any], *, rng: bool,
                strict: bool, map_location: Any) -> TrainingState | None:
    """Load the checkpoint ``which`` (``"latest"``, ``"best"`` or an int) into ``objects``;
    ``None`` when the run has no checkpoint. For ``"latest"``, a corrupt or incomplete newest
    checkpoint is skipped with a WARNING naming it and the one used instead.

    Raises:
        InvalidArgument: ``which`` is not a step selector; an object the checkpoint has no
            state for (``strict``).
        NotFound: the requested step (int or "best") does not exist.
        CorruptCheckpoint: an explicitly requested checkpoint is damaged, or no checkpoint of
            the run is intact.
        RehydrationRequired: it lies in an archive tier that needs a restore first.
    """
    check_which(which)
    skipped: list[int] = []
    for _attempt in range(_RELISTS):
        listing = ctx.index.scan()
        records = ctx.records(listing)
        by_step = {r.step: r for r in records}
        candidates = _candidates(ctx, which, listing, records)
        if not candidates:
            if listing.data:
                log.warning("no committed checkpoint under %s; incomplete saves found for "
                            "steps %s", ctx.uri, sorted(listing.data))
            return None
        vanished = False
        for s in candidates:
            if s in skipped:
                continue
            rec = by_step[s]
            try:
                tree = load_record(ctx, rec, map_location, objects, rng)
            except NotFound as e:
                if which != "latest":
                    raise
                # deleted under us (a concurrent retention pass): look again, newer ones too
                log.warning("checkpoint step %d at %s vanished while restoring (%s); "
                            "listing the run again", s, rec.uri, e)
                vanished = True
                break
            except CorruptCheckpoint as e:
                if which != "latest":
                    raise
                log.warning("checkpoint step %d at %s is unusable (%s); trying an older one",
                            s, rec.uri, e)
                skipped.append(s)
                continue
            if skipped:
                log.warning("restored step %d from %s instead of newer step(s) %s", s,
                            rec.uri, skipped)
            return _finish(ctx, tree, rec, records, objects, rng=rng, strict=strict)
        if not vanished:
            break
    raise CorruptCheckpoint(f"no intact checkpoint under {ctx.uri}; tried steps {skipped}")


def _candidates(ctx: RunContext, which: int | str, listing: Listing,
                records: list[CheckpointRecord]) -> list[int]:
    """Steps to try, best first: for "latest", the live lineage newest first, then (as a last
    resort, with a WARNING) other branches; else the one step asked for."""
    if which != "latest":
        chosen = resolve_step(records, which, ctx.metric, ctx.mode, uri=ctx.uri)
        if chosen is None:
            raise NotFound(f"no checkpoint under {ctx.uri} reports metric {ctx.metric!r}")
        return [chosen]
    newer_incomplete = [s for s in listing.data if s not in {r.step for r in records}
                        and s not in listing.quarantined
                        and (not records or s > records[-1].step)]
    if newer_incomplete:
        log.warning("ignoring incomplete checkpoint(s) %s under %s (no committed "
                    "manifest)", sorted(newer_incomplete), ctx.uri)
    live = live_records(ctx, records)
    others = sorted({r.step for r in records} - {r.step for r in live}, reverse=True)
    if others:
        log.warning("ignoring step(s) %s under %s: written by a stale node or an abandoned "
                    "branch of the run (not in the live lineage)", sorted(others), ctx.uri)
    return sorted((r.step for r in live), reverse=True) + others


def _finish(ctx: RunContext, tree: Any, rec: CheckpointRecord, records: list[CheckpointRecord],
            objects: Mapping[str, Any], *, rng: bool, strict: bool) -> TrainingState:
    loaded_here = split_objects(objects)[0] if tree.get("_dcp") else {}
    restore_into(tree, {k: v for k, v in objects.items() if k not in loaded_here},
                 rng=rng and not tree.get("_dcp"), strict=strict)
    history = [(int(h[0]), dict(h[1])) for h in tree.get("metrics_history", [])]
    by_step = {r.step: r for r in records}
    best = resolve_step(records, "best", ctx.metric, ctx.mode, uri=ctx.uri)
    best_val = by_step[best].metrics.get(ctx.metric) if best is not None and ctx.metric else None
    return TrainingState(step=int(tree["step"]), epoch=tree.get("epoch"),
                         metrics=dict(tree.get("metrics") or {}), metrics_history=history,
                         best_step=best, best_metric=best_val,
                         extra=dict(tree.get("extra") or {}), uri=rec.uri,
                         generation=rec.generation)


def load_record(ctx: RunContext, rec: CheckpointRecord, map_location: Any,
                objects: Mapping[str, Any] | None = None, rng: bool = True) -> Any:
    """The training tree of ``rec``'s checkpoint (hot or archived). A checkpoint written by the
    distributed path is restored collectively into ``objects`` (DCP-managed ones) and marked
    ``"_dcp"``; every rank must call this then.

    Raises:
        RehydrationRequired: ``rec`` is in an offline archive tier.
        CorruptCheckpoint, NotFound: the checkpoint is damaged or gone.
        StorageError: reading failed.
    """
    if rec.tier and needs_rehydration(rec.tier):
        raise RehydrationRequired(
            f"step {rec.step} at {rec.uri} is in the {rec.tier} tier, which needs a restore "
            "before it can be read: S3: `aws s3api restore-object` on each object under "
            f"{rec.uri}/data (or an S3 Batch Operations restore job); Azure: set the tier "
            "of those blobs back to Hot or Cool and wait for rehydration; then retry")
    target = ctx.record_store(rec)
    if is_distributed_checkpoint(read_manifest(target).metadata):
        tree = restore_distributed(target, objects or {}, rng=rng)
        return {**tree, "_dcp": True}
    return load(target, map_location=map_location)
