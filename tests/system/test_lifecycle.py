"""The run lifecycle never loses work: async saves at exit, re-saving after a fallback, split
brain between a zombie and the live run, races with retention and overwrite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cloudckpt
from tests.conftest import StoreFactory

PROJECT = Path(__file__).resolve().parents[2]


def _run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tests.system.exit_worker", *args], cwd=PROJECT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_async_save_in_flight_at_exit_is_committed(backend: str, emus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = StoreFactory(backend, emus, tmp_path)
    uri = f.uri("run")
    r = _run("async-exit", uri, json.dumps(f.options), "120")
    assert r.returncode == 0, r.stderr
    assert "committed step 2" in r.stderr, r.stderr
    mgr = cloudckpt.CheckpointManager(uri, storage_options=f.options)
    assert mgr.steps() == [1, 2]
    model = torch.nn.Linear(2048, 2048)
    assert mgr.restore(model=model).step == 2  # type: ignore[union-attr]
    torch.manual_seed(0)
    expected = torch.nn.Linear(2048, 2048).weight + 1.0
    assert torch.equal(model.weight, expected)


def test_async_save_that_cannot_finish_at_exit_is_reported(emus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = StoreFactory("s3", emus, tmp_path)
    uri = f.uri("run")
    r = _run("async-exit", uri, json.dumps(f.options), "0.01")  # no time to finish
    assert "ERROR" in r.stderr and "step 2" in r.stderr, r.stderr
    mgr = cloudckpt.CheckpointManager(uri, storage_options=f.options)
    assert mgr.latest() == 1  # the previous checkpoint stays the latest


def _model(fill: float = 0.0) -> torch.nn.Module:
    m = torch.nn.Module()
    m.register_buffer("w", torch.full((1000,), fill))
    return m


def test_resaving_a_step_after_falling_back_past_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    uri = str(tmp_path / "run")
    first = cloudckpt.CheckpointManager(uri)
    for step in (100, 200, 300):
        first.save(step, model=_model(step))
    # step 300's data is damaged: a new node falls back to 200
    store = first.context.step_store(300)
    key = cloudckpt.inspect(store).objects[0]
    store.put(key, store.get(key)[:-7])
    mgr = cloudckpt.CheckpointManager(uri)
    m = _model()
    assert mgr.restore(model=m).step == 200  # type: ignore[union-attr]
    # the resumed run reaches step 300 again and saves it: the run goes on, the new one wins
    assert mgr.save(300, model=_model(301.0)) is not None
    fresh = _model()
    again = cloudckpt.CheckpointManager(uri)
    assert again.restore(model=fresh).step == 300  # type: ignore[union-attr]
    assert torch.equal(fresh.w, torch.full((1000,), 301.0))
    assert again.latest() == 300


def _script(uri: str, opts: dict, name: str, sync: Path, actions: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tests.system.exit_worker", "script", uri,
                             json.dumps(opts), name, str(sync), actions], cwd=PROJECT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _both(zombie: subprocess.Popen[str], live: subprocess.Popen[str]) -> tuple[list[str], list[str]]:
    out = []
    for p in (zombie, live):
        stdout, stderr = p.communicate(timeout=240)
        assert p.returncode == 0, stderr[-3000:]  # neither node crashes
        out.append(stdout.split("\n"))
    return out[0], out[1]


@pytest.mark.parametrize("order", ["zombie-after-live-saved", "zombie-before-live-saved"])
def test_split_brain_restore_follows_the_live_lineage(order: str, emus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = StoreFactory("s3", emus, tmp_path)
    uri = f.uri("run")
    sync = tmp_path / "sync"
    sync.mkdir()
    if order == "zombie-after-live-saved":
        # the live node restored step 3 and committed step 4 before the zombie tries 4 and 5
        zombie = _script(uri, f.options, "zombie", sync,
                         "save:1,save:2,save:3,touch:z3,wait:l4,save:4,save:5")
        live = _script(uri, f.options, "live", sync, "wait:z3,restore,save:4,touch:l4")
        z, lv = _both(zombie, live)
        assert "SKIPPED 4" in z and "SKIPPED 5" in z, z  # the stale node notices, no crash
        assert "RESTORED 3" in lv and "SAVED 4" in lv, lv
        expect_step, expect_value = 4, 1004.0
    else:
        # the zombie commits 4..7 after the live node restored 3 but before it saved: its
        # steps are newer than anything the live node has, and must still not win
        zombie = _script(uri, f.options, "zombie", sync,
                         "save:1,save:2,save:3,touch:z3,wait:lr,save:4,save:5,save:6,save:7,"
                         "touch:z7")
        live = _script(uri, f.options, "live", sync,
                       "wait:z3,restore,touch:lr,wait:z7,save:4,save:5")
        z, lv = _both(zombie, live)
        assert "SAVED 7" in z, z
        assert "RESTORED 3" in lv and "SAVED 4" in lv and "SAVED 5" in lv, lv
        expect_step, expect_value = 5, 1005.0
    mgr = cloudckpt.CheckpointManager(uri, storage_options=f.options)
    m = _model()
    assert mgr.restore(model=m).step == expect_step  # type: ignore[union-attr]
    assert torch.equal(m.w, torch.full((1000,), expect_value))  # the live run's, not the zombie's
    assert mgr.latest() == expect_step
    from cloudckpt.manager.lineage import live_records

    for rec in live_records(mgr.context):  # past the fork, the live lineage is the live node's
        if rec.step > 3:
            mm = _model()
            mgr.restore(rec.step, model=mm)
            assert float(mm.w[0]) == 1000.0 + rec.step


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_restore_relists_when_retention_deletes_its_choice(backend: str, emus, tmp_path,  # type: ignore[no-untyped-def]
                                                           monkeypatch) -> None:
    from cloudckpt.manager import restoring

    f = StoreFactory(backend, emus, tmp_path)
    uri = f.uri("run")
    other = cloudckpt.CheckpointManager(uri, keep_last=2, storage_options=f.options)
    for step in (100, 200, 300):
        other.save(step, model=_model(step))
    real = restoring.load_record
    calls: list[int] = []

    def racing(ctx, rec, *a, **kw):  # type: ignore[no-untyped-def]
        calls.append(rec.step)
        if len(calls) == 1:  # another process commits 400 and its retention deletes 300
            other.save(400, model=_model(400))
            other.delete(300)
        return real(ctx, rec, *a, **kw)

    monkeypatch.setattr(restoring, "load_record", racing)
    m = _model()
    st = cloudckpt.CheckpointManager(uri, storage_options=f.options).restore(model=m)
    assert st is not None and st.step == 400, calls  # the newest intact one, not an older one
    assert torch.equal(m.w, torch.full((1000,), 400.0))
