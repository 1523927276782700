"""Google Cloud Storage through gcsfs.

Create-only writes use ``ifGenerationMatch=0``. Streamed writes use a resumable upload
(created lazily: an object smaller than one part is one simple upload, whose precondition
every server enforces). Storage classes change through ``rewriteTo`` as GCS requires.
``STORAGE_EMULATOR_HOST`` selects an emulator; then anonymous credentials are the default.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from typing import Any

from fsspec.asyn import sync

from cloudckpt.errors import AlreadyExists
from cloudckpt.storage.backends.base import (
    CONNECT_TIMEOUT,
    READ_TIMEOUT,
    BackendBase,
    check_storage_class,
    generic_object_info,
)
from cloudckpt.storage.base import ObjectInfo, Upload

__all__ = ["GCSBackend"]

GCS_CLASSES = frozenset({"STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE"})
#: resumable-upload chunks other than the last must be multiples of this
GCS_CHUNK = 256 * 1024


def _split(path: str) -> tuple[str, str]:
    bucket, _, key = path.partition("/")
    return bucket, key


class _GCSUpload:
    def __init__(self, backend: GCSBackend, fs: Any, path: str, key: str, create_only: bool,
                 storage_class: str | None) -> None:
        self.key = key
        self._backend, self._fs, self._path = backend, fs, path
        self._create_only, self._class = create_only, storage_class
        self._location: str | None = None
        self._offset = 0

    def _chunk(self, data: bytes | memoryview, total: int | None) -> None:
        n = len(data)
        if n:
            rng = f"bytes {self._offset}-{self._offset + n - 1}/{'*' if total is None else total}"
        else:
            rng = f"bytes */{total}"
        self._fs.call("POST", self._location, headers={"Content-Range": rng,
                                                        "Content-Length": str(n)},
                      data=bytes(data) if n else None)
        self._offset += n

    def write_part(self, data: bytes | memoryview) -> None:
        if len(data) % GCS_CHUNK:
            raise ValueError(f"GCS resumable parts must be multiples of {GCS_CHUNK} bytes")
        if self._location is None:
            from gcsfs.core import initiate_upload

            bucket, key = _split(self._path)
            if self._create_only and self._fs.exists(self._path):
                # real GCS also enforces ifGenerationMatch=0 on the resumable session itself
                raise AlreadyExists(f"create-only upload: gs://{self._path} already exists")
            self._location = sync(self._fs.loop, initiate_upload, self._fs, bucket, key,
                                  mode="create" if self._create_only else "overwrite")
        self._chunk(data, None)

    def finish(self, tail: bytes | memoryview = b"") -> None:
        if self._location is None:
            self._backend.put(self._fs, self._path, tail, create_only=self._create_only,
                              storage_class=self._class)
            return
        self._chunk(tail, self._offset + len(tail))
        self._location = None
        if self._class:
            self._backend.set_storage_class(self._fs, self._path, self._class)

    def abort(self) -> None:
        if self._location is not None:
            location, self._location = self._location, None
            with contextlib.suppress(Exception):
                self._fs.call("DELETE", location)


_SINGLE_TRY: dict[type[Any], type[Any]] = {}
log = logging.getLogger("cloudckpt.storage")


def _gcsfs_version() -> str:
    import gcsfs

    return str(getattr(gcsfs, "__version__", "?"))


def _single_try(cls: type[Any]) -> type[Any]:
    """``cls`` with gcsfs's own request retries off. gcsfs retries every request up to 6 times
    with waits of 1-32 s (connection refusals included: ~35 s to fail against a closed port);
    cloudckpt's bounded policy is the only retry layer, as with s3fs and the Azure SDK. Reuses
    gcsfs's own decorator with one try, so its handling of 404 and requester-pays stays."""
    sub = _SINGLE_TRY.get(cls)
    if sub is None:
        from gcsfs.retry import retry_request

        undecorated = getattr(cls._request, "__wrapped__", None)
        if undecorated is None:  # gcsfs changed: its retries stay on (slower failures only)
            log.warning("gcsfs %s has no decorated _request; its own request retries stay on "
                        "(failures take longer to surface)", _gcsfs_version())
            return cls
        name = f"SingleTry{cls.__name__}"
        sub = type(name, (cls,), {"_request": retry_request(retries=1)(undecorated),
                                  "__module__": __name__, "__qualname__": name})
        globals()[name] = _SINGLE_TRY[cls] = sub  # importable by name (pickling)
    return sub


class GCSBackend(BackendBase):
    """``gs://`` / ``gcs://``. Options go to ``gcsfs.GCSFileSystem``."""

    min_part_size = GCS_CHUNK
    storage_classes = GCS_CLASSES

    def make_fs(self, options: Mapping[str, Any], bucket: str) -> Any:
        # gcsfs swaps in an "extended" class that probes a gRPC endpoint for zonal buckets on
        # first use (a ~60 s stall against emulators) unless GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT
        # was "false" when gcsfs was first imported. Use the core class unless the user opted in
        # with that variable, whatever the import order.
        import aiohttp
        import gcsfs
        import gcsfs.core

        zonal = os.environ.get("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "").lower() in ("true", "1")
        cls = _single_try(gcsfs.GCSFileSystem if zonal else gcsfs.core.GCSFileSystem)
        opts = dict(options)
        if os.environ.get("STORAGE_EMULATOR_HOST") and "token" not in opts:
            opts["token"] = "anon"
        opts.setdefault("timeout", READ_TIMEOUT)
        # per request, like s3fs's connect/read timeouts (aiohttp's default: 300 s in total)
        opts.setdefault("requests_timeout", aiohttp.ClientTimeout(connect=CONNECT_TIMEOUT,
                                                                  sock_read=READ_TIMEOUT))
        opts.setdefault("use_listings_cache", False)
        return cls(**opts)

    def put(self, fs: Any, path: str, data: bytes | memoryview, *, create_only: bool,
            storage_class: str | None) -> None:
        fs.pipe_file(path, bytes(data), mode="create" if create_only else "overwrite")
        if storage_class:
            self.set_storage_class(fs, path, storage_class)

    def start_upload(self, fs: Any, path: str, key: str, *, create_only: bool,
                     storage_class: str | None) -> Upload:
        cls = check_storage_class(storage_class, GCS_CLASSES, "gcs") if storage_class else None
        return _GCSUpload(self, fs, path, key, create_only, cls)

    def set_storage_class(self, fs: Any, path: str, storage_class: str) -> None:
        cls = check_storage_class(storage_class, GCS_CLASSES, "gcs")
        bucket, key = _split(path)
        body: dict[str, Any] = {"storageClass": cls}
        token: str | None = None
        for _ in range(1000):  # large objects are rewritten in several calls
            params = {"rewriteToken": token} if token else {}
            resp = fs.call("POST", "b/{}/o/{}/rewriteTo/b/{}/o/{}", bucket, key, bucket, key,
                           json=body, json_out=True, **params)
            if resp.get("done"):
                return
            token = resp.get("rewriteToken")

    def info_to_object(self, fs: Any, path: str, key: str, info: Mapping[str, Any],
                       *, full: bool) -> ObjectInfo:
        return generic_object_info(key, info, etag_field="generation",
                                   mtime_fields=("mtime", "updated"),
                                   storage_class=info.get("storageClass"))
