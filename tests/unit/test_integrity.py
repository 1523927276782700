"""Corruption is detected; crafted checkpoints execute nothing and read nothing outside."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import cloudckpt
from cloudckpt.errors import CorruptCheckpoint
from cloudckpt.format.keys import MANIFEST_KEY
from cloudckpt.format.manifest import decode_manifest, encode_manifest
from cloudckpt.storage import open_store
from tests.helpers import assert_same


def _small_state() -> dict:
    g = torch.Generator().manual_seed(3)
    return {"w": torch.randn(64, generator=g), "h": torch.randn(16, generator=g).half(),
            "i": torch.arange(20), "meta": {"step": 4}}


@pytest.mark.parametrize("compression", ["auto", "none"])
def test_every_single_byte_change_to_data_is_detected(compression: str) -> None:
    uri = f"memory://flip-data-{compression}/c"
    cloudckpt.save(_small_state(), uri, compression=compression)
    store = open_store(uri)
    keys = cloudckpt.inspect(uri).objects
    for key in keys:
        original = store.get(key)
        for pos in range(len(original)):
            for delta in (0x01, 0x80):
                bad = bytearray(original)
                bad[pos] ^= delta
                store.put(key, bytes(bad))
                with pytest.raises(CorruptCheckpoint) as ei:
                    cloudckpt.load(uri)
                assert key in str(ei.value)
        store.put(key, original)
    assert_same(_small_state(), cloudckpt.load(uri))


def test_every_single_byte_change_to_manifest_is_detected() -> None:
    uri = "memory://flip-manifest/c"
    cloudckpt.save(_small_state(), uri)
    raw = open_store(uri).get(MANIFEST_KEY)
    for pos in range(len(raw)):
        bad = bytearray(raw)
        bad[pos] ^= 0x01
        with pytest.raises(CorruptCheckpoint):
            decode_manifest(bytes(bad))


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_random_corruption_of_larger_checkpoint(data: st.DataObject) -> None:
    uri = "memory://flip-random/c"
    store = open_store(uri)
    if not store.exists(MANIFEST_KEY):
        cloudckpt.save({"w": torch.randn(200_000), "b": torch.randn(100).bfloat16()}, uri,
                       chunk_size=128 * 1024)
    key = data.draw(st.sampled_from(cloudckpt.inspect(uri).objects))
    original = store.get(key)
    pos = data.draw(st.integers(0, len(original) - 1))
    delta = data.draw(st.integers(1, 255))
    bad = bytearray(original)
    bad[pos] ^= delta
    store.put(key, bytes(bad))
    try:
        with pytest.raises(CorruptCheckpoint):
            cloudckpt.load(uri)
    finally:
        store.put(key, original)


def test_truncated_and_missing_objects(tmp_path) -> None:  # type: ignore[no-untyped-def]
    uri = str(tmp_path / "c")
    cloudckpt.save(_small_state(), uri)
    store = open_store(uri)
    key = cloudckpt.inspect(uri).objects[0]
    data = store.get(key)
    store.put(key, data[:-3])
    with pytest.raises(CorruptCheckpoint, match="truncated"):
        cloudckpt.load(uri)
    with pytest.raises(CorruptCheckpoint, match="truncated"):
        cloudckpt.load(uri, verify=False)  # sizes are checked even without checksums
    store.put(key, data + b"x")
    with pytest.raises(CorruptCheckpoint):
        cloudckpt.load(uri)
    store.delete(key)
    with pytest.raises(FileNotFoundError, match=key.split("/")[-1]):
        cloudckpt.load(uri)


class _Boom:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("touch /tmp/cloudckpt-pwned-marker",))


def _forge(uri: str, mutate) -> None:  # type: ignore[no-untyped-def]
    """Rewrite the manifest of ``uri`` after ``mutate(body_dict)``, with a valid checksum."""
    store = open_store(uri)
    _head, _, body = store.get(MANIFEST_KEY).partition(b"\n")
    d = json.loads(body)
    mutate(d)
    m = decode_manifest(store.get(MANIFEST_KEY))
    fresh = encode_manifest(m)
    new_body = json.dumps(d, separators=(",", ":")).encode()
    import hashlib

    header = json.dumps({"format": "cloudckpt-manifest", "format_version": 1,
                         "body_length": len(new_body),
                         "body_sha256": hashlib.sha256(new_body).hexdigest()},
                        separators=(",", ":")).encode()
    assert fresh.startswith(b"{")
    store.put(MANIFEST_KEY, header + b"\n" + new_body)


def test_pickle_payloads_never_execute(tmp_path) -> None:  # type: ignore[no-untyped-def]
    marker = "/tmp/cloudckpt-pwned-marker"
    if os.path.exists(marker):
        os.unlink(marker)
    payload = pickle.dumps(_Boom())
    uri = str(tmp_path / "c")
    # 1) a pickle (or torch.save file) where the manifest should be
    store = open_store(uri)
    store.put(MANIFEST_KEY, payload)
    with pytest.raises(CorruptCheckpoint):
        cloudckpt.load(uri)
    torch.save({"x": _Boom()}, tmp_path / "ts.pt")
    store.put(MANIFEST_KEY, (tmp_path / "ts.pt").read_bytes())
    with pytest.raises(CorruptCheckpoint):
        cloudckpt.load(uri)
    # 2) a pickle stored as tensor data with valid checksums comes back as plain bytes
    uri2 = str(tmp_path / "c2")
    raw = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    cloudckpt.save({"blob": raw}, uri2, compression="none")
    out = cloudckpt.load(uri2)
    assert bytes(out["blob"].numpy()) == payload
    # 3) a tree node claiming to be a pickle is refused
    _forge(uri2, lambda d: d.update(tree={"t": "pickle", "v": payload.hex()}))
    with pytest.raises(CorruptCheckpoint, match="unknown tag"):
        cloudckpt.load(uri2)
    assert not os.path.exists(marker)


@pytest.mark.parametrize("name", ["../../outside.bin", "/etc/passwd", "data/../../x",
                                  "@../x/data/1.bin", "@./x", "a\\..\\b"])
def test_object_names_cannot_escape_the_checkpoint(tmp_path, name: str) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "outside.bin").write_bytes(b"secret" * 100)
    uri = str(tmp_path / "a" / "b" / "c")
    cloudckpt.save({"w": torch.arange(10)}, uri)

    def point_outside(d: dict) -> None:
        d["chunks"][0][0] = name

    _forge(uri, point_outside)
    with pytest.raises(CorruptCheckpoint, match=r"unsafe object name|sibling"):
        cloudckpt.load(uri)


def test_unknown_versions_fields_and_codecs_are_rejected(tmp_path) -> None:  # type: ignore[no-untyped-def]
    uri = str(tmp_path / "c")
    cloudckpt.save({"w": torch.arange(10)}, uri)
    good = open_store(uri).get(MANIFEST_KEY)
    head, _, body = good.partition(b"\n")
    newer = head.replace(b'"format_version":2', b'"format_version":3')
    with pytest.raises(CorruptCheckpoint, match="newer"):
        decode_manifest(newer + b"\n" + body)
    _forge(uri, lambda d: d.update(extra_field=1))
    with pytest.raises(CorruptCheckpoint, match="unknown fields"):
        cloudckpt.load(uri)
    cloudckpt.save({"w": torch.arange(10)}, uri, overwrite=True)
    _forge(uri, lambda d: d["chunks"][0].__setitem__(4, "lz77"))
    with pytest.raises(CorruptCheckpoint, match="unknown codec"):
        cloudckpt.load(uri)


def test_chunks_may_reference_a_sibling_checkpoint(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The hook for incremental saves: a manifest may point at objects of a sibling."""
    state = {"w": torch.randn(5000), "step": 1}
    cloudckpt.save(state, tmp_path / "run" / "a")

    a_chunks = cloudckpt.inspect(tmp_path / "run" / "a").chunks

    def borrow(d: dict) -> None:  # same state, same chunking: point b at a's objects
        for c, rec in zip(d["chunks"], a_chunks, strict=True):
            c[0] = f"@a/{rec.object}"

    cloudckpt.save(state, tmp_path / "run" / "b")
    _forge(str(tmp_path / "run" / "b"), borrow)
    import shutil

    shutil.rmtree(tmp_path / "run" / "b" / "data")  # b owns no data: it reads a's objects
    out = cloudckpt.load(tmp_path / "run" / "b")
    assert torch.equal(out["w"], state["w"]) and out["step"] == 1
