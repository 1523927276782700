"""Replicas (issue 16 item 5), fast: validation, reconciliation passes, retention at replicas,
crash leftovers, the read-back check and restore's fallback order (memory:// stores, faults
injected with FaultyStore)."""

from __future__ import annotations

import copy
import json
import logging
import uuid
from typing import Any

import pytest
import torch

import cloudckpt
from cloudckpt.engine.commit import read_manifest
from cloudckpt.engine.verify import verify
from cloudckpt.errors import InvalidArgument, InvalidURI
from cloudckpt.format.keys import DATA_PREFIX, GENERATIONS_PREFIX, MANIFEST_KEY, step_dir
from cloudckpt.manager import CheckpointManager, IncrementalOptions, Replica, RunContext
from cloudckpt.manager.replica_sync import sync_replica
from cloudckpt.manager.replicas import open_replica, replica_specs
from cloudckpt.manager.sharing import referenced
from cloudckpt.storage import Store, open_store
from cloudckpt.testing import FaultPlan, FaultyStore, SimulatedCrash
from tests.helpers import assert_same

NOW = {"grace": IncrementalOptions(grace=0)}


def _uri(name: str = "run") -> str:
    return f"memory://rep-{uuid.uuid4().hex[:10]}/{name}"


def _model(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.Linear(128, 4))
    m[0].weight.requires_grad_(False)  # frozen: later saves reference its chunk
    return m


def _save(mgr: CheckpointManager, steps: range, model: torch.nn.Sequential | None = None
          ) -> dict[int, dict[str, Any]]:
    model = model or _model()
    snaps = {}
    for s in steps:
        with torch.no_grad():
            model[1].weight.add_(0.01 * s)  # type: ignore[operator]
        mgr.save(s, model=model, metrics={"loss": 1.0 / s})
        snaps[s] = copy.deepcopy(model.state_dict())
    return snaps


def _steps(uri: str | Store) -> list[int]:
    return CheckpointManager(uri, keep_last=None).steps()


def _ctx(store: Store) -> RunContext:
    return RunContext.open(store, incremental=IncrementalOptions(grace=0))


def _no_orphans(uri: str) -> None:
    ctx = _ctx(open_store(uri))
    listing = ctx.index.scan()
    data = {o.key for objs in listing.data.values() for o in objs}
    assert data == referenced(ctx, listing), uri


def _objects(uri: str, step: int) -> list[str]:
    return read_manifest(open_store(f"{uri}/{step_dir(step)}")).objects


# -- validation -------------------------------------------------------------------------------
def test_replica_validation() -> None:
    p = "s3://bucket/run"
    assert replica_specs(["gs://bkt/run", Replica("az://cont/run")], p) == (
        Replica("gs://bkt/run"), Replica("az://cont/run"))
    for bad in (["s3://bucket/run"], ["s3://bucket/run/"], ["s3://bucket/run/replica"],
                ["s3://bucket"], ["gs://bkt/r", "gs://bkt/r"], ["gs://bkt/r", "gs://bkt/r/x"]):
        with pytest.raises(InvalidArgument, match="give each replica its own location"):
            replica_specs(bad, p)
    # the same path on another endpoint (another S3-compatible service) is another place
    assert replica_specs([Replica("s3://bucket/run", {"endpoint_url": "http://minio:9000"})], p)
    for wrong in ("gs://bkt/r", Replica("gs://bkt/r"), 3, [3], [None]):
        with pytest.raises(InvalidArgument):
            replica_specs(wrong, p)  # type: ignore[arg-type]
    with pytest.raises(InvalidURI):
        replica_specs(["nope://x/y"], p)
    with pytest.raises(InvalidArgument):
        Replica("gs://bkt/r", check="yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        Replica("gs://bkt/r", retry=5)  # type: ignore[arg-type]
    uri = _uri()
    with pytest.raises(InvalidArgument):
        CheckpointManager(uri, replicas=[uri + "/mirror"])
    assert cloudckpt.Replica is Replica and "Replica" in cloudckpt.__all__


# -- replication through the manager ---------------------------------------------------------
def test_saves_replicate_with_retention_and_each_replica_restores_alone() -> None:
    primary, r1, r2 = _uri(), _uri("mirror"), _uri("mirror")
    mgr = CheckpointManager(primary, keep_last=2, keep_best=None, incremental=NOW["grace"],
                            replicas=[r1, Replica(r2)])
    snaps = _save(mgr, range(1, 5))
    assert mgr.wait_replicas(30)
    assert mgr.steps() == [3, 4]
    for r in (r1, r2):
        assert _steps(r) == [3, 4]  # retention applied at the replica
        _no_orphans(r)  # data released at the replica was swept (grace 0)
        for s in (3, 4):
            assert verify(f"{r}/{step_dir(s)}").ok
        model = _model(seed=1)
        state = CheckpointManager(r).restore(model=model)  # a replica is a run of its own
        assert state is not None and state.step == 4
        assert_same(snaps[4], model.state_dict())
    mgr.close()
    # a resumed run claims a generation: the claim reaches the replicas before its manifests
    resumed = CheckpointManager(primary, keep_last=2, keep_best=None, incremental=NOW["grace"],
                                replicas=[r1])
    assert resumed.restore(model=_model()) is not None
    _save(resumed, range(5, 6))
    assert resumed.wait_replicas(30)
    claims = [o.key for o in open_store(r1).list(GENERATIONS_PREFIX)]
    assert claims == [o.key for o in open_store(primary).list(GENERATIONS_PREFIX)] and claims
    assert _steps(r1) == [4, 5] and CheckpointManager(r1).latest() == 5
    resumed.close()


def test_failing_replica_never_fails_training_and_wait_says_so(tmp_path: Any,
                                                               caplog: Any) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"x")  # a replica below a regular file cannot be written
    mgr = CheckpointManager(_uri(), keep_last=2, replicas=[str(blocker / "mirror")])
    with caplog.at_level(logging.WARNING, "cloudckpt.manager"):
        _save(mgr, range(1, 3))
        assert mgr.wait_replicas(30) is False
    assert mgr.steps() == [1, 2]
    assert any("replication to" in r.message for r in caplog.records)
    mgr.close(replica_timeout=5)


# -- reconciliation passes (sync_replica) ---------------------------------------------------
def _primary(steps: range, keep_last: int | None = None) -> tuple[str, dict[int, Any]]:
    uri = _uri()
    mgr = CheckpointManager(uri, keep_last=keep_last, keep_best=None, incremental=NOW["grace"])
    return uri, _save(mgr, steps)


def test_copier_killed_midway_leaves_nothing_visible_and_the_next_pass_finishes() -> None:
    primary, _ = _primary(range(1, 3))
    target = _uri("mirror")
    # object writes: step 1's data, its manifest, step 2's data, its manifest. The copier dies
    # at the fourth: step 2's data is there, its manifest is not
    crashing = FaultyStore(open_store(target), FaultPlan(ops=frozenset({"put", "finish"}),
                                                         crash_at=3))
    with pytest.raises(SimulatedCrash):
        sync_replica(_ctx(open_store(primary)), _ctx(crashing))
    assert [op for _, op, _ in crashing.calls] == ["finish", "put", "finish", "put"]
    assert _steps(target) == [1]
    store = open_store(target)
    assert any(o.key.startswith(f"{step_dir(2)}/data/") for o in store.list())  # data landed
    assert _steps(target) == [1]  # ...and step 2 is not visible
    report = sync_replica(_ctx(open_store(primary)), _ctx(open_store(target)))
    assert report.complete and report.copied == (2,)
    assert _steps(target) == [1, 2] and all(verify(f"{target}/{step_dir(s)}").ok for s in (1, 2))


def test_primary_listing_failure_deletes_nothing_at_the_replica() -> None:
    primary, _ = _primary(range(1, 4))
    target = _uri("mirror")
    sync_replica(_ctx(open_store(primary)), _ctx(open_store(target)))
    CheckpointManager(primary, keep_last=None).delete(1)
    dead = FaultyStore(open_store(primary), FaultPlan(ops=frozenset({"list"}),
                                                      fail_calls=frozenset(range(100))))
    with pytest.raises(cloudckpt.TransientStorageError):
        sync_replica(_ctx(dead), _ctx(open_store(target)))
    assert _steps(target) == [1, 2, 3]
    report = sync_replica(_ctx(open_store(primary)), _ctx(open_store(target)))
    assert report.deleted == (1,) and _steps(target) == [2, 3]


def test_no_deletion_while_copies_fail_or_when_the_primary_is_empty() -> None:
    primary, _ = _primary(range(1, 3))
    target = _uri("mirror")
    sync_replica(_ctx(open_store(primary)), _ctx(open_store(target)))
    mgr = CheckpointManager(primary, keep_last=1, keep_best=None, incremental=NOW["grace"])
    _save(mgr, range(3, 4))
    assert mgr.steps() == [3]
    failing = FaultyStore(open_store(target), FaultPlan(ops=frozenset({"put"}), kind="permanent",
                                                        fail_calls=frozenset(range(10**6))))
    report = sync_replica(_ctx(open_store(primary)), _ctx(failing))
    assert not report.complete and 3 in report.failed and report.deleted == ()
    assert _steps(target) == [1, 2]  # kept: the newer step is not there yet
    mgr.delete(3)
    report = sync_replica(_ctx(open_store(primary)), _ctx(open_store(target)))
    assert report.wanted == () and report.deleted == () and _steps(target) == [1, 2]


def test_damaged_source_is_not_committed_at_the_replica() -> None:
    primary, _ = _primary(range(1, 2))
    store = open_store(primary)
    key = next(o.key for o in store.list(step_dir(1)) if "/data/" in o.key)
    body = bytearray(store.get(key))
    body[-1] ^= 0xFF  # same size, bad bytes: only the read-back check sees it
    store.put(key, bytes(body))
    target = _uri("mirror")
    report = sync_replica(_ctx(store), _ctx(open_store(target)))
    assert 1 in report.failed and "checksum" in report.failed[1]
    assert _steps(target) == []


def test_replaced_step_at_the_primary_is_copied_again() -> None:
    primary, _ = _primary(range(1, 3))
    target = _uri("mirror")
    sync_replica(_ctx(open_store(primary)), _ctx(open_store(target)))
    old = open_store(f"{target}/{step_dir(2)}").get(MANIFEST_KEY)
    CheckpointManager(primary, keep_last=None).delete(2)
    _save(CheckpointManager(primary, keep_last=None, incremental=NOW["grace"]), range(2, 3),
          _model(seed=7))
    report = sync_replica(_ctx(open_store(primary)), _ctx(open_store(target)))
    assert report.copied == (2,)
    assert open_store(f"{target}/{step_dir(2)}").get(MANIFEST_KEY) != old
    assert verify(f"{target}/{step_dir(2)}").ok


def test_references_stay_references_where_the_replica_holds_their_target() -> None:
    primary, snaps = _primary(range(1, 4))
    target = _uri("mirror")
    sync_replica(_ctx(open_store(primary)), _ctx(open_store(target)))
    for s in (2, 3):  # the frozen layer's chunk: a reference to step 1's object, as at the primary
        assert _objects(target, s) == _objects(primary, s)
        assert any(o.startswith("@step-000000000001/") for o in _objects(target, s))
    # the primary drops step 1: so does the replica, and the data 2 and 3 read stays
    CheckpointManager(primary, keep_last=None, incremental=NOW["grace"]).delete(1)
    assert sync_replica(_ctx(open_store(primary)), _ctx(open_store(target))).deleted == (1,)
    _no_orphans(target)
    for s in (2, 3):
        assert verify(f"{target}/{step_dir(s)}").ok
        model = _model(seed=9)
        assert CheckpointManager(target, keep_last=None).restore(s, model=model) is not None
        assert_same(snaps[s], model.state_dict())
    # a replica that never held step 1 gets standalone copies
    fresh = _uri("fresh")
    sync_replica(_ctx(open_store(primary)), _ctx(open_store(fresh)))
    assert not any(o.startswith("@") for s in (2, 3) for o in _objects(fresh, s))
    assert all(verify(f"{fresh}/{step_dir(s)}").ok for s in (2, 3))


def test_a_reference_released_at_the_replica_is_copied_instead() -> None:
    primary, _ = _primary(range(1, 3))
    target = _uri("mirror")
    p = _ctx(open_store(primary))
    mgr = CheckpointManager(primary, keep_last=None)
    mgr.delete(2)
    sync_replica(p, _ctx(open_store(target)))  # the replica holds step 1 only
    _save(CheckpointManager(primary, keep_last=None, incremental=NOW["grace"]), range(2, 3))
    ref = next(o for o in _objects(primary, 2) if o.startswith("@"))
    # a deletion at the replica is under way: it released the object step 2 would reference
    open_store(target).put("released/20260101T000000-000000000000.json",
                           json.dumps({"step": 1, "objects": [ref[1:]]}).encode())
    sync_replica(_ctx(open_store(primary)), _ctx(open_store(target)))
    assert not any(o.startswith("@") for o in _objects(target, 2))
    assert verify(f"{target}/{step_dir(2)}").ok


# -- restore fallback -------------------------------------------------------------------------
def _unreachable(uri: str) -> Store:
    return FaultyStore(open_store(uri), FaultPlan(fail_calls=frozenset(range(10**6))))


def test_restore_falls_back_to_the_newest_intact_replica(caplog: Any) -> None:
    primary, snaps = _primary(range(1, 4))
    old, new = _uri("old"), _uri("new")
    for r in (old, new):
        sync_replica(_ctx(open_store(primary)), _ctx(open_store(r)))
    CheckpointManager(old, keep_last=None).delete(3)  # "old" lags: steps 1, 2
    dead = _unreachable(primary)
    mgr = CheckpointManager(dead, keep_last=None, replicas=[old, new])
    model = _model(seed=5)
    with caplog.at_level(logging.WARNING, "cloudckpt.manager"):
        state = mgr.restore(model=model)
    assert state is not None and state.step == 3 and state.uri.startswith(new.rstrip("/"))
    assert_same(snaps[3], model.state_dict())
    assert any("restored step 3 from the replica" in r.message for r in caplog.records)
    # the newest copy damaged: the next candidate across replicas (step 2), still bit-exact
    st = open_store(f"{new}/{step_dir(3)}")
    key = next(o.key for o in st.list(DATA_PREFIX))
    st.put(key, b"\0" * len(st.get(key)))
    state = mgr.restore(model=model)
    assert state is not None and state.step == 2
    assert_same(snaps[2], model.state_dict())
    assert mgr.restore(1, model=model) is not None  # an explicit step, too
    mgr.close(replica_timeout=1)


def test_a_damaged_newest_checkpoint_at_the_primary_is_taken_from_a_replica() -> None:
    primary, snaps = _primary(range(1, 4))
    mirror = _uri("mirror")
    sync_replica(_ctx(open_store(primary)), _ctx(open_store(mirror)))
    st = open_store(f"{primary}/{step_dir(3)}")
    key = next(o.key for o in st.list(DATA_PREFIX))
    st.put(key, b"\0" * len(st.get(key)))  # bit rot at the primary after replication
    model = _model(seed=4)
    mgr = CheckpointManager(primary, keep_last=None, replicas=[mirror])
    state = mgr.restore(model=model)
    assert state is not None and state.step == 3 and state.uri.startswith(mirror)
    assert_same(snaps[3], model.state_dict())
    mgr.close(replica_timeout=10)
    mgr.close()  # twice: a no-op
    alone = CheckpointManager(primary, keep_last=None)
    assert alone.wait_replicas(0) is True  # no replicas: nothing to wait for
    assert alone.restore(model=model).step == 2  # type: ignore[union-attr]


def test_restore_uses_the_primary_when_it_can_and_replicas_when_it_is_empty() -> None:
    primary, snaps = _primary(range(1, 3))
    mirror = _uri("mirror")
    sync_replica(_ctx(open_store(primary)), _ctx(open_store(mirror)))
    CheckpointManager(mirror, keep_last=None).delete(2)
    model = _model(seed=3)
    mgr = CheckpointManager(primary, keep_last=None, replicas=[mirror])
    state = mgr.restore(model=model)
    assert state is not None and state.step == 2 and state.uri.startswith(primary)
    assert mgr.wait_replicas(30) and _steps(mirror) == [1, 2]  # caught up at construction
    mgr.close()
    CheckpointManager(mirror, keep_last=None).delete(2)
    empty = CheckpointManager(_uri(), keep_last=None, replicas=[mirror])
    state = empty.restore(model=model)
    assert state is not None and state.step == 1 and state.uri.startswith(mirror)
    assert_same(snaps[1], model.state_dict())
    nothing = CheckpointManager(_uri(), replicas=[_uri("none")])
    assert nothing.restore(model=model) is None
    with pytest.raises(cloudckpt.TransientStorageError):  # no replica can serve: primary's error
        CheckpointManager(_unreachable(primary), replicas=[_uri("none")]).restore(model=model)
    for m in (empty, nothing):
        m.close(replica_timeout=10)


def test_open_replica_shares_the_primary_metric_rule() -> None:
    p = RunContext.open(_uri(), metric="loss", mode="max")
    r = open_replica(Replica(_uri("m")), p)
    assert (r.metric, r.mode, r.retention) == ("loss", "max", None)
