"""Opt-in preemption handling: SIGTERM (spot / preemptible VM notice) and SIGUSR1 (SLURM
requeue) set a flag instead of killing the process, so the training loop can write a final
checkpoint at its next step boundary and exit cleanly.

Who calls what: the manager installs the handlers from the main thread (signals can only be
handled there); the handler only sets state and calls user callbacks; the training loop polls
``mgr.preempted`` or calls ``mgr.save_on_preemption(...)`` at step boundaries. A watchdog logs an
ERROR if the final checkpoint has not committed within the deadline after the signal.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from cloudckpt.errors import CloudckptError, InvalidArgument

__all__ = ["PreemptionWatch", "final_save", "watching"]

log = logging.getLogger("cloudckpt.manager")


class PreemptionWatch:
    """Installs handlers for ``signals``; see the module docstring."""

    def __init__(self, signals: Sequence[int], deadline: float) -> None:
        if threading.current_thread() is not threading.main_thread():
            raise InvalidArgument("preemption handling must be enabled from the main thread")
        self.deadline = deadline
        self.signum: int | None = None
        self.since: float | None = None
        self.done = threading.Event()
        self._callbacks: list[Callable[[int], None]] = []
        self._previous: dict[int, Any] = {}
        for s in signals:
            self._previous[s] = signal.signal(s, self._handle)

    @property
    def preempted(self) -> bool:
        return self.signum is not None

    def remaining(self) -> float:
        """Seconds left before the deadline (the full deadline when not preempted)."""
        if self.since is None:
            return self.deadline
        return max(0.0, self.deadline - (time.monotonic() - self.since))

    def add_callback(self, cb: Callable[[int], None]) -> None:
        self._callbacks.append(cb)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            return
        self.signum, self.since = signum, time.monotonic()
        log.warning("received %s: a final checkpoint will be written at the next step boundary "
                    "(deadline %.0f s)", signal.Signals(signum).name, self.deadline)
        timer = threading.Timer(self.deadline, self._late)
        timer.daemon = True
        timer.start()
        for cb in self._callbacks:
            cb(signum)

    def _late(self) -> None:
        if not self.done.is_set():
            log.error("no final checkpoint committed within %.0f s of the preemption signal",
                      self.deadline)

    def uninstall(self) -> None:
        """Restore the previous handlers (main thread only)."""
        if threading.current_thread() is threading.main_thread():
            for s, h in self._previous.items():
                signal.signal(s, h)
        self._previous = {}


def final_save(watch: PreemptionWatch, step: int, wait_background: Callable[[float], Any],
               committed: Callable[[], list[int]], save: Callable[[], Any]) -> None:
    """The final checkpoint after a preemption signal (``CheckpointManager.save_on_preemption``):
    wait for the background save up to the deadline (its failure is logged, not raised),
    then ``save()`` unless ``step`` is already ``committed()``, and mark the watch done.
    Call from the training thread.

    Raises:
        What ``save`` raises (the final save failed; the watch is not marked done).
    """
    try:
        wait_background(watch.remaining())
    except TimeoutError:
        log.error("the in-flight save did not finish before the preemption deadline")
    except CloudckptError as e:
        log.error("the previous background save failed: %s", e)
    if step in committed():
        log.warning("step %d is already committed; no final save needed", step)
    else:
        save()
    watch.done.set()
    log.warning("final checkpoint of step %d committed after preemption; exiting", step)


def watching(watch: PreemptionWatch | None) -> PreemptionWatch:
    """The manager's preemption watch. Any caller.

    Raises:
        InvalidArgument: there is none (the manager was created without ``preemption``).
    """
    if watch is None:
        raise InvalidArgument("create the manager with preemption=True (or "
                              "PreemptionOptions(...)) first")
    return watch
