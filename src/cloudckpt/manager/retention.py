"""Retention as pure, composable policies.

A policy looks at the committed checkpoints (never at in-memory counters, so it survives
restarts) and returns the steps it wants to keep. :func:`plan_retention` applies one and adds
the two guarantees no policy can override: the latest committed checkpoint and the best one
(by the manager's metric) are always kept. Policies combine with ``|`` (or :class:`AnyOf`):
``KeepLast(3) | KeepEvery(1000)``. Everything here is a pure function of its inputs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cloudckpt.errors import InvalidArgument

__all__ = ["AnyOf", "CheckpointSummary", "KeepBest", "KeepEvery", "KeepLast", "KeepPinned",
           "KeepWithin", "RetentionPolicy", "best_step", "keep_last_and_best", "plan_retention"]


@dataclass(frozen=True)
class CheckpointSummary:
    """What retention needs to know about one committed checkpoint."""

    step: int
    time: float  # seconds since the epoch, when it was committed
    metrics: Mapping[str, float] = field(default_factory=dict)
    pinned: bool = False


class RetentionPolicy(Protocol):
    """Extension point: which steps to keep among ``ckpts`` at time ``now``."""

    def keep(self, ckpts: Sequence[CheckpointSummary], now: float) -> set[int]: ...


def _members(p: RetentionPolicy) -> tuple[RetentionPolicy, ...]:
    return p.policies if isinstance(p, AnyOf) else (p,)


class _Union:
    """``a | b``: keep what either keeps (flattened into one :class:`AnyOf`)."""

    def __or__(self: RetentionPolicy, other: RetentionPolicy) -> AnyOf:
        return AnyOf((*_members(self), *_members(other)))

    def __ror__(self: RetentionPolicy, other: RetentionPolicy) -> AnyOf:
        return AnyOf((*_members(other), *_members(self)))


def _metric(c: CheckpointSummary, name: str) -> float | None:
    v = c.metrics.get(name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        return None
    return float(v)


def _check_mode(mode: str) -> None:
    if mode not in ("min", "max"):
        raise InvalidArgument(f"mode must be 'min' or 'max', not {mode!r}")


def ranked_by_metric(ckpts: Iterable[CheckpointSummary], metric: str, mode: str
                     ) -> list[CheckpointSummary]:
    """Checkpoints that report ``metric``, best first; ties go to the newer step."""
    _check_mode(mode)
    scored = [(m, c) for c in ckpts if (m := _metric(c, metric)) is not None]
    sign = 1.0 if mode == "min" else -1.0
    scored.sort(key=lambda mc: (sign * mc[0], -mc[1].step))
    return [c for _, c in scored]


def best_step(ckpts: Iterable[CheckpointSummary], metric: str | None, mode: str) -> int | None:
    """The step with the best ``metric`` (``None`` without a metric or without values)."""
    if metric is None:
        return None
    ranked = ranked_by_metric(ckpts, metric, mode)
    return ranked[0].step if ranked else None


@dataclass(frozen=True)
class KeepLast(_Union):
    """The ``n`` newest steps."""

    n: int

    def keep(self, ckpts: Sequence[CheckpointSummary], now: float) -> set[int]:
        return set(sorted(c.step for c in ckpts)[-self.n:]) if self.n > 0 else set()


@dataclass(frozen=True)
class KeepBest(_Union):
    """The ``k`` best steps by ``metric`` (``mode`` ``"min"`` or ``"max"``)."""

    k: int
    metric: str
    mode: str = "min"

    def __post_init__(self) -> None:
        _check_mode(self.mode)

    def keep(self, ckpts: Sequence[CheckpointSummary], now: float) -> set[int]:
        return {c.step for c in ranked_by_metric(ckpts, self.metric, self.mode)[: max(0, self.k)]}


@dataclass(frozen=True)
class KeepEvery(_Union):
    """Steps that are multiples of ``every`` (milestones)."""

    every: int

    def keep(self, ckpts: Sequence[CheckpointSummary], now: float) -> set[int]:
        return {c.step for c in ckpts if self.every > 0 and c.step % self.every == 0}


@dataclass(frozen=True)
class KeepWithin(_Union):
    """Checkpoints committed within the last ``seconds``."""

    seconds: float

    def keep(self, ckpts: Sequence[CheckpointSummary], now: float) -> set[int]:
        return {c.step for c in ckpts if now - c.time <= self.seconds}


@dataclass(frozen=True)
class KeepPinned(_Union):
    """Checkpoints pinned by the user."""

    def keep(self, ckpts: Sequence[CheckpointSummary], now: float) -> set[int]:
        return {c.step for c in ckpts if c.pinned}


@dataclass(frozen=True)
class AnyOf(_Union):
    """Keep what any of ``policies`` keeps."""

    policies: tuple[RetentionPolicy, ...]

    def keep(self, ckpts: Sequence[CheckpointSummary], now: float) -> set[int]:
        out: set[int] = set()
        for p in self.policies:
            out |= p.keep(ckpts, now)
        return out


def plan_retention(ckpts: Sequence[CheckpointSummary], policy: RetentionPolicy, now: float, *,
                   metric: str | None = None, mode: str = "min") -> list[int]:
    """Steps to remove from the hot set, oldest first. Never the latest, never the best by
    ``metric``, never a pinned one."""
    if not ckpts:
        return []
    keep = policy.keep(ckpts, now)
    keep.add(max(c.step for c in ckpts))
    best = best_step(ckpts, metric, mode)
    if best is not None:
        keep.add(best)
    keep |= KeepPinned().keep(ckpts, now)
    return sorted(c.step for c in ckpts if c.step not in keep)


def keep_last_and_best(keep_last: int | None, keep_best: int | None, metric: str | None,
                       mode: str = "min") -> RetentionPolicy | None:
    """The manager's default policy: the ``keep_last`` newest, plus the ``keep_best`` best by
    ``metric`` when both are set; ``None`` (no retention) when ``keep_last`` is ``None``.

    Raises:
        InvalidArgument: ``mode`` is not "min"/"max".
    """
    if keep_last is None:
        return None
    parts: list[RetentionPolicy] = [KeepLast(keep_last)]
    if keep_best and metric:
        parts.append(KeepBest(keep_best, metric, mode))
    return AnyOf(tuple(parts))
