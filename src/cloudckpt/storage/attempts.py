"""Attempts on worker threads, each waited for with a wall-clock limit.

A storage call blocked in a socket cannot be interrupted from Python, so
:class:`~cloudckpt.storage.retry.RetryPolicy` runs each attempt on a reusable daemon worker and
waits at most its bound; an attempt past its bound is *abandoned* (it ends when its socket
does; its outcome is dropped). One runner serves the process, like fsspec's event-loop thread:
threads are a process resource. Any thread may call :func:`run_attempt`.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from cloudckpt.storage.uri import redact

__all__ = ["TimedOut", "abandoned_attempts", "run_attempt"]

log = logging.getLogger("cloudckpt.storage")
T = TypeVar("T")

_RUNNING, _DONE, _ABANDONED = 0, 1, 2
_MAX_IDLE = 64  # idle workers kept for reuse; more are let go


class TimedOut(Exception):
    """The attempt was abandoned; ``args[0]``: abandoned attempts alive."""


class _Job(Generic[T]):
    __slots__ = ("ctx", "describe", "done", "error", "fn", "result", "started", "state")

    def __init__(self, fn: Callable[[], T], describe: str) -> None:
        self.fn, self.describe, self.ctx = fn, describe, contextvars.copy_context()
        self.done = threading.Lock()  # held until the job ends: the cheapest timed wait
        self.done.acquire()
        self.state, self.started = _RUNNING, time.monotonic()
        self.result: T | None = None
        self.error: BaseException | None = None


class _Runner:
    """Runs attempts on reusable daemon worker threads (a stuck one never delays interpreter
    exit) and waits for each with a timeout."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue[_Job[Any]]] = []  # inboxes of idle workers
        self._ids = itertools.count(1)
        self.abandoned = 0

    def reset_after_fork(self) -> None:  # the parent's worker threads do not exist here
        self._lock, self._idle, self.abandoned = threading.Lock(), [], 0

    def run(self, fn: Callable[[], T], limit: float, describe: str) -> T:
        """``fn()`` on a worker, waited for at most ``limit`` seconds.

        Raises:
            TimedOut: it did not end in time; it was abandoned.
        """
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
        if inbox is None:
            inbox = queue.SimpleQueue()
            threading.Thread(target=self._work, args=(inbox,), daemon=True,
                             name=f"cloudckpt-attempt-{next(self._ids)}").start()
        job: _Job[T] = _Job(fn, describe)
        inbox.put(job)
        try:
            finished = job.done.acquire(timeout=limit) if limit > 0 else job.done.acquire(False)
        except BaseException:  # interrupted while waiting: the attempt runs on, unowned
            self._abandon(job)
            raise
        if not finished and self._abandon(job):
            raise TimedOut(self.abandoned)
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def _abandon(self, job: _Job[Any]) -> bool:
        with self._lock:
            if job.state != _RUNNING:
                return False  # it finished just now: use its outcome
            job.state = _ABANDONED
            self.abandoned += 1
            return True

    def _work(self, inbox: queue.SimpleQueue[_Job[Any]]) -> None:
        while True:
            job = inbox.get()
            try:
                job.result = job.ctx.run(job.fn)
            except BaseException as e:  # handed to the caller, who decides
                job.error = e
            with self._lock:
                late = job.state == _ABANDONED
                self.abandoned -= late
                job.state = _ABANDONED if late else _DONE
                keep = len(self._idle) < _MAX_IDLE
                if keep:
                    self._idle.append(inbox)
            job.done.release()
            if late:
                log.info("an abandoned attempt of %s ended after %.1f s (%s); its outcome was "
                         "dropped", redact(job.describe), time.monotonic() - job.started,
                         "failed" if job.error is not None else "succeeded")
            del job  # an idle worker must not pin the last payload or result
            if not keep:
                return


_RUNNER = _Runner()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_RUNNER.reset_after_fork)


def abandoned_attempts() -> int:
    """How many abandoned attempts (past their bound, still blocked) are alive now."""
    return _RUNNER.abandoned


def run_attempt(fn: Callable[[], T], limit: float, describe: str) -> T:
    """``fn()`` on a worker thread, waited for at most ``limit`` seconds.

    Raises:
        TimedOut: it did not end in time and was abandoned (``args[0]``: abandoned alive).
        Whatever ``fn`` raised.
    """
    return _RUNNER.run(fn, limit, describe)
