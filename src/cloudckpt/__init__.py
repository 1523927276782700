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

__version__ = "0.1.0"

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
