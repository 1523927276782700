"""DCP ``Metadata`` <-> the JSON the :mod:`cloudckpt.engine.dcp` adapter keeps in the manifest
(nothing pickled). Decoding treats its input as untrusted."""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)

from cloudckpt.errors import CorruptCheckpoint
from cloudckpt.format.chunking import dtype_name
from cloudckpt.format.dtypes import torch_dtype
from cloudckpt.format.tree import decode_tree, encode_tree

__all__ = ["decode_metadata", "encode_metadata"]


def encode_metadata(md: Metadata, index: list[Any]) -> dict[str, Any]:
    """``md`` and the item index as JSON-ready data.

    Raises:
        CorruptCheckpoint: the planner data holds tensors (DCP never puts them there).
    """
    sdm: dict[str, Any] = {}
    for fqn, m in md.state_dict_metadata.items():
        if isinstance(m, BytesStorageMetadata):
            sdm[fqn] = {"type": "bytes"}
        else:
            p = m.properties
            sdm[fqn] = {"type": "tensor", "dtype": dtype_name(p.dtype),
                        "requires_grad": bool(p.requires_grad), "size": list(m.size),
                        "chunks": [[list(c.offsets), list(c.sizes)] for c in m.chunks]}
    planner_tree, leaves = encode_tree(md.planner_data)
    if leaves:
        raise CorruptCheckpoint("DCP planner data unexpectedly holds tensors")
    sm = md.storage_meta
    return {"version": md.version, "state_dict_metadata": sdm, "planner_data": planner_tree,
            "storage_meta": None if sm is None else {
                "checkpoint_id": None if sm.checkpoint_id is None else str(sm.checkpoint_id),
                "save_id": sm.save_id, "load_id": sm.load_id, "modules": list(sm.modules)},
            "index": index}


def decode_metadata(d: Any) -> tuple[Metadata, dict[MetadataIndex, int]]:
    """The ``Metadata`` and item index :func:`encode_metadata` wrote.

    Raises:
        CorruptCheckpoint: anything malformed.
    """
    try:
        sdm: dict[str, Any] = {}
        for fqn, m in d["state_dict_metadata"].items():
            if m["type"] == "bytes":
                sdm[fqn] = BytesStorageMetadata()
                continue
            dt = torch_dtype(m["dtype"])
            sdm[fqn] = TensorStorageMetadata(
                properties=TensorProperties(dtype=dt, requires_grad=bool(m["requires_grad"])),
                size=torch.Size(m["size"]),
                chunks=[ChunkStorageMetadata(offsets=torch.Size(o), sizes=torch.Size(s))
                        for o, s in m["chunks"]])
        storage: dict[MetadataIndex, int] = {}
        for fqn, offset, ti, _is_bytes in d["index"]:
            idx = MetadataIndex(fqn=fqn, offset=None if offset is None else torch.Size(offset))
            storage[idx] = int(ti)
        sm = d.get("storage_meta")
        meta = Metadata(state_dict_metadata=sdm,
                        planner_data=decode_tree(d["planner_data"], lambda i: None),
                        storage_data=storage, version=d.get("version"),
                        storage_meta=None if sm is None else StorageMeta(**sm))
        return meta, storage
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CorruptCheckpoint(f"invalid DCP metadata in manifest: {e}") from e
