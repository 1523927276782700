"""When to save: save decisions as small, composable policies (the counterpart of retention).

The training loop asks :meth:`CheckpointManager.should_save` at a step boundary; the manager
asks its ``save_policy`` through :func:`decide`, which logs one line per decision saying why
(INFO when saving, naming the policy that fired; DEBUG when not). A policy sees where the loop
is (:class:`SavePoint`) and a keyword-only :class:`DecisionContext`: the run's metric and mode,
and the committed checkpoints, read from the store only when a policy asks (so a manager in a
new process decides exactly as the old one would have). Policies combine with ``|`` (or
:class:`AnySave`): ``EveryNSteps(500) | OnImprovement()``. Pure apart from that read.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from cloudckpt.errors import InvalidArgument
from cloudckpt.manager.retention import CheckpointSummary, ranked_by_metric

__all__ = ["AnySave", "DecisionContext", "EveryNEpochs", "EveryNSteps", "OnImprovement",
           "SaveDecisionPolicy", "SavePoint", "decide"]

log = logging.getLogger("cloudckpt.manager")


@dataclass(frozen=True)
class SavePoint:
    """Where the training loop is: ``step``; ``epoch`` (counted from 0) and whether this is its
    end (``epoch_end``); this step's ``metrics`` (``None``: none reported)."""

    step: int
    epoch: int | None = None
    epoch_end: bool = False
    metrics: Mapping[str, float] | None = None


@dataclass(frozen=True, kw_only=True)
class DecisionContext:
    """What a policy may consult besides the :class:`SavePoint`: the run's ``metric``/``mode``
    and ``committed()``, the committed checkpoints (one store listing per call)."""

    metric: str | None
    mode: str
    committed: Callable[[], Sequence[CheckpointSummary]]


class SaveDecisionPolicy(Protocol):
    """Extension point: whether to save at ``point``. Called on the training thread, once per
    :meth:`CheckpointManager.should_save`; should be cheap unless it needs ``committed()``."""

    def should_save(self, point: SavePoint, *, context: DecisionContext) -> bool: ...


def _members(p: SaveDecisionPolicy) -> tuple[SaveDecisionPolicy, ...]:
    return p.policies if isinstance(p, AnySave) else (p,)


class _Union:
    """``a | b``: save when either would (flattened into one :class:`AnySave`)."""

    def __or__(self: SaveDecisionPolicy, other: SaveDecisionPolicy) -> AnySave:
        return AnySave((*_members(self), *_members(other)))

    def __ror__(self: SaveDecisionPolicy, other: SaveDecisionPolicy) -> AnySave:
        return AnySave((*_members(other), *_members(self)))


def _check_every(n: int, what: str) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise InvalidArgument(f"{what} needs a positive int, not {n!r}")


def _check_mode(mode: str | None) -> None:
    if mode not in (None, "min", "max"):
        raise InvalidArgument(f"mode must be 'min' or 'max', not {mode!r}")


@dataclass(frozen=True)
class EveryNSteps(_Union):
    """Steps that are positive multiples of ``n``.

    Raises:
        InvalidArgument: ``n`` is not a positive int.
    """

    n: int

    def __post_init__(self) -> None:
        _check_every(self.n, "EveryNSteps")

    def should_save(self, point: SavePoint, *, context: DecisionContext) -> bool:
        return point.step > 0 and point.step % self.n == 0


@dataclass(frozen=True)
class EveryNEpochs(_Union):
    """The end (``epoch_end``) of every ``n``-th epoch (``epoch`` counted from 0: with ``n=2``,
    the ends of epochs 1, 3, 5...).

    Raises:
        InvalidArgument: ``n`` is not a positive int.
    """

    n: int

    def __post_init__(self) -> None:
        _check_every(self.n, "EveryNEpochs")

    def should_save(self, point: SavePoint, *, context: DecisionContext) -> bool:
        return point.epoch_end and point.epoch is not None and (point.epoch + 1) % self.n == 0


@dataclass(frozen=True)
class OnImprovement(_Union):
    """When this step's ``metrics[metric]`` beats the best committed checkpoint (read from the
    store), or when no committed checkpoint reports the metric yet. ``metric``/``mode`` default
    to the manager's; without a metric, or without a finite value this step, never.

    Raises:
        InvalidArgument: ``mode`` is not ``"min"``/``"max"``/``None``.
    """

    metric: str | None = None
    mode: str | None = None

    def __post_init__(self) -> None:
        _check_mode(self.mode)

    def should_save(self, point: SavePoint, *, context: DecisionContext) -> bool:
        name, mode = self.metric or context.metric, self.mode or context.mode
        if not name or point.metrics is None:
            return False
        value = point.metrics.get(name)
        if value is None or math.isnan(float(value)):
            return False
        ranked = ranked_by_metric(context.committed(), name, mode)
        if not ranked:
            return True
        prev = float(ranked[0].metrics[name])
        return float(value) < prev if mode == "min" else float(value) > prev


@dataclass(frozen=True)
class AnySave(_Union):
    """Save when any of ``policies`` would (asked in order; the first that fires decides)."""

    policies: tuple[SaveDecisionPolicy, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "policies", tuple(self.policies))

    def should_save(self, point: SavePoint, *, context: DecisionContext) -> bool:
        return any(p.should_save(point, context=context) for p in self.policies)


def decide(policy: SaveDecisionPolicy | None, point: SavePoint, *, context: DecisionContext,
           final: bool = False) -> bool:
    """Whether to save at ``point``: always when ``final``; otherwise when ``policy`` (or, for
    an :class:`AnySave`, one of its members) says so. Logs one line saying why. Called by the
    manager on the training thread.

    Raises:
        Whatever a policy raises (the built-in ones: StorageError from ``committed()``).
    """
    if final:
        log.info("step %d: saving (final step)", point.step)
        return True
    if policy is None:
        log.debug("step %d: not saving (no save policy)", point.step)
        return False
    for member in _members(policy):
        if member.should_save(point, context=context):
            log.info("step %d: saving (%r)", point.step, member)
            return True
    log.debug("step %d: not saving (%r)", point.step, policy)
    return False
