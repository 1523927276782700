"""What happens right after a step commits, in this order: the read-back check
(``verify_after_save``; a checkpoint that fails is quarantined and the save raises), retention,
then the ``on_commit`` hook (:class:`~.options.CommitOptions`).

Verification comes before retention on purpose: retention deletes older checkpoints only once
the newest one is known to be readable, and a quarantined checkpoint is never the latest or
the best (the run index skips it, :mod:`.quarantine`), so it cannot make retention drop the
checkpoint that would replace it.

Who calls what: :meth:`CheckpointManager.save` calls :func:`after_commit` once per committed
step, on the thread that committed (the training thread, or the background thread of an async
save). The distributed save path does not call it (yet): it runs retention alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from cloudckpt.engine.verify import verify
from cloudckpt.engine.writer import SaveInfo
from cloudckpt.errors import CloudckptError, CorruptCheckpoint, NotFound
from cloudckpt.format.keys import MANIFEST_KEY, step_dir
from cloudckpt.manager.context import RunContext
from cloudckpt.manager.lifecycle import retain_after_commit
from cloudckpt.manager.options import CommitOptions, CommitRecord
from cloudckpt.manager.quarantine import marker_for, write_marker

__all__ = ["after_commit", "check_committed"]

log = logging.getLogger("cloudckpt.manager")
_SHOWN = 3  # problems quoted in the error message (all of them go into the marker and log)


def after_commit(ctx: RunContext, options: CommitOptions, step: int, info: SaveInfo,
                 generation: int | None, *, epoch: int | None, metrics: Mapping[str, float],
                 background: bool) -> SaveInfo:
    """Verify ``step`` (when ``options.verify_after_save``), apply retention within the
    lineage of ``generation``, then call ``options.on_commit``. Returns ``info``.

    Raises:
        CorruptCheckpoint: the read-back found damage; the checkpoint is quarantined,
            retention did not run, the hook was not called.
        StorageError: the checkpoint could not be read back at all (not quarantined;
            retention did not run).
        Only what is not a CloudckptError from retention (a bug, a simulated crash).
    """
    verified, verify_seconds = None, 0.0
    if options.verify_after_save:
        t0 = time.perf_counter()
        check_committed(ctx, step, info)
        verified, verify_seconds = True, time.perf_counter() - t0
    retain_after_commit(ctx, step, generation)
    if options.on_commit is not None:
        record = CommitRecord(step, info.uri, info.save_id, info.raw_bytes, info.stored_bytes,
                              info.seconds, dict(metrics), epoch, verified, verify_seconds,
                              background)
        try:
            options.on_commit(record)
        except Exception:  # a tracking hook never breaks the save
            log.exception("on_commit hook %r failed for step %d at %s (the checkpoint is "
                          "committed; the hook's error is only logged)", options.on_commit,
                          step, info.uri)
    return info


def check_committed(ctx: RunContext, step: int, info: SaveInfo) -> None:
    """Read back every stored byte of the checkpoint of ``step`` just committed (``info``)
    and check it against its checksums; on damage, quarantine it (a marker that the run
    index honours), log an ERROR and raise. Same thread as :func:`after_commit`.

    Raises:
        CorruptCheckpoint: a checksum, size or the manifest did not match, or an object could
            not be read (the message names step, URI and the first problems).
        StorageError: the manifest could not be read for a storage reason (nothing marked).
    """
    try:
        report = verify(ctx.step_store(step))
    except (CorruptCheckpoint, NotFound) as e:  # the manifest itself is damaged or gone
        problems = [str(e)]
    else:
        if report.ok:
            log.info("verified step %d at %s: %d objects, %d chunks read back intact", step,
                     info.uri, report.objects, report.chunks)
            return
        problems = list(report.problems)
    reason = f"failed verification right after save ({len(problems)} problem(s))"
    marked = _quarantine(ctx, step, reason, problems)
    log.error("step %d at %s %s%s: %s", step, info.uri, reason,
              "; quarantined" if marked else "; could NOT be quarantined", "; ".join(problems))
    shown = "; ".join(problems[:_SHOWN]) + (" ..." if len(problems) > _SHOWN else "")
    raise CorruptCheckpoint(
        f"step {step} at {info.uri} {reason}: {shown}. "
        + ("It is quarantined: restore, latest(), best() and retention skip it, and the "
           "previous checkpoint stays the latest; save again to replace it."
           if marked else "Quarantining it failed too (see the log): delete it by hand."))


def _quarantine(ctx: RunContext, step: int, reason: str, problems: list[str]) -> bool:
    """Mark the checkpoint of ``step`` as listed now; False when it could not be marked."""
    key = f"{step_dir(step)}/{MANIFEST_KEY}"
    try:
        listed = next((o for o in ctx.store.list(step_dir(step)) if o.key == key), None)
        if listed is None:
            return False
        write_marker(ctx.store, marker_for(step, listed, reason, problems, ctx.clock()))
    except CloudckptError as e:
        log.error("could not quarantine step %d under %s: %s", step, ctx.uri, e)
        return False
    return True
