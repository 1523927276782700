"""Incremental checkpoints on every backend and under crashes and concurrency: shared chunks
restore bit-exact after retention and GC, a crash at any storage call never leaves a visible
broken checkpoint or deletes referenced data, and a concurrent GC never takes a chunk from a
committed checkpoint."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import cloudckpt
from cloudckpt import CheckpointManager, IncrementalOptions
from cloudckpt.engine.commit import copy_checkpoint
from cloudckpt.format.keys import RELEASED_PREFIX, step_dir
from cloudckpt.manager.sharing import referenced
from cloudckpt.storage import open_store
from cloudckpt.testing import FaultPlan, FaultyStore, SimulatedCrash
from tests.conftest import StoreFactory
from tests.helpers import assert_same
from tests.system.incremental_worker import weights

PROJECT = Path(__file__).resolve().parents[2]


def _model(step: int) -> torch.nn.Module:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.Linear(128, 4))
    with torch.no_grad():
        m[1].weight.add_(step)  # only the last layer changes between steps
    return m


def _save(mgr: CheckpointManager, step: int) -> None:
    mgr.save(step, model=_model(step), rng=False)


def _assert_all_restore(mgr: CheckpointManager) -> None:
    for s in mgr.steps():
        target = torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.Linear(128, 4))
        assert mgr.restore(s, model=target, rng=False) is not None
        assert_same(copy.deepcopy(_model(s).state_dict()), target.state_dict())


def _no_orphans(mgr: CheckpointManager) -> None:
    listing = mgr.index.scan()
    data = {o.key for objs in listing.data.values() for o in objs}
    assert data == referenced(mgr.context, listing)
    assert not mgr.store.list(RELEASED_PREFIX)


def test_shared_chunks_restore_on_every_backend_after_retention_gc_and_copy(backend, emus,  # type: ignore[no-untyped-def]
                                                                          tmp_path) -> None:
    f = StoreFactory(backend, emus, tmp_path)
    uri = f.uri("run")
    mgr = CheckpointManager(uri, keep_last=2, keep_best=None, storage_options=f.options,
                            incremental=IncrementalOptions(grace=0))
    for s in range(1, 5):
        _save(mgr, s)
    assert mgr.steps() == [3, 4]
    m4 = cloudckpt.inspect(f"{uri}/{step_dir(4)}", storage_options=f.options)
    assert m4.shared_bytes > m4.added_bytes  # the first layer is shared with step 1's data
    _assert_all_restore(mgr)
    mgr.gc(dry_run=False, grace=0)
    _assert_all_restore(mgr)
    _no_orphans(mgr)
    assert cloudckpt.verify(f"{uri}/{step_dir(4)}", storage_options=f.options).ok
    solo = open_store(f.uri("solo"), storage_options=f.options)
    copy_checkpoint(open_store(f"{uri}/{step_dir(4)}", storage_options=f.options), solo,
                    storage_options=f.options)
    for s in (3, 4):
        mgr.delete(s)
    mgr.gc(dry_run=False, grace=0)
    assert not [o for o in open_store(uri, storage_options=f.options).list()
                if "/data/" in o.key]  # everything shared is gone with its last reader
    target = torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.Linear(128, 4))
    target.load_state_dict(cloudckpt.load(solo)["objects"]["model"])
    assert_same(copy.deepcopy(_model(4).state_dict()), target.state_dict())


def _populate(root: str) -> None:
    mgr = CheckpointManager(root, keep_last=None, incremental=IncrementalOptions(grace=0))
    for s in (1, 2, 3):
        _save(mgr, s)


def _pass(store: Any) -> None:
    mgr = CheckpointManager(store, keep_last=2, keep_best=None,
                            incremental=IncrementalOptions(grace=0))
    if 4 in mgr.steps():  # a later pass after a crash that came after the commit
        mgr.apply_retention()
    else:  # shares with 3 (whose frozen chunks live in step 1); retention drops 1 and 2
        _save(mgr, 4)
    mgr.gc(dry_run=False, grace=0)


def test_crash_at_every_call_of_an_incremental_save_retention_and_gc(tmp_path) -> None:  # type: ignore[no-untyped-def]
    _populate(str(tmp_path / "probe"))
    spy = FaultyStore(open_store(tmp_path / "probe"))
    _pass(spy)
    n_calls = len(spy.calls)
    assert n_calls > 20
    for n in range(n_calls):
        root = str(tmp_path / f"r{n}")
        _populate(root)
        with pytest.raises(SimulatedCrash):
            _pass(FaultyStore(open_store(root), FaultPlan(crash_at=n)))
        mgr = CheckpointManager(root, keep_last=None)
        assert set(mgr.steps()) >= {3}
        _assert_all_restore(mgr)  # never a visible broken checkpoint
        _pass(open_store(root))  # a later, uninterrupted pass (saves 4 again or finds it)
        mgr = CheckpointManager(root, keep_last=None)
        assert mgr.steps() == [3, 4]
        _assert_all_restore(mgr)
        _no_orphans(mgr)


def test_concurrent_save_and_gc_on_s3_never_lose_a_chunk(emus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = StoreFactory("s3", emus, tmp_path)
    uri = f.uri("race")
    args = [uri, json.dumps(f.options), "25"]
    train = subprocess.Popen([sys.executable, "-m", "tests.system.incremental_worker", "train",
                              *args], cwd=PROJECT, stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    gc = subprocess.Popen([sys.executable, "-m", "tests.system.incremental_worker", "gc", *args],
                          cwd=PROJECT, stdout=subprocess.DEVNULL)
    out, _ = train.communicate(timeout=240)
    assert gc.wait(timeout=240) == 0 and train.returncode == 0
    commits = [int(x.split()[1]) for x in out.splitlines() if x.startswith("COMMITTED")]
    assert len(commits) >= 5, out
    mgr = CheckpointManager(uri, keep_last=None, storage_options=f.options)
    steps = mgr.steps()
    assert steps and steps[-1] == commits[-1]
    shared = 0
    for s in steps:  # every committed checkpoint: all its chunks there, bit-exact
        sub = f"{uri}/{step_dir(s)}"
        assert cloudckpt.verify(sub, storage_options=f.options).ok, s
        shared += cloudckpt.inspect(sub, storage_options=f.options).shared_bytes
        got = cloudckpt.load(sub, storage_options=f.options)["extra"]
        assert_same(weights(s), got)
    assert shared > 0


def test_cli_follows_references(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import load_file

    from cloudckpt.cli import main

    uri = str(tmp_path / "run")
    mgr = CheckpointManager(uri, keep_last=None, incremental=IncrementalOptions(grace=0))
    for s in (1, 2):
        _save(mgr, s)
    two = f"{uri}/{step_dir(2)}"
    assert cloudckpt.inspect(two).shared_bytes > 0
    assert main(["verify", two]) == 0
    assert main(["show", two]) == 0
    assert main(["diff", f"{uri}/{step_dir(1)}", two]) == 1  # the last layer differs
    out = tmp_path / "two.safetensors"
    assert main(["export", two, str(out)]) == 0
    exported = load_file(str(out))
    for k, v in _model(2).state_dict().items():
        assert torch.equal(next(t for n, t in exported.items() if n.endswith(k)), v), k
    assert main(["cp", two, str(tmp_path / "solo")]) == 0
    capsys.readouterr()
    for s in (1, 2):
        mgr.delete(s)
    mgr.gc(dry_run=False, grace=0)
    assert main(["verify", str(tmp_path / "solo")]) == 0  # the copy stands alone
