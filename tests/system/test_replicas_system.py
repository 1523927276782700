"""Replicas across clouds (issue 16 item 5): the primary run on S3 (moto), replicas on GCS
(fake-gcs-server) and Azure (Azurite). Saves replicate and every replica checkpoint verifies
and loads bit-exact; retention applies at the replicas; a trainer SIGKILLed while a copy is in
flight leaves no visible partial checkpoint and a new manager catches up; with the primary
frozen or gone, restore takes the newest intact replica checkpoint within the primary's time
bound."""

from __future__ import annotations

import json
import logging
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import pytest

import cloudckpt
from cloudckpt import CheckpointManager, IncrementalOptions, Replica
from cloudckpt.format.keys import DATA_PREFIX, step_dir
from cloudckpt.manager import RunContext
from cloudckpt.manager.sharing import referenced
from cloudckpt.storage import RetryPolicy, open_store
from cloudckpt.testing.proxy import FreezableProxy
from tests.conftest import PROJECT, Emulators, bucket_name, make_bucket
from tests.helpers import assert_same
from tests.system.replica_worker import weights
from tests.system.test_frozen_server import options_for

SCHEME = {"s3": "s3", "gcs": "gs", "az": "az"}


def _location(emus: Emulators, cloud: str) -> tuple[str, dict[str, Any]]:
    bucket = bucket_name(cloud)
    return f"{SCHEME[cloud]}://{bucket}/run-{uuid.uuid4().hex[:6]}", make_bucket(emus, cloud, bucket)


def _check_replica(uri: str, opts: dict[str, Any], steps: list[int]) -> None:
    """``uri`` holds exactly ``steps``, each verifying and loading as saved."""
    assert CheckpointManager(uri, storage_options=opts, keep_last=None).steps() == steps, uri
    for s in steps:
        sub = f"{uri}/{step_dir(s)}"
        assert cloudckpt.verify(sub, storage_options=opts).ok, sub
        assert_same(weights(s), cloudckpt.load(sub, storage_options=opts)["extra"])


def _no_orphans(uri: str, opts: dict[str, Any]) -> None:
    """Every data object under ``uri`` is read by a committed checkpoint there."""
    ctx = RunContext.open(uri, storage_options=opts)
    listing = ctx.index.scan()
    assert {o.key for objs in listing.data.values() for o in objs} == referenced(ctx, listing)


def _visible_intact(uri: str, opts: dict[str, Any]) -> list[int]:
    """Steps visible at ``uri``; every one of them verifies (never a partial checkpoint)."""
    steps = CheckpointManager(uri, storage_options=opts, keep_last=None).steps()
    for s in steps:
        assert cloudckpt.verify(f"{uri}/{step_dir(s)}", storage_options=opts).ok, (uri, s)
    return steps


def test_replicate_retain_then_restore_from_replicas_when_the_primary_is_down(
        emus: Emulators, caplog: pytest.LogCaptureFixture) -> None:
    gs, gs_opts = _location(emus, "gcs")
    az, az_opts = _location(emus, "az")
    replicas = [Replica(gs, gs_opts), Replica(az, az_opts)]
    with FreezableProxy(emus.endpoint("s3")) as proxy:
        bucket = bucket_name("s3")
        make_bucket(emus, "s3", bucket)
        s3_opts = options_for("s3", proxy.endpoint)
        primary = open_store(f"s3://{bucket}/run", storage_options=s3_opts,
                             retry=RetryPolicy(deadline=3.0, connect_budget=1.0))
        mgr = CheckpointManager(primary, keep_last=2, keep_best=None,
                                incremental=IncrementalOptions(grace=0), replicas=replicas)
        for step in range(1, 4):
            mgr.save(step, extra=weights(step))
        assert mgr.wait_replicas(60)
        mgr.close()
        assert mgr.steps() == [2, 3]
        for uri, opts in ((gs, gs_opts), (az, az_opts)):
            _check_replica(uri, opts, [2, 3])  # keep_last applied there too
            _no_orphans(uri, opts)  # what the replica released (step 1) was swept
        # the frozen tensor's chunk is one object, referenced by both replicated steps
        gs_two = cloudckpt.inspect(f"{gs}/{step_dir(2)}", storage_options=gs_opts)
        assert gs_two.shared_bytes > 0 and gs_two.objects == \
            cloudckpt.inspect(f"{primary.uri}/{step_dir(2)}", storage_options=s3_opts).objects

        # damage the GCS copy of step 3: restore must take Azure's, not an older step
        st = open_store(f"{gs}/{step_dir(3)}", storage_options=gs_opts)
        key = next(o.key for o in st.list(DATA_PREFIX))
        st.put(key, b"\0" * st.stat(key).size)

        for outage, bound in (("frozen", 3.0), ("gone", 1.0)):
            proxy.freeze() if outage == "frozen" else proxy.close()
            caplog.clear()
            t0 = time.monotonic()
            with caplog.at_level(logging.WARNING, "cloudckpt.manager"):
                restorer = CheckpointManager(primary, replicas=replicas)
                state = restorer.restore()
            elapsed = time.monotonic() - t0
            restorer.close(replica_timeout=0)
            assert state is not None and state.step == 3, outage
            assert state.uri.startswith(az), state.uri
            assert_same(weights(3), state.extra)  # bit-exact
            assert elapsed < bound + 12, f"{outage}: restore took {elapsed:.1f} s"
            assert any("restored step 3 from the replica" in r.message for r in caplog.records)


def _lines(proc: subprocess.Popen[str], n: int, timeout: float) -> list[str]:
    """The first ``n`` lines ``proc`` prints, waiting at most ``timeout`` seconds."""
    out: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout

    def read() -> None:
        for _ in range(n):
            out.put(stdout.readline().strip())

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    try:
        return [out.get(timeout=max(0.0, deadline - time.monotonic())) for _ in range(n)]
    except queue.Empty:
        pytest.fail(f"the trainer printed fewer than {n} lines within {timeout} s")


def test_copier_killed_midway_leaves_no_partial_checkpoint_and_a_new_manager_catches_up(
        emus: Emulators) -> None:
    s3, s3_opts = _location(emus, "s3")
    gs, gs_opts = _location(emus, "gcs")
    az, az_opts = _location(emus, "az")
    with FreezableProxy(emus.endpoint("gcs")) as proxy:
        proxy.freeze_after(upstream_bytes=256 * 1024)  # the GCS copy of step 1, mid-data
        slow = options_for("gcs", proxy.endpoint)
        trainer = subprocess.Popen(
            [sys.executable, "-m", "tests.system.replica_worker", s3, json.dumps(s3_opts),
             json.dumps([[gs, slow], [az, az_opts]]), "3"],
            cwd=PROJECT, stdout=subprocess.PIPE, text=True)
        try:
            lines = _lines(trainer, 3, timeout=120)
            assert lines == ["SAVED 1", "SAVED 2", "SAVED 3"], lines
            assert proxy.wait_frozen(30), "the GCS copy never started"
            time.sleep(0.5)
        finally:
            trainer.send_signal(signal.SIGKILL)  # the copier dies mid-copy
            trainer.wait(30)
        proxy.close()
    assert CheckpointManager(s3, storage_options=s3_opts, keep_last=None).steps() == [2, 3]
    assert _visible_intact(gs, gs_opts) == []  # the copy in flight shows nothing
    assert set(_visible_intact(az, az_opts)) <= {1, 2, 3}

    mgr = CheckpointManager(s3, storage_options=s3_opts, keep_last=2, keep_best=None,
                            incremental=IncrementalOptions(grace=0),
                            replicas=[Replica(gs, gs_opts), Replica(az, az_opts)])
    assert mgr.wait_replicas(60)  # the pass at construction catches up
    mgr.close()
    for uri, opts in ((gs, gs_opts), (az, az_opts)):
        _check_replica(uri, opts, [2, 3])


def test_a_frozen_replica_never_blocks_saves_or_close(emus: Emulators, tmp_path: Any) -> None:
    gs, _ = _location(emus, "gcs")
    with FreezableProxy(emus.endpoint("gcs")) as proxy:
        proxy.freeze()  # the replica's region stops answering, connections stay open
        frozen = Replica(gs, options_for("gcs", proxy.endpoint),
                         retry=RetryPolicy(deadline=8, connect_budget=1))
        mgr = CheckpointManager(str(tmp_path / "run"), keep_last=2, replicas=[frozen])
        t0 = time.monotonic()
        for step in range(1, 4):
            mgr.save(step, extra=weights(step))
        saves = time.monotonic() - t0
        assert saves < 10, f"3 small local saves took {saves:.1f} s with a frozen replica"
        assert mgr.steps() == [2, 3]
        assert mgr.wait_replicas(0.5) is False
        t0 = time.monotonic()
        mgr.close(replica_timeout=1.0)  # as at interpreter exit (exit_timeout)
        assert time.monotonic() - t0 < 3.0


def test_a_distributed_run_replicates_from_rank_0(tmp_path: Any) -> None:
    from tests.system import dist_worker
    from tests.system.test_dcp import _spawn_job

    uri = str(tmp_path / "run")
    saved = _spawn_job(dist_worker.manager_job, 2, "save-replica", uri, {}, tmp_path)
    assert [r["replicated"] for r in saved] == [True, True]  # rank 1 has nothing to wait for
    replica = uri + "-replica"
    assert CheckpointManager(replica, keep_last=None).steps() == [3]
    assert cloudckpt.verify(f"{replica}/{step_dir(3)}").ok
    model = dist_worker._mlp()  # one process restores the 2-rank DCP checkpoint's copy
    assert CheckpointManager(replica).restore(model=model) is not None
    assert dist_worker.digest(model) == saved[0]["digest"]
