""":class:`CloudckptIO`, the Lightning ``CheckpointIO`` plugin, and the summary it records.

Every checkpoint "file" Lightning writes (``s3://bucket/run/epoch=0-step=10.ckpt``,
``.../last.ckpt``) becomes a cloudckpt checkpoint rooted at that URI, i.e. a "directory" holding
``manifest.json`` and ``data/``. Re-saving the same path (Lightning does that for
``last.ckpt``) replaces it atomically: readers see the old or the new checkpoint, never a mix.

Who calls what: Lightning's ``Strategy`` calls :meth:`CloudckptIO.save_checkpoint` (from
``Trainer.save_checkpoint``, i.e. ``ModelCheckpoint``), :meth:`CloudckptIO.load_checkpoint`
(``trainer.fit(ckpt_path=...)``, ``validate/test/predict(ckpt_path=...)``) and
:meth:`CloudckptIO.remove_checkpoint` (``ModelCheckpoint`` top-k rotation and ``last.ckpt``
replacement), all on the training process; saves and removals only on global rank 0.

Summary. Each manifest's metadata gets ``"lightning"`` (epoch, global step, Lightning version
and, per ``ModelCheckpoint`` in the checkpoint, its monitor, score and best path: what
:func:`~.resume.find_checkpoint` reads for ``"best"``) and the run summary cloudckpt's own
manager writes (step = global step, epoch, metrics = each monitored score), so ``cloudckpt
ls`` (of a checkpoint, or of the ``ModelCheckpoint`` directory) and ``show`` display Lightning
checkpoints with their step, epoch and metrics.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.plugins.io import CheckpointIO

from cloudckpt.engine.commit import delete_checkpoint, read_manifest
from cloudckpt.engine.reader import place, read_leaves
from cloudckpt.engine.writer import write_encoded
from cloudckpt.errors import CorruptCheckpoint, InvalidArgument
from cloudckpt.format.keys import MANIFEST_KEY
from cloudckpt.format.tree import leaf_indices
from cloudckpt.integrations.lightning.encoding import decode_checkpoint, encode_checkpoint
from cloudckpt.manager.index import META_KEY
from cloudckpt.storage import open_store
from cloudckpt.storage.uri import parse_uri

__all__ = ["LIGHTNING_META_KEY", "CloudckptIO", "checkpoint_uri", "summary_metadata"]

log = logging.getLogger("cloudckpt.integrations.lightning")

#: Manifest metadata key of the Lightning summary.
LIGHTNING_META_KEY = "lightning"


def checkpoint_uri(path: str | os.PathLike[str]) -> str:
    """The checkpoint ``path`` names: ``path`` itself, or for the path of a checkpoint's
    ``manifest.json`` (what :class:`~._private.CloudckptModelCheckpoint` hands Lightning for
    ``ckpt_path="last"``, since fsspec gives a prefix no modification time) the checkpoint
    that holds it. Any caller; no I/O."""
    uri = os.fspath(path)
    head, sep, tail = uri.rstrip("/").rpartition("/")
    return head if sep and head and tail == MANIFEST_KEY else uri


def _number(v: Any) -> float | None:
    """A finite float from a Python number or a one-element tensor, else None."""
    if isinstance(v, torch.Tensor):
        v = v.item() if v.numel() == 1 and not v.is_complex() else None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _int(v: Any) -> int | None:
    return v if type(v) is int and v >= 0 else None


def summary_metadata(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest metadata :meth:`CloudckptIO.save_checkpoint` records for ``checkpoint``
    (see the module docstring). Values that are missing or of the wrong type are left out,
    never guessed. Any caller; no I/O."""
    epoch, step = _int(checkpoint.get("epoch")), _int(checkpoint.get("global_step"))
    light: dict[str, Any] = {k: v for k, v in (("epoch", epoch), ("global_step", step))
                             if v is not None}
    version = checkpoint.get("pytorch-lightning_version")
    if isinstance(version, str):
        light["pytorch-lightning_version"] = version[:100]
    metrics: dict[str, float] = {}
    saved: list[dict[str, Any]] = []
    callbacks = checkpoint.get("callbacks")
    for state in (callbacks.values() if isinstance(callbacks, Mapping) else ()):
        if not (isinstance(state, Mapping) and "best_model_path" in state and "monitor" in state):
            continue  # not a ModelCheckpoint's state
        monitor = state.get("monitor") if isinstance(state.get("monitor"), str) else None
        entry = {"monitor": monitor, "current_score": _number(state.get("current_score")),
                 "best_model_score": _number(state.get("best_model_score")),
                 **{k: state[k] for k in ("best_model_path", "last_model_path", "dirpath")
                    if isinstance(state.get(k), str)}}
        saved.append(entry)
        if monitor and entry["current_score"] is not None:
            metrics.setdefault(monitor, entry["current_score"])
    if saved:
        light["model_checkpoints"] = saved
    out: dict[str, Any] = {LIGHTNING_META_KEY: light}
    if step is not None:
        out[META_KEY] = {"step": step, "epoch": epoch, "metrics": metrics}
    return out


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
        there, with the summary of :func:`summary_metadata`. ``storage_options`` (from
        ``Trainer.save_checkpoint``) are merged over the plugin's. Called by Lightning's
        ``Strategy.save_checkpoint`` on global rank 0.

        Raises:
            UnsupportedValue: a value that cannot be stored (its key path is named); nothing
                is written.
            TypeError: ``storage_options`` is not a mapping.
            StorageError and subclasses: the store failed; the previous checkpoint at
                ``path``, if any, is still intact.
        """
        uri = os.fspath(path)
        tree, leaves = encode_checkpoint(checkpoint)
        write_encoded(tree, leaves, uri, storage_options=self._options(storage_options),
                      overwrite=True, metadata=summary_metadata(checkpoint),
                      compression=self.compression)
        _invalidate_listing_cache(uri)

    def load_checkpoint(self, path: str | os.PathLike[str], map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """Load the checkpoint at ``path`` (or the one whose ``manifest.json`` ``path`` names,
        see :func:`checkpoint_uri`). ``map_location``: ``None`` (each tensor to the device it
        was saved from when that exists here, else CPU, like ``torch.load``), a device string
        or a ``torch.device``. ``weights_only`` is accepted for Lightning's signature and has
        no effect: nothing is unpickled, ever. Called by Lightning's
        ``Strategy.load_checkpoint`` (``fit/validate/test/predict(ckpt_path=...)``) and by
        :func:`~.resume.load_from_checkpoint`.

        Raises:
            NotFound: no checkpoint at ``path`` (a ``FileNotFoundError``, as Lightning expects).
            IncompleteCheckpoint: a save to ``path`` crashed or is still running.
            CorruptCheckpoint: the data or the Lightning encoding does not validate.
            InvalidArgument: ``map_location`` is a callable or a dict (use a device).
        """
        if map_location is not None and not isinstance(map_location, (str, torch.device)):
            raise InvalidArgument("CloudckptIO.load_checkpoint: map_location must be None, a "
                                  f"device string or a torch.device, not {type(map_location).__name__}")
        store = open_store(checkpoint_uri(path), storage_options=self.storage_options)
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
