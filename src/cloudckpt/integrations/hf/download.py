"""A cloudckpt checkpoint of a ``Trainer`` run as a stock ``checkpoint-<step>/`` directory, so
that an unmodified ``transformers.Trainer`` resumes from it
(``Trainer.train(resume_from_checkpoint="DIR/checkpoint-<step>")``) and, when the checkpoint
holds the model config, ``AutoModel...from_pretrained("DIR/checkpoint-<step>")`` loads it.

The checkpoint must have been written by :class:`CloudckptCallback` (mirroring a plain
``Trainer``) or :class:`CloudckptTrainer`: it holds the ``TrainerState``. The directory gets
what ``Trainer._save_checkpoint`` writes in a single-process run, read back by the ``Trainer``
as noted:

* ``model.safetensors``: ``model.state_dict()`` (tied weights as copies; safetensors refuses
  shared memory). Loaded with ``load_state_dict(strict=False)`` and the ``Trainer``'s
  missing/unexpected-key warnings.
* ``config.json``: the model config, when the checkpoint holds one (written since this
  version; older checkpoints resume without it, as the ``Trainer`` only compares its version).
* ``optimizer.pt``, ``scheduler.pt`` (``scaler.pt`` with fp16): the state dicts, ``torch.save``d;
  the ``Trainer`` reads them with ``torch.load(weights_only=True)``.
* ``rng_state.pth``: Python, NumPy, torch CPU (and CUDA) RNG states in the ``Trainer``'s layout.
* ``trainer_state.json``: the ``TrainerState`` as saved; ``best_model_checkpoint`` points at
  ``DIR/checkpoint-<best step>`` when that directory exists (or is this one), else ``None``
  (the ``Trainer`` would drop a path that does not exist, with a warning).

``training_args.bin`` is not written: ``Trainer.train`` never reads it (and it would be a
pickle). Reading never unpickles: the tensors come from cloudckpt's own format, verified.

The directory is written under a temporary name in ``DIR`` and renamed into place, so a
failed download never looks like a checkpoint to ``get_last_checkpoint``. Needs ``torch`` and
``safetensors`` (a ``transformers`` dependency), not ``transformers`` itself. Who calls:
``cloudckpt download`` and users; any thread.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cloudckpt.engine.reader import load
from cloudckpt.errors import (
    AlreadyExists,
    CorruptCheckpoint,
    InvalidArgument,
    NotFound,
    RehydrationRequired,
)
from cloudckpt.format.keys import MANIFEST_KEY
from cloudckpt.integrations.hf._names import (
    CONFIG_FILE,
    CONFIG_KEY,
    OPTIMIZER_FILE,
    PREFIX_CHECKPOINT_DIR,
    RNG_FILE,
    SCALER_FILE,
    SCHEDULER_FILE,
    STATE_FILE,
    STATE_KEY,
    WEIGHTS_FILE,
)
from cloudckpt.manager import CheckpointManager
from cloudckpt.manager.archive import needs_rehydration
from cloudckpt.storage import Store, open_store
from cloudckpt.storage.backends.local import fsync_path

__all__ = ["HFCheckpointDir", "download_checkpoint"]

log = logging.getLogger("cloudckpt.integrations.hf")


@dataclass(frozen=True)
class HFCheckpointDir:
    """What :func:`download_checkpoint` wrote: ``path`` (``DIR/checkpoint-<step>``), the
    ``step``, the ``files`` in it, and the ``source`` checkpoint's URI."""

    path: Path
    step: int
    files: tuple[str, ...]
    source: str


def _target(uri: str, step: int | None,
            storage_options: Mapping[str, Any] | None) -> tuple[Store, int | None]:
    """The checkpoint's store and its step (``None``: a checkpoint URI, step unknown yet)."""
    store = open_store(uri, storage_options=storage_options)
    if step is None and store.exists(MANIFEST_KEY):
        return store, None  # URI names one checkpoint
    mgr = CheckpointManager(store, keep_last=None, storage_options=storage_options)
    records = {r.step: r for r in mgr.checkpoints()}
    chosen = mgr.latest() if step is None else step
    if chosen is None:
        raise NotFound(f"no committed checkpoint under {store.uri}")
    rec = records.get(chosen)
    if rec is None:
        raise NotFound(f"no committed checkpoint for step {chosen} under {store.uri} "
                       f"(committed: {sorted(records) or 'none'})")
    if rec.tier and needs_rehydration(rec.tier):
        raise RehydrationRequired(f"step {chosen} at {rec.uri} is in the {rec.tier} tier: "
                                  "rehydrate it first, then retry")
    return mgr.context.record_store(rec), chosen


def _subtree(store: Store, key: str) -> Any:
    """The sub-tree at ``key`` (``"objects/optimizer"``), ``None`` when it was not saved."""
    try:
        tree = load(store, keys=[key])
    except InvalidArgument:  # the key is not in this checkpoint
        return None
    for part in key.split("/"):
        tree = tree[part]
    return tree


def _weights(state: Any, where: str) -> dict[str, torch.Tensor]:
    """``state`` as a safetensors-ready dict: str keys, contiguous, unshared tensors.

    Raises:
        InvalidArgument: not a flat dict of tensors.
    """
    if not isinstance(state, Mapping):
        raise InvalidArgument(f"{where}: the model state is a {type(state).__name__}, not a "
                              "state_dict")
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for k, v in state.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise InvalidArgument(f"{where}: model state entry {k!r} is not a named tensor; "
                                  "safetensors holds tensors only")
        v = v.detach().contiguous()
        ident = (v.untyped_storage().data_ptr(), int(v.storage_offset()))
        if v.numel() and ident in seen:  # tied weights: safetensors refuses shared memory
            v = v.clone()
        seen.add(ident)
        out[k] = v
    return out


def _hf_rng(rng: Any, where: str) -> dict[str, Any]:
    """cloudckpt's RNG record (``capture_rng``) in ``Trainer._save_rng_state``'s layout.

    Raises:
        CorruptCheckpoint: the record does not have the expected shape.
    """
    try:
        py, npy = rng["python"], rng["numpy"]
        out: dict[str, Any] = {"python": (int(py[0]), tuple(int(x) for x in py[1]), py[2]),
                               "numpy": (str(npy[0]), npy[1], int(npy[2]), int(npy[3]),
                                         float(npy[4])),
                               "cpu": rng["torch"]}
        if rng.get("cuda"):  # saved per device; a single-process Trainer keeps one state
            out["cuda"] = rng["cuda"][0]
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise CorruptCheckpoint(f"{where}: malformed RNG state ({e})") from None
    if not isinstance(out["cpu"], torch.Tensor):
        raise CorruptCheckpoint(f"{where}: malformed RNG state (torch state is not a tensor)")
    return out


def _torch_save(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _write_json(obj: Any, path: Path, where: str) -> None:
    try:
        text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    except (TypeError, ValueError) as e:
        raise CorruptCheckpoint(f"{where}: {path.name} content is not JSON ({e})") from None
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fill(tmp: Path, store: Store, step: int, state: dict[str, Any], config: Any,
          final: Path) -> list[str]:
    """Write every file of the checkpoint directory into ``tmp``; returns their names."""
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise InvalidArgument("writing model.safetensors needs the safetensors package "
                              "(`pip install safetensors`, or cloudckpt[hf])") from None
    where = store.uri
    files = []
    model = _subtree(store, "objects/model")
    if model is None:
        raise InvalidArgument(f"{where}: the checkpoint holds no model")
    save_file(_weights(model, where), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
    fsync_path(tmp / WEIGHTS_FILE)
    files.append(WEIGHTS_FILE)
    del model
    if isinstance(config, Mapping):
        _write_json(dict(config), tmp / CONFIG_FILE, where)
        files.append(CONFIG_FILE)
    for key, name in (("objects/optimizer", OPTIMIZER_FILE),
                      ("objects/lr_scheduler", SCHEDULER_FILE), ("objects/scaler", SCALER_FILE)):
        sub = _subtree(store, key)
        if sub is not None:
            _torch_save(sub, tmp / name)
            files.append(name)
    rng = _subtree(store, "rng")
    if rng:
        _torch_save(_hf_rng(rng, where), tmp / RNG_FILE)
        files.append(RNG_FILE)
    best = state.get("best_global_step")
    best_dir = final.parent / f"{PREFIX_CHECKPOINT_DIR}-{best}"
    state["best_model_checkpoint"] = (
        str(best_dir) if isinstance(best, int) and (best == step or best_dir.is_dir()) else None)
    _write_json(state, tmp / STATE_FILE, where)
    files.append(STATE_FILE)
    fsync_path(tmp)
    return files


def download_checkpoint(uri: str, dest: str | os.PathLike[str], *, step: int | None = None,
                        storage_options: Mapping[str, Any] | None = None,
                        overwrite: bool = False) -> HFCheckpointDir:
    """Write the checkpoint of ``step`` (default: the latest of the run's live lineage) of the
    run rooted at ``uri`` (or the checkpoint ``uri`` itself) as ``dest/checkpoint-<step>/``,
    a directory a stock ``Trainer`` resumes from (see the module docstring).

    Raises:
        NotFound: no such run or step. RehydrationRequired: it is in an offline archive tier.
        InvalidArgument: the checkpoint was not written by the Hugging Face integration (no
            ``TrainerState``), or safetensors is missing.
        AlreadyExists: ``dest/checkpoint-<step>`` exists (and not ``overwrite``).
        CorruptCheckpoint, UntrustedCheckpoint, StorageError: the checkpoint cannot be read.
        OSError: ``dest`` cannot be written.
    """
    store, chosen = _target(uri, step, storage_options)
    extra = _subtree(store, "extra") or {}
    state = extra.get(STATE_KEY) if isinstance(extra, Mapping) else None
    if not isinstance(state, Mapping):
        raise InvalidArgument(f"{store.uri} holds no Trainer state: it was not written by "
                              "cloudckpt's Hugging Face integration (`cloudckpt export` writes "
                              "the weights of any checkpoint)")
    saved_step = state.get("global_step")
    if type(saved_step) is not int or saved_step < 0 or chosen not in (None, saved_step):
        raise CorruptCheckpoint(f"{store.uri}: its Trainer state says global_step "
                                f"{saved_step!r}, the checkpoint is step {chosen}")
    final = Path(dest) / f"{PREFIX_CHECKPOINT_DIR}-{saved_step}"
    if final.exists() and not overwrite:
        raise AlreadyExists(f"{final} exists; remove it or pass overwrite=True (--overwrite)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.cloudckpt-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        files = _fill(tmp, store, saved_step, dict(state), extra.get(CONFIG_KEY), final)
        if final.exists():  # overwrite: swap, then drop the old one
            old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
        fsync_path(final.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote %s from %s (%s)", final, store.uri, ", ".join(files))
    return HFCheckpointDir(final, saved_step, tuple(files), store.uri)
