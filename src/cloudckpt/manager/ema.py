"""``cloudckpt.EMA``: an exponential moving average of a model's weights that checkpoints like
any other object: ``mgr.save(step, model=model, ema=ema)`` stores its shadow weights and
counters, ``mgr.restore(model=model, ema=ema)`` brings them back, and
``cloudckpt export RUN out.safetensors --ema`` writes the shadow weights for inference.

Update rule, applied to every floating-point entry of ``model.state_dict()`` (parameters and
float buffers such as BatchNorm running statistics)::

    shadow = decay * shadow + (1 - decay) * value        # shadow.mul_(decay).add_(value, alpha=1 - decay)

Other entries (integer buffers such as ``num_batches_tracked``) are copied. The update is
deterministic, and the counters it depends on are part of the state, so a run resumed from a
checkpoint continues the EMA bit for bit as if never interrupted (on CPU).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch

from cloudckpt.engine.reader import load
from cloudckpt.errors import InvalidArgument
from cloudckpt.storage import Store

__all__ = ["EMA", "load_ema_weights"]

log = logging.getLogger("cloudckpt.manager")
_FIELDS = ("decay", "every", "calls", "updates", "shadow")


def _count(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise InvalidArgument(f"EMA state: {name} must be a non-negative int, not {v!r}")
    return v


class EMA:
    """Shadow weights ``decay * shadow + (1 - decay) * weights`` of ``model``, updated every
    ``every`` steps. ``device``/``dtype``: where and in which float dtype to keep the shadow
    (default: the model's own; ``dtype=torch.float32`` keeps an fp32 EMA of a bf16 model).
    Owned by the training thread: call :meth:`update` after ``optimizer.step()``.

    Raises (constructor):
        InvalidArgument: ``decay`` outside [0, 1], ``every`` < 1, or ``model`` has no
            ``state_dict``.
    """

    def __init__(self, model: torch.nn.Module, *, decay: float = 0.999, every: int = 1,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        if not (isinstance(decay, (int, float)) and math.isfinite(decay) and 0.0 <= decay <= 1.0):
            raise InvalidArgument(f"decay must be a number in [0, 1], not {decay!r}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise InvalidArgument(f"every must be a positive int, not {every!r}")
        if not callable(getattr(model, "state_dict", None)):
            raise InvalidArgument(f"{type(model).__name__} has no state_dict(); EMA needs a model")
        self.model = model
        self.decay = float(decay)
        self.every = every
        self.calls = 0  # update() calls without a step
        self.updates = 0  # updates applied
        src = model.state_dict()
        self.shadow: OrderedDict[str, torch.Tensor] = OrderedDict()
        for name, value in src.items():
            t = value.detach().to(device=device if device is not None else value.device)
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            self.shadow[name] = t.clone()
        meta = getattr(src, "_metadata", None)
        if meta is not None:
            self.shadow._metadata = meta  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return (f"EMA(decay={self.decay}, every={self.every}, updates={self.updates}, "
                f"tensors={len(self.shadow)})")

    @torch.no_grad()
    def update(self, step: int | None = None) -> bool:
        """Fold the model's current weights into the shadow when ``step`` is a multiple of
        ``every`` (without ``step``: every ``every``-th call). Returns whether it updated.
        Call from the training thread, after the optimizer step.

        Raises:
            InvalidArgument: the model's state_dict no longer has the shadow's keys/shapes.
        """
        if step is None:
            self.calls += 1
            due = self.calls % self.every == 0
        else:
            due = int(step) % self.every == 0
        if not due:
            return False
        current = self.model.state_dict()
        self._check(current, "the model")
        for name, s in self.shadow.items():
            v = current[name].detach()
            if s.is_floating_point() or s.is_complex():
                s.mul_(self.decay).add_(v.to(device=s.device, dtype=s.dtype),
                                        alpha=1.0 - self.decay)
            else:
                s.copy_(v)
        self.updates += 1
        return True

    def state_dict(self) -> dict[str, Any]:
        """Decay, interval, counters and the shadow weights (the live tensors, like
        ``Module.state_dict``; the manager copies them when it saves)."""
        return {"decay": self.decay, "every": self.every, "calls": self.calls,
                "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a state from :meth:`state_dict` (the manager calls this on restore). Checks
        everything first: on error nothing is changed. A different ``decay``/``every`` in the
        state is logged and this object's values are kept.

        Raises:
            InvalidArgument: not an EMA state, or its weights do not fit this EMA's model
                (missing or extra keys, other shapes); the message names them.
        """
        if not isinstance(state, Mapping) or set(state) != set(_FIELDS):
            got = sorted(map(str, state)) if isinstance(state, Mapping) else type(state).__name__
            raise InvalidArgument(f"not an EMA state (expected keys {list(_FIELDS)}, got {got})")
        calls, updates = _count(state["calls"], "calls"), _count(state["updates"], "updates")
        shadow = state["shadow"]
        if not isinstance(shadow, Mapping) or not all(
                isinstance(v, torch.Tensor) for v in shadow.values()):
            raise InvalidArgument("EMA state: shadow must map names to tensors")
        self._check(shadow, "the saved EMA")
        if (state["decay"], state["every"]) != (self.decay, self.every):
            log.warning("EMA state saved with decay=%r every=%r; keeping decay=%r every=%r",
                        state["decay"], state["every"], self.decay, self.every)
        with torch.no_grad():
            for name, s in self.shadow.items():
                s.copy_(shadow[name])
        self.calls, self.updates = calls, updates

    def copy_to(self, model: torch.nn.Module | None = None) -> None:
        """Load the shadow weights into ``model`` (default: the tracked model), e.g. to
        evaluate the EMA. Raises as ``model.load_state_dict``."""
        (model or self.model).load_state_dict(self.shadow)

    def _check(self, other: Mapping[str, Any], what: str) -> None:
        missing = [k for k in self.shadow if k not in other]
        extra = [k for k in other if k not in self.shadow]
        shapes = [f"{k} {list(other[k].shape)} vs {list(s.shape)} here"
                  for k, s in self.shadow.items()
                  if k in other and tuple(other[k].shape) != tuple(s.shape)]
        if missing or extra or shapes:
            parts = [f"missing {', '.join(missing[:8])}" if missing else "",
                     f"extra {', '.join(extra[:8])}" if extra else "",
                     f"shapes differ: {'; '.join(shapes[:8])}" if shapes else ""]
            raise InvalidArgument(f"{what} does not match this EMA's model ("
                                  + "; ".join(p for p in parts if p)
                                  + "): an EMA for a different model")


def load_ema_weights(store: Store, name: str = "ema") -> Any:
    """The EMA shadow weights (a ``state_dict``) saved as object ``name`` in the manager
    checkpoint at ``store``, reading only their bytes. Any thread.

    Raises:
        InvalidArgument: the checkpoint holds no EMA under ``name``.
        NotFound, CorruptCheckpoint, StorageError: as :func:`cloudckpt.load`.
    """
    try:
        state = load(store, keys=[f"objects/{name}/shadow"])
    except InvalidArgument:
        raise InvalidArgument(f"{store.uri} holds no EMA weights under {name!r} (save one with "
                              f"mgr.save(step, ..., {name}=cloudckpt.EMA(model)))") from None
    return state["objects"][name]["shadow"]
