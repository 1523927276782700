"""The training-run layer: :class:`CheckpointManager`, its option objects and its policies."""

from cloudckpt.manager.context import RunContext
from cloudckpt.manager.core import CheckpointManager, TrainingState
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
    PreemptionOptions,
)
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
           "EveryNSteps", "GCReport", "KeepBest", "KeepEvery", "KeepLast", "KeepPinned",
           "KeepWithin", "OnImprovement", "PreemptionOptions", "RetentionPolicy", "RunContext",
           "SaveDecisionPolicy", "SavePoint", "TrainingState", "plan_retention", "resolve_step"]
