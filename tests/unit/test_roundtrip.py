"""save/load round trips, bit-exact, for every supported type, on every backend."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import cloudckpt
from cloudckpt.errors import AlreadyExists, InvalidArgument, UnsupportedValue
from tests.conftest import StoreFactory
from tests.helpers import assert_same, every_type_state


@pytest.mark.parametrize("compression", ["auto", "zstd", "none"])
def test_every_type_roundtrip(stores: StoreFactory, compression: str) -> None:
    state = every_type_state()
    uri = stores.uri()
    info = cloudckpt.save(state, uri, compression=compression, storage_options=stores.options,
                          chunk_size=256 * 1024, object_size=1024 * 1024)
    assert info.tensors > 20 and info.objects >= 2
    out = cloudckpt.load(uri, storage_options=stores.options)
    assert_same(state, out)


def test_tied_tensors_stay_tied(tmp_path) -> None:  # type: ignore[no-untyped-def]
    w = torch.randn(4, 4)
    cloudckpt.save({"embed": w, "head": w}, tmp_path / "c")
    out = cloudckpt.load(tmp_path / "c")
    assert out["embed"] is out["head"]
    assert cloudckpt.inspect(tmp_path / "c").raw_bytes == w.numel() * 4


def test_many_tiny_tensors_are_packed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    state = {f"t{i}": torch.full((3,), float(i)) for i in range(10_000)}
    info = cloudckpt.save(state, tmp_path / "c")
    assert info.tensors == 10_000
    assert info.objects <= 2 and info.chunks <= 2
    assert_same(state, cloudckpt.load(tmp_path / "c"))


def test_partial_load_fetches_only_selected_bytes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from cloudckpt.storage import open_store
    from cloudckpt.testing import FaultyStore

    state = {"model": {"w": torch.randn(300_000)}, "optimizer": {"m": torch.randn(300_000)},
             "step": 3}
    cloudckpt.save(state, tmp_path / "c", chunk_size=256 * 1024, object_size=512 * 1024)
    spy = FaultyStore(open_store(tmp_path / "c"))
    out = cloudckpt.load(spy, keys=["model"])
    assert list(out) == ["model"]
    assert_same(state["model"], out["model"])
    read = sum(1 for _, op, _ in spy.calls if op in ("get", "get_range"))
    full = FaultyStore(open_store(tmp_path / "c"))
    cloudckpt.load(full)
    read_full = sum(1 for _, op, _ in full.calls if op in ("get", "get_range"))
    assert read < read_full
    with pytest.raises(InvalidArgument, match="nope"):
        cloudckpt.load(tmp_path / "c", keys=["nope"])


def test_map_location_and_dtypes_preserved(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cloudckpt.save({"w": torch.randn(3)}, tmp_path / "c")
    out = cloudckpt.load(tmp_path / "c", map_location=torch.device("cpu"))
    assert out["w"].device.type == "cpu"
    out = cloudckpt.load(tmp_path / "c", map_location=None)
    assert out["w"].device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_roundtrip_to_map_location(tmp_path) -> None:  # type: ignore[no-untyped-def]
    state = {"w": torch.randn(1000, 100, device="cuda"), "c": torch.randn(10)}
    cloudckpt.save(state, tmp_path / "c", chunk_size=64 * 1024)
    out = cloudckpt.load(tmp_path / "c", map_location="cuda")
    assert out["w"].is_cuda and torch.equal(out["w"], state["w"])
    assert cloudckpt.load(tmp_path / "c", map_location=None)["w"].is_cuda
    assert not cloudckpt.load(tmp_path / "c")["w"].is_cuda


class Opaque:
    pass


@pytest.mark.parametrize(("state", "where"), [
    ({"model": {"layer": Opaque()}}, "state['model']['layer']"),
    ({"a": [1, {2, 3}]}, "state['a'][1]"),
    ({"a": {Opaque(): 1}}, "dict key"),
    ({"x": np.array([object()], dtype=object)}, "state['x']"),
    ({"s": torch.randn(3, 3).to_sparse()}, "state['s']"),
    ({"m": torch.empty(3, device="meta")}, "state['m']"),
])
def test_unsupported_values_fail_at_save_time_naming_the_key(tmp_path, state, where) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UnsupportedValue) as ei:
        cloudckpt.save(state, tmp_path / "c")
    assert where in str(ei.value)
    assert not (tmp_path / "c").exists()  # nothing written


def test_cycle_is_rejected(tmp_path) -> None:  # type: ignore[no-untyped-def]
    a: list = []
    a.append(a)
    with pytest.raises(UnsupportedValue, match="cycle"):
        cloudckpt.save({"a": a}, tmp_path / "c")


def test_existing_checkpoint_needs_overwrite(stores: StoreFactory) -> None:
    uri = stores.uri()
    opts = stores.options
    cloudckpt.save({"v": torch.zeros(3)}, uri, storage_options=opts)
    with pytest.raises(AlreadyExists, match="overwrite=True"):
        cloudckpt.save({"v": torch.ones(3)}, uri, storage_options=opts)
    assert_same({"v": torch.zeros(3)}, cloudckpt.load(uri, storage_options=opts))
    from cloudckpt.engine.commit import sweep_superseded
    from cloudckpt.format.keys import DATA_PREFIX
    from cloudckpt.storage import open_store

    st = open_store(uri, storage_options=opts)
    old = set(cloudckpt.inspect(st).objects)
    cloudckpt.save({"v": torch.ones(3)}, uri, storage_options=opts, overwrite=True)
    assert_same({"v": torch.ones(3)}, cloudckpt.load(uri, storage_options=opts))
    new = set(cloudckpt.inspect(st).objects)
    # the replaced save's data outlives the overwrite (readers in flight), marked superseded
    assert {o.key for o in st.list(DATA_PREFIX)} == old | new
    assert sweep_superseded(st, grace=3600.0, now=time.time()) == 0
    # ... and goes once the grace period has passed: exactly the new manifest's objects remain
    assert sweep_superseded(st, grace=3600.0, now=time.time() + 7200) == len(old) + 1
    assert {o.key for o in st.list(DATA_PREFIX)} == new
    assert_same({"v": torch.ones(3)}, cloudckpt.load(uri, storage_options=opts))


def test_bad_arguments(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument):
        cloudckpt.save({}, tmp_path / "c", compression="lz4")
    with pytest.raises(InvalidArgument):
        cloudckpt.save({}, tmp_path / "c", chunk_size=0)
    with pytest.raises(InvalidArgument):
        cloudckpt.save({}, tmp_path / "c", metadata={"x": object()})


def test_inspect_reports_without_reading_data(tmp_path) -> None:  # type: ignore[no-untyped-def]
    info = cloudckpt.save({"w": torch.randn(1000)}, tmp_path / "c", metadata={"step": 5})
    m = cloudckpt.inspect(tmp_path / "c")
    assert m.metadata == {"step": 5}
    assert m.raw_bytes == info.raw_bytes == 4000
    assert m.stored_bytes == info.stored_bytes
    assert m.tensors[0].path == "state['w']" and m.tensors[0].shape == (1000,)
