"""cloudckpt: checkpoint PyTorch training state to cloud storage and restore it anywhere."""

from cloudckpt._version import __version__
from cloudckpt.errors import (
    AccessDenied,
    AlreadyExists,
    CloudckptError,
    CorruptCheckpoint,
    EndpointUnreachable,
    IncompleteCheckpoint,
    InvalidArgument,
    InvalidKey,
    InvalidURI,
    NotFound,
    RehydrationRequired,
    StorageError,
    StorageFull,
    StorageTimeout,
    TransientStorageError,
    UnsupportedOperation,
    UnsupportedValue,
    UntrustedCheckpoint,
)
from cloudckpt.storage import open_store

__all__ = [
    "AccessDenied",
    "AlreadyExists",
    "CloudckptError",
    "CorruptCheckpoint",
    "EndpointUnreachable",
    "IncompleteCheckpoint",
    "InvalidArgument",
    "InvalidKey",
    "InvalidURI",
    "NotFound",
    "RehydrationRequired",
    "StorageError",
    "StorageFull",
    "StorageTimeout",
    "TransientStorageError",
    "UnsupportedOperation",
    "UnsupportedValue",
    "UntrustedCheckpoint",
    "__version__",
    "open_store",
]

from cloudckpt.engine.reader import inspect, load
from cloudckpt.engine.verify import VerifyReport, verify
from cloudckpt.engine.writer import SaveInfo, save
from cloudckpt.format.signing import Ed25519Signer, Ed25519Verifier, HmacKey
from cloudckpt.manager import (
    AnyOf,
    AnySave,
    ArchivePolicy,
    AsyncOptions,
    CheckpointManager,
    CommitOptions,
    CommitRecord,
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
from cloudckpt.manager.average import AverageInfo, average
from cloudckpt.manager.ema import EMA

__all__ += [
    "EMA",
    "AnyOf",
    "AnySave",
    "ArchivePolicy",
    "AsyncOptions",
    "AverageInfo",
    "CheckpointManager",
    "CommitOptions",
    "CommitRecord",
    "Ed25519Signer",
    "Ed25519Verifier",
    "EveryNEpochs",
    "EveryNSteps",
    "HmacKey",
    "KeepBest",
    "KeepEvery",
    "KeepLast",
    "KeepWithin",
    "OnImprovement",
    "PreemptionOptions",
    "SaveInfo",
    "TrainingState",
    "VerifyReport",
    "average",
    "inspect",
    "load",
    "save",
    "verify",
]
