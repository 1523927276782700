"""Parsing and validation of store URIs and object keys.

A store is addressed by a URI: a local path, ``file://``, ``memory://``, ``s3://bucket/prefix``,
``gs://`` / ``gcs://bucket/prefix``, ``az://`` / ``abfs://container/prefix``. Keys inside a
store are relative POSIX paths that can never leave the store's root.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

from cloudckpt.errors import InvalidArgument, InvalidURI
from cloudckpt.format.keys import join_key, validate_key

__all__ = ["SchemeTable", "StoreURI", "join_key", "parse_uri", "redact", "validate_key"]


class SchemeTable:
    """URI scheme -> canonical protocol, and which protocols are bucket-based clouds. The
    registry (:func:`cloudckpt.storage.register_backend`) adds to the default table; a
    scheme once registered is never silently rebound."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.schemes: dict[str, str] = {"file": "file", "memory": "memory"}
        self.clouds: set[str] = set()

    def add(self, protocol: str, schemes: tuple[str, ...], *, cloud: bool) -> None:
        """Map each of ``schemes`` to ``protocol``.

        Raises:
            InvalidArgument: a scheme is already bound to another protocol.
        """
        with self._lock:
            for sch in schemes:
                bound = self.schemes.get(sch.lower())
                if bound is not None and bound != protocol:
                    raise InvalidArgument(f"URI scheme {sch!r} is already bound to {bound!r}")
            for sch in schemes:
                self.schemes[sch.lower()] = protocol
            if cloud:
                self.clouds.add(protocol)


#: The process's scheme table; filled by the storage registry as backends register.
SCHEMES = SchemeTable()
# Bucket / container names: letters, digits, dots, dashes, underscores (GCS allows them).
_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,221}[A-Za-z0-9]$")
_CRED_RE = re.compile(r"(AccountKey|SharedAccessSignature|sig|secret|token|password)=([^;&]+)",
                      re.IGNORECASE)


def redact(text: str) -> str:
    """Return ``text`` with credential-looking values (``AccountKey=...``, ``sig=...``,
    ``user:pass@``) replaced by ``***``. Safe to call on any string."""
    text = _CRED_RE.sub(lambda m: f"{m.group(1)}=***", text)
    return re.sub(r"//[^/@\s]+:[^/@\s]+@", "//***@", text)


@dataclass(frozen=True)
class StoreURI:
    """A parsed store URI.

    ``protocol`` is the canonical fsspec protocol (``file``, ``memory``, ``s3``, ``gcs``,
    ``az``); ``bucket`` is empty for local and memory stores; ``root`` is the fsspec path of
    the store's root (``bucket/prefix`` for clouds, an absolute path for local files).
    """

    protocol: str
    bucket: str
    prefix: str
    original: str
    account: str = ""  # ``abfs://container@ACCOUNT.dfs.core.windows.net``: the account name

    @property
    def root(self) -> str:
        if self.protocol == "file":
            return self.prefix
        if self.protocol == "memory":
            return "/" + self.prefix if self.prefix else "/"
        return f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket

    @property
    def canonical(self) -> str:
        """The URI in canonical form (``gs://`` for GCS, ``az://`` for Azure, ``file://``)."""
        scheme = {"gcs": "gs"}.get(self.protocol, self.protocol)
        if self.protocol == "file":
            return f"file://{self.prefix}"
        if self.protocol == "memory":
            return f"memory://{self.prefix}"
        return f"{scheme}://{self.root}"

    @property
    def is_cloud(self) -> bool:
        return self.protocol in SCHEMES.clouds

    def child(self, key: str) -> StoreURI:
        """The URI of a sub-prefix ``key`` (validated like an object key)."""
        key = validate_key(key)
        prefix = f"{self.prefix.rstrip('/')}/{key}" if self.prefix else key
        if self.protocol == "file" and not self.prefix:
            prefix = "/" + key
        return StoreURI(self.protocol, self.bucket, prefix, f"{self.original.rstrip('/')}/{key}",
                        self.account)


def parse_uri(uri: str | os.PathLike[str]) -> StoreURI:
    """Parse a store URI or local path.

    Raises:
        InvalidURI: the scheme is unknown, the bucket/container is missing or malformed, or the
            text is empty. The message shows the (credential-redacted) URI and how to fix it.
    """
    if isinstance(uri, os.PathLike):
        uri = os.fspath(uri)
    if not isinstance(uri, str) or not uri.strip():
        raise InvalidURI(f"empty or non-string store URI: {uri!r}")
    text = uri.strip()
    if "\x00" in text:
        raise InvalidURI(f"store URI contains a NUL byte: {redact(text)!r}")
    if "://" not in text:
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", text) and not re.match(r"^[A-Za-z]:[\\/]", text):
            raise InvalidURI(
                f"malformed store URI {redact(text)!r}: expected SCHEME://..., e.g. s3://bucket/prefix"
            )
        return StoreURI("file", "", os.path.abspath(os.path.expanduser(text)), text)
    scheme, _, rest = text.partition("://")
    proto = SCHEMES.schemes.get(scheme.lower())
    if proto is None:
        known = ", ".join(sorted(f"{s}://" for s in SCHEMES.schemes))
        raise InvalidURI(f"unknown scheme {scheme!r} in {redact(text)!r}; supported: {known}")
    if proto == "file":
        path = rest if rest.startswith("/") else "/" + rest
        return StoreURI("file", "", os.path.abspath(path), text)
    if proto == "memory":
        return StoreURI("memory", "", _clean_prefix(rest, text), text)
    parts = urlsplit(f"{scheme}://{rest}")
    bucket, _, host = parts.netloc.partition("@")  # abfs://container@account.dfs.core...
    account = host.split(".", 1)[0]
    if not bucket:
        raise InvalidURI(f"missing bucket/container in {redact(text)!r}: expected {scheme}://BUCKET/prefix")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise InvalidURI(f"invalid bucket/container name {bucket!r} in {redact(text)!r}")
    return StoreURI(proto, bucket, _clean_prefix(parts.path, text), text, account)


def _clean_prefix(path: str, original: str) -> str:
    path = path.strip("/")
    if not path:
        return ""
    for seg in path.split("/"):
        if seg in ("", ".", ".."):
            raise InvalidURI(f"invalid path segment {seg!r} in {redact(original)!r}")
    return path
