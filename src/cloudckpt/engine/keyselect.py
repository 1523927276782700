"""Which parts of a checkpoint ``load(uri, keys=[...])`` reads: the key-selection rule.

Each key is a path of string dict keys separated by ``/``, walked from the root of the saved
state (``"model"``, ``"optimizer/state"``; empty segments are ignored, so ``"/a//b/"`` is
``"a/b"``). At each dict on the way, a segment selects

1. the entry whose key *equals* the segment, if the dict has one (an exact match wins);
2. otherwise every entry whose key starts with the segment *and a dot*: a dotted prefix, as
   module paths are in a flat ``state_dict``. ``"encoder"`` selects ``"encoder.weight"`` and
   ``"encoder.layer.0.bias"``, but not ``"encoder2.weight"`` nor ``"encoder_norm.bias"``;
   ``"encoder.layer.1"`` selects ``"encoder.layer.1.weight"``, not ``"encoder.layer.10.weight"``.
   A segment that already ends with a dot (``"encoder."``) is used as the prefix itself, which
   selects the dotted entries even where an entry named exactly ``"encoder"`` exists.

A prefix match selects its entries whole, so it must be the last segment of its key
(``"encoder/weight"`` where only ``"encoder.weight"`` exists is refused, not guessed). Entries
keep their full names: on a flat ``state_dict``, ``keys=["encoder"]`` returns
``{"encoder.layer.0.weight": ..., ...}``, ready for ``model.load_state_dict(sd, strict=False)``.
The result is the saved structure restricted to the selected entries, in saved order; several
keys select the union (an entry selected whole by one key and in part by another is whole).
Only string keys are matched; lists, tuples and tensors cannot be selected into.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cloudckpt.errors import CorruptCheckpoint, InvalidArgument

__all__ = ["select_keys"]

_DICTS = ("dict", "odict")


def _segments(key: Any) -> tuple[str, ...]:
    if not isinstance(key, str):
        raise InvalidArgument(f"keys must be strings like 'model' or 'optimizer/state', not "
                              f"{type(key).__name__}")
    segs = tuple(s for s in key.split("/") if s)
    if not segs:
        raise InvalidArgument(f"empty key {key!r}: name a dict key such as 'model'")
    return segs


def _prefix(segment: str) -> str:
    return segment if segment.endswith(".") else segment + "."


def _items(node: Any, where: str, wanted: Sequence[str]) -> list[list[Any]]:
    """The ``[key, value]`` items of a dict node, validated."""
    if not (isinstance(node, dict) and node.get("t") in _DICTS):
        raise KeyError(f"cannot select {sorted(set(wanted))} below {where or 'the root'}: "
                       "it is not a dict")
    items = node.get("items")
    if not isinstance(items, list) or not all(isinstance(i, list) and len(i) == 2 for i in items):
        raise CorruptCheckpoint(f"{where or 'root'}: dict items must be [key, value] pairs")
    return items


def _select(node: Any, paths: list[tuple[str, ...]], where: str) -> Any:
    heads: dict[str, list[tuple[str, ...]]] = {}
    for p in paths:
        heads.setdefault(p[0], []).append(p[1:])
    items = _items(node, where, list(heads))
    names = {k for k, _ in items if isinstance(k, str)}
    exact: dict[str, list[tuple[str, ...]]] = {}
    prefixes: set[str] = set()
    missing: list[str] = []
    for head, rests in heads.items():
        if head in names:
            exact[head] = rests
            continue
        prefix = _prefix(head)
        deeper = [r for r in rests if r]
        if deeper:
            if any(n.startswith(prefix) for n in names):
                raise InvalidArgument(
                    f"{where + '/' if where else ''}{head}/{'/'.join(deeper[0])}: {head!r} only "
                    f"matches entries named {prefix}*, which are selected whole; drop the rest "
                    "of the key")
            missing.append(head)
        elif any(n.startswith(prefix) for n in names):
            prefixes.add(prefix)
        else:
            missing.append(head)
    if missing:
        raise KeyError(f"no such key(s) in the checkpoint{' under ' + where if where else ''}: "
                       f"{sorted(missing)} (neither an entry of that name nor entries named "
                       "'<key>.*')")
    out = []
    for k, v in items:
        if not isinstance(k, str):
            continue
        whole = any(k.startswith(p) for p in prefixes) or () in exact.get(k, [])
        if whole:
            out.append([k, v])
        elif k in exact:
            out.append([k, _select(v, exact[k], f"{where}/{k}" if where else k)])
    return {**node, "items": out}


def select_keys(tree: Any, keys: Sequence[str]) -> Any:
    """Prune the manifest's JSON ``tree`` to the entries ``keys`` select, by the rule in this
    module's docstring. Pure; any caller (:func:`cloudckpt.load` uses it).

    Raises:
        InvalidArgument: ``keys`` is a string or holds a non-string or empty key, or a key
            continues below a dotted-prefix match.
        KeyError: a key selects nothing (message says which), or walks into a non-dict.
        CorruptCheckpoint: a dict node on the way is malformed.
    """
    if isinstance(keys, (str, bytes)):
        raise InvalidArgument(f"keys must be a list of keys, e.g. keys=[{keys!r}], not a string")
    paths = [_segments(k) for k in keys]
    return _select(tree, paths, "") if paths else tree
