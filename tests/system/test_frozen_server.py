"""Every storage call is bounded in wall time, even against a server that stops answering in
the middle of a request (a frozen process that still holds its TCP connections), and an
unreachable endpoint fails in seconds with one clear line.

A :class:`~cloudckpt.testing.proxy.FreezableProxy` sits between the client and each emulator
(S3: moto, GCS: fake-gcs-server, Azure: Azurite). Each blocking step runs on a helper thread
that the test waits for with a hard limit, so a regression fails here in seconds instead of
hanging until the socket or pytest timeout.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
import torch

import cloudckpt
from cloudckpt.errors import EndpointUnreachable, StorageTimeout, TransientStorageError
from cloudckpt.storage import RetryPolicy, Store, open_store
from cloudckpt.storage.retry import abandoned_attempts
from cloudckpt.testing import emulators
from cloudckpt.testing.proxy import FreezableProxy
from tests.conftest import CLOUDS, Emulators, bucket_name, make_bucket
from tests.helpers import assert_same

MiB = 1024 * 1024
D = 3.0  # the deadline of the stores that meet the frozen server
SLACK = 2.0  # joining threads, aborting, the save's own bookkeeping, a loaded 2-core machine
SCHEME = {"s3": "s3", "gcs": "gs", "az": "az"}
T = TypeVar("T")


def options_for(cloud: str, endpoint: str) -> dict[str, Any]:
    """storage_options that send every request of ``cloud`` to ``endpoint``."""
    if cloud == "s3":
        return {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
    if cloud == "gcs":
        return {"endpoint_url": endpoint, "token": "anon"}
    return {"connection_string": emulators.azurite_connection_string(endpoint)}


def within(limit: float, fn: Callable[[], T], *,
           on_overrun: Callable[[], None]) -> tuple[T | BaseException, float]:
    """Run ``fn`` on a thread; return (its result or exception, elapsed seconds). If it is
    still running after ``limit`` + 10 s, call ``on_overrun`` (thaw) and fail the test."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as e:
            box.append(e)

    t0 = time.monotonic()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(limit + 10)
    elapsed = time.monotonic() - t0
    if t.is_alive():
        on_overrun()
        t.join(30)
        pytest.fail(f"the call was still blocked after {elapsed:.1f} s (bound {limit:.1f} s)")
    return box[0], elapsed


def big_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {"a": torch.randn(3 * MiB, generator=g), "b": torch.randn(3 * MiB, generator=g)}  # 24 MiB


@pytest.fixture(params=CLOUDS)
def frozen_rig(request: pytest.FixtureRequest, emus: Emulators
               ) -> Iterator[tuple[str, FreezableProxy, str, dict[str, Any]]]:
    """(cloud, proxy in front of its emulator, base URI of a fresh bucket, options via proxy)."""
    cloud = str(request.param)
    bucket = bucket_name(cloud)
    make_bucket(emus, cloud, bucket)
    with FreezableProxy(emus.endpoint(cloud)) as proxy:
        yield cloud, proxy, f"{SCHEME[cloud]}://{bucket}/run-{uuid.uuid4().hex[:6]}", \
            options_for(cloud, proxy.endpoint)


def test_frozen_server_fails_saves_and_loads_in_bound_and_storage_recovers(
        frozen_rig: tuple[str, FreezableProxy, str, dict[str, Any]]) -> None:
    cloud, proxy, base, opts = frozen_rig
    bounded = RetryPolicy(deadline=D)

    def store(name: str, policy: RetryPolicy | None = None) -> Store:
        return open_store(f"{base}/{name}", storage_options=opts, retry=policy)

    abandoned_before = abandoned_attempts()
    # a checkpoint committed before anything goes wrong
    small = {"w": torch.arange(256 * 1024, dtype=torch.float32), "step": 7}
    cloudckpt.save(small, store("committed"), compression="none")

    # (a) the server freezes mid-upload: the save fails within the deadline
    state = big_state()
    proxy.freeze_after(upstream_bytes=4 * MiB)
    err, elapsed = within(D + SLACK, lambda: cloudckpt.save(state, store("frozen", bounded),
                                                            compression="none"),
                          on_overrun=proxy.thaw)
    assert proxy.frozen, "the proxy never froze: the upload did not reach it"
    assert isinstance(err, TransientStorageError), err
    assert isinstance(err, StorageTimeout), err
    assert elapsed <= D + SLACK, f"{cloud}: save failed after {elapsed:.2f} s, bound {D} s"
    msg = str(err)
    assert "frozen" in msg and "no answer within" in msg and f"deadline of {D:g} s" in msg, msg
    print(f"\n[{cloud}] frozen upload failed after {elapsed:.2f} s (deadline {D} s): {msg[:160]}")

    # (b) after thaw: the committed checkpoint loads bit-exact, and a new save succeeds
    proxy.thaw()
    assert_same(small, cloudckpt.load(store("committed")))
    cloudckpt.save(state, store("frozen"), compression="none")
    assert_same(state, cloudckpt.load(store("frozen")))

    # (c) the server freezes in the middle of a read: the load fails within the deadline
    proxy.freeze_after(downstream_bytes=2 * MiB)
    err, elapsed = within(D + SLACK, lambda: cloudckpt.load(store("frozen", bounded)),
                          on_overrun=proxy.thaw)
    assert proxy.frozen
    assert isinstance(err, StorageTimeout), err
    assert elapsed <= D + SLACK, f"{cloud}: load failed after {elapsed:.2f} s, bound {D} s"
    print(f"[{cloud}] frozen read failed after {elapsed:.2f} s (deadline {D} s)")
    proxy.thaw()
    assert_same(small, cloudckpt.load(store("committed")))

    # the abandoned attempts ended once the server answered again; none is left behind
    until = time.monotonic() + 20
    while abandoned_attempts() > abandoned_before and time.monotonic() < until:
        time.sleep(0.05)
    assert abandoned_attempts() <= abandoned_before


def test_frozen_before_any_answer_fails_a_small_call_in_bound(
        frozen_rig: tuple[str, FreezableProxy, str, dict[str, Any]]) -> None:
    # a frozen server from the start: even a metadata call (exists) returns in bound
    cloud, proxy, base, opts = frozen_rig
    st = open_store(base, storage_options=opts, retry=RetryPolicy(deadline=1.5))
    proxy.freeze()
    err, elapsed = within(1.5 + SLACK, lambda: st.exists("manifest.json"),
                          on_overrun=proxy.thaw)
    assert isinstance(err, StorageTimeout), err
    assert elapsed <= 1.5 + SLACK, f"{cloud}: {elapsed:.2f} s"
    print(f"\n[{cloud}] exists() on a frozen server failed after {elapsed:.2f} s (deadline 1.5 s)")
    proxy.thaw()
    assert st.exists("manifest.json") is False


def closed_port() -> int:
    return emulators.free_port()  # bound a moment ago and released: nothing listens there


@pytest.mark.parametrize("cloud", CLOUDS)
def test_connection_refused_fails_within_connect_budget_with_one_line(cloud: str) -> None:
    port = closed_port()
    budget = 1.5
    st = open_store(f"{SCHEME[cloud]}://cktest-unreachable/p",
                    storage_options=options_for(cloud, f"http://127.0.0.1:{port}"),
                    retry=RetryPolicy(connect_budget=budget, initial_backoff=0.2))
    err, elapsed = within(budget + SLACK, lambda: st.put("k", b"data"), on_overrun=lambda: None)
    assert isinstance(err, EndpointUnreachable), err
    assert budget * 0.5 <= elapsed <= budget + SLACK, f"{cloud}: {elapsed:.2f} s"
    msg = str(err)
    assert "\n" not in msg
    assert msg.startswith("cannot reach ") and f"127.0.0.1:{port}: connection refused" in msg, msg
    assert "cktest-unreachable/p/k" in msg and "attempts in" in msg, msg
    print(f"\n[{cloud}] refused: {elapsed:.2f} s: {msg}")


def test_connection_refused_fails_in_seconds_with_the_default_policy() -> None:
    port = closed_port()
    st = open_store("s3://cktest-unreachable/p",
                    storage_options=options_for("s3", f"http://127.0.0.1:{port}"))
    default = RetryPolicy()
    err, elapsed = within(default.connect_budget + SLACK, lambda: st.exists("k"),
                          on_overrun=lambda: None)
    assert isinstance(err, EndpointUnreachable), err
    assert elapsed <= default.connect_budget + SLACK
    print(f"\n[s3] refused with the default policy: {elapsed:.2f} s: {err}")
