"""Azure Blob Storage through adlfs and the azure-storage-blob SDK it wraps.

Create-only writes send ``If-None-Match: *`` (``upload_blob(overwrite=False)``, and the
header on ``commit_block_list``). Streamed writes stage blocks and commit the block list.
Tiers (Hot / Cool / Cold / Archive) use ``set_standard_blob_tier``.
``AZURE_STORAGE_CONNECTION_STRING`` and the other variables adlfs reads work unchanged.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from fsspec.asyn import sync

from cloudckpt.storage.backends.base import (
    CONNECT_TIMEOUT,
    READ_TIMEOUT,
    BackendBase,
    check_storage_class,
    generic_object_info,
)
from cloudckpt.storage.base import ObjectInfo, Upload

__all__ = ["AzureBackend"]

AZ_TIERS = frozenset({"Hot", "Cool", "Cold", "Archive"})


def _split(path: str) -> tuple[str, str]:
    container, _, blob = path.partition("/")
    return container, blob


async def _with_blob(fs: Any, path: str, method: str, *args: Any, **kwargs: Any) -> Any:
    container, blob = _split(path)
    async with fs.service_client.get_blob_client(container=container, blob=blob) as bc:
        return await getattr(bc, method)(*args, **kwargs)


def _blob_call(fs: Any, path: str, method: str, *args: Any, **kwargs: Any) -> Any:
    return sync(fs.loop, _with_blob, fs, path, method, *args, **kwargs)


def _tier(name: str) -> Any:
    from azure.storage.blob import StandardBlobTier

    return StandardBlobTier(check_storage_class(name, AZ_TIERS, "az"))


def _if_missing() -> dict[str, Any]:
    # commit_block_list takes no match_condition; the raw header is what the service reads
    return {"headers": {"If-None-Match": "*"}}


class _AzureUpload:
    def __init__(self, backend: AzureBackend, fs: Any, path: str, key: str, create_only: bool,
                 tier: str | None) -> None:
        self.key = key
        self._backend, self._fs, self._path = backend, fs, path
        self._create_only, self._tier = create_only, tier
        self._blocks: list[str] = []

    def write_part(self, data: bytes | memoryview) -> None:
        block_id = base64.b64encode(f"{len(self._blocks):08d}".encode()).decode()
        _blob_call(self._fs, self._path, "stage_block", block_id, bytes(data), length=len(data),
                   **self._backend.timeouts)
        self._blocks.append(block_id)

    def finish(self, tail: bytes | memoryview = b"") -> None:
        if not self._blocks:
            self._backend.put(self._fs, self._path, tail, create_only=self._create_only,
                              storage_class=self._tier)
            return
        if len(tail):
            self.write_part(tail)
        from azure.storage.blob import BlobBlock

        kw: dict[str, Any] = _if_missing() if self._create_only else {}
        if self._tier:
            kw["standard_blob_tier"] = _tier(self._tier)
        _blob_call(self._fs, self._path, "commit_block_list",
                   [BlobBlock(b) for b in self._blocks], **kw, **self._backend.timeouts)
        self._blocks = []

    def abort(self) -> None:
        # Uncommitted blocks are discarded by the service after a week; nothing to call.
        self._blocks = []


def _single_try_client(fs: Any, connection_timeout: int, read_timeout: int) -> None:
    """Give ``fs`` a service client whose SDK retry policy is off. adlfs builds its client
    with the SDK defaults: 3 retries with waits of 15-60 s, connection refusals included
    (~80 s to fail against a closed port). cloudckpt's bounded policy is the only retry
    layer, as with s3fs and gcsfs. The credentials are those adlfs resolved."""
    if getattr(fs, "_cloudckpt_single_try", False):  # fsspec reuses cached instances
        return
    from azure.storage.blob.aio import BlobServiceClient

    kw: dict[str, Any] = {"retry_total": 0, "connection_timeout": connection_timeout,
                          "read_timeout": read_timeout}
    old = fs.service_client
    if getattr(fs, "connection_string", None):
        fs.service_client = BlobServiceClient.from_connection_string(fs.connection_string, **kw)
    else:
        fs.service_client = BlobServiceClient(account_url=old.url, credential=old.credential,
                                              **kw)
    fs._cloudckpt_single_try = True


class AzureBackend(BackendBase):
    """``az://container/prefix`` and ``abfs://``. Options go to
    ``adlfs.AzureBlobFileSystem`` (``connection_string``, ``account_name``, ``credential``...)."""

    min_part_size = 1
    storage_classes = AZ_TIERS
    timeouts = {"timeout": int(READ_TIMEOUT)}

    def make_fs(self, options: Mapping[str, Any], bucket: str) -> Any:
        import adlfs

        opts = dict(options)
        opts.setdefault("connection_timeout", int(CONNECT_TIMEOUT))
        opts.setdefault("read_timeout", int(READ_TIMEOUT))
        opts.setdefault("use_listings_cache", False)
        fs = adlfs.AzureBlobFileSystem(**opts)
        _single_try_client(fs, opts["connection_timeout"], opts["read_timeout"])
        return fs

    def put(self, fs: Any, path: str, data: bytes | memoryview, *, create_only: bool,
            storage_class: str | None) -> None:
        kw: dict[str, Any] = {}
        if storage_class:
            kw["standard_blob_tier"] = _tier(storage_class)
        _blob_call(fs, path, "upload_blob", bytes(data), overwrite=not create_only,
                   **kw, **self.timeouts)

    def start_upload(self, fs: Any, path: str, key: str, *, create_only: bool,
                     storage_class: str | None) -> Upload:
        tier = check_storage_class(storage_class, AZ_TIERS, "az") if storage_class else None
        return _AzureUpload(self, fs, path, key, create_only, tier)

    def set_storage_class(self, fs: Any, path: str, storage_class: str) -> None:
        tier = check_storage_class(storage_class, AZ_TIERS, "az")
        _blob_call(fs, path, "set_standard_blob_tier", tier)

    def info_to_object(self, fs: Any, path: str, key: str, info: Mapping[str, Any],
                       *, full: bool) -> ObjectInfo:
        tier = info.get("blob_tier")
        if tier is None and full:
            props = _blob_call(fs, path, "get_blob_properties")
            tier = props.blob_tier
        return generic_object_info(key, info, etag_field="etag", mtime_fields=("last_modified",),
                                   storage_class=str(tier) if tier else None)
