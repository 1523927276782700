"""PyTorch Lightning integration: :class:`CloudckptIO`, a ``CheckpointIO`` plugin.

Usage::

    trainer = Trainer(plugins=[CloudckptIO(storage_options=opts)],
                      callbacks=[ModelCheckpoint(dirpath="s3://bucket/run", ...)])

Every checkpoint "file" Lightning writes (``s3://bucket/run/epoch=0-step=10.ckpt``,
``.../last.ckpt``) becomes a cloudckpt checkpoint rooted at that URI, i.e. a "directory" holding
``manifest.json`` and ``data/``; no pickle is written or read. Re-saving the same path (Lightning
does that for ``last.ckpt``) replaces it atomically: readers see the old or the new checkpoint,
never a mix.

Who calls what: Lightning's ``Strategy`` calls :meth:`CloudckptIO.save_checkpoint` (from
``Trainer.save_checkpoint``, i.e. ``ModelCheckpoint``), :meth:`CloudckptIO.load_checkpoint`
(``trainer.fit(ckpt_path=...)``, ``validate/test/predict(ckpt_path=...)``) and
:meth:`CloudckptIO.remove_checkpoint` (``ModelCheckpoint`` top-k rotation and ``last.ckpt``
replacement), all on the training process; saves and removals only on global rank 0.

Encoding. cloudckpt stores tensors, arrays, dicts/lists/tuples and plain scalars. A Lightning
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
:data:`RESERVED_KEY`) still load.

ModelCheckpoint and fsspec. ``ModelCheckpoint`` also touches ``dirpath`` itself through an
fsspec filesystem it builds *without* storage options (``get_filesystem(dirpath)``): to warn
that the directory is not empty, ``file_exists`` for its version counter (``-v1`` names) and to
list ``last*.ckpt`` for ``ckpt_path="last"``. With a cloudckpt checkpoint being a prefix, those
calls see it as a directory, which fsspec's ``exists``/``ls`` report like a file. For them to
reach the same bucket, fsspec's defaults must: ambient credentials on AWS/GCP/Azure, or for a
custom endpoint (MinIO, moto) ``fsspec.config.conf["s3"] = {"endpoint_url": ..., ...}`` or the
``FSSPEC_S3_*`` / ``AWS_ENDPOINT_URL`` environment variables. After each save and removal this
plugin drops that filesystem's listing cache for the path so those checks do not go stale.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import os
import pathlib
import shutil
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import torch
from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch.plugins.io import CheckpointIO

from cloudckpt.engine.commit import delete_checkpoint, read_manifest
from cloudckpt.engine.reader import place, read_leaves
from cloudckpt.engine.writer import write_encoded
from cloudckpt.errors import CorruptCheckpoint, InvalidArgument, UnsupportedValue
from cloudckpt.format.dtypes import TORCH_DTYPES
from cloudckpt.format.tree import Leaf, decode_tree, encode_tree, leaf_indices, path_str
from cloudckpt.format.types import TypeCodec, TypeRegistry
from cloudckpt.storage import open_store
from cloudckpt.storage.uri import parse_uri

__all__ = ["TYPES", "CloudckptIO", "decode_checkpoint", "encode_checkpoint"]

log = logging.getLogger("cloudckpt.integrations.lightning")

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
    :func:`cloudckpt.format.tree.encode_tree` does. Called by :meth:`CloudckptIO.save_checkpoint`.

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
    earlier encoding. Called by :meth:`CloudckptIO.load_checkpoint`.

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


def _invalidate_listing_cache(path: str) -> None:
    """Drop cached listings of ``path`` and its parents in the default fsspec filesystem for
    it, the one ``ModelCheckpoint`` checks existence with. Best effort, no network."""
    with contextlib.suppress(Exception):
        from fsspec.core import url_to_fs

        fs, p = url_to_fs(path)
        fs.invalidate_cache(p)


class CloudckptIO(CheckpointIO):  # type: ignore[misc, unused-ignore]
    """Lightning ``CheckpointIO`` that saves, loads and removes checkpoints with cloudckpt.

    ``storage_options`` go to the store (``endpoint_url``, ``key``/``secret``, ``token``,
    ``connection_string``...); ``compression`` as for :func:`cloudckpt.save`. Paths may be
    local or any URI cloudckpt supports (``s3://``, ``gs://``, ``az://``...). Pass it to
    ``Trainer(plugins=[CloudckptIO(...)])``.

    Raises (constructor): InvalidArgument for a bad ``compression``.
    """

    def __init__(self, storage_options: Mapping[str, Any] | None = None, *,
                 compression: str = "auto") -> None:
        from cloudckpt.format.codecs import check_compression

        super().__init__()
        check_compression(compression)
        self.storage_options: dict[str, Any] = dict(storage_options or {})
        self.compression = compression

    def _options(self, extra: Any = None) -> dict[str, Any]:
        if extra is None:
            return self.storage_options
        if not isinstance(extra, Mapping):
            raise TypeError(f"storage_options must be a mapping of fsspec options, not "
                            f"{type(extra).__name__}")
        return {**self.storage_options, **extra}

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike[str],
                        storage_options: Any | None = None) -> None:
        """Save ``checkpoint`` as a cloudckpt checkpoint at ``path``, replacing one already
        there. ``storage_options`` (from ``Trainer.save_checkpoint``) are merged over the
        plugin's. Called by Lightning's ``Strategy.save_checkpoint`` on global rank 0.

        Raises:
            UnsupportedValue: a value that cannot be stored (its key path is named); nothing
                is written.
            TypeError: ``storage_options`` is not a mapping.
            StorageError and subclasses: the store failed; the previous checkpoint at
                ``path``, if any, is still intact.
        """
        uri = os.fspath(path)
        tree, leaves = encode_checkpoint(checkpoint)
        meta = {"lightning": {k: checkpoint[k] for k in ("epoch", "global_step",
                                                         "pytorch-lightning_version")
                              if isinstance(checkpoint.get(k), (int, str))
                              and not isinstance(checkpoint.get(k), bool)}}
        write_encoded(tree, leaves, uri, storage_options=self._options(storage_options),
                      overwrite=True, metadata=meta, compression=self.compression)
        _invalidate_listing_cache(uri)

    def load_checkpoint(self, path: str | os.PathLike[str], map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """Load the checkpoint at ``path``. ``map_location``: ``None`` (each tensor to the
        device it was saved from when that exists here, else CPU, like ``torch.load``), a
        device string or a ``torch.device``. ``weights_only`` is accepted for Lightning's
        signature and has no effect: nothing is unpickled, ever. Called by Lightning's
        ``Strategy.load_checkpoint`` (``fit/validate/test/predict(ckpt_path=...)``).

        Raises:
            NotFound: no checkpoint at ``path`` (a ``FileNotFoundError``, as Lightning expects).
            IncompleteCheckpoint: a save to ``path`` crashed or is still running.
            CorruptCheckpoint: the data or the Lightning encoding does not validate.
            InvalidArgument: ``map_location`` is a callable or a dict (use a device).
        """
        if map_location is not None and not isinstance(map_location, (str, torch.device)):
            raise InvalidArgument("CloudckptIO.load_checkpoint: map_location must be None, a "
                                  f"device string or a torch.device, not {type(map_location).__name__}")
        store = open_store(os.fspath(path), storage_options=self.storage_options)
        m = read_manifest(store)
        need = leaf_indices(m.tree)
        if need and max(need) >= len(m.tensors):
            raise CorruptCheckpoint(f"{store.uri}: tree references leaf {max(need)} of {len(m.tensors)}")
        leaves = read_leaves(m, need, store, storage_options=self.storage_options)
        return decode_checkpoint(m.tree, lambda i: place(leaves[i], m.tensors[i], map_location))

    def remove_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Delete the checkpoint at ``path`` (manifest first, so it disappears atomically;
        then its data). Nothing there is not an error. A local checkpoint's emptied directory
        is removed too, so ``ModelCheckpoint`` no longer sees the path. Called by Lightning's
        ``Strategy.remove_checkpoint`` on global rank 0.

        Raises:
            StorageError and subclasses: the store failed (the checkpoint may already be gone;
                left-over data is found by ``cloudckpt`` garbage collection).
        """
        uri = os.fspath(path)
        store = open_store(uri, storage_options=self.storage_options)
        delete_checkpoint(store)
        parsed = parse_uri(uri)
        if parsed.protocol == "file":
            root = parsed.root
            if os.path.isdir(root) and not any(files for _, _, files in os.walk(root)):
                shutil.rmtree(root, ignore_errors=True)
        _invalidate_listing_cache(uri)
        log.debug("removed checkpoint %s", uri)
