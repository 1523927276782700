"""Bounded retries of transient storage errors, built on tenacity.

One :class:`RetryPolicy` applies to every storage call at the granularity of one request
sequence: one object write, one part of a multipart upload, one ranged read, one batch of
deletes. Only transient errors retry (see :func:`~cloudckpt.storage.translate.is_transient`);
permanent ones raise at once. Waits are exponential with full jitter, and every call stops after
``max_attempts`` **or** once ``deadline`` seconds have passed, whichever comes first. ``sleep``,
``clock`` and ``rng`` are injectable so tests never sleep.
"""

from __future__ import annotations

import builtins
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception

from cloudckpt.errors import AlreadyExists, InvalidArgument, TransientStorageError
from cloudckpt.storage.base import ObjectInfo, PendingUpload, Store, StoreWrapper, Upload
from cloudckpt.storage.translate import is_transient

__all__ = ["RetryPolicy", "RetryingStore"]

log = logging.getLogger("cloudckpt.storage")
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How transient failures are retried.

    Attributes:
        max_attempts: attempts per call, the first included (>= 1).
        deadline: seconds after the first attempt past which no new attempt starts; the last
            wait is shortened so it ends at the deadline.
        initial_backoff: upper bound of the first jittered wait (seconds).
        max_backoff: cap of any single wait (seconds).
        sleep, clock, rng: injectable for tests (``time.sleep``, ``time.monotonic``,
            ``random.random`` by default).
    """

    max_attempts: int = 8
    deadline: float = 300.0
    initial_backoff: float = 0.5
    max_backoff: float = 20.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    rng: Callable[[], float] = field(default=random.random, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.deadline <= 0 or self.initial_backoff < 0:
            raise InvalidArgument(f"invalid retry policy {self!r}")

    def backoff(self, attempt: int) -> float:
        """Full-jitter wait after failed attempt number ``attempt`` (1-based)."""
        cap = min(self.max_backoff, self.initial_backoff * (2.0 ** (attempt - 1)))
        return float(self.rng()) * cap

    def call(self, fn: Callable[[], T], describe: str) -> T:
        """Run ``fn`` under this policy. ``describe`` names the operation in logs/errors.

        Raises:
            TransientStorageError: still failing transiently when attempts or time ran out.
            Any other exception of ``fn`` at once.
        """
        start = self.clock()

        def stop(rs: RetryCallState) -> bool:
            return rs.attempt_number >= self.max_attempts or self.clock() - start >= self.deadline

        def wait(rs: RetryCallState) -> float:
            remaining = self.deadline - (self.clock() - start)
            return max(0.0, min(self.backoff(rs.attempt_number), remaining))

        def before_sleep(rs: RetryCallState) -> None:
            exc = rs.outcome.exception() if rs.outcome else None
            log.warning("retrying %s: attempt %d/%d failed with %s: %s; waiting %.2f s",
                        describe, rs.attempt_number, self.max_attempts, type(exc).__name__,
                        exc, rs.upcoming_sleep)

        retrying = Retrying(stop=stop, wait=wait, sleep=self.sleep, reraise=True,
                            retry=retry_if_exception(is_transient), before_sleep=before_sleep)
        try:
            return retrying(fn)
        except TransientStorageError as e:
            attempts = retrying.statistics.get("attempt_number", 1)
            if attempts > 1:
                raise TransientStorageError(
                    f"{describe}: gave up after {attempts} attempts in "
                    f"{self.clock() - start:.1f} s: {e}") from e
            raise


class _RetryingUpload:
    def __init__(self, inner: Upload, policy: RetryPolicy, uri: str) -> None:
        self._inner, self._policy, self._uri = inner, policy, uri
        self.key = inner.key
        self._parts = 0

    def write_part(self, data: bytes | memoryview) -> None:
        self._parts += 1
        self._policy.call(lambda: self._inner.write_part(data),
                          f"upload of part {self._parts} of {self._uri}")

    def finish(self, tail: bytes | memoryview = b"") -> None:
        self._policy.call(lambda: self._inner.finish(tail), f"completion of upload {self._uri}")

    def abort(self) -> None:
        self._policy.call(self._inner.abort, f"abort of upload {self._uri}")


class RetryingStore(StoreWrapper):
    """Applies a :class:`RetryPolicy` to every call of an inner store (thread-safe if the
    inner store is). Create-only writes stay exactly-once: when a retry of an attempt whose
    outcome was unknown finds the object present, it reads it back and succeeds only if the
    stored bytes are ours."""

    def __init__(self, inner: Store, policy: RetryPolicy | None = None) -> None:
        super().__init__(inner)
        self.policy = policy or RetryPolicy()

    def _u(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{key}"

    def put(self, key: str, data: bytes | memoryview, *, create_only: bool = False,
            storage_class: str | None = None) -> None:
        uncertain = False

        def attempt() -> None:
            nonlocal uncertain
            try:
                self.inner.put(key, data, create_only=create_only, storage_class=storage_class)
            except AlreadyExists:
                if uncertain and self.inner.get(key) == bytes(data):
                    return  # our own earlier attempt landed; its response was lost
                raise
            except Exception as e:
                uncertain = uncertain or is_transient(e)
                raise

        self.policy.call(attempt, f"write of {self._u(key)}")

    def get(self, key: str) -> bytes:
        return self.policy.call(lambda: self.inner.get(key), f"read of {self._u(key)}")

    def get_range(self, key: str, start: int, end: int) -> bytes:
        return self.policy.call(lambda: self.inner.get_range(key, start, end),
                                f"ranged read [{start}, {end}) of {self._u(key)}")

    def stat(self, key: str) -> ObjectInfo:
        return self.policy.call(lambda: self.inner.stat(key), f"stat of {self._u(key)}")

    def exists(self, key: str) -> bool:
        return self.policy.call(lambda: self.inner.exists(key), f"stat of {self._u(key)}")

    def list(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        return self.policy.call(lambda: self.inner.list(prefix), f"list of {self._u(prefix)}")

    def delete(self, key: str) -> None:
        self.policy.call(lambda: self.inner.delete(key), f"delete of {self._u(key)}")

    def delete_many(self, keys: Sequence[str]) -> None:
        keys = list(keys)
        for i in range(0, len(keys), 1000):
            batch = keys[i:i + 1000]
            self.policy.call(lambda b=batch: self.inner.delete_many(b),  # type: ignore[misc]
                             f"delete of {len(batch)} objects under {self.uri}")

    def copy(self, src_key: str, dst_key: str) -> None:
        self.policy.call(lambda: self.inner.copy(src_key, dst_key),
                         f"copy {self._u(src_key)} -> {dst_key}")

    def set_storage_class(self, key: str, storage_class: str) -> None:
        self.policy.call(lambda: self.inner.set_storage_class(key, storage_class),
                         f"storage-class change of {self._u(key)}")

    def start_upload(self, key: str, *, create_only: bool = False,
                     storage_class: str | None = None) -> Upload:
        up = self.policy.call(lambda: self.inner.start_upload(
            key, create_only=create_only, storage_class=storage_class),
            f"start of upload {self._u(key)}")
        return _RetryingUpload(up, self.policy, self._u(key))

    def list_pending_uploads(self, prefix: str = "") -> builtins.list[PendingUpload]:
        return self.policy.call(lambda: self.inner.list_pending_uploads(prefix),
                                f"list of pending uploads under {self.uri}")

    def abort_pending_upload(self, pending: PendingUpload) -> None:
        self.policy.call(lambda: self.inner.abort_pending_upload(pending),
                         f"abort of pending upload {pending.key}")
