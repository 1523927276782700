"""Run tasks on a thread pool with a bound on how many are in flight (the memory budget).

Used by the writer (encode + upload one object per task) and the reader (fetch + decode one
run of chunks per task). Any thread may call :func:`run_bounded`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

__all__ = ["run_bounded"]

T = TypeVar("T")


def run_bounded(task: Callable[[T], None], items: Iterable[T], *, in_flight: int, workers: int,
                name: str) -> BaseException | None:
    """Run ``task(item)`` for each item, at most ``in_flight`` at a time on ``workers``
    threads. Stops submitting at the first failure, waits for the running tasks, and returns
    that failure (``None`` when all succeeded): the caller decides how to clean up and raises.
    A :class:`BaseException` (a simulated crash) is returned like any other."""
    slots = threading.BoundedSemaphore(max(1, in_flight))
    failure: list[BaseException] = []

    def done(f: Future[None]) -> None:
        slots.release()
        exc = f.exception()
        if exc is not None:
            failure.append(exc)

    with ThreadPoolExecutor(max(1, workers), thread_name_prefix=name) as pool:
        for item in items:
            slots.acquire()
            if failure:
                slots.release()
                break
            pool.submit(task, item).add_done_callback(done)
    return failure[0] if failure else None
