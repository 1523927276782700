"""The type registry of the tree encoding: how values of extra types become tree-encodable
values and back, under a stable name (see :mod:`cloudckpt.format.tree`).

A :class:`TypeCodec` names one type; a :class:`TypeRegistry` is an immutable set of codecs,
passed as ``types=`` to :func:`~cloudckpt.format.tree.encode_tree` and
:func:`~cloudckpt.format.tree.decode_tree`. The stored tree records only the codec's name;
decoding looks the name up in the registry it was given and calls that codec's ``decode``,
so a checkpoint can rebuild only the types its reader registered, never a type or function
named by the data.

Example::

    DAYS = TypeCodec("datetime.timedelta", datetime.timedelta,
                     encode=lambda v: [v.days, v.seconds, v.microseconds],
                     decode=lambda v: datetime.timedelta(*v))
    TYPES = TypeRegistry((DAYS,))
    tree, leaves = encode_tree(state, types=TYPES)
    state = decode_tree(tree, leaf, types=TYPES)
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, TypeVar

import numpy as np
import torch

from cloudckpt.errors import InvalidArgument

__all__ = ["NO_TYPES", "TypeCodec", "TypeRegistry"]

T = TypeVar("T")

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,127}")
#: Types the tree encodes itself; a codec cannot replace them.
_BUILTIN: frozenset[type] = frozenset({
    type(None), bool, int, float, str, bytes, dict, OrderedDict, list, tuple, torch.Size,
    torch.Tensor, torch.nn.Parameter, np.ndarray})


@dataclass(frozen=True)
class TypeCodec(Generic[T]):
    """How to store values whose type is exactly ``type`` (subclasses are not claimed).

    ``encode(value)`` returns a value the tree can encode: plain scalars, containers,
    tensors, or other registered types. ``decode(value)`` receives that value as decoded
    (lists stay lists, ...) and returns the rebuilt object. ``decode`` is given untrusted
    data: it must check what it receives and raise ``TypeError``/``ValueError`` for anything
    it cannot rebuild (the decoder turns those, and ``LookupError``, ``ArithmeticError``,
    ``AttributeError`` and ``RuntimeError``, into ``CorruptCheckpoint``); it must never
    import, open or call anything named by the value.

    ``name`` is what the checkpoint stores: keep it stable across releases (letters,
    digits, ``_ . : -``, at most 128 characters; ``"pathlib.PosixPath"``).
    """

    name: str
    type: type[T]
    encode: Callable[[T], Any]
    decode: Callable[[Any], T]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise InvalidArgument(f"TypeCodec name {self.name!r}: use 1-128 letters, digits "
                                  "and _ . : - starting with a letter or _")
        if not isinstance(self.type, type):
            raise InvalidArgument(f"TypeCodec {self.name!r}: type must be a class, not "
                                  f"{self.type!r}")
        if self.type in _BUILTIN:
            raise InvalidArgument(f"TypeCodec {self.name!r}: {self.type.__qualname__} is "
                                  "encoded by the tree itself and cannot be registered")
        if not (callable(self.encode) and callable(self.decode)):
            raise InvalidArgument(f"TypeCodec {self.name!r}: encode and decode must be callable")


@dataclass(frozen=True)
class TypeRegistry:
    """An immutable set of :class:`TypeCodec`, each name and each type at most once.

    ``TypeRegistry((a, b))``; :meth:`with_codecs` returns a new registry with more codecs.

    Raises (constructor):
        InvalidArgument: a name or a type registered twice, or an item that is not a
            :class:`TypeCodec`.
    """

    codecs: tuple[TypeCodec[Any], ...] = ()
    _by_name: Mapping[str, TypeCodec[Any]] = field(init=False, repr=False, compare=False)
    _by_type: Mapping[type, TypeCodec[Any]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        codecs = tuple(self.codecs)
        by_name: dict[str, TypeCodec[Any]] = {}
        by_type: dict[type, TypeCodec[Any]] = {}
        for c in codecs:
            if not isinstance(c, TypeCodec):
                raise InvalidArgument(f"TypeRegistry takes TypeCodec items, not {type(c).__name__}")
            if c.name in by_name:
                raise InvalidArgument(f"TypeRegistry: the name {c.name!r} is registered twice")
            if c.type in by_type:
                raise InvalidArgument(f"TypeRegistry: {c.type.__qualname__} is registered twice "
                                      f"({by_type[c.type].name!r} and {c.name!r})")
            by_name[c.name], by_type[c.type] = c, c
        object.__setattr__(self, "codecs", codecs)
        object.__setattr__(self, "_by_name", MappingProxyType(by_name))
        object.__setattr__(self, "_by_type", MappingProxyType(by_type))

    def with_codecs(self, *codecs: TypeCodec[Any]) -> TypeRegistry:
        """A new registry holding this one's codecs and ``codecs``."""
        return TypeRegistry((*self.codecs, *codecs))

    def for_value(self, value: Any) -> TypeCodec[Any] | None:
        """The codec registered for ``type(value)`` exactly, if any."""
        return self._by_type.get(type(value))

    def by_name(self, name: str) -> TypeCodec[Any] | None:
        """The codec registered under ``name``, if any."""
        return self._by_name.get(name) if isinstance(name, str) else None

    def __iter__(self) -> Iterator[TypeCodec[Any]]:
        return iter(self.codecs)

    def __len__(self) -> int:
        return len(self.codecs)


#: The empty registry: the default of ``encode_tree``/``decode_tree``.
NO_TYPES = TypeRegistry()
