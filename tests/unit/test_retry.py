"""Retry policy: bounded by attempts and deadline, full jitter, transient errors only."""

from __future__ import annotations

import contextvars
import errno
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from cloudckpt.errors import (
    AccessDenied,
    AlreadyExists,
    EndpointUnreachable,
    InvalidArgument,
    StorageTimeout,
    TransientStorageError,
)
from cloudckpt.storage import RetryingStore, RetryPolicy, open_store, stream_write
from cloudckpt.storage.base import StoreWrapper, Upload
from cloudckpt.storage.retry import abandoned_attempts
from cloudckpt.storage.translate import is_unreachable, translate_error
from cloudckpt.testing import FaultPlan, FaultyStore, SimulatedCrash
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


# -- wall-clock bounds ---------------------------------------------------------------------------
@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """An event slow calls block on; released at teardown, which then waits until every
    attempt this test abandoned has ended (the count is process-wide)."""
    before = abandoned_attempts()
    ev = threading.Event()
    yield ev
    ev.set()
    until = time.monotonic() + 5
    while abandoned_attempts() > before and time.monotonic() < until:
        time.sleep(0.005)
    assert abandoned_attempts() <= before, "an abandoned attempt never ended"


class SlowStore(StoreWrapper):
    """A fake inner store whose put / get_range / upload parts block on ``gate`` the first
    ``slow`` times they are called (like a server that stopped answering), then work."""

    def __init__(self, inner, gate: threading.Event, slow: int = 10**9) -> None:  # type: ignore[no-untyped-def]
        super().__init__(inner)
        self.gate, self.slow, self.calls = gate, slow, 0

    def _maybe_block(self) -> None:
        self.calls += 1
        if self.calls <= self.slow:
            self.gate.wait(30)

    def put(self, key: str, data, *, create_only: bool = False,  # type: ignore[no-untyped-def]
            storage_class: str | None = None) -> None:
        self._maybe_block()
        self.inner.put(key, data, create_only=create_only, storage_class=storage_class)

    def get(self, key: str) -> bytes:
        return self.inner.get(key)

    def get_range(self, key: str, start: int, end: int) -> bytes:
        self._maybe_block()
        return self.inner.get_range(key, start, end)

    def start_upload(self, key: str, *, create_only: bool = False,
                     storage_class: str | None = None) -> Upload:
        up = self.inner.start_upload(key, create_only=create_only, storage_class=storage_class)
        store = self

        class _Up:
            key = up.key

            def write_part(self, data) -> None:  # type: ignore[no-untyped-def]
                store._maybe_block()
                up.write_part(data)

            def finish(self, tail=b"") -> None:  # type: ignore[no-untyped-def]
                up.finish(tail)

            def abort(self) -> None:
                up.abort()

        return _Up()


def raw_memory(name: str):  # type: ignore[no-untyped-def]
    return open_store(f"memory://{name}/x").inner  # type: ignore[attr-defined]


def test_attempt_bound_grows_with_payload_and_can_be_disabled() -> None:
    p = RetryPolicy(attempt_timeout=10.0, min_throughput=2 * 1024 * 1024)
    assert p.attempt_bound() == 10.0
    assert p.attempt_bound(6 * 1024 * 1024) == 13.0
    assert RetryPolicy(attempt_timeout=None).attempt_bound(10**9) is None
    for bad in ({"attempt_timeout": 0}, {"min_throughput": 0}, {"connect_budget": -1},
                {"max_abandoned": 0}):
        with pytest.raises(InvalidArgument):
            RetryPolicy(**bad)  # type: ignore[arg-type]


def test_a_stuck_attempt_cannot_outlive_the_deadline(gate: threading.Event) -> None:
    policy = RetryPolicy(deadline=0.3, initial_backoff=0.0)
    t0 = time.monotonic()
    with pytest.raises(StorageTimeout) as ei:
        policy.call(lambda: gate.wait(30), "write of az://acct/c/k?sig=SECRETSIG")
    elapsed = time.monotonic() - t0
    assert 0.25 <= elapsed < 0.3 + 0.25, elapsed
    msg = str(ei.value)
    assert "write of az://acct/c/k" in msg and "no answer within 0.3 s" in msg, msg
    assert "deadline of 0.3 s" in msg and "SECRETSIG" not in msg, msg
    assert isinstance(ei.value, TransientStorageError) and isinstance(ei.value, TimeoutError)
    assert abandoned_attempts() >= 1  # still blocked on the gate, until teardown opens it


def test_a_timed_out_attempt_is_retried_while_time_is_left(gate: threading.Event) -> None:
    calls = []

    def first_hangs() -> str:
        calls.append(1)
        if len(calls) == 1:
            gate.wait(30)
        return "ok"

    policy = RetryPolicy(deadline=10.0, attempt_timeout=0.2, initial_backoff=0.0)
    t0 = time.monotonic()
    assert policy.call(first_hangs, "read of s3://b/k") == "ok"
    assert len(calls) == 2 and time.monotonic() - t0 < 0.2 + 0.3


def test_retrying_store_bounds_each_call_of_a_slow_inner_store(gate: threading.Event) -> None:
    raw = raw_memory("retry-slow-inner")
    raw.put("obj", b"x" * 1000)
    st = RetryingStore(SlowStore(raw, gate), RetryPolicy(deadline=0.3, initial_backoff=0.0))
    for op in (lambda: st.put("k", b"data"), lambda: st.get_range("obj", 0, 10)):
        t0 = time.monotonic()
        with pytest.raises(StorageTimeout) as ei:
            op()
        assert time.monotonic() - t0 < 0.3 + 0.25
        assert "memory://retry-slow-inner/x/" in str(ei.value)


def test_create_only_write_that_timed_out_but_landed_is_ours(gate: threading.Event) -> None:
    # attempt 1 hangs past its bound, then lands while attempt 2 runs: attempt 2 finds the
    # object, reads it back, and succeeds because the bytes are ours
    raw = raw_memory("retry-timeout-landed")

    class LandsLate(StoreWrapper):
        n = 0

        def put(self, key, data, *, create_only=False, storage_class=None):  # type: ignore[no-untyped-def]
            self.n += 1
            if self.n == 1:
                self.inner.put(key, data, create_only=create_only)
                gate.wait(30)  # the answer never comes back in time
                return
            self.inner.put(key, data, create_only=create_only)

        def get(self, key):  # type: ignore[no-untyped-def]
            return self.inner.get(key)

    st = RetryingStore(LandsLate(raw), RetryPolicy(deadline=5.0, attempt_timeout=0.2,
                                                   initial_backoff=0.0))
    st.put("manifest", b"mine", create_only=True)
    assert raw.get("manifest") == b"mine"


def test_a_timed_out_upload_part_is_not_retried_and_the_upload_stops(gate: threading.Event) -> None:
    raw = raw_memory("retry-upload-timeout")
    st = RetryingStore(SlowStore(raw, gate, slow=1),
                       RetryPolicy(deadline=5.0, attempt_timeout=0.2, initial_backoff=0.0))
    up = st.start_upload("big")
    t0 = time.monotonic()
    with pytest.raises(StorageTimeout):
        up.write_part(b"a" * 1000)  # a retry would overlap the attempt still running
    assert time.monotonic() - t0 < 0.2 + 0.3
    with pytest.raises(TransientStorageError, match="cannot continue"):
        up.write_part(b"b" * 1000)
    with pytest.raises(TransientStorageError, match="cannot continue"):
        up.finish(b"")
    up.abort()
    assert not st.exists("big")


def test_no_attempt_starts_once_the_deadline_is_spent() -> None:
    clock = FakeClock()
    starts: list[float] = []

    def always() -> None:
        starts.append(clock.now)
        clock.now += 1.0
        raise TransientStorageError("503")

    with pytest.raises(TransientStorageError, match="gave up after"):
        policy(clock, max_attempts=10_000, deadline=30.0, initial_backoff=2.0, max_backoff=10.0,
               rng=lambda: 1.0).call(always, "op")
    # waits 2, 4, 8, 10 then 1 (cut so it ends at the deadline): attempts at 0, 3, 8, 17, 28
    assert starts == [0.0, 3.0, 8.0, 17.0, 28.0]
    assert clock.now == 30.0  # the last wait ended at the deadline; no attempt started then


def test_connect_failures_retry_only_within_the_connect_budget() -> None:
    clock = FakeClock()
    calls = []

    def refused() -> None:
        calls.append(clock.now)
        clock.now += 0.01
        raise EndpointUnreachable("cannot reach 127.0.0.1:9: connection refused (write of s3://b/k)")

    with pytest.raises(EndpointUnreachable) as ei:
        policy(clock, max_attempts=10_000, deadline=300.0, connect_budget=4.0,
               initial_backoff=0.5, max_backoff=20.0).call(refused, "write of s3://b/k")
    assert len(calls) > 2
    assert clock.now <= 4.0 + 0.02  # the last wait is cut to the budget, one try after it
    msg = str(ei.value)
    assert msg.startswith("cannot reach 127.0.0.1:9: connection refused") and "\n" not in msg
    assert f"{len(calls)} attempts" in msg and "connect_budget 4 s" in msg


def test_other_transient_errors_still_use_the_whole_deadline() -> None:
    clock = FakeClock()

    def reset() -> None:
        clock.now += 0.01
        raise TransientStorageError("connection reset by peer")

    with pytest.raises(TransientStorageError):
        policy(clock, max_attempts=10_000, deadline=60.0, connect_budget=4.0,
               max_backoff=2.0).call(reset, "op")
    assert clock.now >= 59.0


def test_connection_failures_are_classified_by_type_and_errno() -> None:
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    e = translate_error(refused, "write of", "s3://b/k")
    assert isinstance(e, EndpointUnreachable) and is_unreachable(e) and is_unreachable(refused)
    assert str(e) == "cannot reach the endpoint: connection refused (write of s3://b/k)"

    from botocore.exceptions import EndpointConnectionError

    try:
        try:
            raise refused
        except OSError as cause:
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9/b/k?x=1") from cause
    except EndpointConnectionError as wrapped:
        e = translate_error(wrapped, "read of", "s3://b/k")
    assert str(e) == "cannot reach http://127.0.0.1:9: connection refused (read of s3://b/k)"

    dns = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    e = translate_error(dns, "stat of", "gs://b/k")
    assert isinstance(e, EndpointUnreachable) and "name resolution failed" in str(e)

    # a reset or a read timeout mid-request is transient, but the endpoint was reached
    for exc in (ConnectionResetError(errno.ECONNRESET, "reset"), TimeoutError("read")):
        e = translate_error(exc, "read of", "s3://b/k")
        assert type(e) is TransientStorageError and not is_unreachable(exc)
    # message text alone never classifies
    assert not is_unreachable(RuntimeError("Connection refused"))


def test_abandoned_attempts_are_capped(gate: threading.Event) -> None:
    policy = RetryPolicy(max_attempts=1, attempt_timeout=0.05, max_abandoned=2 + abandoned_attempts())
    for _ in range(2):
        with pytest.raises(StorageTimeout, match="no answer"):
            policy.call(lambda: gate.wait(30), "read of s3://b/k")
    ran = []
    t0 = time.monotonic()
    patient = RetryPolicy(max_attempts=1, attempt_timeout=5.0, max_abandoned=policy.max_abandoned)
    with pytest.raises(StorageTimeout, match=r"not started: .* still blocked"):
        patient.call(lambda: ran.append(1), "read of s3://b/k")
    assert ran == [] and time.monotonic() - t0 < 1.0  # refused at once, not after 5 s
    gate.set()
    until = time.monotonic() + 5
    while abandoned_attempts() >= policy.max_abandoned and time.monotonic() < until:
        time.sleep(0.005)
    assert policy.call(lambda: "ok", "read of s3://b/k") == "ok"


def test_attempts_see_the_callers_context_and_base_exceptions_pass_through() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")
    var.set("caller")
    assert RetryPolicy().call(var.get, "op") == "caller"

    def crash() -> None:
        raise SimulatedCrash("boom")

    with pytest.raises(SimulatedCrash):
        RetryPolicy().call(crash, "op")


def test_inline_attempts_when_attempt_timeout_is_none() -> None:
    seen: list[threading.Thread] = []
    RetryPolicy(attempt_timeout=None).call(lambda: seen.append(threading.current_thread()), "op")
    RetryPolicy().call(lambda: seen.append(threading.current_thread()), "op")
    assert seen[0] is threading.current_thread() and seen[1] is not threading.current_thread()



def test_a_ranged_read_into_never_reuses_memory_an_abandoned_attempt_holds(
        gate: threading.Event, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``get_range_into``: once an attempt was abandoned (it may still write into the
    caller's buffer when its server wakes up), the retry reads into new memory and says so
    (the result is not a view of the caller's buffer), so the reader drops that buffer."""
    inner = open_store(str(tmp_path / "s")).inner  # type: ignore[attr-defined]  # readinto
    payload = bytes(range(256)) * 8
    inner.put("k", payload)
    policy = RetryPolicy(attempt_timeout=0.2, initial_backoff=0.0, deadline=10.0)
    out = memoryview(bytearray(100))
    got = RetryingStore(SlowStore(inner, gate, slow=1), policy).get_range_into("k", 10, out)
    assert bytes(got) == payload[10:110] and got.obj is not out.obj
    got = RetryingStore(inner, policy).get_range_into("k", 10, out)  # no abandoned attempt
    assert bytes(got) == payload[10:110] and got.obj is out.obj
    assert len(RetryingStore(inner, policy).get_range_into("k", 2000, out)) == 48  # short at the end
