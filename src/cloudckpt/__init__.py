"""cloudckpt: checkpoint PyTorch training state to cloud storage and restore it anywhere."""

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

from cloudckpt._version import __version__

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

from cloudckpt.reader import inspect, load  # noqa: E402
from cloudckpt.writer import SaveInfo, save  # noqa: E402
from cloudckpt.manager import ArchivePolicy, CheckpointManager, TrainingState  # noqa: E402

__all__ += ["ArchivePolicy", "CheckpointManager", "SaveInfo", "TrainingState", "inspect", "load",
            "save"]
