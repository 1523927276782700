"""Translate provider exceptions (botocore, gcsfs, azure-core, aiohttp, OS) into ours.

Classification uses error codes, HTTP statuses, exception types and ``errno`` values, never
message text. The original exception is kept as ``__cause__``; messages name the operation and
the (redacted) URI. A failure to establish a connection at all (refused, DNS, connect timeout)
becomes :class:`~cloudckpt.errors.EndpointUnreachable` with one line naming the endpoint:
``cannot reach 127.0.0.1:9000: connection refused (write of s3://bucket/key)``.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import sys
from collections.abc import Iterator
from urllib.parse import urlsplit

from cloudckpt.errors import (
    AccessDenied,
    AlreadyExists,
    CloudckptError,
    EndpointUnreachable,
    NotFound,
    RehydrationRequired,
    StorageError,
    StorageFull,
    TransientStorageError,
)
from cloudckpt.storage.uri import redact

__all__ = ["is_throttled", "is_transient", "is_unreachable", "translate_error"]

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_NOT_FOUND_CODES = frozenset({
    "NoSuchKey", "NoSuchBucket", "NoSuchUpload", "NotFound", "404",
    "BlobNotFound", "ContainerNotFound", "ResourceNotFound",
})
_DENIED_CODES = frozenset({
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
    "AccountProblem", "InvalidToken", "ExpiredToken", "403", "AuthenticationFailed",
    "AuthorizationFailure", "AuthorizationPermissionMismatch", "InsufficientAccountPermissions",
})
_EXISTS_CODES = frozenset({"PreconditionFailed", "BlobAlreadyExists", "ConditionNotMet", "412"})
_TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeoutException",
    "InternalError", "ServiceUnavailable", "RequestLimitExceeded", "TooManyRequestsException",
    "ServerBusy", "OperationTimedOut", "InternalServerError", "BandwidthLimitExceeded",
    "500", "502", "503", "504",
})
#: the store asks for a lower request rate (S3 503 SlowDown, GCS 429 rateLimitExceeded, Azure
#: 503 ServerBusy...): transient, and paced by storage/throttle.py
_THROTTLE_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
    "TooManyRequestsException", "ServerBusy", "TooManyRequests", "rateLimitExceeded",
})
_THROTTLE_STATUS = frozenset({429, 503})
_ARCHIVED_CODES = frozenset({"InvalidObjectState", "BlobArchived"})
#: out of space or over quota: MinIO (drive threshold, HTTP 507, 500 in old releases; bucket quota,
#: HTTP 400), Ceph RGW (user/bucket quota, HTTP 403 on S3, 413 on Swift). HTTP 507 (RFC 4918
#: Insufficient Storage) from any provider, and ENOSPC / EDQUOT from a filesystem, mean the same.
_FULL_CODES = frozenset({"XMinioStorageFull", "XMinioAdminBucketQuotaExceeded", "QuotaExceeded"})
_FULL_STATUS = 507
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen and len(seen) < 16:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _code_and_status(exc: BaseException) -> tuple[str | None, int | None]:
    """Provider error code and HTTP status of one exception, if it carries them."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:  # botocore ClientError
        code = response.get("Error", {}).get("Code")
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return (str(code) if code is not None else None), status
    status_code = getattr(exc, "status_code", None)  # azure-core HttpResponseError
    if isinstance(status_code, int):
        return getattr(exc, "error_code", None), status_code
    code = getattr(exc, "code", None)  # gcsfs HttpError
    if isinstance(code, int) and type(exc).__name__ == "HttpError":
        return None, code
    status = getattr(exc, "status", None)  # aiohttp ClientResponseError
    if isinstance(status, int) and type(exc).__module__.startswith("aiohttp"):
        return None, status
    return None, None


def _network_types() -> tuple[type[BaseException], ...]:
    """Network failure types of the HTTP stacks loaded now. A stack that is not imported
    cannot have raised, so nothing is imported here (the CLI starts without them)."""
    types: list[type[BaseException]] = [
        TimeoutError, ConnectionError, socket.timeout, asyncio.TimeoutError,
    ]
    be = sys.modules.get("botocore.exceptions")
    if be is not None:
        types += [be.ConnectionError, be.HTTPClientError, be.ReadTimeoutError,
                  be.ConnectTimeoutError, be.ResponseStreamingError, be.IncompleteReadError]
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is not None and hasattr(aiohttp, "ClientConnectionError"):
        types += [aiohttp.ClientConnectionError, aiohttp.ClientPayloadError,
                  aiohttp.ServerTimeoutError]
    ae = sys.modules.get("azure.core.exceptions")
    if ae is not None:
        types += [ae.ServiceRequestError, ae.ServiceResponseError]
    fe = sys.modules.get("fsspec.exceptions")
    if fe is not None:
        types.append(fe.FSTimeoutError)
    return tuple(types)


#: errno values that mean "no connection could be made" (never raised mid-request)
_UNREACHABLE_ERRNOS = {
    errno.ECONNREFUSED: "connection refused",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.EADDRNOTAVAIL: "address not available",
}


def _connect_types() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(failures to connect, timeouts while connecting) of the HTTP stacks loaded now."""
    connect: list[type[BaseException]] = []
    timeouts: list[type[BaseException]] = []
    be = sys.modules.get("botocore.exceptions")
    if be is not None:
        connect.append(be.EndpointConnectionError)
        timeouts.append(be.ConnectTimeoutError)
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is not None and hasattr(aiohttp, "ClientConnectorError"):
        connect.append(aiohttp.ClientConnectorError)
        ct = getattr(aiohttp, "ConnectionTimeoutError", None)  # aiohttp >= 3.10
        if ct is not None:
            timeouts.append(ct)
    return tuple(connect), tuple(timeouts)


def _endpoint(exc: BaseException) -> str | None:
    host, port = getattr(exc, "host", None), getattr(exc, "port", None)
    if isinstance(host, str) and isinstance(port, int) and type(exc).__module__.startswith(
            "aiohttp"):
        return f"{host}:{port}"
    kwargs = getattr(exc, "kwargs", None)  # botocore exceptions keep their fields here
    url = kwargs.get("endpoint_url") if isinstance(kwargs, dict) else None
    if isinstance(url, str) and url:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}" if parts.netloc else url
    return None


def _unreachable(exc: BaseException) -> tuple[str, str | None] | None:
    """``(reason, endpoint or None)`` when ``exc`` means no connection could be made."""
    specific: str | None = None
    generic = False
    endpoint: str | None = None
    connect_types, connect_timeouts = _connect_types()
    for e in _chain(exc):
        endpoint = endpoint or _endpoint(e)
        if specific is None:
            if isinstance(e, socket.gaierror):
                specific = "name resolution failed" + (f" ({e.strerror})" if e.strerror else "")
            elif connect_timeouts and isinstance(e, connect_timeouts):
                specific = "connect timed out"
            elif isinstance(e, OSError) and e.errno in _UNREACHABLE_ERRNOS:
                specific = _UNREACHABLE_ERRNOS[e.errno]
        generic = generic or (bool(connect_types) and isinstance(e, connect_types))
    if specific is None and not generic:
        return None
    return specific or "connection failed", endpoint


def is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (ours or a provider's) means the endpoint could not be reached at all."""
    if isinstance(exc, EndpointUnreachable):
        return True
    if isinstance(exc, CloudckptError):
        return False
    return _unreachable(exc) is not None


def _classify(exc: BaseException) -> type[StorageError]:
    for e in _chain(exc):
        code, status = _code_and_status(e)
        if code in _FULL_CODES or status == _FULL_STATUS:  # before 403/500: Ceph, old MinIO
            return StorageFull
        if code in _ARCHIVED_CODES:
            return RehydrationRequired
        if code in _NOT_FOUND_CODES:
            return NotFound
        if code in _DENIED_CODES:
            return AccessDenied
        if code in _EXISTS_CODES:
            return AlreadyExists
        if code in _TRANSIENT_CODES:
            return TransientStorageError
        if status is not None:
            if status == 404:
                return NotFound
            if status in (401, 403):
                return AccessDenied
            if status in (409, 412):
                return AlreadyExists
            if status in TRANSIENT_STATUS:
                return TransientStorageError
    if _unreachable(exc) is not None:
        return EndpointUnreachable
    network = _network_types()
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return StorageFull
        if isinstance(e, FileExistsError):
            return AlreadyExists
        if isinstance(e, FileNotFoundError):
            return NotFound
        if isinstance(e, PermissionError):
            return AccessDenied
        if isinstance(e, network):
            return TransientStorageError
        if isinstance(e, OSError) and e.errno in (errno.ECONNRESET, errno.ETIMEDOUT, errno.EPIPE):
            return TransientStorageError
    return StorageError


def translate_error(exc: BaseException, op: str, uri: str) -> CloudckptError:
    """Map ``exc`` raised by ``op`` on ``uri`` to one of our errors (returned, not raised).

    Our own errors pass through unchanged. The caller raises the result ``from exc``.
    """
    if isinstance(exc, CloudckptError):
        return exc
    cls = _classify(exc)
    if cls is EndpointUnreachable:
        reason, endpoint = _unreachable(exc) or ("connection failed", None)
        return cls(f"cannot reach {redact(endpoint) if endpoint else 'the endpoint'}: {reason} "
                   f"({op} {redact(uri)})")
    code, status = next(
        (cs for cs in map(_code_and_status, _chain(exc)) if cs != (None, None)), (None, None)
    )
    detail = " ".join(x for x in (code, f"HTTP {status}" if status else None) if x)
    reason = redact(str(exc) or type(exc).__name__)[:300]
    msg = f"{op} {redact(uri)} failed: {type(exc).__name__}"
    msg += f" ({detail})" if detail else ""
    msg += f": {reason}"
    if cls is StorageFull:
        msg += (" -- the storage is out of space or over its quota: free space (delete old "
                "checkpoints, `cloudckpt gc`) or raise the quota, then save again")
    if cls is RehydrationRequired:
        msg += (" -- the object is in an archive tier; restore it first (S3: restore-object; "
                "Azure: set the tier to Hot/Cool and wait for rehydration), then retry")
    return cls(msg)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (ours or a provider's) is worth retrying."""
    if isinstance(exc, TransientStorageError):
        return True
    if isinstance(exc, CloudckptError):
        return False
    return _classify(exc) is TransientStorageError


def is_throttled(exc: BaseException) -> bool:
    """Whether ``exc`` (ours, with the provider's as its cause, or a provider's) is the store
    asking for a lower request rate (a throttling code, or HTTP 429/503)."""
    for e in _chain(exc):
        code, status = _code_and_status(e)
        if code in _THROTTLE_CODES or status in _THROTTLE_STATUS:
            return True
    return False
