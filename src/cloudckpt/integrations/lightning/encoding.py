"""How a Lightning checkpoint dict is stored as a cloudckpt tree, and rebuilt: :data:`TYPES`,
:func:`encode_checkpoint`, :func:`decode_checkpoint` (used by :class:`~.io.CloudckptIO`).

cloudckpt stores tensors, arrays, dicts/lists/tuples and plain scalars. A Lightning
checkpoint holds, besides those, a few other types in ``hyper_parameters`` (the arguments given
to ``save_hyperparameters()``) and in module/callback state; these are stored faithfully and
rebuilt on load through the tree encoding's type registry (:data:`TYPES`, see
:mod:`cloudckpt.format.types`): ``OrderedDict`` (with its ``_metadata``), Lightning's
``AttributeDict``, ``argparse.Namespace``, ``pathlib`` paths, ``set``/``frozenset``,
``datetime.timedelta``, ``torch.dtype`` and ``torch.device``. Any other type (enums,
dataclasses, user classes, ``defaultdict``, namedtuples, other dict/list/tuple subclasses...)
raises :class:`~cloudckpt.errors.UnsupportedValue` naming its key path, before anything is
written; nothing is ever dropped or silently converted. Checkpoints written by cloudckpt's
earlier Lightning encoding (plain values plus a list of conversions under
:data:`RESERVED_KEY`) still load. No pickle is written or read.
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import torch
from lightning.fabric.utilities.data import AttributeDict

from cloudckpt.errors import CorruptCheckpoint, UnsupportedValue
from cloudckpt.format.dtypes import TORCH_DTYPES
from cloudckpt.format.tree import Leaf, decode_tree, encode_tree, path_str
from cloudckpt.format.types import TypeCodec, TypeRegistry

__all__ = ["FORMAT", "RESERVED_KEY", "TYPES", "decode_checkpoint", "encode_checkpoint"]

#: Top-level key of the earlier encoding, holding the conversions applied at save time; a
#: checkpoint may not use it.
RESERVED_KEY = "__cloudckpt_lightning__"
FORMAT = "cloudckpt.lightning/1"


def _typed(kind: type, v: Any) -> Any:
    if type(v) is not kind:
        raise TypeError(f"expected a {kind.__name__}, not {type(v).__name__}")
    return v


def _namespace(v: Any) -> argparse.Namespace:
    if not all(isinstance(k, str) for k in _typed(dict, v)):
        raise TypeError("Namespace field names must be strings")
    return argparse.Namespace(**v)


def _path(cls: type[pathlib.PurePath]) -> TypeCodec[Any]:
    return TypeCodec(f"pathlib.{cls.__name__}", cls, str, lambda v: cls(_typed(str, v)))


def _timedelta(v: Any) -> datetime.timedelta:
    if not (type(v) is list and len(v) == 3 and all(type(x) is int for x in v)):
        raise TypeError("a timedelta is [days, seconds, microseconds]")
    return datetime.timedelta(days=v[0], seconds=v[1], microseconds=v[2])


_DTYPES = TORCH_DTYPES


def _dtype(v: Any) -> torch.dtype:
    if _typed(str, v) not in _DTYPES:
        raise ValueError(f"unknown torch dtype {v[:40]!r}")
    return _DTYPES[v]


#: The types a Lightning checkpoint holds beyond what the tree encodes itself.
TYPES = TypeRegistry((
    TypeCodec("lightning.AttributeDict", AttributeDict, dict, lambda v: AttributeDict(_typed(dict, v))),
    TypeCodec("argparse.Namespace", argparse.Namespace, lambda v: dict(vars(v)), _namespace),
    TypeCodec("set", set, list, lambda v: set(_typed(list, v))),
    TypeCodec("frozenset", frozenset, list, lambda v: frozenset(_typed(list, v))),
    *(_path(c) for c in (pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath,
                         pathlib.PureWindowsPath)),
    TypeCodec("datetime.timedelta", datetime.timedelta,
              lambda v: [v.days, v.seconds, v.microseconds], _timedelta),
    TypeCodec("torch.dtype", torch.dtype, lambda v: str(v).removeprefix("torch."), _dtype),
    TypeCodec("torch.device", torch.device, str, lambda v: torch.device(_typed(str, v))),
))
#: Conversion kinds of the earlier encoding -> codec names (the stored values are the same).
_LEGACY = {"AttributeDict": "lightning.AttributeDict", "Namespace": "argparse.Namespace",
           "set": "set", "frozenset": "frozenset", "timedelta": "datetime.timedelta",
           "torch.dtype": "torch.dtype", "torch.device": "torch.device",
           **{c: f"pathlib.{c}" for c in ("PosixPath", "WindowsPath", "PurePosixPath",
                                          "PureWindowsPath")}}


def encode_checkpoint(checkpoint: Mapping[str, Any]) -> tuple[Any, list[Leaf]]:
    """Encode the Lightning ``checkpoint`` with :data:`TYPES` (strictly: no subclass of a
    built-in type is stored as its base); returns ``(json_tree, leaves)`` as
    :func:`cloudckpt.format.tree.encode_tree` does. Called by
    :meth:`~.io.CloudckptIO.save_checkpoint`; any caller.

    Raises:
        UnsupportedValue: a value of a type that cannot be stored faithfully (the message
            names its key path, e.g. ``state['hyper_parameters']['mode']``), or the checkpoint
            uses :data:`RESERVED_KEY`.
    """
    if type(checkpoint) not in (dict, OrderedDict):
        raise UnsupportedValue("a Lightning checkpoint must be a dict, not "
                               f"{type(checkpoint).__module__}.{type(checkpoint).__qualname__}")
    if RESERVED_KEY in checkpoint:
        raise UnsupportedValue(f"state[{RESERVED_KEY!r}]: this key is reserved by cloudckpt")
    return encode_tree(checkpoint, types=TYPES, strict=True)


def decode_checkpoint(tree: Any, leaf: Callable[[int], Any]) -> dict[str, Any]:
    """Rebuild the Lightning checkpoint dict from its stored tree (``leaf(i)`` returns leaf
    ``i``, as for :func:`cloudckpt.format.tree.decode_tree`), including checkpoints of the
    earlier encoding. Called by :meth:`~.io.CloudckptIO.load_checkpoint`; any caller.

    Raises:
        CorruptCheckpoint: the tree does not validate, its root is not a dict, or the
            recorded conversions of the earlier encoding do not match it.
    """
    state = decode_tree(tree, leaf, types=TYPES)
    if not isinstance(state, dict):
        raise CorruptCheckpoint(f"not a Lightning checkpoint: the root is a {type(state).__name__}")
    info = state.pop(RESERVED_KEY, None)
    if info is None:
        return state
    if not (isinstance(info, dict) and info.get("format") == FORMAT
            and isinstance(info.get("conversions", []), list)):
        raise CorruptCheckpoint(f"unknown Lightning checkpoint encoding in {RESERVED_KEY!r}")
    for entry in info.get("conversions", []):
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], list)
                and entry[0] and isinstance(entry[1], str) and entry[1] in _LEGACY):
            raise CorruptCheckpoint(f"malformed conversion record in {RESERVED_KEY!r}")
        keys, kind = entry
        codec = TYPES.by_name(_LEGACY[kind])
        assert codec is not None
        parent: Any = state
        try:
            for k in keys[:-1]:
                parent = parent[k]
            parent[keys[-1]] = codec.decode(parent[keys[-1]])
        except (LookupError, TypeError, ValueError, ArithmeticError, AttributeError,
                RuntimeError) as e:
            raise CorruptCheckpoint(f"{path_str(keys)[:200]}: conversion {kind!r} does not match "
                                    f"the state ({type(e).__name__})") from e
    return state
