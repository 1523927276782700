"""cloudckpt: checkpoint PyTorch training state to cloud storage and restore it anywhere.

The public names below are importable from ``cloudckpt``. The errors and ``__version__`` load
with the package; everything else (which needs torch, numpy or fsspec) loads on first use
(PEP 562), so ``import cloudckpt`` and the command line stay fast when no tensor is touched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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
    UnsupportedFramework,
    UnsupportedOperation,
    UnsupportedTransformers,
    UnsupportedValue,
    UntrustedCheckpoint,
)

if TYPE_CHECKING:  # the lazily loaded names, for type checkers and IDEs
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
        IncrementalOptions,
        KeepBest,
        KeepEvery,
        KeepLast,
        KeepWithin,
        OnImprovement,
        PreemptionOptions,
        Replica,
        TrainingState,
    )
    from cloudckpt.manager.average import AverageInfo, average
    from cloudckpt.manager.ema import EMA
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
    "UnsupportedFramework",
    "UnsupportedOperation",
    "UnsupportedTransformers",
    "UnsupportedValue",
    "UntrustedCheckpoint",
    "__version__",
    "open_store",
]
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
    "IncrementalOptions",
    "KeepBest",
    "KeepEvery",
    "KeepLast",
    "KeepWithin",
    "OnImprovement",
    "PreemptionOptions",
    "Replica",
    "SaveInfo",
    "TrainingState",
    "VerifyReport",
    "average",
    "inspect",
    "load",
    "save",
    "verify",
]

#: lazily loaded public name -> the module that defines it (to add a public name: list it here,
#: under TYPE_CHECKING above, and in __all__)
_LAZY: dict[str, str] = {
    "open_store": "cloudckpt.storage",
    "inspect": "cloudckpt.engine.reader",
    "load": "cloudckpt.engine.reader",
    "VerifyReport": "cloudckpt.engine.verify",
    "verify": "cloudckpt.engine.verify",
    "SaveInfo": "cloudckpt.engine.writer",
    "save": "cloudckpt.engine.writer",
    "Ed25519Signer": "cloudckpt.format.signing",
    "Ed25519Verifier": "cloudckpt.format.signing",
    "HmacKey": "cloudckpt.format.signing",
    **{name: "cloudckpt.manager" for name in (
        "AnyOf", "AnySave", "ArchivePolicy", "AsyncOptions", "CheckpointManager",
        "CommitOptions", "CommitRecord", "EveryNEpochs", "EveryNSteps", "IncrementalOptions",
        "KeepBest", "KeepEvery",
        "KeepLast", "KeepWithin", "OnImprovement", "PreemptionOptions", "Replica",
        "TrainingState")},
    "AverageInfo": "cloudckpt.manager.average",
    "average": "cloudckpt.manager.average",
    "EMA": "cloudckpt.manager.ema",
}


#: subpackages reachable as attributes after a bare ``import cloudckpt`` (imported on first use)
_SUBPACKAGES = frozenset({"cli", "dcp", "demo", "engine", "errors", "format", "integrations",
                          "manager", "storage", "testing"})


def __getattr__(name: str) -> Any:
    """Load a lazily exported public name, or a subpackage (``cloudckpt.storage``...), on
    first access (PEP 562).

    Raises:
        AttributeError: ``name`` is neither a public name nor a subpackage.
    """
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cloudckpt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
