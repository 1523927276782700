"""Restore with replicas: the primary first; the replicas when it cannot serve the restore.

:func:`restore_any` restores from the primary run as :func:`.restoring.restore_run` does. It
turns to the replicas when:

- the primary is unreachable: a :class:`~cloudckpt.errors.TransientStorageError` (connection
  refused, a timeout, 5xx) after the primary store's retry policy gave up, so within its
  ``connect_budget`` (refused) or ``deadline`` (frozen); or, for ``"latest"``, the run root
  itself is gone (``NotFound`` from the listing);
- ``"latest"`` finds no checkpoint at the primary, or none intact (``CorruptCheckpoint``);
- an explicitly requested step (an int or ``"best"``) is damaged at the primary;
- ``"latest"`` at the primary had to fall back past newer damaged checkpoints: an intact
  replica copy of a newer one is taken instead (one more LIST of the primary).

Across the replicas, ``"latest"`` takes the newest checkpoint of each replica's live lineage,
newest first over all replicas (ties: the replica listed first); one that fails to load
(``CorruptCheckpoint``, gone, or its replica failing) is skipped with a WARNING for the next
one. An int or ``"best"`` is tried at each replica in order. The restore that succeeds logs a
WARNING naming the replica. When no replica can serve it either, the primary's outcome stands
(its error is raised, or ``None`` returned).

Who calls what: :meth:`CheckpointManager.restore` on the training thread, single-process runs
only (a distributed restore reads the primary; see docs/scale.md).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from cloudckpt.errors import (
    CloudckptError,
    CorruptCheckpoint,
    NotFound,
    StorageError,
    TransientStorageError,
)
from cloudckpt.manager.context import RunContext
from cloudckpt.manager.lineage import live_records
from cloudckpt.manager.restoring import TrainingState, restore_run

__all__ = ["restore_any"]

log = logging.getLogger("cloudckpt.manager")


def restore_any(primary: RunContext, replicas: Sequence[RunContext], which: int | str,
                objects: Mapping[str, Any], *, rng: bool, strict: bool,
                map_location: Any) -> TrainingState | None:
    """Restore ``which`` into ``objects`` from the primary, or from the replicas when it
    cannot (module docstring). Returns as :func:`.restoring.restore_run`.

    Raises:
        As :func:`.restoring.restore_run` for the primary, when no replica could serve the
        restore either; InvalidArgument (a bad selector or object) at once.
    """
    primary_error: CloudckptError | None = None
    try:
        state = restore_run(primary, which, objects, rng=rng, strict=strict,
                            map_location=map_location)
    except TransientStorageError as e:
        primary_error, reason = e, f"unreachable ({e})"
    except CorruptCheckpoint as e:
        primary_error, reason = e, f"no intact checkpoint there ({e})"
    except NotFound as e:
        if which != "latest" or not replicas:
            raise
        primary_error, reason = e, f"the run is gone ({e})"
    else:
        if state is not None and which == "latest" and replicas:
            return _prefer_newer(primary, replicas, state, objects, rng=rng, strict=strict,
                                 map_location=map_location)
        if state is not None or which != "latest" or not replicas:
            return state
        reason = "it has no checkpoint"
    if not replicas:
        assert primary_error is not None
        raise primary_error
    log.warning("restore from %s: %s; trying the replicas %s", primary.uri, reason,
                [r.uri for r in replicas])
    found = _from_replicas(replicas, which, objects, rng=rng, strict=strict,
                           map_location=map_location)
    if found is not None:
        log.warning("restored step %d from the replica %s (the primary %s: %s)", found.step,
                    found.uri, primary.uri, reason)
        return found
    if primary_error is not None:
        raise primary_error
    return None


def _prefer_newer(primary: RunContext, replicas: Sequence[RunContext], state: TrainingState,
                  objects: Mapping[str, Any], *, rng: bool, strict: bool,
                  map_location: Any) -> TrainingState:
    """After the primary's ``"latest"`` fell back past newer damaged checkpoints: an intact
    replica copy of a newer one, if any (loaded over the objects), else ``state``."""
    try:
        newest = max((r.step for r in live_records(primary)), default=state.step)
    except CloudckptError:
        return state
    if newest <= state.step:
        return state
    found = _from_replicas(replicas, "latest", objects, rng=rng, strict=strict,
                           map_location=map_location, newer_than=state.step)
    if found is None:
        return state
    log.warning("restored step %d from the replica %s: the primary %s has only damaged "
                "copies of steps after %d", found.step, found.uri, primary.uri, state.step)
    return found


def _candidates(replicas: Sequence[RunContext], which: int | str, newer_than: int = -1
                ) -> list[tuple[int | str, RunContext]]:
    if which != "latest":
        return [(which, r) for r in replicas]
    found: list[tuple[int, int, RunContext]] = []
    for i, ctx in enumerate(replicas):
        try:
            listing = ctx.index.scan()
            live = live_records(ctx, ctx.records(listing), listing=listing)
        except CloudckptError as e:
            log.warning("replica %s cannot be listed: %s", ctx.uri, e)
            continue
        found += [(r.step, i, ctx) for r in live if r.location == "hot" and r.step > newer_than]
    found.sort(key=lambda t: (-t[0], t[1]))
    return [(step, ctx) for step, _, ctx in found]


def _from_replicas(replicas: Sequence[RunContext], which: int | str,
                   objects: Mapping[str, Any], *, rng: bool, strict: bool,
                   map_location: Any, newer_than: int = -1) -> TrainingState | None:
    for step, ctx in _candidates(replicas, which, newer_than):
        try:
            state = restore_run(ctx, step, objects, rng=rng, strict=strict,
                                map_location=map_location)
        except (CorruptCheckpoint, StorageError) as e:  # NotFound, unreachable included
            log.warning("replica %s: cannot restore step %s: %s", ctx.uri, step, e)
            continue
        if state is not None:
            return state
    return None
