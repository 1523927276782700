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
rebuilt on load: ``OrderedDict`` (with its ``_metadata``), Lightning's ``AttributeDict``,
``argparse.Namespace``, ``pathlib`` paths, ``set``/``frozenset``, ``datetime.timedelta``,
``torch.dtype`` and ``torch.device``. Any other type (enums, dataclasses, user classes,
``defaultdict``, namedtuples, other dict/list/tuple subclasses...) raises
:class:`~cloudckpt.errors.UnsupportedValue` naming its key path, before anything is written;
nothing is ever dropped or silently converted.

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
from collections.abc import Mapping
from typing import Any

import torch
from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch.plugins.io import CheckpointIO

import cloudckpt
from cloudckpt.engine.commit import delete_checkpoint
from cloudckpt.errors import CorruptCheckpoint, InvalidArgument, UnsupportedValue
from cloudckpt.format.tree import path_str
from cloudckpt.storage import open_store
from cloudckpt.storage.uri import parse_uri

__all__ = ["CloudckptIO", "decode_checkpoint", "encode_checkpoint"]

log = logging.getLogger("cloudckpt.integrations.lightning")

#: Reserved top-level key holding the type conversions applied at save time.
RESERVED_KEY = "__cloudckpt_lightning__"
FORMAT = "cloudckpt.lightning/1"

_CONTAINERS = (dict, OrderedDict, AttributeDict, list, tuple, argparse.Namespace, set, frozenset)
_PATH_TYPES: dict[str, type[pathlib.PurePath]] = {
    "PosixPath": pathlib.PosixPath, "WindowsPath": pathlib.WindowsPath,
    "PurePosixPath": pathlib.PurePosixPath, "PureWindowsPath": pathlib.PureWindowsPath,
    "Path": pathlib.Path, "PurePath": pathlib.PurePath,
}


def encode_checkpoint(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of the Lightning ``checkpoint`` that :func:`cloudckpt.save` can store,
    with the conversions recorded under :data:`RESERVED_KEY`. Tensors are not copied.

    Called by :meth:`CloudckptIO.save_checkpoint`.

    Raises:
        UnsupportedValue: a value of a type that cannot be stored faithfully (the message
            names its key path, e.g. ``state['hyper_parameters']['mode']``), or the checkpoint
            already uses :data:`RESERVED_KEY`.
    """
    if type(checkpoint) not in (dict, OrderedDict):
        raise UnsupportedValue("a Lightning checkpoint must be a dict, not "
                               f"{type(checkpoint).__module__}.{type(checkpoint).__qualname__}")
    if RESERVED_KEY in checkpoint:
        raise UnsupportedValue(f"state[{RESERVED_KEY!r}]: this key is reserved by cloudckpt")
    conversions: list[list[Any]] = []  # [key path, kind], children before their parents
    active: set[int] = set()

    def walk(v: Any, parts: tuple[Any, ...]) -> Any:
        if type(v) in _CONTAINERS:
            if id(v) in active:
                raise UnsupportedValue(f"{path_str(parts)}: the state contains a reference cycle")
            active.add(id(v))
            try:
                return convert(v, parts)
            finally:
                active.discard(id(v))
        return convert(v, parts)

    def convert(v: Any, parts: tuple[Any, ...]) -> Any:
        t = type(v)
        if t in (dict, OrderedDict, AttributeDict):
            items = [(k, walk(x, (*parts, k))) for k, x in v.items()]
            if t is OrderedDict:
                out: dict[Any, Any] = OrderedDict(items)
                meta = getattr(v, "_metadata", None)
                if meta is not None:
                    out._metadata = meta  # type: ignore[attr-defined]
                return out
            if t is AttributeDict:
                conversions.append([list(parts), "AttributeDict"])
            return dict(items)
        if t is list:
            return [walk(x, (*parts, i)) for i, x in enumerate(v)]
        if t is tuple:
            return tuple(walk(x, (*parts, i)) for i, x in enumerate(v))
        if t is argparse.Namespace:
            fields = {k: walk(x, (*parts, k)) for k, x in vars(v).items()}
            conversions.append([list(parts), "Namespace"])  # after its children: see decode
            return fields
        if t in (set, frozenset):
            members = [walk(x, (*parts, i)) for i, x in enumerate(v)]
            conversions.append([list(parts), t.__name__])
            return members
        if isinstance(v, pathlib.PurePath) and t.__name__ in _PATH_TYPES:
            conversions.append([list(parts), t.__name__])
            return str(v)
        if t is datetime.timedelta:
            conversions.append([list(parts), "timedelta"])
            return [v.days, v.seconds, v.microseconds]
        if t is torch.dtype:
            conversions.append([list(parts), "torch.dtype"])
            return str(v).removeprefix("torch.")
        if t is torch.device:
            conversions.append([list(parts), "torch.device"])
            return str(v)
        if isinstance(v, (str, bytes)) and t not in (str, bytes):
            raise UnsupportedValue(
                f"{path_str(parts)}: {t.__module__}.{t.__qualname__} (a str/bytes subclass, e.g. "
                "a StrEnum) would load back as a plain str/bytes; store its value instead")
        if isinstance(v, (dict, list, tuple, set, frozenset)) and not isinstance(v, torch.Size):
            base = next(b for b in t.__mro__ if b in (dict, list, tuple, set, frozenset))
            raise UnsupportedValue(
                f"{path_str(parts)}: {t.__module__}.{t.__qualname__} (a subclass of "
                f"{base.__name__}) cannot be checkpointed faithfully without pickle; convert it "
                "to a plain dict/list/tuple")
        return v  # tensors, arrays, scalars, torch.Size; cloudckpt.save rejects the rest

    out: dict[str, Any] = walk(checkpoint, ())
    out[RESERVED_KEY] = {"format": FORMAT, "conversions": conversions}
    return out


def _rebuild(kind: str, v: Any, where: str) -> Any:
    try:
        if kind == "AttributeDict":
            return AttributeDict(v)
        if kind == "Namespace":
            return argparse.Namespace(**v)
        if kind == "set":
            return set(v)
        if kind == "frozenset":
            return frozenset(v)
        if kind in _PATH_TYPES:
            return _PATH_TYPES[kind](v)
        if kind == "timedelta":
            days, seconds, micro = v
            return datetime.timedelta(days=days, seconds=seconds, microseconds=micro)
        if kind == "torch.dtype":
            dt = getattr(torch, v, None)
            if isinstance(dt, torch.dtype):
                return dt
        elif kind == "torch.device":
            return torch.device(v)
    except (TypeError, ValueError, RuntimeError, NotImplementedError) as e:
        raise CorruptCheckpoint(f"{where}: cannot rebuild {kind} from {v!r}: {e}") from e
    raise CorruptCheckpoint(f"{where}: unknown conversion {kind!r} for {v!r}")


def decode_checkpoint(state: Any) -> dict[str, Any]:
    """Rebuild the Lightning checkpoint dict from what :func:`cloudckpt.load` returned for a
    checkpoint written by :func:`encode_checkpoint` (a plain cloudckpt checkpoint whose root
    is a dict is returned as is). Called by :meth:`CloudckptIO.load_checkpoint`.

    Raises:
        CorruptCheckpoint: the state is not a dict, or the recorded conversions do not match it.
    """
    if not isinstance(state, dict):
        raise CorruptCheckpoint(f"not a Lightning checkpoint: the root is a {type(state).__name__}")
    info = state.pop(RESERVED_KEY, None)
    if info is None:
        return state
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CorruptCheckpoint(f"unknown Lightning checkpoint encoding {info!r}")
    for entry in info.get("conversions", []):
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], list)):
            raise CorruptCheckpoint(f"malformed conversion record {entry!r}")
        keys, kind = entry
        where = path_str(keys)
        if not keys:
            raise CorruptCheckpoint(f"{where}: the checkpoint root cannot be converted")
        parent: Any = state
        try:
            for k in keys[:-1]:
                parent = parent[k]
            parent[keys[-1]] = _rebuild(kind, parent[keys[-1]], where)
        except (KeyError, IndexError, TypeError) as e:
            raise CorruptCheckpoint(f"{where}: conversion {kind!r} does not match the state "
                                    f"({type(e).__name__}: {e})") from e
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
        state = encode_checkpoint(checkpoint)
        meta = {"lightning": {k: checkpoint[k] for k in ("epoch", "global_step",
                                                         "pytorch-lightning_version")
                              if isinstance(checkpoint.get(k), (int, str))
                              and not isinstance(checkpoint.get(k), bool)}}
        cloudckpt.save(state, uri, storage_options=self._options(storage_options),
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
        state = cloudckpt.load(os.fspath(path), map_location=map_location,
                               storage_options=self.storage_options)
        return decode_checkpoint(state)

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
