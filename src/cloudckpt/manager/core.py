"""``CheckpointManager``: save and resume a training run under one root URI.

Who calls what: the training loop calls :meth:`CheckpointManager.save` (one thread at a time)
and, on a fresh node, :meth:`CheckpointManager.restore`. Retention (and archival) run after
each committed save; :meth:`gc` is for operators (dry-run by default). Every decision reads the
store, never in-memory counters, so a manager in a new process sees exactly what the old one
left (layout: :mod:`cloudckpt.manager.index`). The manager only orchestrates: the paths below
(:mod:`.writing`, :mod:`.restoring`, :mod:`.lifecycle`, archive, gc, distributed) take its
:class:`~.context.RunContext`, and its options are small objects (:mod:`.options`,
:mod:`.retention`, :mod:`.decisions`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import torch.distributed as dist

from cloudckpt.engine.writer import SaveInfo
from cloudckpt.manager.background import BackgroundSaver
from cloudckpt.manager.context import RunContext
from cloudckpt.manager.decisions import DecisionContext, SaveDecisionPolicy, SavePoint, decide
from cloudckpt.manager.deltas import DeltaCache
from cloudckpt.manager.distributed import (
    choose_step_collectively,
    is_distributed,
    save_step_distributed,
)
from cloudckpt.manager.gc import GCReport, collect_garbage
from cloudckpt.manager.index import META_KEY, CheckpointRecord, RunIndex
from cloudckpt.manager.lifecycle import apply_retention, delete_step, pin_step, unpin_step
from cloudckpt.manager.lineage import LineageState, live_records, prepare_commit
from cloudckpt.manager.options import (
    ArchivePolicy,
    AsyncOptions,
    CommitOptions,
    IncrementalOptions,
    PreemptionOptions,
    option,
    preemption_options,
    require,
)
from cloudckpt.manager.postcommit import after_commit
from cloudckpt.manager.preemption import PreemptionWatch, final_save, watching
from cloudckpt.manager.replica_restore import restore_any
from cloudckpt.manager.replicas import Replica, Replicator, replica_specs
from cloudckpt.manager.resolve import resolve_step
from cloudckpt.manager.restoring import TrainingState
from cloudckpt.manager.retention import RetentionPolicy, keep_last_and_best
from cloudckpt.manager.staging import Stager
from cloudckpt.manager.writing import check_save_args, encode_step, write_step
from cloudckpt.storage import Store

__all__ = ["CheckpointManager", "TrainingState"]

log = logging.getLogger("cloudckpt.manager")


class CheckpointManager:
    """Checkpoints of one training run under ``uri`` (local path, s3://, gs://, az://...).

    Retention keeps the ``keep_last`` newest and the ``keep_best`` best by ``metric``/``mode``
    (``keep_last=None``: no retention), or whatever ``retention`` keeps instead, e.g.
    ``KeepLast(3) | KeepBest(1, "loss") | KeepEvery(1000) | KeepWithin(86400)``. The latest,
    the best and pinned ones are never deleted. Checkpoints leaving that set are deleted, or
    archived per ``archive`` (:class:`ArchivePolicy`). ``save_policy`` (e.g.
    ``EveryNSteps(500) | EveryNEpochs(1) | OnImprovement()``) drives :meth:`should_save`.
    ``compression``: the codec (``"auto"`` picks by store and dtype). ``clock`` is injectable
    (seconds since the epoch).

    Async saves (``async_options=AsyncOptions(blocking=False)``, or ``blocking=False`` per
    :meth:`save`): the training thread only snapshots the tensors into reused host staging
    buffers and returns; the rest runs on a background thread (see :class:`AsyncOptions`). A
    background error is raised by the next ``save``, by :meth:`wait`, and is logged at exit.
    Host memory cost: one copy of the saved tensors (:attr:`staging_bytes`), kept for reuse.

    ``preemption=True`` or a :class:`PreemptionOptions` (create the manager on the main thread)
    turns preemption signals into a flag: see :attr:`preempted`, :meth:`save_on_preemption`.
    ``commit_options`` (:class:`CommitOptions`): read each checkpoint back before retention
    (``verify_after_save``) and an ``on_commit`` hook (experiment tracking).
    ``incremental`` (:class:`IncrementalOptions`): unchanged chunks are referenced, not
    uploaded (on by default), deltas (opt-in), the grace period of released data.
    ``replicas`` (URIs or :class:`Replica`): copies kept in the background (by rank 0), retention
    applies there too; :meth:`restore` uses them when the primary cannot serve it (:mod:`.replicas`).

    Raises (constructor): InvalidURI, InvalidArgument (a bad mode or option object; preemption
    handling requested off the main thread; a replica at or inside the primary, a duplicate).
    """

    def __init__(self, uri: str | os.PathLike[str] | Store, *, keep_last: int | None = 3,
                 keep_best: int | None = 1, metric: str | None = None, mode: str = "min",
                 retention: RetentionPolicy | None = None, archive: ArchivePolicy | None = None,
                 save_policy: SaveDecisionPolicy | None = None, compression: str = "auto",
                 storage_options: Mapping[str, Any] | None = None,
                 async_options: AsyncOptions | None = None,
                 commit_options: CommitOptions | None = None,
                 incremental: IncrementalOptions | None = None,
                 preemption: PreemptionOptions | bool = False,
                 replicas: Iterable[str | os.PathLike[str] | Replica] = (),
                 clock: Callable[[], float] = time.time) -> None:
        self.async_options = option(async_options, AsyncOptions, "async_options")
        self.commit_options = option(commit_options, CommitOptions, "commit_options")
        incremental = option(incremental, IncrementalOptions, "incremental")
        require(archive is None or isinstance(archive, ArchivePolicy), "archive", archive,
                "an ArchivePolicy")
        require(retention is None or callable(getattr(retention, "keep", None)), "retention",
                retention, "a retention policy (e.g. KeepLast(3) | KeepEvery(1000))")
        require(save_policy is None or callable(getattr(save_policy, "should_save", None)),
                "save_policy", save_policy, "a save decision policy (e.g. EveryNSteps(100))")
        preempt = preemption_options(preemption)
        self.save_policy = save_policy
        #: the run this manager works on; what every path below the manager takes
        self.context = RunContext.open(uri, storage_options=storage_options, metric=metric,
                                       mode=mode, compression=compression, clock=clock,
                                       retention=keep_last_and_best(keep_last, keep_best,
                                                                    metric, mode)
                                       if retention is None else retention, archive=archive,
                                       incremental=incremental)
        specs = replica_specs(replicas, self.uri, storage_options)  # before any handler
        self._history: list[tuple[int, dict[str, float]]] = []
        self._lineage = LineageState()
        self._stager = Stager()
        self._deltas = DeltaCache(incremental.full_every) if incremental.delta else None
        self._background = BackgroundSaver(self.uri, self.async_options.exit_timeout)
        self._preemption = None if preempt is None else \
            PreemptionWatch(preempt.signals, preempt.deadline)
        self._replicas = Replicator(self.context, () if is_distributed() and dist.get_rank()
                                    else specs)  # the copier runs on rank 0 only

    def __repr__(self) -> str:
        return f"CheckpointManager({self.uri!r})"

    # -- the run (read-only views of the context) -----------------------------------------
    @property
    def store(self) -> Store:
        return self.context.store

    @property
    def index(self) -> RunIndex:
        return self.context.index

    @property
    def uri(self) -> str:
        return self.context.uri

    @property
    def metric(self) -> str | None:
        return self.context.metric

    @property
    def mode(self) -> str:
        return self.context.mode

    @property
    def retention(self) -> RetentionPolicy | None:
        return self.context.retention

    @property
    def archive_policy(self) -> ArchivePolicy | None:
        return self.context.archive

    @property
    def archive_storage_options(self) -> Mapping[str, Any] | None:
        """Options for opening archived copies: the archive policy's, else the run's."""
        return self.context.archive_storage_options

    # -- queries (read the store) -----------------------------------------------------------
    def checkpoints(self) -> list[CheckpointRecord]:
        """Every committed checkpoint, hot and archived, oldest first. Raises: StorageError."""
        return self.context.records()

    def steps(self) -> list[int]:
        """Committed steps, oldest first. Raises: StorageError."""
        return [r.step for r in self.checkpoints()]

    def latest(self) -> int | None:
        """The newest committed step of the live lineage (``None``: none; see
        :mod:`cloudckpt.manager.lineage`). Raises: StorageError."""
        return resolve_step(live_records(self.context), "latest")

    def best(self) -> int | None:
        """The best committed step by ``metric``/``mode`` (``None``: no metric or no values).
        Raises: StorageError."""
        return self.context.best()

    def should_save(self, step: int, *, epoch: int | None = None, epoch_end: bool = False,
                    metrics: Mapping[str, float] | None = None, final: bool = False) -> bool:
        """Whether to save now: always when ``final``, else per ``save_policy`` (never without
        one). ``epoch`` counts from 0; ``epoch_end`` marks its last step. Logs why (INFO when
        saving, DEBUG when not). Call from the training thread.

        Raises:
            StorageError: a policy that reads the committed checkpoints could not list them.
        """
        context = DecisionContext(metric=self.metric, mode=self.mode,
                                  committed=self.context.summaries)
        return decide(self.save_policy, SavePoint(step, epoch, epoch_end, metrics),
                      context=context, final=final)

    # -- save ------------------------------------------------------------------------------
    def save(self, step: int, *, epoch: int | None = None,
             metrics: Mapping[str, float] | None = None, extra: Mapping[str, Any] | None = None,
             rng: bool = True, blocking: bool | None = None, **objects: Any) -> SaveInfo | None:
        """Commit a checkpoint of ``objects`` (``model=``, ``optimizer=``, ``scheduler=``,
        ``scaler=``, any object with ``state_dict``, or a ``torch.Generator``) at ``step``,
        with RNG states, ``epoch``, ``metrics`` and ``extra``; then apply retention. Call from
        the training thread. Blocking (the default unless ``async_options`` says otherwise):
        returns the :class:`SaveInfo`; tensors must not change meanwhile. Non-blocking: returns
        ``None`` once the tensors are snapshotted (or the save was skipped, with
        ``when_busy="skip"``); the result comes from :meth:`wait`.

        Raises:
            AlreadyExists: ``step`` is already committed (e.g. by a zombie node).
            UnsupportedValue, InvalidArgument: bad state; nothing written.
            StorageFull: out of space or quota; what it wrote is removed, the previous
                checkpoint stays the latest. Not retried.
            StorageError: the save failed; nothing committed, retention untouched.
            CorruptCheckpoint: ``verify_after_save`` found it damaged: quarantined.
            Any error of the previous background save (raised here once).
        """
        blocking = self.async_options.blocking if blocking is None else blocking
        if not self._background.make_room(f"step {step}", skip=not blocking
                                          and self.async_options.when_busy == "skip"):
            return None
        check_save_args(step, objects)
        mets = {k: float(v) for k, v in (metrics or {}).items()}
        history = [*self._history, (step, mets)]
        ctx = self.context
        if is_distributed():
            save_step_distributed(ctx, step, objects, epoch=epoch, metrics=mets,
                                  history=history, extra=extra, blocking=blocking)
            self._history = history
            self._replicas.request()  # workers only on rank 0
            return None
        tree, leaves, meta = encode_step(ctx, step, objects, epoch=epoch, metrics=mets,
                                         history=history, extra=extra, rng=rng)

        def commit(leaves: list[Any] = leaves) -> SaveInfo | None:
            plan = prepare_commit(ctx, self._lineage, step)
            if plan is None:  # a newer generation resumed this run: we are a stale node
                return None
            meta[META_KEY]["generation"] = plan.generation
            info = write_step(ctx, step, tree, leaves, meta, overwrite=plan.overwrite,
                              generation=plan.generation, deltas=self._deltas)
            self._history = history
            info = after_commit(ctx, self.commit_options, step, info, plan.generation,
                                epoch=epoch, metrics=mets, background=not blocking)
            self._replicas.request()
            return info

        if blocking:
            return commit()
        staged = self._stager.stage(leaves)
        self._background.submit(lambda: commit(staged), f"step {step} to {self.uri}")
        return None

    def wait(self, timeout: float | None = None) -> SaveInfo | None:
        """Wait for the in-flight background save; return its :class:`SaveInfo` (``None`` if
        there was none). Call from the training thread.

        Raises:
            TimeoutError: still running after ``timeout``. The background save's error.
        """
        return cast("SaveInfo | None", self._background.wait(timeout))

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

    def wait_replicas(self, timeout: float | None = None) -> bool:
        """Wait until every replica holds what the primary retained at the last commit (True),
        or ``timeout`` s passed / a replica's pass failed (False; the next commit retries)."""
        return self._replicas.wait(timeout)

    def close(self, *, replica_timeout: float | None = 60.0) -> None:
        """Wait for any background save and (up to ``replica_timeout`` s, else a WARNING) the
        replicas, then release signal handlers and exit hooks.

        Raises:
            The background save's error (handlers and hooks are released anyway).
        """
        try:
            self.wait()
        finally:
            self._replicas.close(replica_timeout)
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
        """True once a preemption signal arrived (needs ``preemption``)."""
        return self._preemption is not None and self._preemption.preempted

    def on_preemption(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(signum)`` from the signal handler when preemption is signalled.

        Raises:
            InvalidArgument: the manager was created without ``preemption``.
        """
        watching(self._preemption).add_callback(callback)

    def save_on_preemption(self, step: int, *, exit: bool = True, **save_args: Any) -> bool:
        """At a step boundary: if preempted, flush any background save, write a final
        blocking checkpoint of ``step`` (``save_args`` as for :meth:`save`), and exit the
        process cleanly (``SystemExit(0)``) unless ``exit`` is false. Returns False when not
        preempted. Call from the training thread.

        Raises:
            SystemExit: after the final checkpoint committed (unless ``exit`` is false).
            As :meth:`save`, for the final save (the background save's own error is logged).
        """
        if not self.preempted:
            return False
        watch = watching(self._preemption)
        final_save(watch, step, self._background.wait, self.steps,
                   lambda: self.save(step, blocking=True, **save_args))
        if exit:  # replicas get what is left of the preemption deadline
            self.close(replica_timeout=watch.remaining())
            raise SystemExit(0)
        return True

    # -- restore ---------------------------------------------------------------------------
    def restore(self, step: int | str = "latest", *, rng: bool = True, strict: bool = True,
                map_location: Any = "cpu", _collective: bool = False,
                **objects: Any) -> TrainingState | None:
        """Load the checkpoint at ``step`` (``"latest"``, ``"best"`` or an int) into
        ``objects`` and return the training state (also setting :attr:`metrics_history`);
        ``None`` when the run has no checkpoint. For ``"latest"``, a corrupt or incomplete
        newest checkpoint is skipped with a WARNING naming it and the one used instead. Call
        from the training thread (on every rank in a distributed run).

        Raises:
            InvalidArgument: ``step`` is not a step selector; an object has no saved state.
            NotFound: the requested step (int or "best") does not exist.
            CorruptCheckpoint: an explicitly requested checkpoint is damaged.
            RehydrationRequired: it lies in an archive tier that needs a restore first.
        """
        if is_distributed() and not _collective:
            chosen = choose_step_collectively(self.context, step)
            if chosen is None:
                return None
            return self.restore(chosen, rng=rng, strict=strict, map_location=map_location,
                                _collective=True, **objects)
        state = restore_any(self.context, () if _collective else self._replicas.contexts,
                            step, objects, rng=rng, strict=strict, map_location=map_location)
        if state is not None:
            self._history = list(state.metrics_history)
            # the next save claims a new generation that resumes from this checkpoint
            self._lineage = LineageState(parent=(state.step, state.generation))
        return state

    # -- retention, archival, deletion ----------------------------------------------------
    def apply_retention(self) -> list[int]:
        """Remove (or archive) the hot checkpoints that retention does not keep; returns
        their steps. Safe to interrupt and re-run.

        Raises:
            StorageError, CorruptCheckpoint: a deletion or archival failed midway.
        """
        return apply_retention(self.context)

    def delete(self, step: int) -> None:
        """Delete one checkpoint (manifest first, then data); archived copies too.

        Raises:
            StorageError: a deletion failed; re-run to finish.
        """
        delete_step(self.context, step)

    def pin(self, step: int) -> None:
        """Keep ``step`` whatever the retention policy says.

        Raises:
            NotFound: ``step`` is not committed.
        """
        pin_step(self.context, step)

    def unpin(self, step: int) -> None:
        """Let retention decide about ``step`` again."""
        unpin_step(self.context, step)

    def gc(self, *, dry_run: bool = True, grace: float = 3600.0) -> GCReport:
        """Find (and unless ``dry_run``, delete) data no committed manifest references and
        stale uploads, older than ``grace`` seconds. For operators; safe to re-run.

        Raises:
            StorageError: a listing or deletion failed.
        """
        return collect_garbage(self.context, dry_run=dry_run, grace=grace)
