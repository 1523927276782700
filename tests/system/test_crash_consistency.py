"""A save that crashes at any storage call never damages the committed checkpoint, is never
loadable itself, and leaves only identifiable orphans."""

from __future__ import annotations

import pytest
import torch

import cloudckpt
from cloudckpt.engine.commit import find_orphans, read_manifest
from cloudckpt.errors import IncompleteCheckpoint, NotFound
from cloudckpt.storage import open_store
from cloudckpt.testing import FaultPlan, FaultyStore, SimulatedCrash
from tests.conftest import StoreFactory
from tests.helpers import assert_same

SAVE_KW = {"chunk_size": 64 * 1024, "object_size": 128 * 1024, "max_workers": 2}


def _state(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"model": {"w": torch.randn(100_000, generator=g), "b": torch.randn(10, generator=g)},
            "step": seed}


def _count_calls(uri: str, opts: dict, overwrite: bool) -> int:
    spy = FaultyStore(open_store(uri, storage_options=opts))
    cloudckpt.save(_state(99), spy, overwrite=overwrite, **SAVE_KW)
    return len(spy.calls)


@pytest.mark.parametrize("backend", ["memory", "local", "s3"])
def test_crash_at_every_call_new_uri(backend: str, emus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = StoreFactory(backend, emus, tmp_path)
    committed_uri = f.uri("committed")
    cloudckpt.save(_state(1), committed_uri, storage_options=f.options)
    n_calls = _count_calls(f.uri("probe"), f.options, overwrite=False)
    assert n_calls >= 6
    for n in range(n_calls):
        uri = f.uri(f"crash-{n}")
        store = FaultyStore(open_store(uri, storage_options=f.options), FaultPlan(crash_at=n))
        with pytest.raises(SimulatedCrash):
            cloudckpt.save(_state(2), store, **SAVE_KW)
        assert_same(_state(1), cloudckpt.load(committed_uri, storage_options=f.options))
        fresh = open_store(uri, storage_options=f.options)
        with pytest.raises(NotFound) as ei:  # IncompleteCheckpoint is a NotFound
            cloudckpt.load(fresh)
        orphans = find_orphans(fresh, None)
        if orphans:
            assert isinstance(ei.value, IncompleteCheckpoint)
            assert "incomplete checkpoint" in str(ei.value)
        assert {o.key for o in fresh.list()} == {o.key for o in orphans}


@pytest.mark.parametrize("backend", ["memory", "local", "s3"])
def test_crash_at_every_call_overwrite_same_uri(backend: str, emus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = StoreFactory(backend, emus, tmp_path)
    n_calls = None
    for n in range(100):
        uri = f.uri(f"same-{n}")
        cloudckpt.save(_state(1), uri, storage_options=f.options, **SAVE_KW)
        if n_calls is None:
            n_calls = _count_calls(f.uri("probe"), f.options, overwrite=False) + 3
        if n >= n_calls:
            break
        store = FaultyStore(open_store(uri, storage_options=f.options), FaultPlan(crash_at=n))
        try:
            cloudckpt.save(_state(2), store, overwrite=True, **SAVE_KW)
            finished = True
        except SimulatedCrash:
            finished = False
        fresh = open_store(uri, storage_options=f.options)
        out = cloudckpt.load(fresh)
        # old or new, complete, never a mix
        assert out["step"] in (1, 2)
        assert_same(_state(out["step"]), out)
        if finished:
            assert out["step"] == 2
        orphans = {o.key for o in find_orphans(fresh, read_manifest(fresh))}
        referenced = set(read_manifest(fresh).objects)
        assert {o.key for o in fresh.list("data")} == orphans | referenced
    assert n_calls is not None and n >= n_calls
