"""The ``Trainer``'s checkpoint conventions as cloudckpt retention: the ``save_total_limit``
rotation rule (:class:`HFRotation`) and how ``metric_for_best_model`` names an evaluation
metric. Public ``transformers`` API only (``TrainingArguments`` fields).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cloudckpt.manager import CheckpointSummary
from cloudckpt.manager.retention import best_step

__all__ = ["HFRotation", "metric_name", "numeric_metrics"]


def metric_name(args: Any) -> str | None:
    """The metric key ``args.metric_for_best_model`` names, with the ``eval_`` prefix the
    ``Trainer`` adds; ``None`` without one."""
    name = getattr(args, "metric_for_best_model", None)
    if not name:
        return None
    return str(name) if str(name).startswith("eval_") else f"eval_{name}"


def numeric_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """The numeric (non-bool) entries of an evaluation's ``metrics``, as floats."""
    out: dict[str, float] = {}
    for k, v in (metrics or {}).items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        out[str(k)] = float(v)
    return out


@dataclass(frozen=True)
class HFRotation:
    """Retention with the ``Trainer``'s ``save_total_limit`` rule: the newest checkpoint and
    the best one (by ``metric``/``mode``) are protected; the newest others are kept until
    ``limit`` checkpoints remain (more only when the protected ones alone exceed it)."""

    limit: int
    metric: str | None = None
    mode: str = "min"

    def keep(self, ckpts: Sequence[CheckpointSummary], now: float) -> set[int]:
        if not ckpts:
            return set()
        steps = sorted(c.step for c in ckpts)
        protected = {steps[-1]}
        best = best_step(ckpts, self.metric, self.mode)
        if best is not None:
            protected.add(best)
        room = max(self.limit, len(protected)) - len(protected)
        others = [s for s in steps if s not in protected]
        return protected | set(others[len(others) - room:] if room > 0 else [])
