"""The training-run layer: :class:`CheckpointManager`, its option objects and its policies.

``CheckpointManager`` and ``TrainingState`` (which need torch) load on first use (PEP 562), so
that tools reading a run's listing (the CLI's ``ls``) do not import torch.
"""

from typing import TYPE_CHECKING, Any

from cloudckpt.manager.context import RunContext
from cloudckpt.manager.decisions import (
    AnySave,
    DecisionContext,
    EveryNEpochs,
    EveryNSteps,
    OnImprovement,
    SaveDecisionPolicy,
    SavePoint,
)
from cloudckpt.manager.gc import GCReport
from cloudckpt.manager.index import CheckpointRecord
from cloudckpt.manager.options import (
    ArchivePolicy,
    AsyncOptions,
    CommitOptions,
    CommitRecord,
    IncrementalOptions,
    PreemptionOptions,
)
from cloudckpt.manager.replicas import Replica
from cloudckpt.manager.resolve import resolve_step
from cloudckpt.manager.retention import (
    AnyOf,
    CheckpointSummary,
    KeepBest,
    KeepEvery,
    KeepLast,
    KeepPinned,
    KeepWithin,
    RetentionPolicy,
    plan_retention,
)

__all__ = ["AnyOf", "AnySave", "ArchivePolicy", "AsyncOptions", "CheckpointManager",
           "CheckpointRecord", "CheckpointSummary", "CommitOptions", "CommitRecord",
           "DecisionContext", "EveryNEpochs",
           "EveryNSteps", "GCReport", "IncrementalOptions", "KeepBest", "KeepEvery", "KeepLast", "KeepPinned",
           "KeepWithin", "OnImprovement", "PreemptionOptions", "Replica", "RetentionPolicy", "RunContext",
           "SaveDecisionPolicy", "SavePoint", "TrainingState", "plan_retention", "resolve_step"]

if TYPE_CHECKING:
    from cloudckpt.manager.core import CheckpointManager, TrainingState


def __getattr__(name: str) -> Any:
    """``CheckpointManager`` / ``TrainingState`` from :mod:`cloudckpt.manager.core`, loaded on
    first access.

    Raises:
        AttributeError: any other name.
    """
    if name in ("CheckpointManager", "TrainingState"):
        from cloudckpt.manager import core

        return getattr(core, name)
    raise AttributeError(f"module 'cloudckpt.manager' has no attribute {name!r}")
