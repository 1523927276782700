"""``CheckpointManager``: save and resume a training run under one root URI.

Who calls what: the training loop calls :meth:`CheckpointManager.save` (one thread at a time)
and, on a fresh node, :meth:`CheckpointManager.restore`. Retention (and archival) run after
each committed save; :meth:`gc` is for operators (dry-run by default). Every decision reads the
store, never in-memory counters, so a manager in a new process sees exactly what the old one
left. The layout under the root is described in :mod:`cloudckpt.manager.index`.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cloudckpt.engine.commit import delete_checkpoint, read_manifest
from cloudckpt.engine.reader import load
from cloudckpt.engine.writer import SaveInfo, write_encoded
from cloudckpt.errors import (
    CloudckptError,
    CorruptCheckpoint,
    InvalidArgument,
    NotFound,
    RehydrationRequired,
)
from cloudckpt.format.keys import archived_key, pin_key, step_dir, tier_key
from cloudckpt.format.tree import encode_tree
from cloudckpt.manager.archive import ArchivePolicy, archive_checkpoint, needs_rehydration
from cloudckpt.manager.background import BackgroundSaver
from cloudckpt.manager.distributed import (
    choose_step_collectively,
    is_distributed,
    is_distributed_checkpoint,
    restore_distributed,
    save_step_distributed,
    split_objects,
)
from cloudckpt.manager.gc import GCReport, collect_garbage
from cloudckpt.manager.index import META_KEY, CheckpointRecord, RunIndex
from cloudckpt.manager.preemption import PreemptionWatch
from cloudckpt.manager.retention import (
    AnyOf,
    CheckpointSummary,
    KeepBest,
    KeepEvery,
    KeepLast,
    KeepWithin,
    RetentionPolicy,
    best_step,
    plan_retention,
)
from cloudckpt.manager.staging import Stager
from cloudckpt.manager.state import capture, restore_into
from cloudckpt.storage import Store, open_store, substore

__all__ = ["CheckpointManager", "TrainingState"]

log = logging.getLogger("cloudckpt.manager")
_RESERVED = {"step", "epoch", "metrics", "extra", "rng"}


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


class CheckpointManager:
    """Checkpoints of one training run under ``uri`` (local path, s3://, gs://, az://...).

    Retention keeps the union of: the ``keep_last`` newest, the ``keep_best`` best by
    ``metric``/``mode``, every ``keep_every``-th step, those younger than ``keep_within``
    seconds, and pinned ones; or pass your own ``retention`` policy. The latest and the best
    are never deleted. Checkpoints leaving that set are deleted, or archived per ``archive``.
    ``save_every_steps`` / ``save_every_epochs`` / ``save_on_improvement`` drive
    :meth:`should_save`. ``clock`` is injectable (seconds since the epoch).

    Async saves (``blocking=False`` here or per :meth:`save`): the training thread only copies
    the tensors into reused host staging buffers (pinned for CUDA tensors) and returns; encoding,
    upload, commit and retention run on a background thread. At most one save is in flight;
    another ``save`` meanwhile waits (``when_busy="wait"``) or is skipped and logged
    (``"skip"``). A background error is raised by the next ``save``, by :meth:`wait`, and is
    logged at exit, where an in-flight save is waited for up to ``exit_timeout`` seconds. Host
    memory cost: one copy of the saved tensors (:attr:`staging_bytes`), kept for reuse.

    ``preemption=True`` (call from the main thread) turns ``preemption_signals`` into a flag:
    see :attr:`preempted` and :meth:`save_on_preemption`.

    Raises (constructor): InvalidURI, InvalidArgument.
    """

    def __init__(self, uri: str | os.PathLike[str] | Store, *, keep_last: int | None = 3,
                 keep_best: int | None = 1, metric: str | None = None, mode: str = "min",
                 keep_every: int | None = None, keep_within: float | None = None,
                 retention: RetentionPolicy | None = None, archive: ArchivePolicy | None = None,
                 save_every_steps: int | None = None, save_every_epochs: int | None = None,
                 save_on_improvement: bool = False, compression: str = "auto",
                 storage_options: Mapping[str, Any] | None = None,
                 clock: Callable[[], float] = time.time, gc_grace: float = 3600.0,
                 blocking: bool = True, when_busy: str = "wait", exit_timeout: float = 300.0,
                 preemption: bool = False,
                 preemption_signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGUSR1),
                 preemption_deadline: float = 90.0) -> None:
        if mode not in ("min", "max"):
            raise InvalidArgument(f"mode must be 'min' or 'max', not {mode!r}")
        self.store = open_store(uri, storage_options=storage_options)
        self.uri = self.store.uri
        self.metric, self.mode = metric, mode
        self.archive_policy = archive
        self.compression = compression
        self.save_every_steps, self.save_every_epochs = save_every_steps, save_every_epochs
        self.save_on_improvement = save_on_improvement
        self.clock, self.gc_grace = clock, gc_grace
        self._storage_options = storage_options
        self.index = RunIndex(self.store)
        self._history: list[tuple[int, dict[str, float]]] = []
        if when_busy not in ("wait", "skip"):
            raise InvalidArgument(f"when_busy must be 'wait' or 'skip', not {when_busy!r}")
        self.blocking, self.when_busy = blocking, when_busy
        self._stager = Stager()
        self._background = BackgroundSaver(self.uri, exit_timeout)
        self._preemption = PreemptionWatch(preemption_signals, preemption_deadline) \
            if preemption else None
        if retention is None:
            parts: list[RetentionPolicy] = []
            if keep_last is not None:
                parts.append(KeepLast(keep_last))
            if keep_best and metric:
                parts.append(KeepBest(keep_best, metric, mode))
            if keep_every:
                parts.append(KeepEvery(keep_every))
            if keep_within is not None:
                parts.append(KeepWithin(keep_within))
            retention = AnyOf(tuple(parts)) if keep_last is not None else None
        self.retention = retention

    def __repr__(self) -> str:
        return f"CheckpointManager({self.uri!r})"

    # -- queries (read the store) -----------------------------------------------------------
    def checkpoints(self) -> list[CheckpointRecord]:
        """Every committed checkpoint, hot and archived, oldest first."""
        return self.index.records()

    def steps(self) -> list[int]:
        return [r.step for r in self.checkpoints()]

    def latest(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def best(self) -> int | None:
        return best_step(self._summaries(self.checkpoints()), self.metric, self.mode)

    def _summaries(self, records: list[CheckpointRecord]) -> list[CheckpointSummary]:
        return [CheckpointSummary(r.step, r.time, r.metrics, r.pinned) for r in records]

    def should_save(self, step: int, *, epoch: int | None = None, epoch_end: bool = False,
                    metrics: Mapping[str, float] | None = None, final: bool = False) -> bool:
        """Whether the configured strategy saves now: ``final``; every ``save_every_steps``
        steps; at the end (``epoch_end``) of every ``save_every_epochs``-th epoch (``epoch``
        counted from 0); or, with ``save_on_improvement``, when ``metrics[metric]`` beats the
        best committed checkpoint (read from the store)."""
        if final:
            return True
        if self.save_every_steps and step > 0 and step % self.save_every_steps == 0:
            return True
        if epoch_end and self.save_every_epochs and epoch is not None \
                and (epoch + 1) % self.save_every_epochs == 0:
            return True
        if self.save_on_improvement and metrics is not None and self.metric:
            value = metrics.get(self.metric)
            if value is None or math.isnan(float(value)):
                return False
            records = {r.step: r for r in self.checkpoints()}
            best = best_step(self._summaries(list(records.values())), self.metric, self.mode)
            if best is None:
                return True
            prev = float(records[best].metrics[self.metric])
            return float(value) < prev if self.mode == "min" else float(value) > prev
        return False

    # -- save ------------------------------------------------------------------------------
    def save(self, step: int, *, epoch: int | None = None,
             metrics: Mapping[str, float] | None = None, extra: Mapping[str, Any] | None = None,
             rng: bool = True, blocking: bool | None = None, **objects: Any) -> SaveInfo | None:
        """Commit a checkpoint of ``objects`` (``model=``, ``optimizer=``, ``scheduler=``,
        ``scaler=``, any object with ``state_dict``, or a ``torch.Generator``) at ``step``,
        with RNG states, ``epoch``, ``metrics`` and ``extra``; then apply retention. Call from
        the training thread. Blocking (the default unless the manager says otherwise): returns
        the :class:`SaveInfo`; tensors must not change meanwhile. Non-blocking: returns ``None``
        once the tensors are snapshotted; the result comes from :meth:`wait`.

        Raises:
            AlreadyExists: ``step`` is already committed (e.g. by a zombie node).
            UnsupportedValue, InvalidArgument: bad state; nothing written.
            StorageError: the save failed; nothing committed, retention untouched.
            Any error of the previous background save (raised here once).
        """
        blocking = self.blocking if blocking is None else blocking
        self._background.raise_pending()
        if self._background.busy:
            if not blocking and self.when_busy == "skip":
                log.warning("skipping the save of step %d: the previous save is still running",
                            step)
                return None
            self._background.wait()
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise InvalidArgument(f"step must be a non-negative int, got {step!r}")
        clash = _RESERVED & set(objects)
        if clash:
            raise InvalidArgument(f"reserved names cannot be objects: {sorted(clash)}")
        mets = {k: float(v) for k, v in (metrics or {}).items()}
        history = [*self._history, (step, mets)]
        if is_distributed():
            save_step_distributed(self, step, objects, epoch=epoch, metrics=mets,
                                  history=history, extra=extra, blocking=blocking)
            return None
        tree, leaves = encode_tree(
            capture(step, objects, epoch=epoch, metrics=mets,
                    history=[[s, m] for s, m in history], extra=extra, rng=rng))
        meta = {META_KEY: {"step": step, "epoch": epoch,
                           "metrics": {k: v for k, v in mets.items() if math.isfinite(v)},
                           "time": self.clock()}}

        def commit(leaves: list[Any] = leaves) -> SaveInfo:
            info = write_encoded(tree, leaves, substore(self.store, step_dir(step)),
                                 metadata=meta, compression=self.compression)
            self._history = history
            log.info("committed step %d to %s (%.1f MiB stored)", step, info.uri,
                     info.stored_bytes / 2**20)
            try:
                self.apply_retention()
            except CloudckptError as e:  # committed; retention retries on the next save
                log.warning("retention after step %d failed (will retry on the next save): "
                            "%s", step, e)
            return info

        if blocking:
            return commit()
        staged = self._stager.stage(leaves)
        self._background.submit(lambda: commit(staged), f"step {step} to {self.uri}")
        return None

    def wait(self, timeout: float | None = None) -> SaveInfo | None:
        """Wait for the in-flight background save; return its :class:`SaveInfo` (``None`` if
        there was none).

        Raises:
            TimeoutError: still running after ``timeout``. The background save's error.
        """
        result: SaveInfo | None = self._background.wait(timeout)
        return result

    @property
    def metrics_history(self) -> list[tuple[int, dict[str, float]]]:
        """``(step, metrics)`` of every save of this run so far (restored by :meth:`restore`;
        integrations that restore by other means may set it)."""
        return list(self._history)

    @metrics_history.setter
    def metrics_history(self, history: list[tuple[int, dict[str, float]]]) -> None:
        self._history = [(int(s), dict(m)) for s, m in history]

    @property
    def staging_bytes(self) -> int:
        """Host memory held by the async staging buffers."""
        return self._stager.nbytes

    def close(self) -> None:
        """Wait for any background save, then release signal handlers and exit hooks."""
        try:
            self.wait()
        finally:
            self._background.close()
            if self._preemption is not None:
                self._preemption.uninstall()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:  # do not mask the original error; still flush what can be flushed
            try:
                self.close()
            except Exception as e:
                log.error("while handling %s, the background save also failed: %s",
                          exc_type.__name__, e)

    # -- preemption ------------------------------------------------------------------------
    @property
    def preempted(self) -> bool:
        """True once a preemption signal arrived (needs ``preemption=True``)."""
        return self._preemption is not None and self._preemption.preempted

    def on_preemption(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(signum)`` from the signal handler when preemption is signalled."""
        if self._preemption is None:
            raise InvalidArgument("create the manager with preemption=True first")
        self._preemption.add_callback(callback)

    def save_on_preemption(self, step: int, *, exit: bool = True, **save_args: Any) -> bool:
        """At a step boundary: if preempted, flush any background save, write a final
        blocking checkpoint of ``step`` (``save_args`` as for :meth:`save`), and exit the
        process cleanly (``SystemExit(0)``) unless ``exit`` is false. Returns False when not
        preempted. Call from the training thread."""
        if not self.preempted:
            return False
        watch = self._preemption
        assert watch is not None
        try:
            self._background.wait(watch.remaining())
        except TimeoutError:
            log.error("the in-flight save did not finish before the preemption deadline")
        except CloudckptError as e:
            log.error("the previous background save failed: %s", e)
        if step in self.steps():
            log.warning("step %d is already committed; no final save needed", step)
        else:
            self.save(step, blocking=True, **save_args)
        watch.done.set()
        log.warning("final checkpoint of step %d committed after preemption; exiting", step)
        if exit:
            self.close()
            raise SystemExit(0)
        return True

    # -- restore ---------------------------------------------------------------------------
    def restore(self, step: int | str = "latest", *, rng: bool = True, strict: bool = True,
                map_location: Any = "cpu", _collective: bool = False,
                **objects: Any) -> TrainingState | None:
        """Load the checkpoint at ``step`` (``"latest"``, ``"best"`` or an int) into
        ``objects`` and return the training state; ``None`` when the run has no checkpoint.
        For ``"latest"``, a corrupt or incomplete newest checkpoint is skipped with a WARNING
        naming it and the one used instead.

        Raises:
            NotFound: the requested step (int or "best") does not exist.
            CorruptCheckpoint: an explicitly requested checkpoint is damaged.
            RehydrationRequired: it lies in an archive tier that needs a restore first.
        """
        if is_distributed() and not _collective:
            chosen = choose_step_collectively(self, step)
            if chosen is None:
                return None
            return self.restore(chosen, rng=rng, strict=strict, _collective=True, **objects)
        listing = self.index.scan()
        records = self.index.records(listing)
        by_step = {r.step: r for r in records}
        if step == "latest":
            newer_incomplete = [s for s in listing.data if s not in by_step
                                and (not records or s > records[-1].step)]
            candidates = sorted(by_step, reverse=True)
            if newer_incomplete:
                log.warning("ignoring incomplete checkpoint(s) %s under %s (no committed "
                            "manifest)", sorted(newer_incomplete), self.uri)
        elif step == "best":
            best = self.best()
            if best is None:
                raise NotFound(f"no checkpoint under {self.uri} reports metric {self.metric!r}")
            candidates = [best]
        elif isinstance(step, int) and not isinstance(step, bool):
            if step not in by_step:
                raise NotFound(f"no committed checkpoint for step {step} under {self.uri}")
            candidates = [step]
        else:
            raise InvalidArgument(f"step must be 'latest', 'best' or an int, not {step!r}")
        if not candidates:
            if listing.data:
                log.warning("no committed checkpoint under %s; incomplete saves found for "
                            "steps %s", self.uri, sorted(listing.data))
            return None
        skipped: list[int] = []
        for s in candidates:
            rec = by_step[s]
            try:
                tree = self._load(rec, map_location, objects, rng)
            except (CorruptCheckpoint, NotFound) as e:
                if step != "latest":
                    raise
                log.warning("checkpoint step %d at %s is unusable (%s); trying an older one",
                            s, rec.uri, e)
                skipped.append(s)
                continue
            if skipped:
                log.warning("restored step %d from %s instead of newer step(s) %s", s, rec.uri,
                            skipped)
            loaded_here = split_objects(objects)[0] if tree.get("_dcp") else {}
            restore_into(tree, {k: v for k, v in objects.items() if k not in loaded_here},
                         rng=rng and not tree.get("_dcp"), strict=strict)
            self._history = [(int(h[0]), dict(h[1])) for h in tree.get("metrics_history", [])]
            best = best_step(self._summaries(records), self.metric, self.mode)
            best_val = by_step[best].metrics.get(self.metric) if best is not None and self.metric else None
            return TrainingState(step=int(tree["step"]), epoch=tree.get("epoch"),
                                 metrics=dict(tree.get("metrics") or {}),
                                 metrics_history=list(self._history), best_step=best,
                                 best_metric=best_val, extra=dict(tree.get("extra") or {}),
                                 uri=rec.uri)
        raise CorruptCheckpoint(f"no intact checkpoint under {self.uri}; tried steps {skipped}")

    def _load(self, rec: CheckpointRecord, map_location: Any,
              objects: Mapping[str, Any] | None = None, rng: bool = True) -> Any:
        if rec.tier and needs_rehydration(rec.tier):
            raise RehydrationRequired(
                f"step {rec.step} at {rec.uri} is in the {rec.tier} tier, which needs a restore "
                "before it can be read: S3: `aws s3api restore-object` on each object under "
                f"{rec.uri}/data (or an S3 Batch Operations restore job); Azure: set the tier "
                "of those blobs back to Hot or Cool and wait for rehydration; then retry")
        if rec.location == "hot":
            target: Store = substore(self.store, step_dir(rec.step))
        else:
            target = open_store(rec.uri, storage_options=self.archive_storage_options)
        if is_distributed_checkpoint(read_manifest(target).metadata):
            tree = restore_distributed(target, objects or {}, rng=rng)
            return {**tree, "_dcp": True}
        return load(target, map_location=map_location)

    @property
    def archive_storage_options(self) -> Mapping[str, Any] | None:
        ap = self.archive_policy
        return ap.storage_options if ap is not None and ap.storage_options is not None \
            else self._storage_options

    # -- retention, archival, deletion ----------------------------------------------------
    def apply_retention(self) -> list[int]:
        """Remove (or archive) the hot checkpoints that retention does not keep; returns
        their steps. Safe to interrupt and re-run."""
        if self.retention is None:
            return []
        records = [r for r in self.checkpoints() if r.location == "hot" and r.tier is None]
        doomed = plan_retention(self._summaries(records), self.retention, self.clock(),
                                metric=self.metric, mode=self.mode)
        for s in doomed:
            if self.archive_policy is not None:
                archive_checkpoint(self, s, self.archive_policy)
            else:
                self.delete(s)
        if doomed:
            log.info("retention removed steps %s from %s", doomed, self.uri)
        return doomed

    def delete(self, step: int) -> None:
        """Delete one checkpoint (manifest first, then data); archived copies too."""
        sub = substore(self.store, step_dir(step))
        delete_checkpoint(sub)
        self.store.delete(tier_key(step))
        if self.store.exists(archived_key(step)):
            rec = {r.step: r for r in self.checkpoints()}.get(step)
            if rec is not None and rec.location == "archived":
                delete_checkpoint(open_store(rec.uri, storage_options=self.archive_storage_options))
            self.store.delete(archived_key(step))
        self.store.delete(pin_key(step))

    def pin(self, step: int) -> None:
        """Keep ``step`` whatever the retention policy says."""
        if step not in self.steps():
            raise NotFound(f"no committed checkpoint for step {step} under {self.uri}")
        self.store.put(pin_key(step), b"pinned\n")

    def unpin(self, step: int) -> None:
        self.store.delete(pin_key(step))

    def gc(self, *, dry_run: bool = True, grace: float | None = None) -> GCReport:
        """Find (and unless ``dry_run``, delete) data no committed manifest references and
        stale uploads, older than ``grace`` seconds (default: the manager's ``gc_grace``)."""
        return collect_garbage(self, dry_run=dry_run,
                               grace=self.gc_grace if grace is None else grace)
