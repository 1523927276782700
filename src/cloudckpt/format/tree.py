"""Encode a state tree as JSON plus a list of array leaves, and back. No pickle anywhere.

Supported: dict (any hashable scalar/tuple keys, order kept; ``OrderedDict`` kept as such with
its ``_metadata``, as ``state_dict()`` returns it; other dict subclasses load as dict), list,
tuple, ``torch.Size``,
str, int (any size), float (incl. nan, inf, -0.0), bool, None, bytes, numpy scalars, torch
tensors and numpy arrays (the leaves). Anything else raises
:class:`~cloudckpt.errors.UnsupportedValue` naming the key path, before anything is written.

JSON shape: str/bool/None/int and finite floats are themselves; everything else is an object
with a ``"t"`` tag (``dict``, ``odict``, ``list``, ``tuple``, ``size``, ``float``, ``bytes``,
``npscalar``, ``leaf``). A plain JSON object is never user data, so decoding is unambiguous.
"""

from __future__ import annotations

import base64
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cloudckpt.errors import CorruptCheckpoint, UnsupportedValue

__all__ = ["Leaf", "decode_tree", "encode_tree", "path_str", "select"]


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
    return {"t": "float", "v": "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")}


def encode_tree(state: Any) -> tuple[Any, list[Leaf]]:
    """Return ``(json_tree, leaves)``. The same tensor object met twice (tied weights) is one
    leaf referenced twice.

    Raises:
        UnsupportedValue: a value that cannot be encoded faithfully; the message names its path.
    """
    leaves: list[Leaf] = []
    seen: dict[int, int] = {}
    active: set[int] = set()

    def enc(v: Any, parts: tuple[Any, ...], as_key: bool = False) -> Any:
        if v is None or isinstance(v, (bool, str)):
            return v
        if type(v) is int:
            return v
        if type(v) is float:
            return _float(v)
        if isinstance(v, bytes):
            return {"t": "bytes", "v": base64.b64encode(v).decode()}
        if isinstance(v, np.generic) and not isinstance(v, np.object_):
            arr = np.asarray(v)
            if arr.dtype.hasobject or arr.dtype.kind in "OV":
                raise UnsupportedValue(f"{path_str(parts)}: numpy scalar of dtype {arr.dtype}")
            return {"t": "npscalar", "dtype": arr.dtype.str,
                    "v": base64.b64encode(arr.tobytes()).decode()}
        if isinstance(v, torch.Size):
            return {"t": "size", "items": [enc(x, (*parts, i)) for i, x in enumerate(v)]}
        if isinstance(v, tuple):
            return {"t": "tuple", "items": [enc(x, (*parts, i), as_key) for i, x in enumerate(v)]}
        if as_key:
            raise UnsupportedValue(f"{path_str(parts)}: dict key of type {type(v).__name__} "
                                   "cannot be stored; use str, int, float, bool, None or tuples")
        if isinstance(v, (torch.Tensor, np.ndarray)):
            return {"t": "leaf", "i": add_leaf(v, parts)}
        if isinstance(v, (dict, list)):
            if id(v) in active:
                raise UnsupportedValue(f"{path_str(parts)}: the state contains a reference cycle")
            active.add(id(v))
            try:
                if isinstance(v, dict):
                    items = [[enc(k, (*parts, k), True), enc(x, (*parts, k))]
                             for k, x in v.items()]
                    if isinstance(v, OrderedDict):  # state_dict(): keep the type and the
                        meta = getattr(v, "_metadata", None)  # per-module version info
                        return {"t": "odict", "items": items,
                                "meta": enc(dict(meta), (*parts, "_metadata"))
                                if isinstance(meta, dict) else None}
                    return {"t": "dict", "items": items}
                return {"t": "list", "items": [enc(x, (*parts, i)) for i, x in enumerate(v)]}
            finally:
                active.discard(id(v))
        raise UnsupportedValue(
            f"{path_str(parts)}: values of type {type(v).__module__}.{type(v).__qualname__} "
            "cannot be checkpointed (no pickle); convert it to tensors, arrays, numbers, "
            "strings, lists or dicts")

    def add_leaf(v: Any, parts: tuple[Any, ...]) -> int:
        if isinstance(v, torch.Tensor):
            _check_tensor(v, parts)
            ident = id(v)
        else:
            if v.dtype.hasobject or v.dtype.kind == "V":
                raise UnsupportedValue(f"{path_str(parts)}: numpy array of dtype {v.dtype} "
                                       "(object/void arrays cannot be stored without pickle)")
            ident = id(v)
        if ident in seen:
            return seen[ident]
        seen[ident] = len(leaves)
        leaves.append(Leaf(path_str(parts), v, len(leaves)))
        return seen[ident]

    return enc(state, ()), leaves


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


def decode_tree(node: Any, leaf: Callable[[int], Any]) -> Any:
    """Rebuild the state from its JSON tree; ``leaf(i)`` returns leaf number ``i``.

    Raises:
        CorruptCheckpoint: unknown tags or malformed nodes.
    """
    if node is None or isinstance(node, (bool, str, int, float)):
        return node
    if not isinstance(node, dict) or not isinstance(node.get("t"), str):
        raise _bad(f"unexpected node {str(node)[:80]!r}")
    tag = node["t"]
    expected = {"dict": {"t", "items"}, "odict": {"t", "items", "meta"}, "list": {"t", "items"},
                "tuple": {"t", "items"}, "size": {"t", "items"}, "float": {"t", "v"}, "bytes": {"t", "v"},
                "npscalar": {"t", "dtype", "v"}, "leaf": {"t", "i"}}.get(tag)
    if expected is None:
        raise _bad(f"unknown tag {tag!r}")
    if set(node) != expected:
        raise _bad(f"node {tag!r} has fields {sorted(node)}")
    if tag in ("dict", "odict", "list", "tuple", "size") and not isinstance(node["items"], list):
        raise _bad(f"{tag} items must be a list")
    if tag in ("dict", "odict"):
        out: dict[Any, Any] = OrderedDict() if tag == "odict" else {}
        for item in node["items"]:
            if not isinstance(item, list) or len(item) != 2:
                raise _bad("dict item must be a [key, value] pair")
            out[decode_tree(item[0], leaf)] = decode_tree(item[1], leaf)
        if tag == "odict" and node["meta"] is not None:
            meta = decode_tree(node["meta"], leaf)
            if not isinstance(meta, dict):
                raise _bad("odict metadata must be a dict")
            out._metadata = meta  # type: ignore[attr-defined]
        return out
    if tag == "list":
        return [decode_tree(x, leaf) for x in node["items"]]
    if tag == "tuple":
        return tuple(decode_tree(x, leaf) for x in node["items"])
    if tag == "size":
        return torch.Size([decode_tree(x, leaf) for x in node["items"]])
    if tag == "float":
        if node["v"] not in ("nan", "inf", "-inf"):
            raise _bad(f"bad float {node['v']!r}")
        return float(node["v"])
    try:
        if tag == "bytes":
            return base64.b64decode(node["v"], validate=True)
        if tag == "npscalar":
            dt = np.dtype(node["dtype"])
            if dt.hasobject or dt.kind == "V":
                raise _bad(f"npscalar of dtype {dt}")
            return np.frombuffer(base64.b64decode(node["v"], validate=True), dtype=dt)[0]
    except (ValueError, TypeError, IndexError) as e:
        raise _bad(f"malformed {tag}: {e}") from e
    if type(node["i"]) is not int:
        raise _bad("leaf index must be an integer")
    return leaf(node["i"])


def select(node: Any, keys: Sequence[str]) -> Any:
    """Prune the JSON tree to the sub-trees named by ``keys`` (``"model"``,
    ``"optimizer/state"``: ``/``-separated string dict keys).

    Raises:
        KeyError: a key names nothing in the tree.
    """
    if not keys:
        return node
    heads: dict[str, list[str]] = {}
    for k in keys:
        head, _, rest = k.strip("/").partition("/")
        heads.setdefault(head, []).append(rest)
    if not (isinstance(node, dict) and node.get("t") in ("dict", "odict")):
        raise KeyError(f"cannot select {sorted(heads)} below a non-dict node")
    items = []
    found = set()
    for k, v in node["items"]:
        if isinstance(k, str) and k in heads:
            found.add(k)
            rests = heads[k]
            items.append([k, v if "" in rests else select(v, rests)])
    missing = sorted(set(heads) - found)
    if missing:
        raise KeyError(f"no such key(s) in the checkpoint: {missing}")
    return {**node, "items": items}


def leaf_indices(node: Any) -> list[int]:
    """Leaf indices referenced by a JSON tree, in order, without duplicates."""
    out: dict[int, None] = {}

    def walk(n: Any) -> None:
        if isinstance(n, dict):
            if n.get("t") == "leaf" and type(n.get("i")) is int:
                out[n["i"]] = None
            for v in n.values():
                walk(v)
        elif isinstance(n, list):
            for v in n:
                walk(v)

    walk(node)
    return list(out)
