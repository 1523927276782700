"""One background save at a time, on a daemon thread, with errors surfaced to the caller.

Who calls what: the training thread calls :meth:`BackgroundSaver.make_room`, :meth:`submit`,
:meth:`wait` and :meth:`raise_pending`; the worker thread only runs the submitted job. An error
of a background save is raised (once) by the next ``make_room``/``raise_pending``/``wait``; at
interpreter exit, an in-flight save is waited for up to ``exit_timeout`` seconds, and what
happened is logged.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable
from typing import Any

from cloudckpt.errors import CloudckptError

__all__ = ["BackgroundSaver"]

log = logging.getLogger("cloudckpt.manager")


class BackgroundSaver:
    """See the module docstring."""

    def __init__(self, name: str, exit_timeout: float) -> None:
        self._name = name
        self.exit_timeout = exit_timeout
        self._thread: threading.Thread | None = None
        self._label = ""
        self._result: Any = None
        self._error: BaseException | None = None
        self._registered = False

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def make_room(self, label: str, *, skip: bool) -> bool:
        """Before a new save: raise a finished save's error (once); if a save is in flight,
        wait for it, or with ``skip`` log a WARNING and return False (do not save ``label``).

        Raises:
            The previous background save's error.
        """
        self.raise_pending()
        if self.busy:
            if skip:
                log.warning("skipping the save of %s: the previous save is still running",
                            label)
                return False
            self.wait()
        return True

    def submit(self, job: Callable[[], Any], label: str) -> None:
        """Run ``job`` in the background. The caller ensured nothing is in flight."""
        assert not self.busy, "one background save at a time"
        self._label, self._result, self._error = label, None, None

        def run() -> None:
            try:
                self._result = job()
            except BaseException as e:  # surfaced on the training thread
                self._error = e
                log.error("background save of %s failed: %s", label, e)

        self._thread = threading.Thread(target=run, name=f"cloudckpt-async-{self._name}",
                                        daemon=True)
        if not self._registered:
            atexit.register(self._at_exit)
            self._registered = True
        self._thread.start()

    def wait(self, timeout: float | None = None) -> Any:
        """Wait for the in-flight save; return its result, or raise its error.

        Raises:
            TimeoutError: still running after ``timeout`` seconds.
            The background save's own exception, once.
        """
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"background save of {self._label} still running after "
                                   f"{timeout} s")
        self.raise_pending()
        return self._result

    def raise_pending(self) -> None:
        """Raise the error of a finished background save, once."""
        if self._thread is not None and not self._thread.is_alive() and self._error is not None:
            err, self._error = self._error, None
            if isinstance(err, CloudckptError) and hasattr(err, "add_note"):
                err.add_note(f"(raised by the background save of {self._label})")
            raise err

    def close(self) -> None:
        if self._registered:
            atexit.unregister(self._at_exit)
            self._registered = False

    def _at_exit(self) -> None:
        if self.busy:
            log.warning("interpreter exiting: waiting up to %.0f s for the in-flight save of %s",
                        self.exit_timeout, self._label)
            assert self._thread is not None
            self._thread.join(self.exit_timeout)
            if self._thread.is_alive():
                log.error("the save of %s did not finish within %.0f s and is abandoned; the "
                          "last committed checkpoint is intact", self._label, self.exit_timeout)
                return
        if self._error is not None:
            log.error("the background save of %s failed and nobody waited for it: %s",
                      self._label, self._error)
