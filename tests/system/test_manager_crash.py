"""Crash at every storage call of a retention + archive + GC pass: never a visible broken
checkpoint, never the latest or the best lost, and a later pass reclaims every orphan."""

from __future__ import annotations

import pytest
import torch

import cloudckpt
from cloudckpt import ArchivePolicy, CheckpointManager
from cloudckpt.format.keys import DATA_PREFIX
from cloudckpt.storage import open_store
from cloudckpt.testing import FaultPlan, FaultyStore, SimulatedCrash
from tests.helpers import assert_same

LOSSES = {1: 0.9, 2: 0.1, 3: 0.5, 4: 0.6, 5: 0.7}  # best is step 2, latest is step 5


def _model(step: int) -> torch.nn.Module:
    torch.manual_seed(step)
    return torch.nn.Linear(16, 8)


def _populate(root: str) -> None:
    mgr = CheckpointManager(root, keep_last=None, metric="loss")
    for s, loss in LOSSES.items():
        mgr.save(s, model=_model(s), metrics={"loss": loss})


def _pass(store, archive_uri: str | None) -> None:  # type: ignore[no-untyped-def]
    mgr = CheckpointManager(store, keep_last=1, keep_best=1, metric="loss", mode="min",
                            archive=ArchivePolicy(uri=archive_uri) if archive_uri else None)
    mgr.apply_retention()
    mgr.gc(dry_run=False, grace=0)


def _check_visible_intact(root: str) -> None:
    mgr = CheckpointManager(root, keep_last=None, metric="loss")
    steps = mgr.steps()
    assert 5 in steps and 2 in steps  # latest and best never lost
    for s in steps:
        target = torch.nn.Linear(16, 8)
        st = mgr.restore(s, model=target, rng=False)
        assert st is not None and st.step == s
        assert_same(_model(s).state_dict(), target.state_dict())


def _all_data_referenced(uri: str) -> None:
    store = open_store(uri)
    by_dir: dict[str, set[str]] = {}
    for o in store.list():
        head, _, rest = o.key.partition("/")
        if rest.startswith(DATA_PREFIX + "/"):
            by_dir.setdefault(head, set()).add(rest)
    for head, keys in by_dir.items():
        assert keys == set(cloudckpt.inspect(f"{uri}/{head}").objects), f"orphans in {head}"


@pytest.mark.parametrize("mode", ["delete", "archive"])
def test_crash_at_every_call_of_retention_archive_gc(tmp_path, mode: str) -> None:  # type: ignore[no-untyped-def]
    probe_root = str(tmp_path / "probe" / "hot")
    _populate(probe_root)
    spy = FaultyStore(open_store(probe_root))
    _pass(spy, str(tmp_path / "probe" / "archive") if mode == "archive" else None)
    n_calls = len(spy.calls)
    assert n_calls > 10
    for n in range(n_calls):
        root = str(tmp_path / f"r{n}" / "hot")
        archive = str(tmp_path / f"r{n}" / "archive") if mode == "archive" else None
        _populate(root)
        with pytest.raises(SimulatedCrash):
            _pass(FaultyStore(open_store(root), FaultPlan(crash_at=n)), archive)
        _check_visible_intact(root)
        _pass(open_store(root), archive)  # a later, uninterrupted pass
        _check_visible_intact(root)
        expected = [1, 2, 3, 4, 5] if mode == "archive" else [2, 5]
        assert CheckpointManager(root, keep_last=None).steps() == expected
        _all_data_referenced(root)
        if archive:
            _all_data_referenced(archive)
