"""Planning a checkpoint average from manifests alone: which tensors of each input belong
together, checked before any tensor byte is read (see :mod:`cloudckpt.manager.average`).

An input is one checkpoint's manifest plus the sub-tree of the object being averaged
(``objects/<name>`` of a manager checkpoint). Its *skeleton* maps each tensor's key path to
its leaf index, and each non-tensor value (and container kind) to its JSON. Inputs must have
the same tensor paths, the same kind/dtype/shape at each path, the same non-tensor values and
the same tying (two paths sharing one tensor). Pure: no I/O; any caller.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cloudckpt.errors import CorruptCheckpoint, InvalidArgument
from cloudckpt.format.dtypes import torch_dtype
from cloudckpt.format.manifest import Manifest, TensorRecord
from cloudckpt.format.tree import MAX_DEPTH

__all__ = ["AverageItem", "Skeleton", "accumulator_dtype", "batches", "plan_items", "show",
           "skeleton", "subtree"]

Path = tuple[str, ...]
_MAX_LISTED = 8


def show(path: Path) -> str:
    """``fc/weight``-style text of a skeleton path (dict keys as written, ``[i]`` indices)."""
    return "/".join(json.loads(p) if p.startswith('"') else p for p in path) or "(root)"


def _listed(paths: Sequence[Path]) -> str:
    names = [show(p) for p in sorted(paths)]
    more = f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
    return ", ".join(names[:_MAX_LISTED]) + more


def _items(node: dict[str, Any], where: str) -> list[Any]:
    items = node.get("items")
    if not isinstance(items, list):
        raise CorruptCheckpoint(f"{where}: malformed tree (items must be a list)")
    return items


def subtree(tree: Any, keys: Sequence[str], where: str) -> Any:
    """The node below ``tree`` at the string dict keys ``keys``.

    Raises:
        InvalidArgument: a key is missing (the message lists what is there).
        CorruptCheckpoint: a malformed node on the way.
    """
    node = tree
    for depth, key in enumerate(keys):
        if not (isinstance(node, dict) and node.get("t") in ("dict", "odict")):
            raise InvalidArgument(f"{where}: {'/'.join(keys[:depth]) or 'the tree'} is not a "
                                  f"dict, so it has no {key!r}")
        pairs = _items(node, where)
        found = [p[1] for p in pairs if isinstance(p, list) and len(p) == 2 and p[0] == key]
        if not found:
            names = sorted(str(p[0]) for p in pairs if isinstance(p, list) and len(p) == 2)
            raise InvalidArgument(f"{where}: no {'/'.join(keys[:depth + 1])!r} in the checkpoint"
                                  f" (there: {', '.join(names[:20]) or 'nothing'})")
        node = found[0]
    return node


@dataclass(frozen=True)
class Skeleton:
    """Tensor paths -> leaf index, and other paths -> the JSON of their value or container."""

    leaves: dict[Path, int]
    values: dict[Path, str]


def skeleton(node: Any, n_tensors: int, where: str) -> Skeleton:
    """Walk ``node`` (without recursion, at most ``MAX_DEPTH`` deep).

    Raises:
        CorruptCheckpoint: a malformed node, a leaf index outside the manifest, too deep.
    """
    leaves: dict[Path, int] = {}
    values: dict[Path, str] = {}
    stack: list[tuple[Path, Any]] = [((), node)]
    while stack:
        path, n = stack.pop()
        if len(path) > MAX_DEPTH:
            raise CorruptCheckpoint(f"{where}: tree nested deeper than {MAX_DEPTH} levels")
        tag = n.get("t") if isinstance(n, dict) else None
        if tag == "leaf":
            i = n.get("i")
            if type(i) is not int or not 0 <= i < n_tensors:
                raise CorruptCheckpoint(f"{where}: {show(path)} references leaf {i!r} of "
                                        f"{n_tensors}")
            leaves[path] = i
        elif tag in ("dict", "odict"):
            values[path] = json.dumps([tag, n.get("meta")], sort_keys=True)
            pairs = _items(n, where)
            for pair in reversed(pairs):  # a stack: pushed last, walked first (tree order)
                if not (isinstance(pair, list) and len(pair) == 2):
                    raise CorruptCheckpoint(f"{where}: malformed dict item at {show(path)}")
                stack.append(((*path, json.dumps(pair[0], sort_keys=True)), pair[1]))
        elif tag in ("list", "tuple", "size"):
            values[path] = tag
            elems = list(enumerate(_items(n, where)))
            stack.extend(((*path, f"[{k}]"), v) for k, v in reversed(elems))
        elif tag == "ext":
            values[path] = json.dumps(["ext", n.get("name")])
            stack.append(((*path, "<value>"), n.get("value")))
        else:
            values[path] = json.dumps(n, sort_keys=True)
    return Skeleton(leaves, values)


@dataclass(frozen=True)
class AverageItem:
    """One output tensor: its path, the leaf index in each input (in input order), the record
    of the first input, and whether it must be bit-equal across inputs (ints, bools)."""

    path: Path
    indices: tuple[int, ...]
    record: TensorRecord
    exact: bool


def _floating(rec: TensorRecord, where: str) -> bool:
    if rec.kind == "torch":
        dt = torch_dtype(rec.dtype)  # a fixed table: never getattr(torch, <untrusted name>)
        return dt.is_floating_point or dt.is_complex
    try:
        return np.dtype(rec.dtype).kind in "fc"
    except (TypeError, ValueError, SyntaxError) as e:
        raise CorruptCheckpoint(f"{where}: unknown numpy dtype {rec.dtype!r}") from e


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 for fp32/fp64 inputs, fp32 for narrower floats, complex128/complex64 for complex."""
    if dtype.is_complex:
        return torch.complex64 if dtype == torch.complex32 else torch.complex128
    return torch.float64 if dtype in (torch.float32, torch.float64) else torch.float32


def _compare(first: tuple[Manifest, Skeleton, str], other: tuple[Manifest, Skeleton, str],
             obj: str) -> dict[int, int]:
    (m0, sk0, w0), (m1, sk1, w1) = first, other
    missing = [p for p in sk0.leaves if p not in sk1.leaves]
    extra = [p for p in sk1.leaves if p not in sk0.leaves]
    if missing or extra:
        raise InvalidArgument(
            f"{w1} does not match {w0} in {obj!r}: "
            + "; ".join(part for part in (f"missing {_listed(missing)}" if missing else "",
                                          f"extra {_listed(extra)}" if extra else "") if part)
            + " (checkpoints of different models cannot be averaged)")
    tie: dict[int, int] = {}
    back: dict[int, int] = {}
    for p, i0 in sk0.leaves.items():
        r0, r1 = m0.tensors[i0], m1.tensors[sk1.leaves[p]]
        if (r0.kind, r0.dtype, r0.shape) != (r1.kind, r1.dtype, r1.shape):
            raise InvalidArgument(
                f"{obj}/{show(p)}: {r0.dtype}{list(r0.shape)} in {w0} but "
                f"{r1.dtype}{list(r1.shape)} in {w1}; averaged tensors must match in kind, "
                "dtype and shape")
        i1 = sk1.leaves[p]
        if tie.setdefault(i0, i1) != i1 or back.setdefault(i1, i0) != i0:
            raise InvalidArgument(f"{obj}/{show(p)}: tensors are shared (tied) differently in "
                                  f"{w0} and {w1}")
    diff = sorted(p for p in set(sk0.values) | set(sk1.values)
                  if sk0.values.get(p) != sk1.values.get(p))
    if diff:
        raise InvalidArgument(
            f"{obj}/{show(diff[0])}: a non-tensor value differs between {w0} and {w1}; average "
            "a sub-tree that holds only tensors (e.g. obj='ema/shadow', --object ema/shadow)")
    return tie


def plan_items(inputs: Sequence[tuple[Manifest, Skeleton, str]], obj: str) -> list[AverageItem]:
    """The output tensors, exact (int/bool) ones first, then by leaf index of the first input.
    ``inputs``: (manifest, skeleton of the averaged object, name for messages) per input.

    Raises:
        InvalidArgument: the inputs differ (keys, dtypes, shapes, values, tying); names them.
        CorruptCheckpoint: an unknown dtype in a manifest.
    """
    ties = [_compare(inputs[0], other, obj) for other in inputs[1:]]
    m0, sk0, w0 = inputs[0]
    first_path: dict[int, Path] = {}
    for p, i0 in sorted(sk0.leaves.items(), key=lambda pi: pi[1]):
        first_path.setdefault(i0, p)
    items = [AverageItem(p, (i0, *(t[i0] for t in ties)), m0.tensors[i0],
                         not _floating(m0.tensors[i0], w0))
             for i0, p in first_path.items()]
    return sorted(items, key=lambda it: (not it.exact, it.indices[0]))


def batches(items: Sequence[AverageItem], batch_bytes: int) -> list[list[AverageItem]]:
    """Consecutive groups of at most ``batch_bytes`` raw bytes (a bigger tensor alone)."""
    out: list[list[AverageItem]] = []
    size = 0
    for it in items:
        if not out or (out[-1] and size + it.record.nbytes > batch_bytes):
            out.append([])
            size = 0
        out[-1].append(it)
        size += it.record.nbytes
    return out
