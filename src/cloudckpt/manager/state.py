"""Capture and restore the full training state: stateful objects, RNGs, counters.

``capture`` builds a plain tree (no pickle needed) from the objects a training loop hands the
manager; ``restore_into`` loads it back. Objects are anything with ``state_dict()`` /
``load_state_dict()`` (models, optimizers, LR schedulers, GradScaler, samplers, user classes)
and ``torch.Generator`` (``get_state`` / ``set_state``).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from cloudckpt.errors import InvalidArgument

__all__ = ["TRAINING_FORMAT", "capture", "capture_rng", "restore_into", "restore_rng"]

#: the ``format`` field of a training tree (what the manager saves)
TRAINING_FORMAT = "cloudckpt.training/1"


def capture_rng() -> dict[str, Any]:
    """Python, NumPy (legacy global), torch CPU and, when initialised, CUDA RNG states."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Set the RNG states captured by :func:`capture_rng` (CUDA only if present on both)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np_state[1], int(np_state[2]), int(np_state[3]),
                         float(np_state[4])))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = list(state["cuda"])[: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)


def _object_state(name: str, obj: Any) -> Any:
    if isinstance(obj, torch.Generator):
        return {"generator_state": obj.get_state()}
    if hasattr(obj, "state_dict"):
        return obj.state_dict()
    raise InvalidArgument(f"{name}: {type(obj).__name__} has no state_dict(); pass it in extra=")


def capture(step: int, objects: Mapping[str, Any], *, epoch: int | None,
            metrics: Mapping[str, float], history: list[Any], extra: Mapping[str, Any] | None,
            rng: bool) -> dict[str, Any]:
    """The tree saved for one training checkpoint."""
    return {
        "format": TRAINING_FORMAT,
        "step": int(step),
        "epoch": epoch,
        "metrics": dict(metrics),
        "metrics_history": history,
        "objects": {name: _object_state(name, obj) for name, obj in objects.items()
                    if obj is not None},
        "rng": capture_rng() if rng else None,
        "extra": dict(extra or {}),
    }


def restore_into(tree: Mapping[str, Any], objects: Mapping[str, Any], *, rng: bool,
                 strict: bool = True) -> None:
    """Load saved object states into ``objects`` (same names as at save time).

    Raises:
        InvalidArgument: an object was passed that the checkpoint has no state for (when
            ``strict``), or the tree is not a training checkpoint.
    """
    if tree.get("format") != TRAINING_FORMAT:
        raise InvalidArgument("not a CheckpointManager checkpoint (use cloudckpt.load)")
    saved = tree["objects"]
    for name, obj in objects.items():
        if obj is None:
            continue
        if name not in saved:
            if strict:
                raise InvalidArgument(f"the checkpoint has no state for {name!r}; saved: "
                                      f"{sorted(saved)}")
            continue
        st = saved[name]
        if isinstance(obj, torch.Generator):
            obj.set_state(st["generator_state"])
        elif isinstance(obj, torch.nn.Module):
            obj.load_state_dict(st, strict=strict)
        else:
            obj.load_state_dict(st)
    if rng and tree.get("rng"):
        restore_rng(tree["rng"])
