"""Bounded retries of transient storage errors (built on tenacity) and wall-clock bounds.

One :class:`RetryPolicy` applies to every storage call (one object write, one upload part, one
ranged read, one batch of deletes). Only transient errors retry, with full-jitter exponential
waits. Every call returns or raises within ``deadline``: each attempt runs on a daemon worker
thread, waited for at most ``min(time left, attempt_bound(payload))`` (socket timeouts do not
bound a send to a server that stopped reading); one past its bound is abandoned
(:class:`~cloudckpt.errors.StorageTimeout`). Connection failures retry only within
``connect_budget`` (:class:`~cloudckpt.errors.EndpointUnreachable`). Throttling answers (S3
SlowDown, HTTP 429) also pace every later attempt to that endpoint in the process through its
shared :class:`~cloudckpt.storage.throttle.Limiter`. See docs/time-bounds.md and docs/scale.md.
``sleep``, ``clock`` and ``rng`` are injectable so tests never sleep.
"""

from __future__ import annotations

import builtins
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception

from cloudckpt.errors import (
    AlreadyExists,
    EndpointUnreachable,
    InvalidArgument,
    StorageTimeout,
    TransientStorageError,
)
from cloudckpt.storage.attempts import TimedOut, abandoned_attempts, run_attempt
from cloudckpt.storage.base import (
    ObjectInfo,
    PendingUpload,
    Store,
    StoreWrapper,
    Upload,
    read_range_into,
)
from cloudckpt.storage.throttle import Limiter, limiter_for
from cloudckpt.storage.translate import is_throttled, is_transient, is_unreachable
from cloudckpt.storage.uri import redact

__all__ = ["RetryPolicy", "RetryingStore", "abandoned_attempts"]

log = logging.getLogger("cloudckpt.storage")
T = TypeVar("T")
MiB = 1024 * 1024


@dataclass(frozen=True)
class RetryPolicy:
    """How transient failures are retried, and how long any call may take.

    Attributes:
        max_attempts: attempts per call, the first included (>= 1).
        deadline: seconds after its start by which a call returns or raises: each attempt
            is cut at the time left, none starts once it is spent.
        initial_backoff: upper bound of the first jittered wait (seconds).
        max_backoff: cap of any single wait (seconds).
        attempt_timeout: wall-clock bound of one attempt without payload (seconds), see
            :meth:`attempt_bound`; ``None``: attempts run on the calling thread, unbounded
            (the deadline is then only checked between attempts).
        min_throughput: bytes/s an attempt sustains at least (the bound grows with payload).
        connect_budget: seconds, from the first failure to connect in a call, within which
            connection failures (refused, DNS, connect timeout) are retried.
        max_abandoned: abandoned attempts (blocked past their bound) alive in the process
            at which new attempts are refused instead of started.
        sleep, clock, rng: injectable for tests (``time.sleep``, ``time.monotonic``,
            ``random.random``); attempt bounds are waited in real time.
    """

    max_attempts: int = 8
    deadline: float = 300.0
    initial_backoff: float = 0.5
    max_backoff: float = 20.0
    attempt_timeout: float | None = 60.0
    min_throughput: float = 1.0 * MiB
    connect_budget: float = 10.0
    max_abandoned: int = 16
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    rng: Callable[[], float] = field(default=random.random, repr=False)

    def __post_init__(self) -> None:
        if (self.max_attempts < 1 or self.deadline <= 0 or self.initial_backoff < 0
                or (self.attempt_timeout is not None and self.attempt_timeout <= 0)
                or self.min_throughput <= 0 or self.connect_budget < 0
                or self.max_abandoned < 1):
            raise InvalidArgument(f"invalid retry policy {self!r}")

    def backoff(self, attempt: int) -> float:
        """Full-jitter wait after failed attempt number ``attempt`` (1-based)."""
        cap = min(self.max_backoff, self.initial_backoff * (2.0 ** (attempt - 1)))
        return float(self.rng()) * cap

    def attempt_bound(self, nbytes: int = 0) -> float | None:
        """Wall-clock bound of one attempt moving ``nbytes`` of payload (before the cut at
        the call's deadline), or ``None`` when ``attempt_timeout`` is ``None``."""
        if self.attempt_timeout is None:
            return None
        return self.attempt_timeout + max(0, nbytes) / self.min_throughput

    def call(self, fn: Callable[[], T], describe: str, *, nbytes: int = 0,
             exclusive: bool = False, limiter: Limiter | None = None) -> T:
        """Run ``fn`` under this policy. ``describe``: operation and URI for logs and errors
        (redacted); ``nbytes``: payload of one attempt; ``exclusive``: attempts must never
        overlap (upload parts), so one that timed out, and may still run, is not retried;
        ``limiter``: the endpoint's shared pacing, asked before each attempt and told of
        throttling answers (an attempt whose slot lies past the deadline is not started).

        Raises:
            EndpointUnreachable: no connection could be made within ``connect_budget``.
            StorageTimeout: an attempt got no answer within its bound, and time or attempts
                ran out (or ``exclusive``).
            TransientStorageError: still failing transiently when attempts or time ran out.
            Any other exception of ``fn`` at once.
        """
        start = self.clock()
        try:  # the first attempt skips tenacity's machinery: most calls succeed
            return self._attempt(fn, describe, self.deadline, nbytes, 1, limiter)
        except BaseException as e:
            if not is_transient(e):
                raise
            st = _CallState(e, start if is_unreachable(e) else math.inf)

        def attempt() -> T:
            now = self.clock()
            remaining = self.deadline - (now - start)
            if st.replay or remaining <= 0:  # tenacity's attempt 1 is the one that failed
                st.replay = False  # above; and none starts once the deadline is spent
                raise st.last
            st.attempts += 1
            try:
                return self._attempt(fn, describe, remaining, nbytes, st.attempts, limiter)
            except BaseException as e:
                st.last = e
                if is_unreachable(e):
                    st.first_unreachable = min(st.first_unreachable, now)
                raise

        def stop(rs: RetryCallState) -> bool:
            now, exc = self.clock(), rs.outcome.exception() if rs.outcome else None
            return (rs.attempt_number >= self.max_attempts or now - start >= self.deadline
                    or (exclusive and isinstance(exc, StorageTimeout))
                    or (exc is not None and is_unreachable(exc)
                        and now - st.first_unreachable >= self.connect_budget))

        def wait(rs: RetryCallState) -> float:
            now, exc = self.clock(), rs.outcome.exception() if rs.outcome else None
            remaining = self.deadline - (now - start)
            if limiter is not None and exc is not None and is_throttled(exc):
                return 0.0  # the endpoint's shared pacing spaces the next attempt
            if exc is not None and is_unreachable(exc):
                remaining = min(remaining, self.connect_budget - (now - st.first_unreachable))
            return max(0.0, min(self.backoff(rs.attempt_number), remaining))

        def before_sleep(rs: RetryCallState) -> None:
            exc = rs.outcome.exception() if rs.outcome else None
            paced = limiter is not None and exc is not None and is_throttled(exc)
            log.log(logging.INFO if paced else logging.WARNING,  # the limiter warns, once
                    "retrying %s: attempt %d/%d failed with %s: %s; waiting %.2f s",
                    redact(describe), rs.attempt_number, self.max_attempts,
                    type(exc).__name__, exc, rs.upcoming_sleep)

        retrying = Retrying(stop=stop, wait=wait, sleep=self.sleep, reraise=True,
                            retry=retry_if_exception(is_transient), before_sleep=before_sleep)
        try:
            return retrying(attempt)
        except TransientStorageError as e:
            final = self._gave_up(e, describe, st.attempts, self.clock() - start)
            if final is e:
                raise
            raise final from e

    def _gave_up(self, e: TransientStorageError, describe: str, attempts: int,
                 took: float) -> TransientStorageError:
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''} in {took:.1f} s"
        if isinstance(e, EndpointUnreachable):  # one line, the endpoint first
            return EndpointUnreachable(f"{e}; {tries} (connect_budget {self.connect_budget:g} s)")
        cls = type(e) if type(e) in (TransientStorageError, StorageTimeout) else TransientStorageError
        return e if attempts == 1 else cls(f"{redact(describe)}: gave up after {tries} (deadline "
                                           f"{self.deadline:g} s): {e}")

    def _attempt(self, fn: Callable[[], T], describe: str, remaining: float, nbytes: int,
                 number: int, limiter: Limiter | None = None) -> T:
        if limiter is None:
            return self._bounded(fn, describe, remaining, nbytes, number)
        asked = self.clock()
        sent = limiter.acquire(remaining, self.sleep)
        if sent is None:
            raise TransientStorageError(f"{redact(describe)}: attempt {number} not started: "
                                        f"{limiter.name} is throttling and this process's next "
                                        f"slot is past the call's deadline")
        try:
            return self._bounded(fn, describe, remaining - (self.clock() - asked), nbytes,
                                 number)
        except BaseException as e:
            if is_throttled(e):
                limiter.throttled(sent)
            raise

    def _bounded(self, fn: Callable[[], T], describe: str, remaining: float, nbytes: int,
                 number: int) -> T:
        bound = self.attempt_bound(nbytes)
        if bound is None:
            return fn()
        limit = min(bound, remaining)
        if abandoned_attempts() >= self.max_abandoned:  # bounded threads and pinned payloads
            raise StorageTimeout(f"{redact(describe)}: attempt {number} not started: "
                                 f"{abandoned_attempts()} earlier attempts are still blocked on "
                                 f"storage that stopped answering (max_abandoned="
                                 f"{self.max_abandoned})")
        try:
            return run_attempt(fn, limit, describe)
        except TimedOut as e:
            why = (f"the attempt bound: {self.attempt_timeout:g} s + {nbytes} bytes at "
                   f"{self.min_throughput / MiB:g} MiB/s" if bound <= remaining
                   else f"the time left before the call's deadline of {self.deadline:g} s")
            what = redact(describe)
            log.warning("abandoning attempt %d of %s: no answer within %.1f s (%s); %d "
                        "abandoned attempt(s) still running", number, what, limit, why, e.args[0])
            raise StorageTimeout(f"{what}: no answer within {limit:.1f} s ({why}); attempt "
                                 f"{number} abandoned, its outcome is unknown") from None


@dataclass
class _CallState:
    last: BaseException  # the latest failure
    first_unreachable: float  # clock() at the first failure to connect (inf: none yet)
    attempts: int = 1
    replay: bool = True


# -- the store wrapper ---------------------------------------------------------------------------
class _RetryingUpload:
    def __init__(self, inner: Upload, policy: RetryPolicy, uri: str,
                 limiter: Limiter | None) -> None:
        self._inner, self._policy, self._uri, self._limiter = inner, policy, uri, limiter
        self.key = inner.key
        self._parts = 0
        self._broken = False  # an attempt timed out: it may still be changing the upload

    def _run(self, fn: Callable[[], None], describe: str, nbytes: int) -> None:
        if self._broken:
            raise TransientStorageError(f"{redact(describe)}: the upload cannot continue (an "
                                        f"earlier attempt timed out); abort it and start again")
        try:
            self._policy.call(fn, describe, nbytes=nbytes, exclusive=True,
                              limiter=self._limiter)
        except StorageTimeout:
            self._broken = True
            raise

    def write_part(self, data: bytes | memoryview) -> None:
        self._parts += 1
        self._run(lambda: self._inner.write_part(data),
                  f"upload of part {self._parts} of {self._uri}", len(data))

    def finish(self, tail: bytes | memoryview = b"") -> None:
        self._run(lambda: self._inner.finish(tail), f"completion of upload {self._uri}",
                  len(tail))

    def abort(self) -> None:
        self._policy.call(self._inner.abort, f"abort of upload {self._uri}",
                          limiter=self._limiter)


class RetryingStore(StoreWrapper):
    """Applies a :class:`RetryPolicy` to every call of an inner store (thread-safe if the
    inner store is). Create-only writes stay exactly-once: when a retry finds the object
    present, it reads it back and succeeds only if the stored bytes are ours (an earlier
    attempt, whose answer was lost or which timed out, landed). Calls to a cloud endpoint are
    paced by the process's shared :class:`~cloudckpt.storage.throttle.Limiter` for it
    (``limiter``: another one, e.g. in tests)."""

    def __init__(self, inner: Store, policy: RetryPolicy | None = None, *,
                 limiter: Limiter | None = None) -> None:
        super().__init__(inner)
        self.policy = policy or RetryPolicy()
        self.limiter = limiter if limiter is not None else _endpoint_limiter(inner)

    def _call(self, fn: Callable[[], T], describe: str, nbytes: int = 0) -> T:
        return self.policy.call(fn, describe, nbytes=nbytes, limiter=self.limiter)

    def _u(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{key}"

    def put(self, key: str, data: bytes | memoryview, *, create_only: bool = False,
            storage_class: str | None = None) -> None:
        attempts = 0

        def attempt() -> None:
            nonlocal attempts
            attempts += 1
            try:
                self.inner.put(key, data, create_only=create_only, storage_class=storage_class)
            except AlreadyExists:
                # only after a failed attempt (transient: its outcome unknown) can it be ours
                if attempts > 1 and self.inner.get(key) == bytes(data):
                    return
                raise

        self._call(attempt, f"write of {self._u(key)}", nbytes=len(data))

    def get(self, key: str) -> bytes:
        return self._call(lambda: self.inner.get(key), f"read of {self._u(key)}")

    def get_range(self, key: str, start: int, end: int) -> bytes:
        return self._call(lambda: self.inner.get_range(key, start, end),
                                f"ranged read [{start}, {end}) of {self._u(key)}",
                                nbytes=max(0, end - start))

    def get_range_into(self, key: str, start: int, out: memoryview) -> memoryview:
        running = [0]  # attempts that started and have not returned: abandoned ones

        def attempt() -> memoryview:
            if running[0]:  # an abandoned attempt may still write into ``out``: new memory
                return memoryview(self.inner.get_range(key, start, start + len(out)))
            running[0] += 1
            try:
                return read_range_into(self.inner, key, start, out)
            finally:
                running[0] -= 1

        return self._call(attempt, f"ranged read [{start}, {start + len(out)}) of "
                                   f"{self._u(key)}", nbytes=len(out))

    def stat(self, key: str) -> ObjectInfo:
        return self._call(lambda: self.inner.stat(key), f"stat of {self._u(key)}")

    def exists(self, key: str) -> bool:
        return self._call(lambda: self.inner.exists(key), f"stat of {self._u(key)}")

    def list(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        return self._call(lambda: self.inner.list(prefix), f"list of {self._u(prefix)}")

    def delete(self, key: str) -> None:
        self._call(lambda: self.inner.delete(key), f"delete of {self._u(key)}")

    def delete_many(self, keys: Sequence[str]) -> None:
        keys = list(keys)
        for i in range(0, len(keys), 1000):
            batch = keys[i:i + 1000]
            self._call(lambda b=batch: self.inner.delete_many(b),  # type: ignore[misc]
                             f"delete of {len(batch)} objects under {self.uri}")

    def copy(self, src_key: str, dst_key: str) -> None:
        self._call(lambda: self.inner.copy(src_key, dst_key),
                         f"copy {self._u(src_key)} -> {dst_key}")

    def set_storage_class(self, key: str, storage_class: str) -> None:
        self._call(lambda: self.inner.set_storage_class(key, storage_class),
                         f"storage-class change of {self._u(key)}")

    def start_upload(self, key: str, *, create_only: bool = False,
                     storage_class: str | None = None) -> Upload:
        up = self._call(lambda: self.inner.start_upload(
            key, create_only=create_only, storage_class=storage_class),
            f"start of upload {self._u(key)}")
        return _RetryingUpload(up, self.policy, self._u(key), self.limiter)

    def list_pending_uploads(self, prefix: str = "") -> builtins.list[PendingUpload]:
        return self._call(lambda: self.inner.list_pending_uploads(prefix),
                                f"list of pending uploads under {self.uri}")

    def abort_pending_upload(self, pending: PendingUpload) -> None:
        self._call(lambda: self.inner.abort_pending_upload(pending),
                         f"abort of pending upload {pending.key}")


def _endpoint_limiter(inner: Store) -> Limiter | None:
    """The shared limiter of ``inner``'s endpoint (protocol, account, bucket, endpoint URL);
    ``None`` for stores with no request-rate limit (local files, memory)."""
    parsed = getattr(inner, "parsed_uri", None)
    if parsed is None or not parsed.bucket:
        return None
    endpoint = getattr(getattr(inner, "fs", None), "endpoint_url", None)
    scheme = {"gcs": "gs"}.get(parsed.protocol, parsed.protocol)
    where = f"{scheme}://{parsed.bucket}" + (f" at {endpoint}" if isinstance(endpoint, str) else "")
    return limiter_for((parsed.protocol, parsed.account, parsed.bucket, str(endpoint)),
                       redact(where))
