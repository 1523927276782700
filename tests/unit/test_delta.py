"""Delta checkpoints (``IncrementalOptions(delta=True)``): changed float chunks stored as the
XOR with the previous save's bits; bounded chains; bit-exact restores after retention, GC and
copies; hostile chain records refused."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

import pytest
import torch

import cloudckpt
from cloudckpt.engine.commit import copy_checkpoint
from cloudckpt.engine.delta import chain
from cloudckpt.errors import CorruptCheckpoint
from cloudckpt.format.keys import step_dir
from cloudckpt.format.manifest import decode_manifest, encode_manifest
from cloudckpt.manager import CheckpointManager, IncrementalOptions
from cloudckpt.storage import open_store
from tests.helpers import assert_same

N = 512 * 1024  # 2 MiB of fp32: a chunk of its own


def _weights(step: int) -> torch.Tensor:
    w = torch.linspace(-1, 1, N)
    w[: N // 64] += 1e-3 * step  # a small region moves: its XOR is mostly zero bytes
    return w


def _run(uri: str, steps: int, **inc: Any) -> CheckpointManager:
    mgr = CheckpointManager(uri, keep_last=None, incremental=IncrementalOptions(grace=0, **inc))
    for s in range(1, steps + 1):
        mgr.save(s, extra={"w": _weights(s)}, rng=False)
    return mgr


def _uri() -> str:
    return f"memory://delta-{uuid.uuid4().hex[:10]}/run"


def test_deltas_restore_bit_exact_with_bounded_chains() -> None:
    mgr = _run(_uri(), 7, delta=True, full_every=3)
    full = _run(_uri(), 7, dedup=False)
    deltas = 0
    for s in range(1, 8):
        m = cloudckpt.inspect(f"{mgr.uri}/{step_dir(s)}")
        w = next(i for i, t in enumerate(m.tensors) if t.path.endswith("['w']"))
        ci = m.tensors[w].segments[0].chunk
        links = len(chain(m, ci))
        assert links == (s - 1) % 3 + 1  # full, delta, delta, full, ...
        deltas += links > 1
        assert_same(_weights(s), cloudckpt.load(f"{mgr.uri}/{step_dir(s)}")["extra"]["w"])
        assert cloudckpt.verify(f"{mgr.uri}/{step_dir(s)}").ok
        if links > 1:  # a delta: much smaller than the full checkpoint
            assert m.added_bytes < 0.9 * cloudckpt.inspect(f"{full.uri}/{step_dir(s)}").stored_bytes
    assert deltas == 4


def test_deltas_survive_retention_gc_and_copy(tmp_path) -> None:  # type: ignore[no-untyped-def]
    uri = str(tmp_path / "run")
    mgr = _run(uri, 3, delta=True, full_every=4)
    # on local disk too (where "auto" otherwise stores raw bytes), deltas are made
    m = cloudckpt.inspect(f"{uri}/{step_dir(3)}")
    w = next(i for i, t in enumerate(m.tensors) if t.path.endswith("['w']"))
    assert len(chain(m, m.tensors[w].segments[0].chunk)) == 3
    for s in (1, 2):
        mgr.delete(s)  # the bases of step 3's chain
    mgr.gc(dry_run=False, grace=0)
    assert_same(_weights(3), cloudckpt.load(f"{uri}/{step_dir(3)}")["extra"]["w"])
    copy_checkpoint(open_store(f"{uri}/{step_dir(3)}"), open_store(tmp_path / "solo"))
    mgr.delete(3)
    mgr.gc(dry_run=False, grace=0)
    assert not list((tmp_path / "run").rglob("*.bin"))
    assert_same(_weights(3), cloudckpt.load(tmp_path / "solo")["extra"]["w"])


def test_a_fresh_manager_starts_with_a_full_save() -> None:
    uri = _uri()
    _run(uri, 2, delta=True)
    mgr = CheckpointManager(uri, keep_last=None, incremental=IncrementalOptions(delta=True))
    mgr.restore()
    mgr.save(3, extra={"w": _weights(3)}, rng=False)
    assert not any(c.base is not None for c in cloudckpt.inspect(f"{uri}/{step_dir(3)}").chunks)


def _forge(chunks_edit: Any) -> bytes:
    uri = _uri()
    _run(uri, 2, delta=True)
    store = open_store(f"{uri}/{step_dir(2)}")
    m = decode_manifest(store.get("manifest.json"))
    return encode_manifest(replace(m, chunks=chunks_edit(list(m.chunks))))


@pytest.mark.parametrize("case", ["no-base", "cycle", "out-of-range", "other-size", "base-on-full"])
def test_hostile_delta_records_are_refused(case: str) -> None:
    def edit(chunks: list[Any]) -> tuple[Any, ...]:
        i = next(k for k, c in enumerate(chunks) if c.base is not None)
        c = chunks[i]
        if case == "no-base":
            chunks[i] = replace(c, base=None)
        elif case == "cycle":
            chunks[i] = replace(c, base=i)
        elif case == "out-of-range":
            chunks[i] = replace(c, base=len(chunks) + 5)
        elif case == "other-size":
            chunks[c.base] = replace(chunks[c.base], raw_size=c.raw_size + 4)
        else:  # a full codec with a base
            j = next(k for k, x in enumerate(chunks) if x.base is None and x.codec == "bg-zstd")
            chunks[j] = replace(chunks[j], base=i)
        return tuple(chunks)

    with pytest.raises(CorruptCheckpoint):
        decode_manifest(_forge(edit))


def test_options_are_validated() -> None:
    for bad in ({"delta": "yes"}, {"full_every": 0}, {"full_every": 65}, {"full_every": 2.0}):
        with pytest.raises(cloudckpt.InvalidArgument):
            IncrementalOptions(**bad)


def test_state_that_moves_a_lot_is_stored_whole() -> None:
    # the chain a restore reads may cost at most READ_BUDGET x the full chunk: random noise
    # XORs to incompressible bytes, so no delta is ever written for it
    mgr = CheckpointManager(_uri(), keep_last=None, incremental=IncrementalOptions(delta=True))
    g = torch.Generator().manual_seed(0)
    for s in range(1, 4):
        mgr.save(s, extra={"w": torch.randn(N, generator=g)}, rng=False)
        assert not any(c.base is not None
                       for c in cloudckpt.inspect(f"{mgr.uri}/{step_dir(s)}").chunks)
