"""Request-rate limits: one adaptive (AIMD) limiter per endpoint, shared by the process.

Object stores answer a request rate above what they serve with throttling responses (S3
``503 SlowDown``, GCS ``429``/``503``, Azure ``503 ServerBusy``; see
:func:`~cloudckpt.storage.translate.is_throttled`). Backing off per call does not lower the
rate a process sends: its other workers keep sending, and each retry adds requests. So every
store of one endpoint (protocol, account, bucket, endpoint URL) in a process shares one
:class:`Limiter`, which :class:`~cloudckpt.storage.retry.RetryingStore` asks before every
attempt:

- unlimited until the first throttling answer;
- then paced at ``decrease`` x the rate measured over (up to) the last ``window`` seconds
  (multiplicative decrease), at most once per round (answers to requests sent before the last
  decrease do not decrease again, as TCP reacts once per round trip);
- the paced rate grows back by ``increase`` requests/s every second (additive increase: the
  same for every process, so processes sharing an endpoint converge to equal shares), or by
  ``(1 - decrease)`` x the rate every ``recovery`` seconds when that is more (so that one busy
  process regains a high rate in seconds); the limit is dropped after ``release_after``
  seconds without throttling.

Independent processes (ranks) each run this loop against the same endpoint and, like TCP
flows, settle near their share of its limit. A reservation never waits past the calling
call's deadline: the time bounds of docs/time-bounds.md still hold.

The limiters live in a process-wide table like the attempt runner's threads
(:mod:`cloudckpt.storage.attempts`): the request rate at an endpoint is a process resource, not
one store's. Any thread may call anything here.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from cloudckpt.errors import InvalidArgument

__all__ = ["Limiter", "ThrottlePolicy", "limiter_for", "limiters"]

log = logging.getLogger("cloudckpt.storage")


@dataclass(frozen=True)
class ThrottlePolicy:
    """How a :class:`Limiter` adapts.

    Attributes:
        decrease: factor applied to the rate at each throttling round (0 < decrease < 1).
        increase: requests/s added to the paced rate per second (additive increase).
        recovery: seconds in which the paced rate grows by at least ``(1 - decrease)`` x
            itself.
        min_rate: the paced rate never goes below this (requests/s).
        window: seconds over which the sending rate is measured at the first decrease.
        release_after: seconds without a throttling answer after which the limit is dropped.
    """

    decrease: float = 0.5
    increase: float = 2.0
    recovery: float = 2.0
    min_rate: float = 1.0
    window: float = 1.0
    release_after: float = 60.0

    def __post_init__(self) -> None:
        if not (0 < self.decrease < 1) or self.increase <= 0 or self.recovery <= 0 or self.min_rate <= 0 \
                or self.window <= 0 or self.release_after <= 0:
            raise InvalidArgument(f"invalid throttle policy {self!r}")


class Limiter:
    """AIMD pacing of the requests to one endpoint (see the module docstring).

    ``clock`` is injectable for tests. Counters (``throttles``, ``decreases``, ``waited``) are
    for logs, benchmarks and tests.
    """

    def __init__(self, name: str, policy: ThrottlePolicy | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name, self.policy, self._clock = name, policy or ThrottlePolicy(), clock
        self._lock = threading.Lock()
        self._sent: collections.deque[float] = collections.deque()  # send times, last window
        self.rate: float | None = None  # paced requests/s; None: unlimited
        self._next = 0.0  # earliest time of the next slot
        self._updated = 0.0  # when ``rate`` was last grown
        self._last_decrease = -float("inf")
        self._last_throttle = -float("inf")
        self.throttles = 0
        self.decreases = 0
        self.waited = 0.0

    def acquire(self, max_wait: float, sleep: Callable[[float], None]) -> float | None:
        """Wait (with ``sleep``) for a slot to send one request, and take it. A slot is taken
        when it comes, at the rate in force then (the rate grows while a caller waits).

        Returns:
            the limiter's clock when the slot was taken (pass it to :meth:`throttled`), or
            ``None``, nothing taken, when no slot comes within ``max_wait`` seconds.
        """
        p = self.policy
        start = self._clock()
        while True:
            with self._lock:
                now = self._clock()
                self._grow(now)
                if self.rate is None or now >= self._next:
                    if self.rate is not None:  # no burst after a quiet spell: one slot
                        self._next = max(now, self._next) + 1.0 / self.rate
                    self._sent.append(now)
                    while self._sent[0] < now - p.window:
                        self._sent.popleft()
                    self.waited += now - start
                    return now
                wait = self._next - now
            if now + wait - start > max_wait:
                return None
            sleep(wait)

    def _grow(self, now: float) -> None:
        """Additive increase up to ``now``, or the limit's release. With the lock held."""
        if self.rate is None:
            return
        p = self.policy
        if now - self._last_throttle >= p.release_after:
            log.info("request rate to %s no longer limited (%.0f s without throttling)",
                     self.name, now - self._last_throttle)
            self.rate = None
            return
        grow = max(p.increase, self.rate * (1 - p.decrease) / p.recovery)
        self.rate += grow * max(0.0, now - self._updated)
        self._updated = now

    def throttled(self, sent_at: float) -> None:
        """The endpoint answered the request sent at ``sent_at`` with throttling: decrease
        the rate, unless an earlier answer of the same round did so already."""
        p = self.policy
        with self._lock:
            now = self._clock()
            self.throttles += 1
            self._last_throttle = now
            if sent_at < self._last_decrease:
                return  # sent before the latest decrease: that decrease covers it
            if self.rate is None:
                recent = [t for t in self._sent if now - p.window <= t <= now]
                n = len(recent)  # over the span they cover (a burst after idle: < window)
                span = max(now - recent[0], p.window / n) if n else p.window
                current = max(p.min_rate, n / span)
            else:
                current = self.rate
            self.rate = max(p.min_rate, current * p.decrease)
            self._updated = self._last_decrease = now
            self._next = min(self._next, now + 1.0 / self.rate)
            self.decreases += 1
            rate = self.rate
        log.warning("%s is throttling requests: pacing this process's requests to it at "
                    "%.1f/s (was %.1f/s)", self.name, rate, current)


@dataclass
class _Table:
    lock: threading.Lock = field(default_factory=threading.Lock)
    limiters: dict[Hashable, Limiter] = field(default_factory=dict)

    def reset_after_fork(self) -> None:  # a child starts with its own, fresh request rate
        self.lock, self.limiters = threading.Lock(), {}


_TABLE = _Table()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_TABLE.reset_after_fork)


def limiter_for(key: Hashable, name: str, policy: ThrottlePolicy | None = None) -> Limiter:
    """The process's limiter for the endpoint ``key`` (created on first use with ``policy``;
    ``name`` names the endpoint in logs). Any thread."""
    with _TABLE.lock:
        lim = _TABLE.limiters.get(key)
        if lim is None:
            lim = _TABLE.limiters[key] = Limiter(name, policy)
        return lim


def limiters() -> dict[Hashable, Limiter]:
    """A snapshot of the process's limiters by endpoint key (for benchmarks and tests)."""
    with _TABLE.lock:
        return dict(_TABLE.limiters)
