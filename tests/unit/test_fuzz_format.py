"""Fuzzing what a bucket can hand us: manifests, codec frames and chunk bytes. Every outcome is
a bit-exact load or one of our own errors (CloudckptError), never another exception, and
memory stays bounded. CI runs the default profile; `pytest --hypothesis-profile=long` the long
one."""

from __future__ import annotations

import contextlib
import hashlib
import json
import resource
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import cloudckpt
from cloudckpt.errors import CloudckptError
from cloudckpt.format.codecs import get_codec
from cloudckpt.format.keys import MANIFEST_KEY
from cloudckpt.format.manifest import decode_manifest
from cloudckpt.storage import open_store
from tests.helpers import assert_same

STATE = {"w": torch.randn(300, generator=torch.Generator().manual_seed(1)),
         "h": torch.arange(40, dtype=torch.int16), "b": torch.randn(8).bfloat16(),
         "meta": {"step": 4, "names": ["a", "b"]}}
_BASE: dict[str, bytes] = {}
RSS_SLACK_MIB = 512


def _base() -> bytes:
    """A valid checkpoint (memory store) whose manifest the tests mutate."""
    if not _BASE:
        cloudckpt.save(STATE, "memory://fuzz-base/c")
        _BASE["m"] = open_store("memory://fuzz-base/c").get(MANIFEST_KEY)
    return _BASE["m"]


def _rss_mib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=5),
    max_leaves=20)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _set(node: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    node[path[0]] = _set(node[path[0]], path[1:], value)
    return node


def _with_body(body: bytes) -> bytes:
    head = {"format": "cloudckpt-manifest", "format_version": 1, "body_length": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest()}
    return json.dumps(head).encode() + b"\n" + body


def _load_or_our_error(manifest: bytes, uri: str) -> None:
    store = open_store(uri)
    base = open_store("memory://fuzz-base/c")
    for o in base.list():
        if o.key != MANIFEST_KEY:
            store.put(o.key, base.get(o.key))
    store.put(MANIFEST_KEY, manifest)
    before = _rss_mib()
    try:  # any value (a mutated tree is still a tree) or our error; nothing else escapes
        cloudckpt.load(uri, map_location=None)
    except CloudckptError:
        pass
    finally:
        store.delete_many([o.key for o in store.list()])
    assert _rss_mib() - before < RSS_SLACK_MIB


@given(data=st.data())
def test_mutated_manifest_records_load_or_raise_our_error(data: st.DataObject) -> None:
    d = json.loads(_base().partition(b"\n")[2])
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(d)[1:]))
        d = _set(d, path, data.draw(json_values))
    _load_or_our_error(_with_body(json.dumps(d).encode()), "memory://fuzz-m/c")


@given(body=st.binary(max_size=400), head=st.binary(max_size=200))
def test_random_manifest_bytes_raise_our_error(body: bytes, head: bytes) -> None:
    for raw in (head + b"\n" + body, _with_body(body)):
        with pytest.raises(CloudckptError):
            decode_manifest(raw)


@given(codec=st.sampled_from(["zstd", "bg-zstd", "none"]), stored=st.binary(max_size=300),
       raw_size=st.integers(0, 4096), itemsize=st.sampled_from([1, 2, 4, 8]))
def test_random_codec_frames_decode_exactly_or_raise_our_error(codec: str, stored: bytes,
                                                                raw_size: int,
                                                                itemsize: int) -> None:
    c = get_codec(codec)
    try:
        out = c.decode(stored, raw_size, itemsize)
    except CloudckptError:
        pass
    else:
        assert len(out) == raw_size
    buf = np.empty(raw_size, dtype=np.uint8)
    with contextlib.suppress(CloudckptError):
        c.decode_into(stored, buf, itemsize)


@given(data=st.data())
def test_flipped_chunk_bytes_load_bit_exact_or_raise_our_error(data: st.DataObject) -> None:
    _base()
    uri = "memory://fuzz-c/c"
    src = open_store("memory://fuzz-base/c")
    store = open_store(uri)
    for o in src.list():
        store.put(o.key, src.get(o.key))
    key = data.draw(st.sampled_from([o.key for o in store.list() if o.key != MANIFEST_KEY]))
    blob = bytearray(store.get(key))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] ^= data.draw(st.integers(1, 255))
    store.put(key, bytes(blob))
    verify = data.draw(st.booleans())
    try:
        out = cloudckpt.load(uri, verify=verify)
    except CloudckptError:
        return
    finally:
        store.delete_many([o.key for o in store.list()])
    if verify:  # with checksums on, anything that loads is the saved state, bit for bit
        assert_same(STATE, out)
