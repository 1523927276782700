"""A hostile bucket: every crafted input raises our own error, fast, with bounded memory; nothing
is unpickled, nothing outside the checkpoint is read or deleted."""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import time
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
import xxhash

import cloudckpt
import cloudckpt.dcp as cdcp
from cloudckpt.engine import commit
from cloudckpt.engine.reader import read_leaves
from cloudckpt.errors import CorruptCheckpoint, UnsupportedValue
from cloudckpt.format.codecs import get_codec
from cloudckpt.format.keys import DATA_PREFIX, MANIFEST_KEY
from cloudckpt.storage import open_store
from tests.unit.test_integrity import _Boom, _forge

MARKER = "/tmp/cloudckpt-pwned-marker"


def _bomb_frame(declared: int, payload: bytes = b"abc") -> bytes:
    """A zstd frame whose header declares ``declared`` content bytes (single segment, one raw
    block holding ``payload``)."""
    return (struct.pack("<I", 0xFD2FB528) + bytes([0xE0]) + declared.to_bytes(8, "little")
            + (1 | (len(payload) << 3)).to_bytes(3, "little") + payload)


@pytest.mark.parametrize("codec", ["zstd", "bg-zstd"])
def test_decompression_bomb_is_refused_before_allocating(codec: str) -> None:
    frame = _bomb_frame(1 << 40)
    stored = frame if codec == "zstd" else b"BG\x01\x01" + struct.pack("<BQ", 1, len(frame)) + frame
    t0 = time.perf_counter()
    with pytest.raises(CorruptCheckpoint, match="declares"):
        get_codec(codec).decode(stored, 16, 1)
    with pytest.raises(CorruptCheckpoint, match="declares"):
        import numpy as np

        get_codec(codec).decode_into(stored, np.empty(16, dtype=np.uint8), 1)
    assert time.perf_counter() - t0 < 1.0


def _replace_chunk(uri: str, data: bytes) -> None:
    """Make the checkpoint's only data object ``data`` with checksums that match it."""
    store = open_store(uri)
    key = cloudckpt.inspect(uri).objects[0]
    store.put(key, data)

    def mutate(d: dict) -> None:
        c = d["chunks"][0]
        c[1], c[2], c[6] = 0, len(data), xxhash.xxh3_64_hexdigest(data)
        d["totals"]["stored_bytes"] = len(data)

    _forge(uri, mutate)


def test_bomb_with_valid_checksums_fails_load_with_our_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    uri = str(tmp_path / "c")
    cloudckpt.save({"w": torch.zeros(16, dtype=torch.uint8)}, uri, compression="zstd")
    _replace_chunk(uri, _bomb_frame(1 << 40))
    with pytest.raises(CorruptCheckpoint, match="declares"):
        cloudckpt.load(uri)


def test_shape_that_overflows_its_bytes_is_refused_before_allocating(tmp_path) -> None:  # type: ignore[no-untyped-def]
    uri = str(tmp_path / "c")
    cloudckpt.save({"w": torch.zeros(4)}, uri)
    _forge(uri, lambda d: d["tensors"][0].__setitem__(3, [1 << 40, 1 << 20]))
    with pytest.raises(CorruptCheckpoint, match="do not fit"):
        cloudckpt.load(uri)


@pytest.mark.parametrize(("field", "value"), [(5, "cuda:x"), (5, "../../etc"), (5, "c" * 400),
                                              (2, "float32; import os"), (2, "")])
def test_bad_device_or_dtype_strings(tmp_path, field: int, value: str) -> None:  # type: ignore[no-untyped-def]
    uri = str(tmp_path / "c")
    cloudckpt.save({"w": torch.zeros(4)}, uri)
    _forge(uri, lambda d: d["tensors"][0].__setitem__(field, value))
    with pytest.raises(CorruptCheckpoint):
        cloudckpt.load(uri, map_location=None)


def test_deeply_nested_manifest_body_is_our_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    body = b"[" * 200_000 + b"]" * 200_000
    header = json.dumps({"format": "cloudckpt-manifest", "format_version": 1,
                         "body_length": len(body), "body_sha256": hashlib.sha256(body).hexdigest()})
    uri = str(tmp_path / "c")
    open_store(uri).put(MANIFEST_KEY, header.encode() + b"\n" + body)
    with pytest.raises(CorruptCheckpoint):
        cloudckpt.load(uri)


def test_manifest_read_is_capped(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    uri = str(tmp_path / "c")
    cloudckpt.save({"w": torch.zeros(4)}, uri)
    monkeypatch.setattr(commit, "MAX_MANIFEST_BYTES", 64)
    with pytest.raises(CorruptCheckpoint, match="larger than"):
        cloudckpt.load(uri)


class _Counting:
    """Counts the bytes a store hands back."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.bytes = inner, 0

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)

    def get(self, key: str) -> bytes:
        data: bytes = self.inner.get(key)
        self.bytes += len(data)
        return data

    def get_range(self, key: str, start: int, end: int) -> bytes:
        data: bytes = self.inner.get_range(key, start, end)
        self.bytes += len(data)
        return data


def test_object_longer_than_recorded_is_not_read_whole(tmp_path) -> None:  # type: ignore[no-untyped-def]
    uri = str(tmp_path / "c")
    cloudckpt.save({"w": torch.randn(1000)}, uri)
    store = open_store(uri)
    key = cloudckpt.inspect(uri).objects[0]
    store.put(key, store.get(key) + b"\0" * (32 << 20))
    counting = _Counting(store)
    with pytest.raises(CorruptCheckpoint):
        cloudckpt.load(counting)  # type: ignore[arg-type]
    assert counting.bytes < 1 << 20  # the manifest and the declared bytes (+1), not 32 MiB


def test_local_store_refuses_symlinks_and_fifos(tmp_path) -> None:  # type: ignore[no-untyped-def]
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"s" * 100)
    uri = tmp_path / "run" / "c"
    cloudckpt.save({"w": torch.randn(10)}, str(uri))
    key = cloudckpt.inspect(str(uri)).objects[0]
    obj = uri / key
    obj.unlink()
    obj.symlink_to(secret)
    with pytest.raises(CorruptCheckpoint, match="symlink"):
        cloudckpt.load(str(uri))
    # a symlinked directory inside the store: nothing below it is read or deleted
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.bin").write_bytes(b"k")
    os.symlink(outside, uri / DATA_PREFIX / "evil")
    store = open_store(str(uri))
    with pytest.raises(CorruptCheckpoint, match="symlink"):
        store.delete(f"{DATA_PREFIX}/evil/keep.bin")
    assert (outside / "keep.bin").exists()
    # a FIFO where an object should be: refused at once instead of blocking forever
    obj.unlink()
    os.mkfifo(obj)
    t0 = time.perf_counter()
    with pytest.raises(CorruptCheckpoint, match="special file"):
        cloudckpt.load(str(uri))
    assert time.perf_counter() - t0 < 5


def test_local_reads_refuse_a_link_or_fifo_swapped_in_after_the_check(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The path check runs before the open: an object swapped for a symlink or a FIFO in
    between is still never followed, and a FIFO never blocks the read."""
    from cloudckpt.storage.backends.local import LocalBackend

    (tmp_path / "secret.bin").write_bytes(b"s" * 100)
    out = memoryview(bytearray(10))
    (tmp_path / "link").symlink_to(tmp_path / "secret.bin")
    with pytest.raises(OSError):  # ELOOP: the link is not followed
        LocalBackend().read_into(str(tmp_path / "link"), 0, out)
    os.mkfifo(tmp_path / "fifo")
    t0 = time.perf_counter()
    with pytest.raises(CorruptCheckpoint, match="not a regular file"):
        LocalBackend().read_into(str(tmp_path / "fifo"), 0, out)
    assert time.perf_counter() - t0 < 5 and bytes(out) == bytes(10)


def test_overwrite_keeps_the_replaced_data_for_readers_in_flight(tmp_path) -> None:  # type: ignore[no-untyped-def]
    uri = str(tmp_path / "c")
    cloudckpt.save({"w": torch.zeros(1000)}, uri)
    store = open_store(uri)
    old = cloudckpt.inspect(uri)  # a reader has read the old manifest ...
    cloudckpt.save({"w": torch.ones(1000)}, uri, overwrite=True)  # ... a writer replaces it
    out = read_leaves(old, [0], store)  # the reader still gets the old version, not NotFound
    assert torch.equal(out[0], torch.zeros(1000))
    assert torch.equal(cloudckpt.load(uri)["w"], torch.ones(1000))


def test_overwrite_cleanup_never_touches_manifests_or_other_prefixes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    uri = str(tmp_path / "c")
    cloudckpt.save({"w": torch.zeros(10)}, uri)
    store = open_store(uri)
    store.put("keep/me.bin", b"x")
    # a hostile old manifest naming the manifest, another prefix and a traversal as its save
    for bad in ["keep", "manifest.json", ".hidden"]:
        store.put(f"superseded/{bad}", b"{}")
    cloudckpt.save({"w": torch.ones(10)}, uri, overwrite=True)
    commit.sweep_superseded(store, 0.0, time.time() + 10)
    assert store.get("keep/me.bin") == b"x"
    assert torch.equal(cloudckpt.load(uri)["w"], torch.ones(10))


# -- DCP: non-tensor values are never unpickled --------------------------------------------
def test_dcp_non_tensor_values_roundtrip_without_pickle(tmp_path) -> None:  # type: ignore[no-untyped-def]
    warnings.simplefilter("ignore")
    uri = str(tmp_path / "d")
    state = {"w": torch.arange(6.0), "meta": {"epoch": 3, "name": "x", "ratio": 0.5}}
    dcp.save(state, storage_writer=cdcp.Writer(uri))
    store = open_store(uri)
    stored = b"".join(store.get(k) for k in cloudckpt.inspect(uri).objects)
    assert b"\x80\x02" not in stored and b"PK\x03\x04" not in stored  # no pickle, no torch.save zip
    out = {"w": torch.zeros(6), "meta": {"epoch": 0, "name": "", "ratio": 0.0}}
    dcp.load(out, storage_reader=cdcp.Reader(uri))
    assert torch.equal(out["w"], state["w"]) and out["meta"] == state["meta"]


def test_dcp_pickled_bytes_item_is_refused_and_never_runs(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    warnings.simplefilter("ignore")
    if os.path.exists(MARKER):
        os.unlink(MARKER)
    import numpy as np

    from cloudckpt.engine import dcp as engine_dcp

    def pickled(item, planner):  # type: ignore[no-untyped-def]  # what DCP itself would store
        buf = io.BytesIO()
        torch.save(_Boom(), buf)
        return np.frombuffer(buf.getvalue(), dtype=np.uint8).copy()

    monkeypatch.setattr(engine_dcp, "_encode_value", pickled)
    uri = str(tmp_path / "d")
    dcp.save({"w": torch.arange(3.0), "meta": {"a": 1}}, storage_writer=cdcp.Writer(uri))
    monkeypatch.undo()
    from torch.distributed.checkpoint.api import CheckpointException

    with pytest.raises((CorruptCheckpoint, CheckpointException), match="refusing to unpickle"):
        dcp.load({"w": torch.zeros(3), "meta": {"a": 0}}, storage_reader=cdcp.Reader(uri))
    assert not os.path.exists(MARKER)


def test_dcp_tensors_inside_non_tensor_values_are_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from cloudckpt.engine.dcp import _encode_value

    class Planner:
        def lookup_object(self, index):  # type: ignore[no-untyped-def]
            return {"t": torch.ones(2)}

    class Item:
        class index:
            fqn = "x"

    with pytest.raises(UnsupportedValue, match="tensors inside"):
        _encode_value(Item, Planner())  # type: ignore[arg-type]


@pytest.mark.emulator  # a whole process: runs with the system layer
def test_a_manifest_dtype_never_imports_a_torch_submodule(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    uri = str(tmp_path / "c")
    cloudckpt.save({"w": torch.zeros(4)}, uri)
    _forge(uri, lambda d: d["tensors"][0].__setitem__(2, "onnx"))
    code = ("import sys, cloudckpt\n"
            f"try:\n    cloudckpt.load({uri!r})\nexcept cloudckpt.CorruptCheckpoint as e:\n"
            "    print('refused', e)\n"
            "print('onnx imported' if 'torch.onnx' in sys.modules else 'clean')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120).stdout
    assert "refused" in out and "clean" in out, out


def test_save_and_load_take_a_type_registry(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import datetime

    from cloudckpt.format.types import TypeCodec, TypeRegistry

    types = TypeRegistry((TypeCodec("timedelta", datetime.timedelta, lambda v: v.total_seconds(),
                                    lambda s: datetime.timedelta(seconds=s)),))
    uri = str(tmp_path / "c")
    state = {"every": datetime.timedelta(minutes=5), "w": torch.ones(2)}
    cloudckpt.save(state, uri, types=types)
    assert cloudckpt.load(uri, types=types)["every"] == datetime.timedelta(minutes=5)
    with pytest.raises(CorruptCheckpoint):  # without the registry, the name means nothing
        cloudckpt.load(uri)
