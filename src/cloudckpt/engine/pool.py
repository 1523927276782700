"""Run tasks on worker threads with a bound on how many are in flight (the memory budget).

Used by the writer (encode + upload one object per task) and the reader (fetch + decode one
run of chunks per task). Any thread may call :func:`run_bounded`.

Plain :mod:`threading` on purpose, not :mod:`concurrent.futures`: an async save still running
when the interpreter starts to exit must be able to finish (``concurrent.futures`` refuses new
work once shutdown has begun, which lost the final checkpoint of scripts that return from
``main`` with a save in flight).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from typing import TypeVar

__all__ = ["run_bounded"]

T = TypeVar("T")
_DONE = object()


def run_bounded(task: Callable[[T], None], items: Iterable[T], *, in_flight: int, workers: int,
                name: str) -> BaseException | None:
    """Run ``task(item)`` for each item, at most ``in_flight`` at a time on ``workers``
    threads. Stops submitting at the first failure, waits for the running tasks, and returns
    that failure (``None`` when all succeeded): the caller decides how to clean up and raises.
    A :class:`BaseException` (a simulated crash) is returned like any other."""
    slots = threading.BoundedSemaphore(max(1, in_flight))
    work: queue.SimpleQueue[object] = queue.SimpleQueue()
    failure: list[BaseException] = []

    def worker() -> None:
        while True:
            item = work.get()
            if item is _DONE:
                return
            try:
                if not failure:
                    task(item)  # type: ignore[arg-type]
            except BaseException as e:  # returned to the caller, who raises it
                failure.append(e)
            finally:
                slots.release()

    threads = [threading.Thread(target=worker, name=f"{name}-{i}", daemon=True)
               for i in range(max(1, workers))]
    for t in threads:
        t.start()
    try:
        for item in items:
            slots.acquire()
            if failure:
                slots.release()
                break
            work.put(item)
    finally:
        for _ in threads:
            work.put(_DONE)
        for t in threads:
            t.join()
    return failure[0] if failure else None
