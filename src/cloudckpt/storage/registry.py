"""Which backend serves which protocol: :func:`register_backend` and :func:`open_store`.

Extension point. A third-party package adds a backend either by calling
:func:`register_backend` at import time, or without any import by declaring an entry point in
the ``cloudckpt.backends`` group whose object is a :class:`BackendSpec`::

    [project.entry-points."cloudckpt.backends"]
    myfs = "mypkg.cloudckpt_backend:SPEC"

Entry points are loaded once, the first time a URI names an unknown scheme. The built-in
backends (``file``, ``memory``, ``s3``, ``gcs``, ``az``) are registered when this module loads.
Any thread may call these functions.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from cloudckpt.errors import InvalidArgument, InvalidURI
from cloudckpt.storage.backends.azure import AzureBackend
from cloudckpt.storage.backends.base import Backend
from cloudckpt.storage.backends.gcs import GCSBackend
from cloudckpt.storage.backends.local import LocalBackend
from cloudckpt.storage.backends.memory import MemoryBackend
from cloudckpt.storage.backends.s3 import S3Backend
from cloudckpt.storage.base import Store
from cloudckpt.storage.fsspec_store import FsspecStore
from cloudckpt.storage.retry import RetryingStore, RetryPolicy
from cloudckpt.storage.uri import SCHEMES, parse_uri

__all__ = ["ENTRY_POINT_GROUP", "BackendSpec", "backend_for", "open_store", "register_backend"]

ENTRY_POINT_GROUP = "cloudckpt.backends"


@dataclass(frozen=True)
class BackendSpec:
    """A backend and the URI schemes it serves. ``cloud``: URIs carry a bucket/container."""

    protocol: str
    backend: Backend
    schemes: tuple[str, ...]
    cloud: bool = True


class _Registry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._backends: dict[str, Backend] = {}
        self._entry_points_loaded = False

    def add(self, spec: BackendSpec, *, replace: bool) -> None:
        with self._lock:
            if spec.protocol in self._backends and not replace:
                raise InvalidArgument(f"a backend for {spec.protocol!r} is already registered; "
                                      "pass replace=True to override it")
            SCHEMES.add(spec.protocol, spec.schemes, cloud=spec.cloud)
            self._backends[spec.protocol] = spec.backend

    def get(self, protocol: str) -> Backend:
        with self._lock:
            backend = self._backends.get(protocol)
        if backend is None:
            raise InvalidURI(f"no backend is registered for protocol {protocol!r}")
        return backend

    def load_entry_points(self) -> None:
        with self._lock:
            if self._entry_points_loaded:
                return
            self._entry_points_loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            spec = ep.load()
            if not isinstance(spec, BackendSpec):
                raise InvalidArgument(f"entry point {ep.name!r} in {ENTRY_POINT_GROUP!r} is "
                                      f"not a BackendSpec")
            self.add(spec, replace=False)


_REGISTRY = _Registry()
for _spec in (BackendSpec("file", LocalBackend(), ("file",), cloud=False),
              BackendSpec("memory", MemoryBackend(), ("memory",), cloud=False),
              BackendSpec("s3", S3Backend(), ("s3", "s3a")),
              BackendSpec("gcs", GCSBackend(), ("gs", "gcs")),
              BackendSpec("az", AzureBackend(), ("az", "abfs", "abfss"))):
    _REGISTRY.add(_spec, replace=False)


def register_backend(protocol: str, backend: Backend, *, schemes: tuple[str, ...] = (),
                     cloud: bool = True, replace: bool = False) -> None:
    """Serve URIs whose scheme is one of ``schemes`` (default: ``(protocol,)``) with
    ``backend``, a :class:`~cloudckpt.storage.backends.base.Backend` (subclass
    :class:`~cloudckpt.storage.backends.base.BackendBase` for the no-op defaults).

    Raises:
        InvalidArgument: the protocol is taken (and not ``replace``), or a scheme is bound to
            another protocol.
    """
    _REGISTRY.add(BackendSpec(protocol, backend, schemes or (protocol,), cloud), replace=replace)


def backend_for(uri: str | os.PathLike[str]) -> Backend:
    """The backend serving ``uri`` (entry points are consulted for unknown schemes).

    Raises:
        InvalidURI: malformed URI or no backend for its scheme.
    """
    return _REGISTRY.get(_parse(uri).protocol)


def _parse(uri: str | os.PathLike[str]) -> Any:
    try:
        return parse_uri(uri)
    except InvalidURI:
        _REGISTRY.load_entry_points()  # an unknown scheme may come from a plug-in
        return parse_uri(uri)


def open_store(uri: str | os.PathLike[str] | Store, *,
               storage_options: Mapping[str, Any] | None = None,
               retry: RetryPolicy | None = None) -> Store:
    """Open the store rooted at ``uri``.

    ``storage_options`` go to the fsspec filesystem (``endpoint_url``, ``key``/``secret``,
    ``token``, ``connection_string``, ``anon``, ...); each cloud's standard environment
    variables and credential chains apply as usual. A :class:`Store` passes through unchanged.
    Nothing is contacted until the first operation.

    Raises:
        InvalidURI: malformed URI, unknown scheme, missing bucket.
        ImportError: the extra for that cloud (``cloudckpt[s3]``...) is not installed.
    """
    if not isinstance(uri, (str, os.PathLike)):
        return uri
    parsed = _parse(uri)
    backend = _REGISTRY.get(parsed.protocol)
    opts = dict(storage_options or {})
    if parsed.account:
        opts.setdefault("account_name", parsed.account)
    fs = backend.make_fs(opts, parsed.bucket)
    return RetryingStore(FsspecStore(parsed, backend, fs), retry)
