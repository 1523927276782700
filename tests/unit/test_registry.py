"""Extension points: a toy backend and a toy codec registered by a test work end to end, by
function and by entry point."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import fsspec
import numpy as np
import pytest
import torch

import cloudckpt
from cloudckpt.errors import CorruptCheckpoint, InvalidArgument, InvalidURI
from cloudckpt.format import codecs as codecs_mod
from cloudckpt.format.codecs import get_codec, register_codec
from cloudckpt.storage import BackendSpec, open_store, register_backend
from cloudckpt.storage import registry as registry_mod
from cloudckpt.storage.backends.memory import MemoryBackend
from tests.helpers import assert_same


class ToyBackend(MemoryBackend):
    """Objects in fsspec's memory filesystem under a per-bucket root, addressed as toy://."""

    protocol = "toy"
    seen: list[str] = []

    def make_fs(self, options: Mapping[str, Any], bucket: str) -> Any:
        self.seen.append(bucket)
        return fsspec.filesystem("memory")


class XorCodec:
    """Stores bytes XOR 0x5A: a codec nobody would use, but every byte changes."""

    def __init__(self, name: str) -> None:
        self.name = name

    def encode(self, raw: memoryview, itemsize: int) -> bytes:
        return (np.frombuffer(raw, dtype=np.uint8) ^ 0x5A).tobytes()

    def decode(self, stored: bytes | memoryview, raw_size: int, itemsize: int) -> bytes:
        if len(stored) != raw_size:
            raise CorruptCheckpoint("xor chunk has the wrong size")
        return (np.frombuffer(stored, dtype=np.uint8) ^ 0x5A).tobytes()

    def decode_into(self, stored: bytes | memoryview, out: np.ndarray, itemsize: int) -> None:
        out[:] = np.frombuffer(self.decode(stored, out.size, itemsize), dtype=np.uint8)


def _state() -> dict:
    return {"w": torch.randn(1000, generator=torch.Generator().manual_seed(0)), "n": 3}


def test_registered_backend_serves_its_scheme() -> None:
    scheme = f"toy{uuid.uuid4().hex[:6]}"
    backend = ToyBackend()
    with pytest.raises(InvalidURI):
        open_store(f"{scheme}://bucket/run")
    register_backend(scheme, backend, schemes=(scheme,))
    uri = f"{scheme}://bucket-{uuid.uuid4().hex[:6]}/run"
    cloudckpt.save(_state(), uri)
    assert_same(_state(), cloudckpt.load(uri))
    assert backend.seen, "the toy backend built the filesystem"
    with pytest.raises(InvalidArgument):  # a protocol is not silently rebound
        register_backend(scheme, ToyBackend(), schemes=(scheme,))


def test_registered_codec_roundtrips_and_is_recorded() -> None:
    name = f"xor-{uuid.uuid4().hex[:6]}"
    uri = f"memory://codec-{uuid.uuid4().hex[:8]}/c"
    with pytest.raises(InvalidArgument):
        cloudckpt.save(_state(), uri, compression=name)
    register_codec(XorCodec(name))
    cloudckpt.save(_state(), uri, compression=name)
    assert {c.codec for c in cloudckpt.inspect(uri).chunks} == {name}
    assert_same(_state(), cloudckpt.load(uri))
    with pytest.raises(InvalidArgument):  # names are permanent
        register_codec(XorCodec(name))


def test_entry_points_are_loaded_for_unknown_names(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    scheme, cname = f"ep{uuid.uuid4().hex[:6]}", f"ep-{uuid.uuid4().hex[:6]}"
    spec = BackendSpec(scheme, ToyBackend(), (scheme,))

    class EP:
        def __init__(self, name: str, obj: Any) -> None:
            self.name, self._obj = name, obj

        def load(self) -> Any:
            return self._obj

    groups = {registry_mod.ENTRY_POINT_GROUP: [EP(scheme, spec)],
              codecs_mod.CODEC_ENTRY_POINT_GROUP: [EP(cname, XorCodec(cname))]}
    monkeypatch.setattr(registry_mod, "entry_points", lambda group: groups.get(group, []))
    monkeypatch.setattr(codecs_mod, "entry_points", lambda group: groups.get(group, []))
    monkeypatch.setattr(registry_mod._REGISTRY, "_entry_points_loaded", False)
    monkeypatch.setattr(codecs_mod._REGISTRY, "_entry_points_loaded", False)
    uri = f"{scheme}://b-{uuid.uuid4().hex[:6]}/x"
    cloudckpt.save(_state(), uri, compression=cname)
    assert_same(_state(), cloudckpt.load(uri))
    assert get_codec(cname).name == cname
