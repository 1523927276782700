"""Replicas: copies of a run in other buckets or clouds, kept in the background.

``CheckpointManager(uri, replicas=["gs://other/run", Replica("az://c/run", ...)])``: after
each committed save (after verification and retention), the manager asks each replica's
worker thread for a pass (:func:`.replica_sync.sync_replica`): copy what the replica lacks
(data first, read back and checked, the manifest last, create-only), then delete at the
replica what the primary no longer retains. The worker also runs one pass when the manager
is created, so a new manager catches up what an earlier process left half done.

Failure behaviour: a replica never fails or blocks training. Every call to it is bounded by
its store's retry policy (``Replica.retry``); a failed pass is logged as a WARNING and the
next commit asks again. One thread per replica, so a dead replica does not delay the others.
:meth:`Replicator.wait` (``CheckpointManager.wait_replicas``) waits, with a bound, until every
replica holds what the primary retained at the last commit; at interpreter exit a pass in
flight is waited for at most ``exit_timeout`` seconds, then abandoned (the replica shows no
partial checkpoint; the next manager catches up).

Who calls what: the manager constructs the :class:`Replicator` and calls :meth:`request`
after each commit (on the thread that committed), :meth:`wait` and :meth:`close` from the
training thread; only the worker threads touch the replicas.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from cloudckpt.errors import CloudckptError, InvalidArgument
from cloudckpt.manager.context import RunContext
from cloudckpt.manager.index import RunIndex
from cloudckpt.manager.replica_sync import SyncReport, sync_replica
from cloudckpt.storage import RetryPolicy, open_store, parse_uri

__all__ = ["Replica", "Replicator", "replica_specs"]

log = logging.getLogger("cloudckpt.manager")
_POLL = 1.0  # seconds between checks that a worker thread is still alive


@dataclass(frozen=True)
class Replica:
    """One replica of the run: ``uri`` (another bucket, container or cloud; a local path),
    ``storage_options`` to open it (other credentials, endpoint), ``retry``: the
    :class:`~cloudckpt.storage.RetryPolicy` bounding each call to it (default: the store
    default), ``check``: read each copied object back and check its chunks' checksums
    before the copy's manifest is written (one extra read of every copied byte).

    Raises:
        InvalidURI: ``uri`` is malformed. InvalidArgument: a field has the wrong type.
    """

    uri: str
    storage_options: Mapping[str, Any] | None = None
    retry: RetryPolicy | None = None
    check: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.uri, os.PathLike):
            object.__setattr__(self, "uri", os.fspath(self.uri))
        if not isinstance(self.uri, str):
            raise InvalidArgument(f"Replica uri must be a string, not {self.uri!r}")
        parse_uri(self.uri)
        if self.storage_options is not None and not isinstance(self.storage_options, Mapping):
            raise InvalidArgument(f"storage_options must be a mapping, not "
                                  f"{self.storage_options!r}")
        if self.retry is not None and not isinstance(self.retry, RetryPolicy):
            raise InvalidArgument(f"retry must be a RetryPolicy, not {self.retry!r}")
        if not isinstance(self.check, bool):
            raise InvalidArgument(f"check must be True or False, not {self.check!r}")


def _where(uri: str, options: Mapping[str, Any] | None) -> tuple[str, str]:
    """(canonical URI, endpoint) naming a location; endpoint "" for the default one."""
    opts = options or {}
    endpoint = opts.get("endpoint_url") or opts.get("connection_string") or \
        opts.get("account_name") or ""
    return parse_uri(uri).canonical.rstrip("/"), str(endpoint)


def _nested(a: str, b: str) -> bool:
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def replica_specs(replicas: Iterable[str | os.PathLike[str] | Replica], primary: str,
                  primary_options: Mapping[str, Any] | None = None) -> tuple[Replica, ...]:
    """Validate the manager's ``replicas`` argument against the primary ``primary`` (its
    URI, opened with ``primary_options``). Pure (parses URIs only); any caller.

    Raises:
        InvalidArgument: not an iterable of URIs / :class:`Replica`; a replica equal to the
            primary, nested in it (or it in the replica) on the same endpoint; a duplicate.
        InvalidURI: a malformed replica URI.
    """
    if isinstance(replicas, (str, os.PathLike, Replica)):
        raise InvalidArgument("replicas must be a list of URIs or Replica records, e.g. "
                              "replicas=['gs://other-bucket/run']")
    try:
        items = list(replicas)
    except TypeError:
        raise InvalidArgument(f"replicas must be a list of URIs or Replica records, not "
                              f"{replicas!r}") from None
    specs: list[Replica] = []
    seen = [_where(primary, primary_options)]
    for item in items:
        spec = item if isinstance(item, Replica) else \
            Replica(os.fspath(item)) if isinstance(item, (str, os.PathLike)) else None
        if spec is None:
            raise InvalidArgument(f"a replica must be a URI or a Replica, not {item!r}")
        where = _where(spec.uri, spec.storage_options)
        for i, (other, endpoint) in enumerate(seen):
            if endpoint == where[1] and _nested(other, where[0]):
                what = "the primary" if i == 0 else "another replica"
                raise InvalidArgument(f"replica {spec.uri!r} is, contains or lies inside "
                                      f"{what} ({other}): give each replica its own location")
        seen.append(where)
        specs.append(spec)
    return tuple(specs)


def open_replica(spec: Replica, primary: RunContext) -> RunContext:
    """The run context of replica ``spec``: the primary's metric rule, clock and grace
    period, no retention of its own (the primary's decides). No I/O.

    Raises:
        InvalidURI: the URI cannot be opened.
    """
    store = open_store(spec.uri, storage_options=spec.storage_options, retry=spec.retry)
    return RunContext(store, RunIndex(store), spec.storage_options, metric=primary.metric,
                      mode=primary.mode, compression=primary.compression, clock=primary.clock,
                      incremental=primary.incremental)


class _Worker:
    """The thread that keeps one replica in line (passes one at a time)."""

    def __init__(self, primary: RunContext, spec: Replica) -> None:
        # its own index: the caches of the manager's are not shared across threads
        self.primary, self.spec = replace(primary, index=RunIndex(primary.store)), spec
        self.replica = open_replica(spec, primary)
        self.cond = threading.Condition()
        self.requested = 1  # the pass at construction
        self.started = 0  # requests covered by the pass running or last run
        self.finished = 0  # requests covered by the last finished pass
        self.ok = 0  # requests covered by the last complete pass
        self.closed = False
        self.thread = threading.Thread(target=self._loop, daemon=True,
                                       name=f"cloudckpt-replica-{spec.uri}")
        self.thread.start()

    def request(self) -> None:
        with self.cond:
            self.requested += 1
            self.cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self.cond:
                while self.started >= self.requested and not self.closed:
                    self.cond.wait()
                if self.closed:
                    return
                self.started = target = self.requested
            report = self._pass()
            with self.cond:
                self.finished = target
                if report is not None and report.complete:
                    self.ok = target
                self.cond.notify_all()

    def _pass(self) -> SyncReport | None:
        try:
            report = sync_replica(self.primary, self.replica, check=self.spec.check)
        except CloudckptError as e:
            log.warning("replication to %s failed (retried at the next commit): %s",
                        self.replica.uri, e)
            return None
        except Exception:  # a bug must not kill the worker silently
            log.exception("replication to %s failed unexpectedly", self.replica.uri)
            return None
        if not report.complete:
            log.warning("replication to %s incomplete (retried at the next commit): steps %s "
                        "not copied", self.replica.uri, sorted(report.failed))
        return report

    def wait(self, target: int, deadline: float | None) -> bool:
        """Until a pass covering request ``target`` finished: True if it was complete."""
        with self.cond:
            while self.finished < target and not self.closed and self.thread.is_alive():
                left = _POLL if deadline is None else min(_POLL, deadline - time.monotonic())
                if left <= 0:
                    return False
                self.cond.wait(left)
            return self.ok >= target

    def stop(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


class Replicator:
    """The replicas of one manager (see the module docstring). ``exit_timeout``: seconds a
    pass in flight is waited for at interpreter exit."""

    def __init__(self, primary: RunContext, specs: Iterable[Replica], *,
                 exit_timeout: float = 60.0) -> None:
        self.primary = primary
        self.exit_timeout = exit_timeout
        self._closed = False
        self._workers = [_Worker(primary, s) for s in specs]
        self.contexts: tuple[RunContext, ...] = tuple(w.replica for w in self._workers)
        if self._workers:
            atexit.register(self._at_exit)

    def request(self) -> None:
        """Ask every replica for a pass (after a commit). Never blocks on storage."""
        for w in self._workers:
            w.request()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every replica finished a pass started after the latest request; True
        when each was complete (holds every checkpoint the primary retained then), False on
        a failed pass or after ``timeout`` seconds (``None``: no bound beyond the stores'
        own deadlines). Call from the training thread."""
        deadline = None if timeout is None else time.monotonic() + timeout
        targets = [(w, w.requested) for w in self._workers]
        return all([w.wait(t, deadline) for w, t in targets])

    def close(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds for the passes asked for, then stop the workers (a
        pass in flight is abandoned: its replica shows no partial checkpoint). Returns as
        :meth:`wait`; logs a WARNING when not every replica is in line."""
        if self._closed:
            return self.wait(0)
        self._closed = True
        done = self.wait(timeout)
        if not done and self._workers:
            log.warning("closing the manager of %s with replicas not up to date (%s); the next "
                        "manager of this run catches up", self.primary.uri,
                        ", ".join(w.replica.uri for w in self._workers if w.ok < w.requested))
        for w in self._workers:
            w.stop()
        if self._workers:
            atexit.unregister(self._at_exit)
        return done

    def _at_exit(self) -> None:
        if any(w.finished < w.requested for w in self._workers):
            log.warning("interpreter exiting: waiting up to %.0f s for replication of %s",
                        self.exit_timeout, self.primary.uri)
            self.close(self.exit_timeout)
