"""Incremental checkpoints: content-addressed chunk references, and retention / GC that never
delete data a committed checkpoint reads (fast, on memory:// and local disk)."""

from __future__ import annotations

import copy
import json
import logging
import uuid
from typing import Any

import pytest
import torch

import cloudckpt
from cloudckpt.engine.commit import copy_checkpoint
from cloudckpt.errors import InvalidArgument
from cloudckpt.format.chunking import PACK_LIMIT
from cloudckpt.format.keys import MANIFEST_KEY, REF_MARK, RELEASED_PREFIX, step_dir
from cloudckpt.manager import CheckpointManager, IncrementalOptions
from cloudckpt.manager import writing as writing_mod
from cloudckpt.manager.sharing import delete_hot, referenced
from cloudckpt.storage import open_store
from tests.helpers import assert_same

MiB = 1024 * 1024


def _uri(tmp_path: Any, kind: str) -> str:
    return f"memory://inc-{uuid.uuid4().hex[:10]}/run" if kind == "memory" else str(tmp_path / "run")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 256),
                            torch.nn.Linear(256, 8))
    for p in list(m.parameters())[:4]:  # the first two layers are frozen
        p.requires_grad_(False)
    return m


def _train(model: torch.nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
    torch.manual_seed(seed)
    model(torch.randn(4, 256)).pow(2).mean().backward()
    opt.step()
    opt.zero_grad()


def _run(uri: str, steps: int, **kw: Any) -> tuple[CheckpointManager, dict[int, dict[str, Any]],
                                                     list[cloudckpt.SaveInfo]]:
    model = _model()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    mgr = CheckpointManager(uri, **kw)
    snaps, infos = {}, []
    for step in range(1, steps + 1):
        _train(model, opt, step)
        info = mgr.save(step, model=model, optimizer=opt)
        assert info is not None
        infos.append(info)
        snaps[step] = copy.deepcopy(model.state_dict())
    return mgr, snaps, infos


def _assert_restores(mgr: CheckpointManager, snaps: dict[int, dict[str, Any]]) -> None:
    for step in mgr.steps():
        target = _model()
        assert mgr.restore(step, model=target, rng=False) is not None
        assert_same(snaps[step], target.state_dict())


@pytest.mark.parametrize("kind", ["memory", "local"])
def test_frozen_layers_are_stored_once_and_every_checkpoint_restores(tmp_path, kind) -> None:  # type: ignore[no-untyped-def]
    mgr, snaps, infos = _run(_uri(tmp_path, kind), 4, keep_last=None)
    frozen = 2 * (256 * 256 + 256) * 4
    assert infos[0].shared_bytes == 0 and infos[0].added_bytes == infos[0].stored_bytes
    for info in infos[1:]:
        assert info.shared_bytes >= 0.7 * frozen  # the frozen layers (stored at ~0.8 of raw)
        assert info.added_bytes < 0.2 * infos[0].added_bytes
    refs = [c.object for c in cloudckpt.inspect(f"{mgr.uri}/{step_dir(4)}").chunks
            if c.object.startswith(REF_MARK)]
    assert refs and all(r.startswith(f"@{step_dir(1)}/") for r in refs)  # the owner, not a chain
    _assert_restores(mgr, snaps)


def test_dedup_off_uploads_everything(tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, _, infos = _run(_uri(tmp_path, "memory"), 2, keep_last=None,
                       incremental=IncrementalOptions(dedup=False))
    assert [i.shared_bytes for i in infos] == [0, 0]


def test_one_changed_row_reuploads_one_chunk() -> None:
    uri = f"memory://inc-{uuid.uuid4().hex[:10]}"
    big = torch.randn(4 * MiB // 4 * 4)  # 16 MiB: four 4 MiB chunks
    cloudckpt.save({"w": big}, f"{uri}/a", compression="none")
    big2 = big.clone()
    big2[5] += 1.0  # one element in the first chunk
    info = cloudckpt.save({"w": big2}, f"{uri}/b", base=f"{uri}/a", compression="none")
    assert info.added_bytes == 4 * MiB and info.shared_bytes == 12 * MiB
    assert_same(big2, cloudckpt.load(f"{uri}/b")["w"])
    assert cloudckpt.verify(f"{uri}/b").ok


def test_mid_sized_leaves_get_chunks_of_their_own() -> None:
    # leaves of at least PACK_LIMIT bytes are never packed with others: a frozen one next to
    # a changing one is still shared
    uri = f"memory://inc-{uuid.uuid4().hex[:10]}"
    n = PACK_LIMIT // 4
    frozen, moving = torch.randn(n), torch.randn(n)
    cloudckpt.save({"f": frozen, "m": moving}, f"{uri}/a")
    info = cloudckpt.save({"f": frozen, "m": moving + 1}, f"{uri}/b", base=f"{uri}/a")
    assert info.shared_bytes > 0.8 * PACK_LIMIT


def test_base_must_be_a_sibling_and_a_copy_stands_alone(tmp_path) -> None:  # type: ignore[no-untyped-def]
    state = {"w": torch.randn(300_000), "b": torch.randn(10)}
    cloudckpt.save(state, tmp_path / "exp" / "v1")
    state2 = {"w": state["w"], "b": state["b"] + 1}
    info = cloudckpt.save(state2, tmp_path / "exp" / "v2", base=tmp_path / "exp" / "v1")
    assert info.shared_bytes > 0
    with pytest.raises(InvalidArgument, match="same parent"):
        cloudckpt.save(state2, tmp_path / "other" / "v3", base=tmp_path / "exp" / "v1")
    copy_checkpoint(open_store(tmp_path / "exp" / "v2"), open_store(tmp_path / "solo"))
    for p in sorted((tmp_path / "exp").rglob("*"), reverse=True):  # the base is gone
        p.unlink() if p.is_file() else p.rmdir()
    assert_same(state2, cloudckpt.load(tmp_path / "solo"))
    assert not any(o.startswith(REF_MARK) for o in cloudckpt.inspect(tmp_path / "solo").objects)


def test_retention_keeps_data_others_read_and_gc_sweeps_the_rest() -> None:
    uri = f"memory://inc-{uuid.uuid4().hex[:10]}/run"
    mgr, snaps, _ = _run(uri, 5, keep_last=2, keep_best=None,
                         incremental=IncrementalOptions(grace=0))
    assert mgr.steps() == [4, 5]
    _assert_restores(mgr, snaps)  # step 1 (the owner of the frozen data) is gone
    mgr.gc(dry_run=False, grace=0)
    _assert_restores(mgr, snaps)
    store = open_store(uri)
    listing = mgr.index.scan()
    live = referenced(mgr.context, listing)
    data = {o.key for objs in listing.data.values() for o in objs}
    assert data == live  # nothing unreferenced is left, nothing referenced was deleted
    assert not store.list(RELEASED_PREFIX)


def test_released_data_waits_for_the_grace_period() -> None:
    uri = f"memory://inc-{uuid.uuid4().hex[:10]}/run"
    mgr, snaps, _ = _run(uri, 3, keep_last=None, incremental=IncrementalOptions(grace=600))
    ctx = mgr.context
    before = {o.key for o in open_store(uri).list()}
    delete_hot(ctx, 2)  # its own changed data is released, not deleted
    after = {o.key for o in open_store(uri).list()}
    released = {k for k in before - after}
    assert released == {f"{step_dir(2)}/{MANIFEST_KEY}"}
    assert any(k.startswith(RELEASED_PREFIX + "/") for k in after)
    report = mgr.gc(dry_run=False, grace=600)  # records are younger than 600 s
    assert not any(k.startswith(step_dir(2)) for k in report.orphans)
    report = mgr.gc(dry_run=False, grace=0)
    assert report.orphans and all(k.startswith(step_dir(2) + "/data/") for k in report.orphans)
    assert not open_store(uri).list(RELEASED_PREFIX)
    _assert_restores(mgr, {s: snaps[s] for s in (1, 3)})


def test_a_save_racing_a_deletion_writes_its_own_copy(monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    """Another process deletes (and sweeps) the checkpoint a save is about to reference,
    between the save's index and its commit: the commit-time check catches it and the save
    writes every chunk itself; nothing committed is broken."""
    uri = f"memory://inc-{uuid.uuid4().hex[:10]}/run"
    mgr, _, _ = _run(uri, 1, keep_last=None, incremental=IncrementalOptions(grace=0))
    real = writing_mod.dedup_index

    def index_then_delete(ctx, step, generation):  # type: ignore[no-untyped-def]
        idx = real(ctx, step, generation)
        assert idx is not None and len(idx) > 0
        other = CheckpointManager(uri, keep_last=None, incremental=IncrementalOptions(grace=0))
        delete_hot(other.context, 1)  # released and swept at once (grace 0)
        return idx

    monkeypatch.setattr(writing_mod, "dedup_index", index_then_delete)
    model = _model()
    with caplog.at_level(logging.WARNING, "cloudckpt.manager"):
        info = mgr.save(2, model=model)
    assert info is not None and info.shared_bytes == 0
    assert "released meanwhile" in caplog.text
    target = _model()
    mgr.restore(2, model=target, rng=False)
    assert_same(model.state_dict(), target.state_dict())


def test_malformed_release_records_are_ignored_with_a_warning(caplog) -> None:  # type: ignore[no-untyped-def]
    uri = f"memory://inc-{uuid.uuid4().hex[:10]}/run"
    mgr, snaps, _ = _run(uri, 2, keep_last=None, incremental=IncrementalOptions(grace=0))
    store = open_store(uri)
    store.put(f"{RELEASED_PREFIX}/a.json", b"{not json")
    store.put(f"{RELEASED_PREFIX}/b.json", json.dumps({"objects": ["../../etc/passwd"]}).encode())
    store.put(f"{RELEASED_PREFIX}/c.json", json.dumps({"objects": [1, 2]}).encode())
    # a record may only name data objects: never a manifest or other run records
    store.put(f"{RELEASED_PREFIX}/d.json", json.dumps(
        {"objects": [f"{step_dir(2)}/{MANIFEST_KEY}"]}).encode())
    with caplog.at_level(logging.WARNING, "cloudckpt.manager"):
        mgr.gc(dry_run=False, grace=0)
    assert caplog.text.count("malformed release record") == 4
    assert mgr.steps() == [1, 2]
    _assert_restores(mgr, snaps)


def test_deleting_the_owner_releases_only_what_nothing_else_reads() -> None:
    # with a grace period, released data is blocked from new references: if the frozen
    # layers were released with their owner (step 1), step 5 could not share them
    uri = f"memory://inc-{uuid.uuid4().hex[:10]}/run"
    mgr, snaps, infos = _run(uri, 5, keep_last=2, keep_best=None,
                             incremental=IncrementalOptions(grace=600))
    assert mgr.steps() == [4, 5]
    assert all(i.shared_bytes >= 0.7 * 2 * (256 * 256 + 256) * 4 for i in infos[1:])
    _assert_restores(mgr, snaps)
