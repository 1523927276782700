"""The manager's torch.distributed path: used automatically when a process group with more than
one rank is initialised. Same API; restore works on any world size (DCP reshards).

What goes where (nothing is pickled):

- model and optimizer tensors: ``torch.distributed.checkpoint`` through :mod:`cloudckpt.dcp`,
  FQN-keyed via ``torch.distributed.checkpoint.state_dict`` (DTensor / FSDP2 / DDP aware; DCP
  writes replicated tensors once);
- per-rank RNG states: one small uint8 tensor per rank (``rng.rank<N>``), JSON inside;
- everything else (step, epoch, metrics and history, scheduler, scaler, extra): the
  coordinator's JSON tree in the manifest metadata; tensors found in it travel through DCP
  under ``leaves.<i>`` (assumed identical on every rank, as for a scheduler or a step counter).

Who calls what: every rank calls ``mgr.save`` / ``mgr.restore`` collectively, which call
:func:`save_step_distributed` / :func:`choose_step_collectively` here with the run's
:class:`~cloudckpt.manager.context.RunContext`; the coordinator (rank 0) chooses the step to
restore, commits, and runs retention; the others wait at DCP's collectives.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from cloudckpt.errors import CorruptCheckpoint, InvalidArgument
from cloudckpt.format.dedup import DedupIndex
from cloudckpt.format.tree import decode_tree, encode_tree
from cloudckpt.manager.context import RunContext
from cloudckpt.manager.lifecycle import retain_after_commit
from cloudckpt.manager.resolve import check_which, resolve_step
from cloudckpt.manager.sharing import dedup_index, referenceable
from cloudckpt.manager.state import TRAINING_FORMAT, capture, capture_rng, restore_rng
from cloudckpt.manager.writing import index_metadata
from cloudckpt.storage import Store

__all__ = [
    "choose_step_collectively",
    "is_distributed",
    "is_distributed_checkpoint",
    "restore_distributed",
    "save_distributed",
    "save_step_distributed",
    "split_objects",
]

#: manifest metadata of a checkpoint written by the distributed path (beside the index's
#: :data:`~cloudckpt.manager.index.META_KEY`)
DIST_META_KEY = "cloudckpt.manager.dist"
log = logging.getLogger("cloudckpt.manager")


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _rng_blob() -> torch.Tensor:
    tree, leaves = encode_tree(capture_rng())
    arrays = [np.ascontiguousarray(leaf.value.numpy() if isinstance(leaf.value, torch.Tensor)
                                   else leaf.value) for leaf in leaves]
    doc = {"tree": tree, "leaves": [
        {"kind": "torch" if isinstance(leaf.value, torch.Tensor) else "numpy",
         "dtype": a.dtype.str, "shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode()}
        for leaf, a in zip(leaves, arrays, strict=True)]}
    return torch.frombuffer(bytearray(json.dumps(doc).encode()), dtype=torch.uint8)


def _restore_rng_blob(blob: torch.Tensor) -> None:
    doc = json.loads(bytes(blob.numpy()))
    values = []
    for spec in doc["leaves"]:
        dt = np.dtype(spec["dtype"])
        if dt.hasobject:
            raise CorruptCheckpoint("refusing an object dtype in an RNG state")
        a = np.frombuffer(base64.b64decode(spec["b64"]), dtype=dt).reshape(spec["shape"]).copy()
        values.append(torch.from_numpy(a) if spec["kind"] == "torch" else a)
    restore_rng(decode_tree(doc["tree"], lambda i: values[i]))


def _split_objects(objects: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(DCP-managed: modules and optimizers, the rest)."""
    dcp_objs = {k: v for k, v in objects.items()
                if isinstance(v, (torch.nn.Module, torch.optim.Optimizer))}
    return dcp_objs, {k: v for k, v in objects.items() if k not in dcp_objs and v is not None}


def _model_for(objs: Mapping[str, Any]) -> torch.nn.Module:
    models = [v for v in objs.values() if isinstance(v, torch.nn.Module)]
    if len(models) != 1:
        raise InvalidArgument("the distributed path needs exactly one nn.Module among the "
                              f"objects (got {len(models)}) to key optimizer state by FQN")
    return models[0]


def _dcp_state(objs: Mapping[str, Any]) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    if not objs:
        return {}
    model = _model_for(objs)
    out: dict[str, Any] = {}
    for name, obj in objs.items():
        out[name] = get_model_state_dict(obj) if obj is model else \
            get_optimizer_state_dict(model, obj)
    return out


def is_distributed_checkpoint(metadata: Mapping[str, Any]) -> bool:
    """Whether a manifest's metadata says the distributed path wrote it."""
    return DIST_META_KEY in metadata


def split_objects(objects: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Public alias of the split used by both paths."""
    return _split_objects(objects)


def save_distributed(store: Store, step: int, objects: Mapping[str, Any], tree: Mapping[str, Any],
                     meta: Mapping[str, Any], compression: str, dedup: DedupIndex | None = None,
                     ref_check: Callable[[frozenset[str]], bool] | None = None) -> None:
    """Collective save of one step to ``store`` (the step's directory); each rank references
    chunks of ``dedup`` instead of uploading them, the coordinator runs ``ref_check``."""
    from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

    from cloudckpt.engine.dcp import Writer

    dcp_objs, _rest = _split_objects(objects)
    json_tree, leaves = encode_tree(dict(tree))
    state: dict[str, Any] = {"objects": _dcp_state(dcp_objs),
                             "leaves": {str(leaf.index): torch.as_tensor(leaf.value)
                                        for leaf in leaves},
                             f"rng.rank{_rank()}": _rng_blob()}
    writer = Writer(store, compression=compression, dedup=dedup, ref_check=ref_check,
                    metadata={**meta, DIST_META_KEY: {"tree": json_tree, "format": TRAINING_FORMAT,
                                                 "world_size": _world(),
                                                 "numpy_leaves": [leaf.index for leaf in leaves
                                                                  if isinstance(leaf.value,
                                                                                np.ndarray)]}})
    dcp_save(state, storage_writer=writer)


def restore_distributed(store: Store, objects: Mapping[str, Any], *, rng: bool) -> dict[str, Any]:
    """Collective restore from ``store``; loads into ``objects`` and returns the training tree
    (same shape as the single-process one, without the DCP-managed objects' states)."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    from torch.distributed.checkpoint.state_dict import (
        set_model_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

    from cloudckpt.engine.dcp import Reader

    reader = Reader(store)
    md = reader.read_metadata()
    manifest_meta = reader._manifest.metadata if reader._manifest is not None else {}
    info = manifest_meta.get(DIST_META_KEY)
    if not isinstance(info, dict) or info.get("format") != TRAINING_FORMAT:
        raise CorruptCheckpoint(f"{store.uri} was not written by a distributed manager save")
    dcp_objs, _rest = _split_objects(objects)
    target: dict[str, Any] = {"objects": _dcp_state(dcp_objs), "leaves": {}}
    for fqn, m in md.state_dict_metadata.items():
        if fqn.startswith("leaves.") and isinstance(m, TensorStorageMetadata):
            target["leaves"][fqn.split(".", 1)[1]] = torch.empty(m.size, dtype=m.properties.dtype)
    rng_key = f"rng.rank{_rank()}"
    rng_meta = md.state_dict_metadata.get(rng_key)
    if rng and isinstance(rng_meta, TensorStorageMetadata):
        target[rng_key] = torch.empty(rng_meta.size, dtype=torch.uint8)
    dcp_load(target, storage_reader=Reader(store, broadcast=True))  # replicated: read once
    if dcp_objs:
        model = _model_for(dcp_objs)
        for name, obj in dcp_objs.items():
            if obj is model:
                set_model_state_dict(model, target["objects"][name])
            else:
                set_optimizer_state_dict(model, obj, target["objects"][name])
    numpy_leaves = set(info.get("numpy_leaves", []))
    leaves = {int(k): (v.numpy() if int(k) in numpy_leaves else v)
              for k, v in target["leaves"].items()}
    tree: dict[str, Any] = decode_tree(info["tree"], lambda i: leaves[i])
    if rng and rng_key in target:
        _restore_rng_blob(target[rng_key])
    return tree


def save_step_distributed(ctx: RunContext, step: int, objects: Mapping[str, Any], *,
                          epoch: int | None, metrics: dict[str, float],
                          history: list[tuple[int, dict[str, float]]],
                          extra: Mapping[str, Any] | None, blocking: bool) -> None:
    """``mgr.save`` on every rank (always blocking): collective DCP save of ``step``, then
    retention on the coordinator, then a barrier. ``history`` includes this step.

    Raises:
        InvalidArgument, UnsupportedValue: bad state (on the rank that found it; the others
            then fail in DCP's collectives).
        AlreadyExists, StorageError: the commit failed; nothing committed.
    """
    if not blocking:
        log.warning("distributed saves are blocking (DCP collectives); saving step %d now", step)
    _dcp_objs, rest = _split_objects(objects)
    tree = capture(step, rest, epoch=epoch, metrics=metrics,
                   history=[[s, m] for s, m in history], extra=extra, rng=False)
    dedup, _src = dedup_index(ctx, step, None)  # each rank: against the previous checkpoint
    save_distributed(ctx.step_store(step), step, objects, tree,
                     index_metadata(ctx, step, epoch, metrics), ctx.compression, dedup,
                     lambda refs: referenceable(ctx, step, refs))
    if dist.get_rank() == 0:
        log.info("committed step %d to %s (%d ranks)", step, ctx.uri, dist.get_world_size())
        retain_after_commit(ctx, step)
    dist.barrier()


def choose_step_collectively(ctx: RunContext, which: int | str) -> int | None:
    """The coordinator resolves ``"latest"``/``"best"`` and broadcasts it, so every rank
    restores the same step (no fallback across ranks); an int is broadcast as given (every
    rank's restore then reports a missing step). Collective: every rank calls it.

    Raises:
        InvalidArgument: ``which`` is not a step selector (on every rank, before any
            collective).
        StorageError: the coordinator's listing failed (the other ranks then wait in the
            broadcast until the process group's timeout).
    """
    check_which(which)
    chosen: list[Any] = [None]
    if dist.get_rank() == 0:
        chosen[0] = which if isinstance(which, int) else \
            resolve_step(ctx.records(), which, ctx.metric, ctx.mode, uri=ctx.uri)
    dist.broadcast_object_list(chosen, src=0)
    return None if chosen[0] is None else int(chosen[0])
