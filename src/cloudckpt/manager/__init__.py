"""The training-run layer: :class:`CheckpointManager` and its policies."""

from cloudckpt.manager.archive import ArchivePolicy
from cloudckpt.manager.core import CheckpointManager, TrainingState
from cloudckpt.manager.gc import GCReport
from cloudckpt.manager.index import CheckpointRecord
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

__all__ = ["AnyOf", "ArchivePolicy", "CheckpointManager", "CheckpointRecord",
           "CheckpointSummary", "GCReport", "KeepBest", "KeepEvery", "KeepLast", "KeepPinned",
           "KeepWithin", "RetentionPolicy", "TrainingState", "plan_retention"]
