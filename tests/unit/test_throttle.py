"""Request-rate limits: throttling answers are recognised, and one AIMD limiter per endpoint
paces every call of the process (multiplicative decrease once per round, additive increase,
release), never past a call's deadline. Fake clocks: nothing sleeps."""

from __future__ import annotations

import itertools

import pytest

from cloudckpt.errors import InvalidArgument, TransientStorageError
from cloudckpt.storage import RetryingStore, RetryPolicy, open_store
from cloudckpt.storage.base import StoreWrapper
from cloudckpt.storage.throttle import Limiter, ThrottlePolicy, limiter_for
from cloudckpt.storage.translate import is_throttled, is_transient, translate_error


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


class ClientError(Exception):  # the shape of botocore's
    def __init__(self, code: str, status: int) -> None:
        super().__init__(code)
        self.response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}


class HttpError(Exception):  # the shape of gcsfs's
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class HttpResponseError(Exception):  # the shape of azure-core's
    def __init__(self, status: int, code: str) -> None:
        super().__init__(code)
        self.status_code, self.error_code = status, code


@pytest.mark.parametrize("exc", [ClientError("SlowDown", 503), ClientError("Throttling", 400),
                                 HttpError(429), HttpError(503),
                                 HttpResponseError(503, "ServerBusy")])
def test_throttling_answers_are_recognised_through_our_translation(exc: Exception) -> None:
    ours = translate_error(exc, "write of", "s3://b/k")
    try:
        raise ours from exc
    except TransientStorageError as e:
        assert is_throttled(e) and is_transient(e)


@pytest.mark.parametrize("exc", [ClientError("InternalError", 500), HttpError(502),
                                 ClientError("AccessDenied", 403), ConnectionResetError()])
def test_other_failures_are_not_throttling(exc: Exception) -> None:
    assert not is_throttled(exc)


def limiter(clock: FakeClock, **kw: float) -> Limiter:
    return Limiter("s3://b", ThrottlePolicy(**kw), clock=clock)


def test_unlimited_until_throttled_then_paced_at_half_the_measured_rate() -> None:
    clock = FakeClock()
    lim = limiter(clock, increase=0.001, recovery=1e9)
    for _ in range(20):  # 20 requests in 1 s, nobody waits
        assert lim.acquire(10, clock.sleep) == clock.now
        clock.now += 0.05
    assert clock.sleeps == [] and lim.rate is None
    lim.throttled(clock.now - 0.05)
    assert lim.rate == pytest.approx(10.0, rel=0.1) and lim.decreases == 1
    sent = [lim.acquire(10, clock.sleep) for _ in range(5)]
    gaps = [b - a for a, b in itertools.pairwise(sent)]  # type: ignore[operator]
    assert gaps == pytest.approx([1 / lim.rate] * 4, rel=0.01)


def test_one_decrease_per_round() -> None:
    clock = FakeClock()
    lim = limiter(clock, increase=0.001, recovery=1e9, min_rate=0.1)
    before = [lim.acquire(10, clock.sleep) for _ in range(8)]  # in flight together
    clock.now += 0.1
    for t in before:  # all eight answered SlowDown: one decrease, not eight
        lim.throttled(t)  # type: ignore[arg-type]
    assert lim.decreases == 1 and lim.throttles == 8
    rate = lim.rate
    after = lim.acquire(10, clock.sleep)
    lim.throttled(after)  # type: ignore[arg-type]
    assert lim.decreases == 2 and lim.rate == pytest.approx(rate * 0.5)  # type: ignore[operator]


def test_additive_increase_then_release() -> None:
    clock = FakeClock()
    lim = limiter(clock, increase=2.0, recovery=1e9, release_after=30.0)
    lim.acquire(1, clock.sleep)
    lim.throttled(clock.now)
    r0 = lim.rate
    clock.now += 5
    lim.acquire(1, clock.sleep)
    assert lim.rate == pytest.approx(r0 + 10.0)  # type: ignore[operator]
    clock.now += 30
    lim.acquire(1, clock.sleep)
    assert lim.rate is None  # 30 s without throttling


def test_a_slot_past_the_deadline_is_not_taken_and_the_call_fails_without_sending() -> None:
    clock = FakeClock()
    lim = limiter(clock, min_rate=0.1, decrease=0.1, increase=0.001, recovery=1e9)
    lim.acquire(1, clock.sleep)
    lim.throttled(clock.now)  # 1 request in the last second: paced at 0.1/s
    lim.acquire(100, clock.sleep)  # the next slot is 1/rate = 10 s away
    assert lim.acquire(5, clock.sleep) is None
    calls: list[int] = []
    pol = RetryPolicy(sleep=clock.sleep, clock=clock, deadline=5, attempt_timeout=None)
    with pytest.raises(TransientStorageError, match="throttling"):
        pol.call(lambda: calls.append(1), "write of s3://b/k", limiter=lim)
    assert calls == []


class SlowDownFirst(StoreWrapper):
    """Answers SlowDown to the first ``n`` puts."""

    def __init__(self, inner, n: int) -> None:  # type: ignore[no-untyped-def]
        super().__init__(inner)
        self.n = n

    def put(self, key, data, **kw):  # type: ignore[no-untyped-def]
        if self.n > 0:
            self.n -= 1
            exc = ClientError("SlowDown", 503)
            raise translate_error(exc, "write of", key) from exc
        self.inner.put(key, data, **kw)


def test_retrying_store_paces_throttled_calls_through_its_limiter() -> None:
    clock = FakeClock()
    lim = limiter(clock, increase=0.001, recovery=1e9)
    raw = open_store("memory://throttle-unit/run").inner  # type: ignore[attr-defined]
    st = RetryingStore(SlowDownFirst(raw, 3), RetryPolicy(sleep=clock.sleep, clock=clock,
                                                          attempt_timeout=None), limiter=lim)
    st.put("a", b"1")  # three SlowDowns, then success, with no per-call backoff on top
    assert st.get("a") == b"1"
    assert lim.throttles == 3 and lim.rate is not None
    assert sum(clock.sleeps) == pytest.approx(lim.waited)  # every wait was the limiter's


def test_one_limiter_per_endpoint_for_every_store_of_the_process() -> None:
    a = open_store("s3://bucket-a/run1", storage_options={"endpoint_url": "http://127.0.0.1:1"})
    b = open_store("s3://bucket-a/run2", storage_options={"endpoint_url": "http://127.0.0.1:1"})
    c = open_store("s3://bucket-b/run1", storage_options={"endpoint_url": "http://127.0.0.1:1"})
    assert a.limiter is b.limiter is not None  # type: ignore[attr-defined]
    assert c.limiter is not a.limiter  # type: ignore[attr-defined]
    assert open_store("memory://x/y").limiter is None  # type: ignore[attr-defined]
    assert limiter_for(("k",), "n") is limiter_for(("k",), "other name")


@pytest.mark.parametrize("kw", [{"decrease": 1.0}, {"decrease": 0.0}, {"increase": 0.0},
                                {"min_rate": 0.0}, {"recovery": -1.0}])
def test_bad_policies_are_refused(kw: dict[str, float]) -> None:
    with pytest.raises(InvalidArgument):
        ThrottlePolicy(**kw)
