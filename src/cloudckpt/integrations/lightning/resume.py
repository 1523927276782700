"""Find and load Lightning checkpoints on any store: :func:`find_checkpoint` ("last", "best")
and :func:`load_from_checkpoint`, the working equivalents of ``ckpt_path="last"`` and
``LightningModule.load_from_checkpoint`` for cloudckpt checkpoints (Lightning's own read the
path with fsspec and ``torch.load``; see :mod:`._private`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, MutableMapping
from typing import Any, TypeVar

import torch

from cloudckpt.engine.commit import read_manifest
from cloudckpt.errors import InvalidArgument
from cloudckpt.format.manifest import Manifest
from cloudckpt.integrations.lightning._private import check_lightning, load_state
from cloudckpt.integrations.lightning.io import LIGHTNING_META_KEY, CloudckptIO, checkpoint_uri
from cloudckpt.integrations.lightning.listing import committed, last_manifests
from cloudckpt.storage import open_store

__all__ = ["find_checkpoint", "load_from_checkpoint"]

log = logging.getLogger("cloudckpt.integrations.lightning")
T = TypeVar("T")


def _best_path(m: Manifest, dirpath: str) -> str | None:
    light = m.metadata.get(LIGHTNING_META_KEY) if isinstance(m.metadata, dict) else None
    entries = light.get("model_checkpoints") if isinstance(light, dict) else None
    entries = [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []
    mine = [e for e in entries if str(e.get("dirpath", "")).rstrip("/") == dirpath]
    chosen = mine or (entries if len(entries) == 1 else [])
    path = chosen[0].get("best_model_path") if chosen else None
    return path if isinstance(path, str) and path else None


def find_checkpoint(dirpath: str | os.PathLike[str], which: str = "last", *,
                    storage_options: Mapping[str, Any] | None = None) -> str | None:
    """The URI of a cloudckpt checkpoint that Lightning's ``ModelCheckpoint(dirpath=...)``
    wrote, or None when there is none yet (a first run):

    * ``"last"``: the newest committed ``last.ckpt``/``last-vN.ckpt`` in ``dirpath`` (by the
      commit time of its manifest: Lightning's own rule for ``ckpt_path="last"``);
    * ``"best"``: the ``best_model_path`` the ``ModelCheckpoint`` of ``dirpath`` recorded in
      the newest committed checkpoint there (what ``ckpt_path="best"`` means in the process
      that trained). Resuming training from it forks the run at that step.

    Pass the result as ``trainer.fit(..., ckpt_path=...)`` or to :func:`load_from_checkpoint`.
    Checkpoints whose manifests do not validate are skipped with a WARNING. Any caller.

    Raises:
        InvalidArgument: ``which`` is neither ``"last"`` nor ``"best"``.
        NotFound, CorruptCheckpoint: the recorded best checkpoint is gone or damaged.
        StorageError and subclasses: ``dirpath`` cannot be listed or read.
    """
    base = os.fspath(dirpath).rstrip("/")
    if which == "last":
        found = last_manifests(base, storage_options)
        return checkpoint_uri(found[0][0]) if found else None
    if which != "best":
        raise InvalidArgument(f"find_checkpoint: which must be 'last' or 'best', not {which!r}")
    for _, _, m in committed(base, storage_options, re.compile(r".+\.ckpt")):
        best = _best_path(m, base)
        if best is not None:
            read_manifest(open_store(best, storage_options=storage_options))  # committed, valid
            return best
    return None


def load_from_checkpoint(cls: type[T], checkpoint_path: str | os.PathLike[str], *,
                         map_location: Any = None, hparams_file: str | os.PathLike[str] | None = None,
                         strict: bool | None = None,
                         storage_options: Mapping[str, Any] | None = None, **kwargs: Any) -> T:
    """``cls.load_from_checkpoint(checkpoint_path, ...)`` for a cloudckpt checkpoint (local or
    any store): builds ``cls`` (a ``LightningModule`` or ``LightningDataModule`` subclass) from
    the saved hyperparameters overridden by ``kwargs``, loads the weights (``strict`` as
    Lightning's) and moves the module to the device of its first tensor, exactly as Lightning
    does (its hooks ``configure_model`` and ``on_load_checkpoint`` run). ``map_location``: a
    device (default: where each tensor was saved, CPU when that device is absent).
    ``hparams_file``: a ``.yaml``/``.csv`` replacing the saved hyperparameters. Nothing is
    unpickled. Any thread; the module is returned in training mode, as Lightning's is.

    Raises:
        UnsupportedFramework: the installed lightning is not supported (see :mod:`._private`).
        InvalidArgument: ``cls`` is not a Lightning module class, the checkpoint is not a
            Lightning checkpoint (use :func:`cloudckpt.load`), a bad ``hparams_file`` name or
            ``map_location``.
        NotFound, IncompleteCheckpoint, CorruptCheckpoint, StorageError: as
            :meth:`CloudckptIO.load_checkpoint`.
        Whatever ``cls.__init__`` or ``load_state_dict`` raise (RuntimeError for mismatched
        keys with ``strict=True``).
    """
    check_lightning()
    import lightning.pytorch as pl
    from lightning.pytorch.core.saving import load_hparams_from_tags_csv, load_hparams_from_yaml
    from lightning.pytorch.utilities.migration import migrate_checkpoint

    if not (isinstance(cls, type) and issubclass(cls, (pl.LightningModule, pl.LightningDataModule))):
        raise InvalidArgument(f"load_from_checkpoint: {cls!r} is not a LightningModule or "
                              "LightningDataModule class")
    uri = checkpoint_uri(checkpoint_path)
    ckpt = CloudckptIO(storage_options).load_checkpoint(uri, map_location=map_location)
    module = issubclass(cls, pl.LightningModule)
    if not isinstance(ckpt.get("pytorch-lightning_version"), str) or (
            module and not isinstance(ckpt.get("state_dict"), Mapping)):
        raise InvalidArgument(f"{uri} is not a Lightning checkpoint (no 'pytorch-lightning_version'"
                              f"{' or state_dict' if module else ''}); cloudckpt.load reads any "
                              "checkpoint")
    ckpt, _ = migrate_checkpoint(ckpt)
    hp_key: str = cls.CHECKPOINT_HYPER_PARAMS_KEY  # type: ignore[attr-defined]
    if hparams_file is not None:
        ext = os.fspath(hparams_file).rsplit(".", 1)[-1].lower()
        if ext not in ("csv", "yml", "yaml"):
            raise InvalidArgument(f"hparams_file must be .csv, .yml or .yaml: {hparams_file}")
        ckpt[hp_key] = (load_hparams_from_tags_csv(hparams_file) if ext == "csv"
                        else load_hparams_from_yaml(hparams_file))
    hparams = ckpt.setdefault(hp_key, {})
    if not isinstance(hparams, MutableMapping):
        raise InvalidArgument(f"{uri}: {hp_key!r} is a {type(hparams).__name__}, not a mapping "
                              "of hyperparameters")
    hparams.update(kwargs)
    obj = load_state(cls, ckpt, strict, kwargs)
    if not module:
        return obj  # type: ignore[no-any-return]
    state = ckpt["state_dict"]
    if not state:
        log.warning("the state dict in %s contains no parameters", uri)
        return obj  # type: ignore[no-any-return]
    device = next((t for t in state.values() if isinstance(t, torch.Tensor)), torch.tensor(0)).device
    return obj.to(device)  # type: ignore[no-any-return]
