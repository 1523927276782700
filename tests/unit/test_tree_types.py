"""The tree encoding's type registry (cloudckpt.format.types) and its hostile-input checks,
case by case (tests/unit/test_tree_fuzz.py has the property tests)."""

from __future__ import annotations

import collections
import datetime
import enum
import json
import math
import struct
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch

import cloudckpt
from cloudckpt.errors import CorruptCheckpoint, InvalidArgument, UnsupportedValue
from cloudckpt.format.tree import MAX_INT_BITS, decode_tree, encode_tree, select
from cloudckpt.format.types import NO_TYPES, TypeCodec, TypeRegistry
from tests.unit.test_tree_fuzz import TYPES, Box, Point, same


def _json(tree: Any) -> Any:
    return json.loads(json.dumps(tree))


def L(*items: Any) -> dict[str, Any]:
    return {"t": "list", "items": list(items)}


def _no_leaf(i: int) -> Any:
    raise IndexError(i)


def test_codec_and_registry_validate_what_they_are_given() -> None:
    ok = TypeCodec("x.T", Point, lambda p: [p.x, p.y], lambda v: Point(*v))
    for bad in ["", "1abc", "a b", "x" * 129, 7]:
        with pytest.raises(InvalidArgument, match="name"):
            TypeCodec(bad, Point, str, str)  # type: ignore[arg-type]
    for builtin in (dict, list, tuple, str, int, float, bytes, type(None), collections.OrderedDict,
                    torch.Tensor, torch.Size, np.ndarray):
        with pytest.raises(InvalidArgument, match="encoded by the tree itself"):
            TypeCodec("x.B", builtin, str, str)
    with pytest.raises(InvalidArgument, match="class"):
        TypeCodec("x.C", "Point", str, str)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="callable"):
        TypeCodec("x.D", Point, str, None)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=r"name 'x\.T' is registered twice"):
        TypeRegistry((ok, TypeCodec("x.T", Box, str, str)))
    with pytest.raises(InvalidArgument, match="Point is registered twice"):
        TypeRegistry((ok, TypeCodec("x.U", Point, str, str)))
    with pytest.raises(InvalidArgument, match="TypeCodec items"):
        TypeRegistry((ok, "x.T"))  # type: ignore[arg-type]
    reg = NO_TYPES.with_codecs(ok)
    assert len(NO_TYPES) == 0 and list(reg) == [ok] and reg == TypeRegistry((ok,))
    assert reg.by_name("x.T") is ok and reg.by_name("x.U") is None and reg.by_name(["x"]) is None  # type: ignore[arg-type]
    assert reg.for_value(Point(1, 2)) is ok and reg.for_value(Box(1)) is None
    with pytest.raises(AttributeError):
        reg.codecs = ()  # type: ignore[misc]


class SubPoint(Point):
    pass


def test_registered_values_are_ext_nodes_named_by_the_codec() -> None:
    tree, _ = encode_tree({"p": Point(1, 2), (Point(3, 4), 1j): [Box(Box(None))]}, types=TYPES)
    assert tree["items"][0] == ["p", {"t": "ext", "name": "test.Point", "value": L(1, 2)}]
    back = decode_tree(_json(tree), _no_leaf, types=TYPES)
    same({"p": Point(1, 2), (Point(3, 4), 1j): [Box(Box(None))]}, back)
    # exactly the registered type: a subclass is not claimed, and without codecs nothing is
    with pytest.raises(UnsupportedValue, match=r"state\['s'\]: values of type .*SubPoint"):
        encode_tree({"s": SubPoint(1, 2)}, types=TYPES)
    with pytest.raises(UnsupportedValue, match="register a TypeCodec"):
        encode_tree(Point(1, 2))


def test_decoding_rebuilds_only_registered_names() -> None:
    for name in ("os.system", "builtins.eval", "subprocess.Popen", "test.Point "):
        node = {"t": "ext", "name": name, "value": L("echo pwned")}
        with pytest.raises(CorruptCheckpoint, match="no codec of that name"):
            decode_tree(node, _no_leaf, types=TYPES)
    with pytest.raises(CorruptCheckpoint, match=r"extension type 'test\.Point'"):
        decode_tree({"t": "ext", "name": "test.Point", "value": L(1, 2)}, _no_leaf)
    with pytest.raises(CorruptCheckpoint, match="extension type a list"):
        decode_tree({"t": "ext", "name": ["test.Point"], "value": L(1, 2)}, _no_leaf, types=TYPES)


def test_codec_failures_become_the_right_errors() -> None:
    for value in (L(1), L(1, "2"), "x", None, L(1, 2, 3), L(1, 2.0)):
        with pytest.raises(CorruptCheckpoint, match=r"'test\.Point' cannot rebuild"):
            decode_tree({"t": "ext", "name": "test.Point", "value": value}, _no_leaf, types=TYPES)

    def boom(v: Any) -> Any:
        raise ValueError("nope")

    reg = TypeRegistry((TypeCodec("x.P", Point, boom, boom),))
    with pytest.raises(UnsupportedValue, match=r"state\[0\]: type codec 'x.P' cannot encode"):
        encode_tree([Point(1, 2)], types=reg)
    # a codec that returns its own input would loop: reported as a cycle
    loop = TypeRegistry((TypeCodec("x.L", Point, lambda p: p, boom),))
    with pytest.raises(UnsupportedValue, match="cycle"):
        encode_tree(Point(1, 2), types=loop)
    b = Box(None)
    b.value = [b]
    with pytest.raises(UnsupportedValue, match="cycle"):
        encode_tree(b, types=TYPES)


class Mode(str, enum.Enum):
    FAST = "fast"


class Pair(NamedTuple):
    x: int


class MyBytes(bytes):
    pass


class MyList(list[int]):
    pass


class MyODict(collections.OrderedDict[str, int]):
    pass


@pytest.mark.parametrize(("value", "base"), [
    (Mode.FAST, "str"), (MyBytes(b"x"), "bytes"), (Pair(1), "tuple"),
    (collections.defaultdict(int), "dict"), (MyList(), "list"), (MyODict(), "OrderedDict"),
])
def test_strict_refuses_builtin_subclasses_that_default_stores_as_their_base(value: Any,
                                                                             base: str) -> None:
    with pytest.raises(UnsupportedValue, match=rf"state\['v'\]: .*\(a subclass of {base}\)"):
        encode_tree({"v": value}, strict=True)
    tree, _ = encode_tree({"v": value})  # lenient by default, as documented
    back = decode_tree(_json(tree), _no_leaf)["v"]
    assert back == value and type(back).__name__ == base
    # a codec claims the exact type first, in strict mode too
    reg = TypeRegistry((TypeCodec("x.Pair", Pair, lambda p: p.x, Pair),))
    tree, _ = encode_tree({"p": Pair(3)}, types=reg, strict=True)
    assert decode_tree(_json(tree), _no_leaf, types=reg) == {"p": Pair(3)}


def test_numpy_strings_keep_their_type_and_trailing_nuls_are_refused() -> None:
    state = [np.str_("ab"), np.bytes_(b"c"), np.bytes_(b""), np.bytes_(b"\0x"), np.float64(0.5)]
    tree, _ = encode_tree(state, strict=True)
    same(state, decode_tree(_json(tree), _no_leaf))
    for bad in (np.bytes_(b"\0"), np.str_("a\0")):  # numpy's fixed-width strings drop them
        with pytest.raises(UnsupportedValue, match=r"state\[0\]: a numpy string ending in NUL"):
            encode_tree([bad])


def test_nan_bits_and_big_ints() -> None:
    odd = struct.unpack(">d", bytes.fromhex("fff8000000000abc"))[0]
    tree, _ = encode_tree([math.nan, odd, -0.0, math.inf, 2**MAX_INT_BITS - 1])
    assert tree["items"][0] == {"t": "float", "v": "nan"}
    back = decode_tree(_json(tree), _no_leaf)
    assert [struct.pack(">d", x).hex() for x in back[:3]] == [
        struct.pack(">d", math.nan).hex(), "fff8000000000abc", "8000000000000000"]
    with pytest.raises(CorruptCheckpoint, match="bad float"):  # bits that are no nan
        decode_tree({"t": "float", "v": "0x3ff0000000000000"}, _no_leaf)
    with pytest.raises(UnsupportedValue, match=rf"state\['n'\]: an int of {MAX_INT_BITS + 1} bits"):
        encode_tree({"n": 2**MAX_INT_BITS})


def test_too_big_int_or_too_deep_state_is_refused_before_anything_is_written(tmp_path: Any) -> None:
    deep: Any = 0
    for _ in range(300):
        deep = [deep]
    for state in ({"n": -(2**MAX_INT_BITS)}, {"deep": deep}):
        with pytest.raises(UnsupportedValue):
            cloudckpt.save(state, tmp_path / "c")
        assert not (tmp_path / "c").exists()


def test_state_at_the_depth_limit_survives_a_real_manifest(tmp_path: Any) -> None:
    from cloudckpt.format.tree import MAX_DEPTH

    v: Any = {"w": torch.arange(4)}
    for i in range(MAX_DEPTH - 1):
        v = {"k": v} if i % 2 else [v]
    cloudckpt.save(v, tmp_path / "c")
    same(v, cloudckpt.load(tmp_path / "c"))


@pytest.mark.parametrize(("node", "needle"), [
    ({"t": "leaf", "i": -1}, "non-negative"),
    ({"t": "leaf", "i": 2**70}, "does not exist"),
    ({"t": "leaf", "i": True}, "non-negative"),
    ({"t": "leaf", "i": 1.0}, "non-negative"),
    ({"t": "size", "items": [2**63]}, "64-bit"),
    ({"t": "size", "items": [{"t": "float", "v": "nan"}]}, "64-bit"),
    ({"t": "dict", "items": [[{"t": "list", "items": []}, 1]]}, "dict key of type list"),
    ({"t": "dict", "items": [["a", 1], ["a", 2]]}, "duplicate dict key 'a'"),
    ({"t": "dict", "items": [["a", 1, 2]]}, r"\[key, value\] pair"),
    ({"t": "odict", "items": [], "meta": L(1)}, "metadata must be a dict"),
    ({"t": "list", "items": {"a": 1}}, "items must be a list"),
    ({"t": "bytes", "v": "not base64!"}, "malformed bytes"),
    ({"t": "bytes", "v": "é"}, "malformed bytes"),
    ({"t": "bytes", "v": 12}, "base64 string"),
    ({"t": "npscalar", "dtype": "|O", "v": "AAAAAAAAAAA="}, "npscalar"),
    ({"t": "npscalar", "dtype": "|V8", "v": "AAAAAAAAAAA="}, "npscalar"),
    ({"t": "npscalar", "dtype": "<f4", "v": "AAAAAAAAAAA="}, "with 8 bytes"),
    ({"t": "npscalar", "dtype": "<U999999999", "v": ""}, "npscalar"),
    ({"t": "npscalar", "dtype": {"names": ["a"], "formats": ["O"]}, "v": ""}, "dtype a dict"),
    ({"t": "npscalar", "dtype": "<M8[parsec]", "v": "AAAAAAAAAAA="}, "npscalar"),
    ({"t": "float", "v": "NaN"}, "bad float"),
    ({"t": "list"}, "fields"),
    ({"t": "list", "items": [], 3: 4}, "fields"),
    ({"t": ["dict"], "items": []}, "unknown tag a list"),
    ({"t": "pickle", "v": ""}, "unknown tag 'pickle'"),
    ({"items": []}, "unknown tag a NoneType"),
    (("t", "list"), "unexpected node: a tuple"),
    (b"bytes", "unexpected node"),
])
def test_malformed_nodes_raise_corrupt_checkpoint(node: Any, needle: str) -> None:
    with pytest.raises(CorruptCheckpoint, match=needle):
        decode_tree({"t": "list", "items": [1, node]}, lambda i: [0][i], types=TYPES)


def test_select_on_malformed_dicts_raises_corrupt_checkpoint() -> None:
    for node in ({"t": "dict", "items": 5}, {"t": "dict", "items": [["a"]]},
                 {"t": "dict", "items": ["ab"]}):
        with pytest.raises(CorruptCheckpoint):
            select(node, ["a"])
    with pytest.raises(KeyError):
        select({"t": "dict", "items": [["b", 1]]}, ["a"])


def test_timedelta_style_codec_from_the_docstring() -> None:
    days = TypeCodec("datetime.timedelta", datetime.timedelta,
                     encode=lambda v: [v.days, v.seconds, v.microseconds],
                     decode=lambda v: datetime.timedelta(*v))
    reg = TypeRegistry((days,))
    state = {"every": datetime.timedelta(days=2, microseconds=5)}
    tree, _ = encode_tree(state, types=reg)
    assert decode_tree(_json(tree), _no_leaf, types=reg) == state
    with pytest.raises(CorruptCheckpoint, match="cannot rebuild"):  # OverflowError, TypeError
        decode_tree({"t": "ext", "name": "datetime.timedelta", "value": L(10**20, 0, 0)},
                    _no_leaf, types=reg)
