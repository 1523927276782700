"""The torch dtypes a manifest may name, looked up in a fixed table. Pure.

Never ``getattr(torch, name)`` with a name read from storage: torch's module ``__getattr__``
imports submodules by name (``onnx``, ``_dynamo``...), so a manifest could make a reader import
code it never asked for. The table is built from the dtypes torch already defines (``vars``
does not trigger lazy imports).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from cloudckpt.errors import CorruptCheckpoint

__all__ = ["TORCH_DTYPES", "torch_dtype"]

#: "float32" -> torch.float32, for every dtype this torch defines
TORCH_DTYPES: Mapping[str, torch.dtype] = {
    str(d).removeprefix("torch."): d for d in vars(torch).values() if isinstance(d, torch.dtype)}


def torch_dtype(name: object) -> torch.dtype:
    """The torch dtype a manifest calls ``name``. Any caller.

    Raises:
        CorruptCheckpoint: not a dtype this torch defines.
    """
    dt = TORCH_DTYPES.get(name) if isinstance(name, str) else None
    if dt is None:
        raise CorruptCheckpoint(f"unknown torch dtype {str(name)[:40]!r} in manifest")
    return dt
