"""What happens to committed checkpoints after the save: retention (delete or archive what the
policy does not keep), explicit deletion, pins.

Who calls what: the save paths call :func:`retain_after_commit` right after a commit (on the
thread that committed; on the coordinator rank only); the manager's public methods and operator
tools call the rest. Every step reads the store, so each is safe to interrupt and re-run.
"""

from __future__ import annotations

import logging

from cloudckpt.engine.commit import delete_checkpoint
from cloudckpt.errors import CloudckptError, NotFound
from cloudckpt.format.keys import archived_key, pin_key, tier_key
from cloudckpt.manager.archive import archive_checkpoint
from cloudckpt.manager.context import RunContext
from cloudckpt.manager.lineage import live_records
from cloudckpt.manager.resolve import summarize
from cloudckpt.manager.retention import plan_retention
from cloudckpt.manager.sharing import delete_hot, sweep_releases

__all__ = ["apply_retention", "delete_step", "pin_step", "retain_after_commit", "unpin_step"]

log = logging.getLogger("cloudckpt.manager")


def apply_retention(ctx: RunContext, generation: int | None = None) -> list[int]:
    """Remove (or archive, per ``ctx.archive``) the hot checkpoints of the live lineage (of
    ``generation``, default the newest) that ``ctx.retention`` does not keep; never the
    latest, the best or a pinned one, and never a checkpoint of another branch. Returns their
    steps, oldest first.

    Raises:
        StorageError, CorruptCheckpoint: a deletion or archival failed midway; nothing visible
            is broken, and the next call finishes the job.
    """
    if ctx.retention is None:
        return []
    records = [r for r in live_records(ctx, of=generation)
               if r.location == "hot" and r.tier is None]
    doomed = plan_retention(summarize(records), ctx.retention, ctx.clock(),
                            metric=ctx.metric, mode=ctx.mode)
    for s in doomed:
        if ctx.archive is not None:
            archive_checkpoint(ctx, s, ctx.archive)
        else:
            delete_step(ctx, s)
    if doomed:
        log.info("retention removed steps %s from %s", doomed, ctx.uri)
    else:  # data released by earlier deletions, once past the grace period
        sweep_releases(ctx, ctx.incremental.grace)
    return doomed


def retain_after_commit(ctx: RunContext, step: int, generation: int | None = None) -> None:
    """:func:`apply_retention` after ``step`` committed; a cloudckpt error is logged as a
    WARNING, not raised (the checkpoint is committed; the next save retries).

    Raises:
        Only what is not a CloudckptError (a bug, a simulated crash in tests).
    """
    try:
        apply_retention(ctx, generation)
    except CloudckptError as e:
        log.warning("retention after step %d failed (will retry on the next save): %s", step, e)


def delete_step(ctx: RunContext, step: int) -> None:
    """Delete one checkpoint: release its data (:func:`.sharing.release_step`), delete its
    manifest, then sweep released data past the grace period (data other checkpoints read
    stays); its archived copy, tier record and pin too. Deleting a step that does not exist
    is a no-op.

    Raises:
        StorageError: a deletion failed; re-run to finish.
    """
    delete_hot(ctx, step)
    ctx.store.delete(tier_key(step))
    if ctx.store.exists(archived_key(step)):
        rec = {r.step: r for r in ctx.records()}.get(step)
        if rec is not None and rec.location == "archived":
            delete_checkpoint(ctx.record_store(rec))
        ctx.store.delete(archived_key(step))
    ctx.store.delete(pin_key(step))


def pin_step(ctx: RunContext, step: int) -> None:
    """Keep ``step`` whatever the retention policy says.

    Raises:
        NotFound: ``step`` is not committed.
        StorageError: the pin could not be written.
    """
    if step not in {r.step for r in ctx.records()}:
        raise NotFound(f"no committed checkpoint for step {step} under {ctx.uri}")
    ctx.store.put(pin_key(step), b"pinned\n")


def unpin_step(ctx: RunContext, step: int) -> None:
    """Let retention decide about ``step`` again (no-op if it was not pinned).

    Raises:
        StorageError: the pin could not be deleted.
    """
    ctx.store.delete(pin_key(step))
