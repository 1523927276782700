"""cloudckpt: checkpoint PyTorch training state to cloud storage and restore it anywhere."""

from cloudckpt._version import __version__
from cloudckpt.errors import (
    AccessDenied,
    AlreadyExists,
    CloudckptError,
    CorruptCheckpoint,
    IncompleteCheckpoint,
    InvalidArgument,
    InvalidKey,
    InvalidURI,
    NotFound,
    StorageError,
    TransientStorageError,
)
from cloudckpt.storage import open_store

__all__ = [
    "AccessDenied",
    "AlreadyExists",
    "CloudckptError",
    "CorruptCheckpoint",
    "IncompleteCheckpoint",
    "InvalidArgument",
    "InvalidKey",
    "InvalidURI",
    "NotFound",
    "StorageError",
    "TransientStorageError",
    "__version__",
    "open_store",
]

from cloudckpt.engine.reader import inspect, load
from cloudckpt.engine.writer import SaveInfo, save
from cloudckpt.manager import (
    AnyOf,
    AnySave,
    ArchivePolicy,
    AsyncOptions,
    CheckpointManager,
    EveryNEpochs,
    EveryNSteps,
    KeepBest,
    KeepEvery,
    KeepLast,
    KeepWithin,
    OnImprovement,
    PreemptionOptions,
    TrainingState,
)

__all__ += ["AnyOf", "AnySave", "ArchivePolicy", "AsyncOptions", "CheckpointManager",
            "EveryNEpochs", "EveryNSteps", "KeepBest", "KeepEvery", "KeepLast", "KeepWithin",
            "OnImprovement", "PreemptionOptions", "SaveInfo", "TrainingState", "inspect", "load",
            "save"]
