"""Encode a state tree as JSON plus a list of array leaves, and back. No pickle anywhere.

Supported: dict (any hashable scalar/tuple keys, order kept; ``OrderedDict`` kept as such with
its ``_metadata``, as ``state_dict()`` returns it; other dict subclasses load as dict), list,
tuple, ``torch.Size``, str, int (up to 14,000 bits, about 4,200 digits: what JSON parsers
accept), float (incl. nan with its bits, inf, -0.0), bool, None, bytes, numpy scalars, torch
tensors and numpy arrays (the leaves), and the types of a :class:`TypeRegistry` given as
``types=``. Anything else raises :class:`~cloudckpt.errors.UnsupportedValue` naming the key path,
before anything is written. ``strict=True`` also refuses subclasses of str, bytes, dict, list
and tuple that no codec claims (by default a namedtuple loads as a tuple, a StrEnum as a str).

JSON shape: str/bool/None/int and finite floats are themselves; everything else is an object
with a ``"t"`` tag (``dict``, ``odict``, ``list``, ``tuple``, ``size``, ``float``, ``bytes``,
``npscalar``, ``leaf``, ``ext``). A plain JSON object is never user data, so decoding is
unambiguous.

Type registry (the extension point). A :class:`TypeCodec` ``(name, type, encode, decode)``
says how values of exactly ``type`` become encodable values and back; a :class:`TypeRegistry`
holds codecs (see :mod:`cloudckpt.format.types`). A registered value is stored as
``{"t": "ext", "name": <codec name>, "value": <encoded value>}``: the name is looked up in the
registry passed to :func:`decode_tree`, whose ``decode`` rebuilds the value. Decoding rebuilds
only registered types; it never imports, resolves or calls anything the data names, and an
ext name the registry does not hold raises ``CorruptCheckpoint``.

Limits and hostile input. Containers (dict, list, tuple, size, ext) nest at most
:data:`MAX_DEPTH` (200) deep: deeper states raise ``UnsupportedValue`` at encoding, deeper
trees ``CorruptCheckpoint`` at decoding (the JSON of 200 levels stays within what ``json``
parses). Trees come from storage and are untrusted: any malformed node (wrong types, unknown
tags or fields, bad base64, non-integer or negative leaf indices, values a codec refuses)
raises ``CorruptCheckpoint``, never another exception, in time and memory linear in the tree.
"""

from __future__ import annotations

import base64
import math
import re
import struct
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cloudckpt.errors import CorruptCheckpoint, UnsupportedValue
from cloudckpt.format.types import NO_TYPES, TypeCodec, TypeRegistry

__all__ = ["MAX_DEPTH", "Leaf", "TypeCodec", "TypeRegistry", "decode_tree", "encode_tree",
           "leaf_indices", "path_str", "select"]

#: Most containers (dict, list, tuple, ``torch.Size``, ext values) nested in one another.
MAX_DEPTH = 200
#: Largest int (in bits) stored as a JSON number; Python's JSON refuses over 4,300 digits.
MAX_INT_BITS = 14_000
_CONTAINERS = frozenset({"dict", "odict", "list", "tuple", "size", "ext"})
_FIELDS: dict[str, frozenset[str]] = {k: frozenset(v) for k, v in {
    "dict": {"t", "items"}, "odict": {"t", "items", "meta"}, "list": {"t", "items"},
    "tuple": {"t", "items"}, "size": {"t", "items"}, "float": {"t", "v"}, "bytes": {"t", "v"},
    "npscalar": {"t", "dtype", "v"}, "leaf": {"t", "i"}, "ext": {"t", "name", "value"},
}.items()}
_NAN = struct.pack(">d", math.nan)
_NAN_BITS = re.compile(r"0x[0-9a-f]{16}")
_NP_DTYPE = re.compile(r"[<>|=][?bBiufcmMSUa]\d{1,7}(\[\d{0,9}[A-Za-z]{1,7}\])?")
#: Errors a codec's ``decode`` raises for a value it cannot rebuild.
_CODEC_ERRORS = (TypeError, ValueError, LookupError, ArithmeticError, AttributeError, RuntimeError)


@dataclass(frozen=True)
class Leaf:
    """A tensor or array found in the tree; ``index`` is its position in the leaf table.
    ``device`` overrides the device recorded for it (a staged copy of a GPU tensor)."""

    path: str
    value: Any
    index: int
    device: str | None = None


def path_str(parts: Sequence[Any]) -> str:
    """``state['model']['w'][0]``-style path for messages."""
    return "state" + "".join(f"[{p!r}]" for p in parts)


def _float(v: float) -> Any:
    if math.isfinite(v):
        return v
    if math.isinf(v):
        return {"t": "float", "v": "inf" if v > 0 else "-inf"}
    bits = struct.pack(">d", v)  # a nan: keep its sign and payload unless it is the usual one
    return {"t": "float", "v": "nan" if bits == _NAN else "0x" + bits.hex()}


def _type_name(v: Any) -> str:
    return f"{type(v).__module__}.{type(v).__qualname__}"


def encode_tree(state: Any, *, types: TypeRegistry | None = None,
                strict: bool = False) -> tuple[Any, list[Leaf]]:
    """Return ``(json_tree, leaves)``. The same tensor object met twice (tied weights) is one
    leaf referenced twice. ``types``: codecs for extra types (module docstring). ``strict``:
    refuse subclasses of str, bytes, dict, list and tuple that no codec claims instead of
    storing them as their base type.

    Raises:
        UnsupportedValue: a value that cannot be encoded faithfully, or containers nested
            deeper than :data:`MAX_DEPTH`; the message names its path.
    """
    reg = types if types is not None else NO_TYPES
    leaves: list[Leaf] = []
    seen: dict[int, int] = {}
    active: set[int] = set()

    def enter(v: Any, parts: tuple[Any, ...], depth: int) -> None:
        if depth >= MAX_DEPTH or id(v) in active:
            where = path_str(parts) if len(parts) <= 8 else "state[...]" + path_str(parts[-4:])[5:]
            raise UnsupportedValue(f"{where}: " + (
                "the state contains a reference cycle" if id(v) in active else
                f"containers nested deeper than {MAX_DEPTH} levels cannot be stored; flatten it"))

    def exact(v: Any, base: type, parts: tuple[Any, ...]) -> None:
        if strict and type(v) is not base:
            raise UnsupportedValue(
                f"{path_str(parts)}: {_type_name(v)} (a subclass of {base.__name__}) would load "
                f"back as a plain {base.__name__}; register a TypeCodec for it or convert it "
                "(for an enum such as a StrEnum, store its value)")

    def enc(v: Any, parts: tuple[Any, ...], depth: int, as_key: bool = False) -> Any:
        codec = reg.for_value(v)
        if codec is not None:
            return ext(v, codec, parts, depth)
        if v is None or isinstance(v, bool):
            return v
        if isinstance(v, np.generic) and not isinstance(v, np.object_):  # np.str_ is a str
            arr = np.asarray(v)
            if arr.dtype.hasobject or arr.dtype.kind in "OV":
                raise UnsupportedValue(f"{path_str(parts)}: numpy scalar of dtype {arr.dtype}")
            if arr.dtype.kind in "SU" and arr[()] != v:  # fixed-width: trailing NULs drop
                raise UnsupportedValue(f"{path_str(parts)}: a numpy string ending in NUL would "
                                       "load without it; store it as bytes or str")
            return {"t": "npscalar", "dtype": arr.dtype.str,
                    "v": base64.b64encode(arr.tobytes()).decode()}
        if isinstance(v, str):
            exact(v, str, parts)
            return v
        if type(v) is int:
            if v.bit_length() > MAX_INT_BITS:
                raise UnsupportedValue(f"{path_str(parts)}: an int of {v.bit_length()} bits; at "
                                       f"most {MAX_INT_BITS} can be stored (store it as bytes)")
            return v
        if type(v) is float:
            return _float(v)
        if isinstance(v, bytes):
            exact(v, bytes, parts)
            return {"t": "bytes", "v": base64.b64encode(v).decode()}
        if isinstance(v, torch.Size):
            enter(v, parts, depth)
            return {"t": "size", "items": [enc(x, (*parts, i), depth + 1) for i, x in enumerate(v)]}
        if isinstance(v, tuple):
            exact(v, tuple, parts)
            enter(v, parts, depth)
            return {"t": "tuple",
                    "items": [enc(x, (*parts, i), depth + 1, as_key) for i, x in enumerate(v)]}
        if as_key:
            raise UnsupportedValue(f"{path_str(parts)}: dict key of type {type(v).__name__} "
                                   "cannot be stored; use str, int, float, bool, None or tuples")
        if isinstance(v, (torch.Tensor, np.ndarray)):
            return {"t": "leaf", "i": add_leaf(v, parts)}
        if isinstance(v, (dict, list)):
            exact(v, OrderedDict if isinstance(v, OrderedDict) else
                  dict if isinstance(v, dict) else list, parts)
            enter(v, parts, depth)
            active.add(id(v))
            try:
                if isinstance(v, dict):
                    items = [[enc(k, (*parts, k), depth + 1, True), enc(x, (*parts, k), depth + 1)]
                             for k, x in v.items()]
                    if isinstance(v, OrderedDict):  # state_dict(): keep the type and the
                        meta = getattr(v, "_metadata", None)  # per-module version info
                        return {"t": "odict", "items": items,
                                "meta": enc(meta, (*parts, "_metadata"), depth + 1)
                                if isinstance(meta, dict) else None}
                    return {"t": "dict", "items": items}
                return {"t": "list",
                        "items": [enc(x, (*parts, i), depth + 1) for i, x in enumerate(v)]}
            finally:
                active.discard(id(v))
        raise UnsupportedValue(
            f"{path_str(parts)}: values of type {_type_name(v)} cannot be checkpointed (no "
            "pickle); convert it to tensors, arrays, numbers, strings, lists or dicts, or "
            "register a TypeCodec for it")

    def ext(v: Any, codec: TypeCodec[Any], parts: tuple[Any, ...], depth: int) -> Any:
        enter(v, parts, depth)
        active.add(id(v))
        try:
            try:
                inner = codec.encode(v)
            except (TypeError, ValueError) as e:
                raise UnsupportedValue(f"{path_str(parts)}: type codec {codec.name!r} cannot "
                                       f"encode this {_type_name(v)}: {e}") from e
            return {"t": "ext", "name": codec.name, "value": enc(inner, parts, depth + 1)}
        finally:
            active.discard(id(v))

    def add_leaf(v: Any, parts: tuple[Any, ...]) -> int:
        if isinstance(v, torch.Tensor):
            _check_tensor(v, parts)
        elif v.dtype.hasobject or v.dtype.kind == "V":
            raise UnsupportedValue(f"{path_str(parts)}: numpy array of dtype {v.dtype} "
                                   "(object/void arrays cannot be stored without pickle)")
        ident = id(v)
        if ident in seen:
            return seen[ident]
        seen[ident] = len(leaves)
        leaves.append(Leaf(path_str(parts), v, len(leaves)))
        return seen[ident]

    return enc(state, (), 0), leaves


def _check_tensor(t: torch.Tensor, parts: tuple[Any, ...]) -> None:
    where = path_str(parts)
    if t.layout != torch.strided:
        raise UnsupportedValue(f"{where}: {t.layout} tensors are not supported; use .to_dense()")
    if t.is_quantized:
        raise UnsupportedValue(f"{where}: quantized tensors are not supported; dequantize first")
    if t.device.type == "meta":
        raise UnsupportedValue(f"{where}: meta tensors have no data to save")
    if type(t) not in (torch.Tensor, torch.nn.Parameter) and not isinstance(t, torch.nn.Buffer):
        raise UnsupportedValue(f"{where}: tensor subclass {type(t).__name__} is not supported "
                               "(for DTensor use cloudckpt.dcp); pass plain tensors")


def _bad(msg: str) -> CorruptCheckpoint:
    return CorruptCheckpoint(f"invalid state tree in manifest: {msg}")


def _what(x: Any) -> str:
    """A short description of an untrusted value for messages (never its whole repr)."""
    if isinstance(x, str):
        return repr(x[:60]) + ("..." if len(x) > 60 else "")
    return f"a {type(x).__name__}"


def _b64(v: Any, tag: str) -> bytes:
    if not isinstance(v, str):
        raise _bad(f"{tag} value must be a base64 string, not {_what(v)}")
    try:
        return base64.b64decode(v, validate=True)
    except ValueError as e:  # binascii.Error, non-ASCII text
        raise _bad(f"malformed {tag}: {e}") from None


def _npscalar(dtype: Any, v: Any) -> Any:
    if not (isinstance(dtype, str) and _NP_DTYPE.fullmatch(dtype)):
        raise _bad(f"npscalar dtype {_what(dtype)} is not a numpy dtype string")
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise _bad(f"npscalar dtype {dtype!r}: {e}") from None
    raw = _b64(v, "npscalar")
    if dt.hasobject or dt.kind in "OV" or len(raw) != dt.itemsize:
        raise _bad(f"npscalar of dtype {dtype!r} with {len(raw)} bytes")
    return np.frombuffer(raw, dtype=dt)[0]


def _float_node(v: Any) -> float:
    if v in ("nan", "inf", "-inf"):
        return float(v)
    if isinstance(v, str) and _NAN_BITS.fullmatch(v):
        f: float = struct.unpack(">d", bytes.fromhex(v[2:]))[0]
        if math.isnan(f):
            return f
    raise _bad(f"bad float {_what(v)}")


def decode_tree(node: Any, leaf: Callable[[int], Any], *, types: TypeRegistry | None = None) -> Any:
    """Rebuild the state from its JSON tree (as ``json.loads`` returns it); ``leaf(i)`` returns
    leaf number ``i`` and may raise ``LookupError`` for an index that does not exist.
    ``types``: the codecs ext nodes may name (module docstring).

    Raises:
        CorruptCheckpoint: unknown tags or ext names, malformed nodes, nesting deeper than
            :data:`MAX_DEPTH`, a leaf index ``leaf`` does not have, a value a codec refuses.
    """
    reg = types if types is not None else NO_TYPES

    def dec(n: Any, depth: int) -> Any:
        if n is None or isinstance(n, (bool, str, int, float)):
            return n
        if not isinstance(n, dict):
            raise _bad(f"unexpected node: {_what(n)}")
        tag = n.get("t")
        fields = _FIELDS.get(tag) if isinstance(tag, str) else None
        if fields is None:
            raise _bad(f"unknown tag {_what(tag)}")
        if n.keys() != fields:
            raise _bad(f"node {tag!r} has fields {', '.join(sorted(map(_what, n)))}, expected "
                       f"{', '.join(sorted(fields))}")
        if tag in _CONTAINERS:
            if depth >= MAX_DEPTH:
                raise _bad(f"containers nested deeper than {MAX_DEPTH} levels")
            return container(tag, n, depth + 1)
        if tag == "float":
            return _float_node(n["v"])
        if tag == "bytes":
            return _b64(n["v"], "bytes")
        if tag == "npscalar":
            return _npscalar(n["dtype"], n["v"])
        i = n["i"]  # tag == "leaf"
        if type(i) is not int or i < 0:
            raise _bad(f"leaf index must be a non-negative integer, not {_what(i)}")
        try:
            return leaf(i)
        except LookupError:
            raise _bad(f"the tree references leaf {i}, which does not exist") from None

    def container(tag: str, n: dict[str, Any], depth: int) -> Any:
        if tag == "ext":
            return ext(n["name"], n["value"], depth)
        items = n["items"]
        if not isinstance(items, list):
            raise _bad(f"{tag} items must be a list, not {_what(items)}")
        if tag == "list":
            return [dec(x, depth) for x in items]
        if tag == "tuple":
            return tuple(dec(x, depth) for x in items)
        if tag == "size":
            if not all(type(x) is int and -(2**63) <= x < 2**63 for x in items):
                raise _bad("torch.Size items must be 64-bit integers")
            return torch.Size(items)
        out: dict[Any, Any] = OrderedDict() if tag == "odict" else {}
        for item in items:
            if not (isinstance(item, list) and len(item) == 2):
                raise _bad(f"dict item must be a [key, value] pair, not {_what(item)}")
            key, value = dec(item[0], depth), dec(item[1], depth)
            try:
                if key in out:
                    raise _bad(f"duplicate dict key {_what(key)}")
                out[key] = value
            except TypeError:  # unhashable
                raise _bad(f"dict key of type {type(key).__name__}") from None
        if tag == "odict" and n["meta"] is not None:
            meta = dec(n["meta"], depth)
            if type(meta) not in (dict, OrderedDict):
                raise _bad("odict metadata must be a dict")
            out._metadata = meta  # type: ignore[attr-defined]
        return out

    def ext(name: Any, value: Any, depth: int) -> Any:
        codec = reg.by_name(name)
        if codec is None:
            raise _bad(
                f"a value of extension type {_what(name)}, and no codec of that name was given; "
                "decode it with the TypeRegistry it was saved with (checkpoints saved by an "
                "integration, e.g. Lightning's CloudckptIO, load through that integration)")
        v = dec(value, depth)
        try:
            return codec.decode(v)
        except _CODEC_ERRORS as e:
            raise _bad(f"type codec {codec.name!r} cannot rebuild its value: "
                       f"{type(e).__name__}: {str(e)[:200]}") from e

    return dec(node, 0)


def select(node: Any, keys: Sequence[str]) -> Any:
    """Prune the JSON tree to the sub-trees named by ``keys`` (``"model"``,
    ``"optimizer/state"``: ``/``-separated string dict keys).

    Raises:
        KeyError: a key names nothing in the tree.
        CorruptCheckpoint: a dict node on the way is malformed.
    """
    if not keys:
        return node
    heads: dict[str, list[str]] = {}
    for k in keys:
        head, _, rest = k.strip("/").partition("/")
        heads.setdefault(head, []).append(rest)
    if not (isinstance(node, dict) and node.get("t") in ("dict", "odict")):
        raise KeyError(f"cannot select {sorted(heads)} below a non-dict node")
    if not isinstance(node.get("items"), list):
        raise _bad("dict items must be a list")
    items = []
    found = set()
    for item in node["items"]:
        if not (isinstance(item, list) and len(item) == 2):
            raise _bad(f"dict item must be a [key, value] pair, not {_what(item)}")
        k, v = item
        if isinstance(k, str) and k in heads:
            found.add(k)
            rests = heads[k]
            items.append([k, v if "" in rests else select(v, rests)])
    missing = sorted(set(heads) - found)
    if missing:
        raise KeyError(f"no such key(s) in the checkpoint: {missing}")
    return {**node, "items": items}


def leaf_indices(node: Any) -> list[int]:
    """Leaf indices referenced by a JSON tree, in order, without duplicates. Walks without
    recursion, so any depth the JSON parser accepted is fine (the decoder checks the rest)."""
    out: dict[int, None] = {}
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, dict):
            i = n.get("i")
            if n.get("t") == "leaf" and type(i) is int and i >= 0:
                out[i] = None
            stack.extend(reversed(list(n.values())))
        elif isinstance(n, list):
            stack.extend(reversed(n))
    return list(out)
