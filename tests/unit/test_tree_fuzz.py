"""Property tests of the tree encoding (cloudckpt.format.tree): hostile trees fail with
CorruptCheckpoint and nothing else, valid states round-trip bit-exact, nesting is bounded both
ways.

Hypothesis profile: ``HYPOTHESIS_PROFILE`` picks one (default ``ci``, Hypothesis's own
derandomised profile, run here with 200 examples); ``long`` (5,000 examples, about 20 minutes
on 2 cores) is registered below unless a conftest already registered it:
``HYPOTHESIS_PROFILE=long pytest --timeout=0 tests/unit/test_tree_fuzz.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument as HypothesisInvalidArgument

from cloudckpt.errors import CorruptCheckpoint, UnsupportedValue
from cloudckpt.format.tree import MAX_DEPTH, decode_tree, encode_tree, leaf_indices, select
from cloudckpt.format.types import TypeCodec, TypeRegistry

try:
    settings.get_profile("long")
except HypothesisInvalidArgument:
    settings.register_profile("long", max_examples=5_000, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow,
                                                     HealthCheck.data_too_large])
_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
FUZZ = settings(settings.get_profile(_PROFILE), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                max_examples=200 if _PROFILE == "ci" else settings.get_profile(_PROFILE).max_examples)


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


@dataclasses.dataclass
class Box:
    value: Any


def _point(v: Any) -> Point:
    if not (type(v) is list and len(v) == 2 and all(type(x) is int for x in v)):
        raise TypeError("a Point is [x, y]")
    return Point(*v)


def _complex(v: Any) -> complex:
    if not (type(v) is list and len(v) == 2 and all(type(x) is float for x in v)):
        raise TypeError("a complex is [real, imag]")
    return complex(*v)


TYPES = TypeRegistry((
    TypeCodec("test.Point", Point, lambda p: [p.x, p.y], _point),
    TypeCodec("complex", complex, lambda c: [c.real, c.imag], _complex),
    TypeCodec("test.Box", Box, lambda b: b.value, Box),
))
LEAVES = [torch.arange(3), np.ones(2, dtype=np.float32)]


def _leaf(i: int) -> Any:
    return LEAVES[i]  # IndexError past the end, as a leaf table does


# ----------------------------------------------------------------------------------- hostile

#: The tree format's nodes: tag -> fields besides "t" (the spec in cloudckpt.format.tree)
SHAPES = {"dict": ["items"], "odict": ["items", "meta"], "list": ["items"], "tuple": ["items"],
          "size": ["items"], "float": ["v"], "bytes": ["v"], "npscalar": ["dtype", "v"],
          "leaf": ["i"], "ext": ["name", "value"]}
FIELDS = ["t", "items", "meta", "v", "dtype", "i", "name", "value"]
_scalars = (st.none() | st.booleans() | st.integers() | st.integers(-(2**80), 2**80)
            | st.integers(-3, 3) | st.floats() | st.text(max_size=8)
            | st.sampled_from(["nan", "inf", "-inf", "0x7ff8000000000001", "0x3ff0000000000000",
                               "<f4", "|O", "|V8", "<U99999", "<M8[ns]", "|S2", "AAAA", "AA=",
                               "é", "test.Point", "complex", "test.Box", "os.system", "k"]))


def _extend(children: Any) -> Any:
    pairs = st.tuples(children, children).map(list)
    plausible = {  # field values near what the decoder accepts, to get past its first checks
        "items": st.lists(pairs | children, max_size=3), "meta": st.none() | children,
        "v": st.sampled_from(["nan", "-inf", "0x7ff8000000000001", "0x3ff0000000000000", "AAAA",
                              "AA=", "AAAAAAAAAAA=", "", "é", "NaN"]) | children,
        "dtype": st.sampled_from(["<f4", "<f8", "|O", "|V8", "<U99999", "<M8[ns]", "|S2", "<U1",
                                  "<M8[parsec]", "f4"]) | children,
        "i": st.integers(-2, 4) | children, "value": children,
        "name": st.sampled_from([c.name for c in TYPES] + ["os.system"]) | children}
    shaped = st.sampled_from(sorted(SHAPES)).flatmap(lambda tag: st.fixed_dictionaries(
        {"t": st.just(tag), **{f: plausible[f] for f in SHAPES[tag]}}))
    junk = st.fixed_dictionaries({"t": st.sampled_from([*SHAPES, "", "DICT"]) | children},
                                 optional={f: children for f in FIELDS[1:]})
    return (shaped | shaped | shaped | junk | st.lists(children, max_size=4) | pairs
            | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=3), children, max_size=4))


json_trees = st.recursive(_scalars, _extend, max_leaves=40)


def _decode_or_corrupt(tree: Any) -> None:
    with contextlib.suppress(CorruptCheckpoint):
        decode_tree(tree, _leaf, types=TYPES)
    try:
        leaf_indices(tree)
        select(tree, ["a", "b/c"])
    except (CorruptCheckpoint, KeyError):
        pass


@FUZZ
@given(json_trees)
def test_random_trees_decode_or_raise_corrupt_checkpoint(tree: Any) -> None:
    _decode_or_corrupt(tree)


# ------------------------------------------------------------------------ valid states

def _nan(bits: int) -> float:
    return float(struct.unpack(">d", struct.pack(">Q", bits))[0])


_floats = st.floats() | st.sampled_from([-0.0, math.nan, -math.nan, _nan(0x7FF0000000000001),
                                         _nan(0xFFF8DEADBEEF0001), 5e-324, -math.inf])
_np_dtypes = ["<f2", "<f4", ">f8", "<i1", "<i8", ">u2", "|u1", "<c8", "<M8[ns]", "<m8[10ms]"]
_torch_dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.uint8,
                 torch.bool, torch.complex64, torch.float8_e4m3fn]


@st.composite
def _npscalars(draw: Any) -> Any:
    dt = np.dtype(draw(st.sampled_from(_np_dtypes)))
    raw = draw(st.binary(min_size=dt.itemsize, max_size=dt.itemsize))
    return np.frombuffer(raw, dtype=dt)[0]


@st.composite
def _tensors(draw: Any) -> torch.Tensor:
    """Any bytes (nan payloads, odd bools) as a tensor of a random dtype; 0-d sometimes."""
    dt, n = draw(st.sampled_from(_torch_dtypes)), draw(st.integers(0, 5))
    raw = draw(st.binary(min_size=n * dt.itemsize, max_size=n * dt.itemsize))
    t = torch.tensor(list(raw), dtype=torch.uint8).view(dt)
    return t.reshape(()) if n == 1 and draw(st.booleans()) else t


_arrays = st.builds(lambda d, n: np.arange(n).astype(d), st.sampled_from(["<f4", ">i2", "|u1"]),
                    st.integers(0, 5))
_keys = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=6)
                     | st.floats(allow_nan=False) | st.complex_numbers(allow_nan=False)
                     | st.builds(Point, st.integers(), st.integers()),
                     lambda c: st.lists(c, max_size=3).map(tuple), max_leaves=6)
_values = (st.none() | st.booleans() | st.integers() | st.integers(-(2**300), 2**300) | _floats
           | st.text(max_size=8) | st.binary(max_size=8) | _npscalars() | _tensors() | _arrays
           | st.text(max_size=3).map(lambda s: np.str_(s.rstrip("\0")))
           | st.binary(max_size=3).map(lambda b: np.bytes_(b.rstrip(b"\0")))
           | st.complex_numbers() | st.builds(Point, st.integers(), st.integers()))


def _odict(items: list[tuple[Any, Any]], meta: Any) -> OrderedDict[Any, Any]:
    out: OrderedDict[Any, Any] = OrderedDict(items)
    if meta is not None:
        out._metadata = meta  # type: ignore[attr-defined]
    return out


def _containers(c: Any) -> Any:
    return (st.lists(c, max_size=4) | st.lists(c, max_size=4).map(tuple)
            | st.dictionaries(_keys, c, max_size=4)
            | st.builds(_odict, st.lists(st.tuples(st.text(max_size=4), c), max_size=3),
                        st.none() | st.dictionaries(st.text(max_size=4), c, max_size=2))
            | st.lists(st.integers(0, 9), max_size=3).map(torch.Size) | st.builds(Box, c))


states = st.recursive(_values, _containers, max_leaves=30)


def same(a: Any, b: Any, path: str = "state") -> None:
    """``b`` is ``a`` bit for bit: exact types, float and nan bits, tensor/array bytes."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), path
        assert a.reshape(-1).view(torch.uint8).tolist() == b.reshape(-1).view(torch.uint8).tolist(), path
    elif isinstance(a, (np.str_, np.bytes_)):  # their scalar dtype follows the value
        assert a == b, f"{path}: {a!r} != {b!r}"
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), f"{path}: {a!r} != {b!r}"
    elif isinstance(a, float):
        assert struct.pack(">d", a) == struct.pack(">d", b), f"{path}: {a!r} != {b!r}"
    elif isinstance(a, complex):
        same(a.real, b.real, path)
        same(a.imag, b.imag, path)
    elif isinstance(a, dict):
        assert len(a) == len(b), path
        for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True):
            same(ka, kb, f"{path} key {ka!r}")
            same(va, vb, f"{path}[{ka!r}]")
        assert hasattr(a, "_metadata") == hasattr(b, "_metadata"), f"{path}: _metadata"
        if hasattr(a, "_metadata"):
            same(a._metadata, b._metadata, f"{path}._metadata")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{path}[{i}]")
    elif isinstance(a, (Point, Box)):
        for f in dataclasses.fields(a):
            same(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _byte_copy(t: torch.Tensor) -> torch.Tensor:
    """A copy of the bytes, as storage makes (``clone`` would normalise odd bools)."""
    return t.reshape(-1).view(torch.uint8).clone().view(t.dtype).reshape(t.shape)


def _roundtrip(state: Any) -> Any:
    tree, leaves = encode_tree(state, types=TYPES)
    stored = json.loads(json.dumps(tree))  # what the manifest holds
    copies = [_byte_copy(lf.value) if isinstance(lf.value, torch.Tensor) else lf.value.copy()
              for lf in leaves]
    assert leaf_indices(stored) == list(range(len(leaves)))
    return decode_tree(stored, lambda i: copies[i], types=TYPES)


@FUZZ
@given(states)
def test_valid_states_roundtrip_bit_exact(state: Any) -> None:
    same(state, _roundtrip(state))


@FUZZ
@given(states, st.data())
def test_mutated_valid_trees_decode_or_raise_corrupt_checkpoint(state: Any, data: Any) -> None:
    tree, _ = encode_tree({"s": state}, types=TYPES)
    tree = json.loads(json.dumps(tree))
    slots: list[tuple[Any, Any]] = []
    stack = [tree]
    while stack:
        n = stack.pop()
        keys = list(n) if isinstance(n, dict) else range(len(n)) if isinstance(n, list) else []
        for k in keys:
            slots.append((n, k))
            stack.append(n[k])
    for _ in range(data.draw(st.integers(1, 3))):
        parent, key = data.draw(st.sampled_from(slots))
        parent[key] = data.draw(json_trees)
    _decode_or_corrupt(tree)


# --------------------------------------------------------------------------------- depth

_WRAP: dict[str, Callable[[Any], Any]] = {
    "list": lambda x: [x], "dict": lambda x: {"k": x}, "tuple": lambda x: (x,), "box": Box}


def _nest(kind: str, depth: int, inner: Any = 1) -> Any:
    v = inner
    for i in range(depth):
        v = _WRAP[kind if kind != "mixed" else ("list", "dict", "tuple", "box")[i % 4]](v)
    return v


@pytest.mark.parametrize("kind", ["list", "dict", "tuple", "box", "mixed"])
def test_nesting_up_to_the_limit_roundtrips_and_deeper_is_refused_both_ways(kind: str) -> None:
    deepest = _nest(kind, MAX_DEPTH, torch.ones(2))
    same(deepest, _roundtrip(deepest))
    too_deep = _nest(kind, MAX_DEPTH + 1)
    with pytest.raises(UnsupportedValue, match=f"deeper than {MAX_DEPTH}"):
        encode_tree(too_deep, types=TYPES)
    # the same shape hand-written as a tree (as a hostile writer would) fails to decode
    tree, _ = encode_tree(_nest(kind, MAX_DEPTH, 1), types=TYPES)
    node = {"t": "list", "items": [tree]}
    with pytest.raises(CorruptCheckpoint, match=f"deeper than {MAX_DEPTH}"):
        decode_tree(json.loads(json.dumps(node)), _leaf, types=TYPES)


def test_nesting_limit_counts_dict_keys_and_odict_metadata() -> None:
    key = _nest("tuple", MAX_DEPTH - 1)
    same({key: 1}, _roundtrip({key: 1}))
    with pytest.raises(UnsupportedValue, match="deeper"):
        encode_tree({_nest("tuple", MAX_DEPTH): 1})
    meta = _odict([], _nest("dict", MAX_DEPTH - 1))
    same(meta, _roundtrip(meta))
    with pytest.raises(UnsupportedValue, match="deeper"):
        encode_tree(_odict([], _nest("dict", MAX_DEPTH)))


@pytest.mark.parametrize("node", ["list", "ext", "dict", "raw"])
def test_absurdly_deep_trees_fail_fast_without_recursion_errors(node: str) -> None:
    wrap: Callable[[Any], Any] = {
        "list": lambda x: {"t": "list", "items": [x]},
        "ext": lambda x: {"t": "ext", "name": "test.Box", "value": x},
        "dict": lambda x: {"t": "dict", "items": [["k", x]]}, "raw": lambda x: [x]}[node]
    tree: Any = 0
    for _ in range(100_000):  # far past Python's recursion limit
        tree = wrap(tree)
    t0 = time.perf_counter()
    with pytest.raises(CorruptCheckpoint):
        decode_tree(tree, _leaf, types=TYPES)
    assert leaf_indices(tree) == []
    if node == "dict":
        assert select(tree, ["k/k/k"])["items"][0][0] == "k"
    assert time.perf_counter() - t0 < 5

