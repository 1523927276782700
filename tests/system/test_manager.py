"""CheckpointManager: exact resume in a new process, fallback, zombies, archival, GC."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading

import pytest
import torch

import cloudckpt
from cloudckpt import (
    ArchivePolicy,
    CheckpointManager,
    EveryNEpochs,
    EveryNSteps,
    IncrementalOptions,
    OnImprovement,
)
from cloudckpt.demo import train
from cloudckpt.errors import AlreadyExists, CorruptCheckpoint, NotFound, RehydrationRequired
from cloudckpt.format.keys import DATA_PREFIX, step_dir
from cloudckpt.storage import open_store, substore
from tests.conftest import StoreFactory
from tests.helpers import assert_same


def _worker(uri: str, steps: int, opts: dict, kill_after_step: int | None = None) -> str:
    """Run the demo training job in a fresh process; return its final digest."""
    import json

    code = (
        "import json, os, sys\n"
        "from cloudckpt.demo import train\n"
        f"kill = {kill_after_step!r}\n"
        "def emit(step, loss):\n"
        "    if kill is not None and step >= kill:\n"
        "        os._exit(9)  # die like SIGKILL: no clean-up, no flush\n"
        f"opts = json.loads({json.dumps(json.dumps(opts))})\n"
        f"print(train({uri!r}, {steps}, save_every=5, storage_options=opts, emit=emit))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if kill_after_step is not None:
        assert r.returncode == 9, r.stderr
        return ""
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_exact_resume_in_new_process(backend: str, emus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = StoreFactory(backend, emus, tmp_path)
    uri = f.uri("run")
    reference = train(None, 60)  # uninterrupted, no checkpoints
    _worker(uri, 60, f.options, kill_after_step=37)  # dies mid-epoch, after the save at 35
    mgr = CheckpointManager(uri, storage_options=f.options)
    assert mgr.latest() == 35
    resumed = _worker(uri, 60, f.options)
    assert resumed == reference


def _tiny(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(8, 4)


def test_restore_fresh_run_returns_none(tmp_path) -> None:  # type: ignore[no-untyped-def]
    mgr = CheckpointManager(tmp_path / "run")
    assert mgr.restore(model=_tiny(0)) is None
    assert mgr.steps() == [] and mgr.latest() is None


def test_full_state_roundtrip_and_queries(tmp_path) -> None:  # type: ignore[no-untyped-def]
    mgr = CheckpointManager(tmp_path / "run", keep_last=2, keep_best=1, metric="val", mode="min")
    model = _tiny(0)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 8)).sum().backward()
    opt.step()
    for step, val in [(10, 0.5), (20, 0.2), (30, 0.4), (40, 0.3)]:
        mgr.save(step, model=model, optimizer=opt, epoch=step // 10, metrics={"val": val},
                 extra={"cfg": {"lr": 1e-3}})
    assert mgr.steps() == [20, 30, 40]  # keep_last=2 plus the best (20)
    assert mgr.best() == 20 and mgr.latest() == 40
    m2, o2 = _tiny(1), torch.optim.AdamW(_tiny(1).parameters())
    o2 = torch.optim.AdamW(m2.parameters())
    st = mgr.restore(model=m2, optimizer=o2)
    assert st is not None and st.step == 40 and st.epoch == 4
    assert st.best_step == 20 and st.best_metric == 0.2
    assert [s for s, _ in st.metrics_history] == [10, 20, 30, 40]
    assert st.extra == {"cfg": {"lr": 1e-3}}
    assert_same(model.state_dict(), m2.state_dict())
    assert_same(opt.state_dict()["state"], o2.state_dict()["state"])
    st_best = mgr.restore("best", model=m2)
    assert st_best is not None and st_best.step == 20
    with pytest.raises(NotFound):
        mgr.restore(25, model=m2)


def test_should_save_strategies(tmp_path) -> None:  # type: ignore[no-untyped-def]
    mgr = CheckpointManager(tmp_path / "r", metric="loss", mode="min",
                            save_policy=EveryNSteps(5) | EveryNEpochs(2) | OnImprovement())
    assert mgr.should_save(10) and not mgr.should_save(7)
    assert mgr.should_save(7, epoch=1, epoch_end=True)
    assert not mgr.should_save(7, epoch=0, epoch_end=True)
    assert mgr.should_save(7, final=True)
    assert mgr.should_save(7, metrics={"loss": 1.0})  # nothing committed yet
    mgr.save(7, model=_tiny(0), metrics={"loss": 1.0})
    assert not mgr.should_save(8, metrics={"loss": 1.5})
    assert mgr.should_save(8, metrics={"loss": 0.5})


def test_failed_save_does_not_count_toward_retention(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from cloudckpt.testing import FaultPlan, FaultyStore

    root = open_store(tmp_path / "run")
    mgr = CheckpointManager(root, keep_last=2)
    for s in (1, 2):
        mgr.save(s, model=_tiny(s))
    faulty = FaultyStore(root, FaultPlan(ops=frozenset({"put"}), fail_calls=frozenset({0}),
                                         kind="permanent"))
    with pytest.raises(PermissionError):
        CheckpointManager(faulty, keep_last=2).save(3, model=_tiny(3))
    assert mgr.steps() == [1, 2]


def test_restore_falls_back_past_corrupt_newest(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    uri = tmp_path / "run"
    mgr = CheckpointManager(uri, keep_last=5)
    models = {s: _tiny(s) for s in (1, 2, 3)}
    for s, m in models.items():
        mgr.save(s, model=m)
    sub = substore(open_store(uri), step_dir(3))
    key = sub.list(DATA_PREFIX)[0].key
    data = bytearray(sub.get(key))
    data[len(data) // 2] ^= 0xFF
    sub.put(key, bytes(data))
    target = _tiny(9)
    with caplog.at_level(logging.WARNING, logger="cloudckpt.manager"):
        st = mgr.restore(model=target)
    assert st is not None and st.step == 2
    assert_same(models[2].state_dict(), target.state_dict())
    text = caplog.text
    assert "step 3" in text and "step 2" in text
    with pytest.raises(CorruptCheckpoint):
        mgr.restore(3, model=target)
    # an incomplete newer save (data, no manifest) is skipped with a warning too
    substore(open_store(uri), step_dir(4)).put("data/x/000000.bin", b"partial")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cloudckpt.manager"):
        assert mgr.restore(model=target).step == 2  # type: ignore[union-attr]
    assert "incomplete" in caplog.text and "4" in caplog.text


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_zombie_writer_exactly_one_commits(backend: str, emus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = StoreFactory(backend, emus, tmp_path)
    uri = f.uri("run")
    a = CheckpointManager(uri, storage_options=f.options)
    b = CheckpointManager(uri, storage_options=f.options)
    ma, mb = _tiny(1), _tiny(2)
    barrier = threading.Barrier(2)
    outcome: dict[str, str] = {}

    def go(name: str, mgr: CheckpointManager, model: torch.nn.Module) -> None:
        barrier.wait()
        try:
            mgr.save(100, model=model)
            outcome[name] = "committed"
        except AlreadyExists:
            outcome[name] = "lost"

    ts = [threading.Thread(target=go, args=("a", a, ma)), threading.Thread(target=go, args=("b", b, mb))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sorted(outcome.values()) == ["committed", "lost"]
    winner = ma if outcome["a"] == "committed" else mb
    target = _tiny(3)
    a.restore(model=target)
    assert_same(winner.state_dict(), target.state_dict())
    # the loser cleaned up: only the winner's data remains
    sub = substore(open_store(uri, storage_options=f.options), step_dir(100))
    assert {o.key for o in sub.list(DATA_PREFIX)} == set(cloudckpt.inspect(sub).objects)


def test_archive_in_place_storage_class_on_s3(emus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = StoreFactory("s3", emus, tmp_path)
    uri = f.uri("run")
    # without dedup: an object step 2 shares with step 1 would rightly stay in its tier
    mgr = CheckpointManager(uri, keep_last=1, storage_options=f.options,
                            archive=ArchivePolicy(storage_class="GLACIER_IR"),
                            incremental=IncrementalOptions(dedup=False))
    models = {s: _tiny(s) for s in (1, 2)}
    for s, m in models.items():
        mgr.save(s, model=m)
    recs = {r.step: r for r in mgr.checkpoints()}
    assert recs[1].tier == "GLACIER_IR" and recs[2].tier is None
    sub = substore(open_store(uri, storage_options=f.options), step_dir(1))
    assert {o.storage_class for o in sub.list(DATA_PREFIX)} == {"GLACIER_IR"}
    assert sub.stat(sub.list(DATA_PREFIX)[0].key).storage_class == "GLACIER_IR"
    target = _tiny(9)
    mgr.restore(1, model=target)  # Glacier Instant Retrieval reads directly
    assert_same(models[1].state_dict(), target.state_dict())
    deep = CheckpointManager(uri, keep_last=1, storage_options=f.options,
                             archive=ArchivePolicy(storage_class="DEEP_ARCHIVE"))
    deep.save(3, model=_tiny(3))
    with pytest.raises(RehydrationRequired, match="restore-object"):
        deep.restore(2, model=target)


def test_archive_to_uri_on_another_backend(emus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = StoreFactory("s3", emus, tmp_path)
    archive_uri = f.uri("archive")
    mgr = CheckpointManager(tmp_path / "hot", keep_last=1,
                            archive=ArchivePolicy(uri=archive_uri, storage_options=f.options,
                                                  storage_class="STANDARD_IA"),
                            incremental=IncrementalOptions(grace=0))  # hot data goes at once
    models = {s: _tiny(s) for s in (1, 2, 3)}
    for s, m in models.items():
        mgr.save(s, model=m)
    recs = {r.step: r for r in mgr.checkpoints()}
    assert [recs[s].location for s in (1, 2, 3)] == ["archived", "archived", "hot"]
    assert recs[1].uri.startswith("s3://") and recs[1].tier == "STANDARD_IA"
    # the hot copy is gone; what is left under it is data step 3 still reads (shared chunks)
    hot1 = tmp_path / "hot" / step_dir(1)
    left = {str(p.relative_to(tmp_path / "hot")) for p in hot1.rglob("*.bin")}
    assert not (hot1 / "manifest.json").exists()
    assert left <= {o[1:] for o in cloudckpt.inspect(tmp_path / "hot" / step_dir(3)).objects}
    target = _tiny(9)
    mgr.restore(1, model=target)
    assert_same(models[1].state_dict(), target.state_dict())
    assert mgr.steps() == [1, 2, 3]


def test_gc_reclaims_orphans_after_grace(tmp_path) -> None:  # type: ignore[no-untyped-def]
    now = [1e12]  # far future: everything on disk is older than the grace period
    mgr = CheckpointManager(tmp_path / "run", keep_last=5, clock=lambda: now[0])
    mgr.save(1, model=_tiny(1))
    root = open_store(tmp_path / "run")
    substore(root, step_dir(2)).put("data/dead/000000.bin", b"crashed save")
    substore(root, step_dir(1)).put("data/old-overwrite/000000.bin", b"leftover")
    report = mgr.gc()
    assert report.dry_run and len(report.orphans) == 2
    assert root.exists(f"{step_dir(2)}/data/dead/000000.bin")  # dry run deletes nothing
    young = CheckpointManager(tmp_path / "run", clock=lambda: 0.0)  # gc grace: 3600 s
    assert young.gc(dry_run=False).orphans == []  # within grace: never races a writer
    mgr.gc(dry_run=False)
    assert not root.exists(f"{step_dir(2)}/data/dead/000000.bin")
    assert mgr.steps() == [1]
    mgr.restore(model=_tiny(0))


def test_manifest_cache_follows_retention(tmp_path) -> None:  # type: ignore[no-untyped-def]
    mgr = CheckpointManager(tmp_path / "run", keep_last=2)
    for s in range(1, 8):
        mgr.save(s, model=_tiny(s), rng=False)
    mgr.checkpoints()
    assert len(mgr.index._cache) == 2  # only the live checkpoints' manifests are held
