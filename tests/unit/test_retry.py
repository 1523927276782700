"""Retry policy: bounded by attempts and deadline, full jitter, transient errors only."""

from __future__ import annotations

import logging
import os

import pytest

from cloudckpt.errors import AccessDenied, AlreadyExists, InvalidArgument, TransientStorageError
from cloudckpt.storage import RetryingStore, RetryPolicy, open_store, stream_write
from cloudckpt.testing import FaultPlan, FaultyStore
from tests.conftest import StoreFactory


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def policy(clock: FakeClock, **kw) -> RetryPolicy:  # type: ignore[no-untyped-def]
    return RetryPolicy(sleep=clock.sleep, clock=clock, **kw)


def test_transient_errors_are_retried_until_success() -> None:
    clock = FakeClock()
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientStorageError("503")
        return "ok"

    assert policy(clock).call(flaky, "op") == "ok"
    assert len(calls) == 3
    assert len(clock.sleeps) == 2


def test_permanent_errors_raise_at_once() -> None:
    clock = FakeClock()
    calls = []

    def denied() -> None:
        calls.append(1)
        raise AccessDenied("no")

    with pytest.raises(AccessDenied):
        policy(clock).call(denied, "op")
    assert calls == [1]
    assert clock.sleeps == []


def test_attempts_bound() -> None:
    clock = FakeClock()
    calls = []

    def always() -> None:
        calls.append(1)
        raise TransientStorageError("slow down")

    with pytest.raises(TransientStorageError, match="gave up after 4 attempts"):
        policy(clock, max_attempts=4, deadline=1e9).call(always, "op")
    assert len(calls) == 4


def test_deadline_bounds_total_retry_time() -> None:
    clock = FakeClock()

    def always() -> None:
        clock.now += 1.0  # each attempt itself takes a second
        raise TransientStorageError("timeout")

    with pytest.raises(TransientStorageError):
        policy(clock, max_attempts=10_000, deadline=30.0, initial_backoff=2.0,
               max_backoff=10.0).call(always, "op")
    # the last wait is cut to the deadline; one more attempt may run after it
    assert clock.now <= 30.0 + 1.0
    assert clock.now >= 30.0


def test_full_jitter_and_exponential_cap() -> None:
    p = RetryPolicy(initial_backoff=1.0, max_backoff=8.0, rng=lambda: 1.0)
    assert [p.backoff(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert RetryPolicy(rng=lambda: 0.0).backoff(5) == 0.0


def test_invalid_policy() -> None:
    with pytest.raises(InvalidArgument):
        RetryPolicy(max_attempts=0)


def test_each_retry_logged_at_warning(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    n = []

    def flaky() -> None:
        n.append(1)
        if len(n) < 3:
            raise TransientStorageError("boom-cause")

    with caplog.at_level(logging.WARNING, logger="cloudckpt.storage"):
        policy(clock).call(flaky, "read of s3://b/k")
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(msgs) == 2
    assert "attempt 1/" in msgs[0] and "attempt 2/" in msgs[1]
    assert "boom-cause" in msgs[0] and "s3://b/k" in msgs[0]


def test_retry_applies_per_part_not_per_object() -> None:
    clock = FakeClock()
    raw = open_store("memory://retry-per-part/x").inner  # type: ignore[attr-defined]
    # part uploads are calls 1..4 (call 0 starts the upload); fail the third part once
    faulty = FaultyStore(raw, FaultPlan(fail_calls=frozenset({3})))
    st = RetryingStore(faulty, policy(clock))
    data = os.urandom(4 * 256 * 1024 + 10)
    stream_write(st, "obj", [data], part_size=256 * 1024)
    assert st.get("obj") == data
    ops = [op for _, op, _ in faulty.calls]
    assert ops.count("write_part") == 5  # 4 parts + 1 retried part, not a restarted upload
    assert ops.count("start_upload") == 1


def test_create_only_retry_after_lost_response_succeeds_once() -> None:
    clock = FakeClock()
    raw = open_store("memory://retry-lost-response/x").inner  # type: ignore[attr-defined]
    # the first put lands, but its response is "lost" (error raised after the call ran)
    faulty = FaultyStore(raw, FaultPlan(fail_calls=frozenset({0}), after=True))
    st = RetryingStore(faulty, policy(clock))
    st.put("manifest", b"mine", create_only=True)
    assert st.get("manifest") == b"mine"
    # someone else's object is still refused
    with pytest.raises(AlreadyExists):
        st.put("manifest", b"theirs", create_only=True)


@pytest.mark.parametrize("cloud", ["s3", "az"])
def test_64mib_streamed_write_with_30pct_transient_failures(cloud: str, emus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    factory = StoreFactory(cloud, emus, tmp_path)
    raw = factory.open().inner  # type: ignore[attr-defined]
    faulty = FaultyStore(raw, FaultPlan(fail_rate=0.3, seed=7))
    clock = FakeClock()
    st = RetryingStore(faulty, policy(clock, max_attempts=20))
    data = os.urandom(64 * 1024 * 1024)
    view = memoryview(data)
    chunks = (view[i:i + 3_000_000] for i in range(0, len(data), 3_000_000))
    stream_write(st, "ckpt/big.bin", chunks, part_size=8 * 1024 * 1024)
    assert faulty.injected > 0
    got = st.get("ckpt/big.bin")
    assert len(got) == len(data) and got == data
