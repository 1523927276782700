"""The fast write paths (issue 14): in-place encoding, the writer's reused body buffers, and
local objects written through one exclusive upload instead of a joined, retried put."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cloudckpt
from cloudckpt.format.chunking import resolve_compression
from cloudckpt.format.codecs import BGZstdCodec, NoneCodec, register_codec
from cloudckpt.storage import open_store
from cloudckpt.storage.fsspec_store import FsspecStore


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("n", [1, 3, 1000, 70_000])
def test_bg_encode_into_is_byte_identical_to_encode(dtype: torch.dtype, n: int) -> None:
    g = torch.Generator().manual_seed(n)
    t = (torch.randn(n, generator=g, dtype=torch.float64) * 0.02).to(dtype)
    raw = t.view(torch.uint8).numpy().data
    k = t.element_size()
    out = np.full(len(raw) + 4 + 9 * k + 7, 0xAB, dtype=np.uint8)
    size = BGZstdCodec().encode_into(raw, k, out)
    assert size is not None
    assert bytes(out[:size]) == bytes(BGZstdCodec().encode(raw, k))
    assert (out[len(raw) + 4 + 9 * k:] == 0xAB).all()  # nothing written past the bound
    back = np.empty(len(raw), np.uint8)
    BGZstdCodec().decode_into(out[:size].data, back, k)
    assert bytes(back) == bytes(raw)


def test_encode_into_refuses_what_may_not_fit() -> None:
    raw = np.arange(64, dtype=np.float32).view(np.uint8).data
    assert BGZstdCodec().encode_into(raw, 4, np.empty(len(raw), np.uint8)) is None
    assert BGZstdCodec().encode_into(raw, 1, np.empty(1024, np.uint8)) is None  # single plane
    assert NoneCodec().encode_into(raw, 1, np.empty(10, np.uint8)) is None


class _Expanding:
    """A plug-in codec whose output is four times its input (no ``encode_into``)."""

    name = "test-expand-x4"

    def encode(self, raw: memoryview, itemsize: int) -> bytes:
        return bytes(raw) * 4

    def decode(self, stored: bytes | memoryview, raw_size: int, itemsize: int) -> bytes:
        return bytes(stored[:raw_size])

    def decode_into(self, stored: bytes | memoryview, out: np.ndarray, itemsize: int) -> None:
        out[:] = np.frombuffer(stored[:out.size], np.uint8)


def test_codec_larger_than_the_body_buffer_grows_it(tmp_path) -> None:
    register_codec(_Expanding())
    state = {f"t{i}": torch.arange(50_000 + i, dtype=torch.int32) for i in range(5)}
    info = cloudckpt.save(state, tmp_path / "c", compression="test-expand-x4",
                          chunk_size=64 * 1024, object_size=256 * 1024)
    assert info.stored_bytes == 4 * info.raw_bytes
    out = cloudckpt.load(tmp_path / "c")
    assert all(torch.equal(out[k], v) for k, v in state.items())


def test_objects_of_one_save_never_share_a_buffer(tmp_path) -> None:
    """Every object, written from a worker's reused buffer, holds its own chunks (several
    objects per worker, every codec path: bg planes, zstd, raw)."""
    g = torch.Generator().manual_seed(0)
    state = {"w": torch.randn(300_000, generator=g) * 0.02,
             "h": (torch.randn(200_000, generator=g) * 0.02).to(torch.bfloat16),
             "i": torch.randint(0, 7, (150_000,), generator=g),
             "small": [torch.tensor([float(i)]) for i in range(40)]}
    for compression in ("auto", "bg-zstd", "none", "zstd"):
        uri = tmp_path / compression
        info = cloudckpt.save(state, uri, compression=compression, chunk_size=64 * 1024,
                              object_size=128 * 1024, max_workers=3)
        assert info.objects > 6
        out = cloudckpt.load(uri)  # verify=True: every chunk's checksums are checked
        assert torch.equal(out["w"], state["w"]) and torch.equal(out["h"], state["h"])
        assert torch.equal(out["i"], state["i"])
        assert all(torch.equal(a, b) for a, b in zip(out["small"], state["small"], strict=True))


def test_local_objects_are_written_by_one_upload_not_a_put(tmp_path, monkeypatch) -> None:
    store = open_store(str(tmp_path / "c"))
    calls: list[str] = []
    real_put, real_start = store.put, store.start_upload

    def put(key: str, data, **kw):  # type: ignore[no-untyped-def]
        calls.append(f"put {key.split('/')[0]}")
        return real_put(key, data, **kw)

    def start_upload(key: str, **kw):  # type: ignore[no-untyped-def]
        calls.append(f"upload {key.split('/')[0]}")
        return real_start(key, **kw)

    monkeypatch.setattr(store, "put", put)
    monkeypatch.setattr(store, "start_upload", start_upload)
    w = torch.randn(100_000)
    cloudckpt.save({"w": w}, store, chunk_size=64 * 1024, object_size=128 * 1024)
    assert "upload data" in calls and "put data" not in calls
    assert torch.equal(cloudckpt.load(store)["w"], w)


def test_auto_compression_is_chosen_per_store(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``"auto"``: raw bytes on local disk (faster than encoding there), byte-grouped zstd on
    object stores (memory:// stands in for them here); an explicit choice always wins; deltas
    need the float codec everywhere."""
    assert resolve_compression("auto", "file") == "none"
    assert resolve_compression("auto", "file", delta=True) == "bg-zstd"
    for proto in ("s3", "gcs", "az", "memory"):
        assert resolve_compression("auto", proto) == "bg-zstd"
    assert resolve_compression("zstd", "file") == "zstd"
    state = {"w": torch.randn(100_000) * 0.02, "i": torch.arange(50_000)}
    for uri, expect in ((str(tmp_path / "a"), {"none"}),
                        ("memory://perf-auto/a", {"bg-zstd", "zstd"}),
                        (str(tmp_path / "b"), {"bg-zstd", "zstd"})):
        info = cloudckpt.save(state, uri, compression="bg-zstd" if uri.endswith("b") else "auto")
        assert {c.codec for c in cloudckpt.inspect(uri).chunks} == expect
        assert (info.stored_bytes < info.raw_bytes) == (expect != {"none"})
        out = cloudckpt.load(uri)
        assert torch.equal(out["w"], state["w"]) and torch.equal(out["i"], state["i"])


def test_local_loads_read_into_reused_buffers(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A local load reads each run into its worker's buffer (``get_range_into``), never into
    new bytes per object (``get_range``), for every codec."""
    state = {"w": torch.randn(300_000) * 0.02, "h": torch.randn(70_000).to(torch.bfloat16)}
    for compression in ("auto", "bg-zstd"):
        uri = str(tmp_path / compression)
        cloudckpt.save(state, uri, compression=compression, chunk_size=64 * 1024,
                       object_size=128 * 1024)

        def no_new_bytes(self, key: str, start: int, end: int,  # type: ignore[no-untyped-def]
                         real=FsspecStore.get_range):
            assert not key.startswith("data/"), "a local load read an object into new bytes"
            return real(self, key, start, end)  # the manifest: one read of a small object

        with monkeypatch.context() as mp:
            mp.setattr(FsspecStore, "get_range", no_new_bytes)
            out = cloudckpt.load(uri, max_workers=2)
        assert torch.equal(out["w"], state["w"]) and torch.equal(out["h"], state["h"])
