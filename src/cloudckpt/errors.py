"""The exception hierarchy of cloudckpt.

Every error cloudckpt raises on purpose is a :class:`CloudckptError` and also an instance of
the standard exception a caller would naturally catch (``FileNotFoundError``,
``PermissionError``, ``FileExistsError``, ``ValueError``, ``OSError``). The provider's own
exception, when there is one, is kept as ``__cause__``. Messages name the URI and the
operation; they never contain credentials (see :func:`cloudckpt.storage.uri.redact`).
"""

from __future__ import annotations

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
]


class CloudckptError(Exception):
    """Base class of every error cloudckpt raises on purpose."""


class InvalidURI(CloudckptError, ValueError):
    """A URI cloudckpt cannot use: unknown scheme, missing bucket, malformed text."""


class InvalidArgument(CloudckptError, ValueError):
    """An argument cloudckpt cannot act on (unknown storage class, bad part size, ...)."""


class UnsupportedValue(CloudckptError, TypeError):
    """A value in the state cannot be checkpointed without pickle; the message names its
    key path. Raised at save time, before anything is written."""


class InvalidKey(CloudckptError, ValueError):
    """An object key that is empty, absolute, or escapes the store's root (``..``)."""


class StorageError(CloudckptError, OSError):
    """A storage operation failed permanently (not worth retrying)."""


class StorageFull(StorageError):
    """A write was refused because the target is out of space: the local disk is full
    (``ENOSPC``) or over its quota (``EDQUOT``), or the object store's quota or capacity is
    reached (MinIO ``XMinioStorageFull``, Ceph ``QuotaExceeded``, HTTP 507). Never retried:
    free space or raise the quota, then save again."""


class TransientStorageError(StorageError):
    """A storage operation failed in a way that may succeed if retried (throttling, 5xx,
    timeouts, connection resets). Raised to callers only after the retry policy gave up."""


class StorageTimeout(TransientStorageError, TimeoutError):
    """A storage call got no complete answer within its wall-clock bound (the server stopped
    answering mid-request, or the call's deadline ran out). The outcome of the last attempt
    is unknown: a write may still land later."""


class EndpointUnreachable(TransientStorageError, ConnectionError):
    """The storage endpoint could not be reached at all (connection refused, DNS failure,
    connect timeout). Retried only within the retry policy's short ``connect_budget``."""


class NotFound(StorageError, FileNotFoundError):
    """The bucket, container, object or checkpoint does not exist."""


class AccessDenied(StorageError, PermissionError):
    """The credentials in use may not perform the operation."""


class AlreadyExists(StorageError, FileExistsError):
    """A create-only write found the object already present (the commit lost a race, or the
    target holds a committed checkpoint)."""


class UnsupportedOperation(StorageError):
    """The backend cannot perform this operation (for example storage classes on a local path)."""


class RehydrationRequired(StorageError):
    """The object lives in an archive tier that does not allow direct reads (S3 Glacier /
    Deep Archive, Azure Archive); it must be restored / rehydrated first."""


class CorruptCheckpoint(CloudckptError, ValueError):
    """Stored bytes do not match the checksum or size recorded in the manifest, or the
    manifest itself is malformed."""


class UntrustedCheckpoint(CorruptCheckpoint):
    """A verification key is configured and the checkpoint's manifest is unsigned, signed with
    an unknown key, or its signature does not match: it may have been forged."""


class IncompleteCheckpoint(NotFound):
    """Data objects exist under a checkpoint URI but no committed manifest does: a save that
    crashed or is still in flight. Nothing under it is loadable."""


class UnsupportedFramework(CloudckptError, ImportError):
    """A framework integration cannot run with the installed framework: its version is outside
    the range the integration supports, or a private API the integration relies on changed
    (e.g. ``cloudckpt.integrations.lightning`` with a ``lightning`` outside ``>=2.6,<3``). The
    message names the supported range and what to install."""



class UnsupportedTransformers(UnsupportedFramework):
    """The installed ``transformers`` is outside the range ``CloudckptTrainer`` supports, or
    its ``Trainer`` lacks or changed a private method the trainer overrides (see
    :mod:`cloudckpt.integrations.hf`). ``CloudckptCallback`` with a plain ``Trainer`` needs
    only public hooks."""
