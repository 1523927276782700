"""torch.distributed.checkpoint through cloudckpt: 4 ranks save, 2 and 1 ranks load."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp

import cloudckpt
import cloudckpt.dcp as cdcp
from cloudckpt.engine.verify import verify
from cloudckpt.errors import AlreadyExists
from cloudckpt.testing.emulators import free_port
from tests.conftest import StoreFactory
from tests.system import dist_worker


def spawn(world: int, mode: str, uri: str, opts: dict, tmp_path) -> list[str]:  # type: ignore[no-untyped-def]
    out = tmp_path / f"{mode}-{world}-{free_port()}"
    out.mkdir()
    mp.start_processes(dist_worker.run, args=(world, free_port(), mode, uri, json.dumps(opts),
                                              str(out)),
                       nprocs=world, join=True, start_method="spawn")
    return [(out / f"rank{r}.txt").read_text() for r in range(world)]


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_save_on_4_ranks_load_on_2_and_1(backend: str, emus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = StoreFactory(backend, emus, tmp_path)
    uri = f.uri("dcp")
    assert spawn(4, "save", uri, f.options, tmp_path) == ["saved"] * 4
    m = cloudckpt.inspect(uri, storage_options=f.options)
    fqns = [t.path.split("@")[0] for t in m.tensors]
    assert fqns.count("model.w") == 4 and fqns.count("optim.m") == 4  # one shard per rank
    assert fqns.count("model.b") == 1 and fqns.count("ddp") == 1  # replicated: written once
    assert verify(uri, storage_options=f.options).ok
    assert spawn(2, "load", uri, f.options, tmp_path) == ["equal"] * 2
    # one process, no process group, plain tensors
    warnings.simplefilter("ignore")
    state = dist_worker.build_state(1, None, fill=False)
    dcp.load(state, storage_reader=cdcp.Reader(uri, storage_options=f.options))
    full = dist_worker.global_tensors()
    assert torch.equal(state["model"]["w"], full["w"]) and torch.equal(state["optim"]["m"], full["m"])
    assert torch.equal(state["model"]["b"], full["b"]) and state["step"] == 7
    from torch.distributed.checkpoint.api import CheckpointException

    with pytest.raises(CheckpointException, match=AlreadyExists.__name__):  # DCP wraps rank errors
        dcp.save(dist_worker.build_state(1, None, fill=True),
                 storage_writer=cdcp.Writer(uri, storage_options=f.options))


def test_failing_rank_means_no_commit(tmp_path) -> None:  # type: ignore[no-untyped-def]
    prev = str(tmp_path / "prev")
    assert spawn(2, "save", prev, {}, tmp_path) == ["saved"] * 2
    uri = str(tmp_path / "next")
    results = spawn(2, "fail", uri, {}, tmp_path)
    assert all(r.startswith("failed") for r in results), results
    with pytest.raises(FileNotFoundError):  # NotFound / IncompleteCheckpoint
        cloudckpt.inspect(uri)
    assert spawn(2, "load", prev, {}, tmp_path) == ["equal"] * 2


def _spawn_job(fn, world: int, mode: str, uri: str, opts: dict, tmp_path) -> list[dict]:  # type: ignore[no-untyped-def]
    out = tmp_path / f"mgr-{mode}-{world}-{free_port()}"
    out.mkdir()
    mp.start_processes(fn, args=(world, free_port(), mode, uri, json.dumps(opts), str(out)),
                       nprocs=world, join=True, start_method="spawn")
    return [json.loads((out / f"rank{r}.txt").read_text()) for r in range(world)]


@pytest.mark.parametrize(("backend", "sharding"), [("local", "ddp"), ("s3", "ddp"),
                                                   ("local", "fsdp2")])
def test_manager_uses_dcp_on_two_ranks_and_restores_anywhere(backend: str, sharding: str,  # type: ignore[no-untyped-def]
                                                             emus, tmp_path) -> None:
    f = StoreFactory(backend, emus, tmp_path)
    uri = f.uri("run")
    suffix = "-fsdp2" if sharding == "fsdp2" else ""
    saved = _spawn_job(dist_worker.manager_job, 2, "save" + suffix, uri, f.options, tmp_path)
    assert saved[0]["digest"] == saved[1]["digest"]
    m = cloudckpt.inspect(f"{uri}/step-{3:012d}", storage_options=f.options)
    assert "cloudckpt.dcp" in m.metadata and "cloudckpt.manager.dist" in m.metadata
    fqns = [t.path.split("@")[0] for t in m.tensors]
    # replicated (DDP) state is written once; FSDP2 writes one shard per rank
    assert fqns.count("objects.model.0.weight") == (2 if sharding == "fsdp2" else 1)
    assert {f"rng.rank{r}" for r in range(2)} <= set(fqns)  # per-rank RNG kept
    for world in (2, 1):
        restored = _spawn_job(dist_worker.manager_job, world, "restore" + suffix, uri, f.options,
                              tmp_path)
        for r in restored:
            assert r["digest"] == saved[0]["digest"]
            assert r["step"] == 3 and r["last_epoch"] == saved[0]["last_epoch"]
            assert r["extra"] == {"note": "dist"} and r["opt_steps"] == [3.0] * 4


@pytest.mark.parametrize("sharding", ["fsdp2"])  # sharded: each rank dedups its own shards
def test_each_rank_shares_unchanged_shards_with_the_previous_checkpoint(sharding: str, emus,  # type: ignore[no-untyped-def]
                                                                       tmp_path) -> None:
    f = StoreFactory("s3", emus, tmp_path)
    uri = f.uri("run")
    suffix = "-twice" + ("-fsdp2" if sharding == "fsdp2" else "")
    saved = _spawn_job(dist_worker.manager_job, 2, "save" + suffix, uri, f.options, tmp_path)
    m3 = cloudckpt.inspect(f"{uri}/step-{3:012d}", storage_options=f.options)
    m4 = cloudckpt.inspect(f"{uri}/step-{4:012d}", storage_options=f.options)
    model_chunks = {s.chunk for t in m4.tensors if t.path.startswith("objects.")
                    for s in t.segments}
    assert all(m4.chunks[c].object.startswith("@step-000000000003/") for c in model_chunks)
    assert m4.shared_bytes >= 0.9 * sum(m3.chunks[c].stored_size for c in
                                        {s.chunk for t in m3.tensors if t.path.startswith("objects.")
                                         for s in t.segments})
    assert cloudckpt.verify(f"{uri}/step-{4:012d}", storage_options=f.options).ok
    for world in (2, 1):
        restored = _spawn_job(dist_worker.manager_job, world, "restore" + suffix, uri, f.options,
                              tmp_path)
        assert all(r["digest"] == saved[0]["digest"] and r["step"] == 4 for r in restored)


def test_plain_dcp_writer_shares_with_a_named_base(tmp_path) -> None:  # type: ignore[no-untyped-def]
    warnings.simplefilter("ignore")
    big = {"w": torch.randn(200_000), "b": torch.randn(4)}
    dcp.save({"model": big}, storage_writer=cdcp.Writer(tmp_path / "v1"))
    changed = {"w": big["w"], "b": big["b"] + 1}
    dcp.save({"model": changed}, storage_writer=cdcp.Writer(tmp_path / "v2", base=tmp_path / "v1"))
    m = cloudckpt.inspect(tmp_path / "v2")
    assert m.shared_bytes >= 0.9 * big["w"].numel() * 4 * 0.8 and m.added_bytes < 10_000
    got = {"model": {"w": torch.zeros(200_000), "b": torch.zeros(4)}}
    dcp.load(got, storage_reader=cdcp.Reader(tmp_path / "v2"))
    assert torch.equal(got["model"]["w"], changed["w"]) and torch.equal(got["model"]["b"], changed["b"])
    from torch.distributed.checkpoint.api import CheckpointException

    with pytest.raises(CheckpointException, match="InvalidArgument"):  # DCP wraps rank errors
        dcp.save({"model": changed}, storage_writer=cdcp.Writer(tmp_path / "x" / "v3",
                                                                base=tmp_path / "v1"))
