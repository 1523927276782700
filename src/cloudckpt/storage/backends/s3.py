"""Amazon S3 (and S3-compatible: MinIO, moto) through s3fs.

Create-only writes use ``If-None-Match: *`` on PutObject and on CompleteMultipartUpload, so a
committed object can never be overwritten, not even by a zombie writer. botocore's and s3fs's
own retries are switched off: cloudckpt's retry policy is the only one, and it is bounded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cloudckpt.storage.backends.base import (
    CONNECT_TIMEOUT,
    READ_TIMEOUT,
    BackendBase,
    check_storage_class,
    generic_object_info,
)
from cloudckpt.storage.base import ObjectInfo, PendingUpload, Upload

__all__ = ["S3Backend"]

S3_CLASSES = frozenset({
    "STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER_IR", "GLACIER",
    "DEEP_ARCHIVE", "REDUCED_REDUNDANCY", "EXPRESS_ONEZONE",
})


def _split(path: str) -> tuple[str, str]:
    bucket, _, key = path.partition("/")
    return bucket, key


class _S3Upload:
    """Multipart upload, created lazily: an object smaller than one part is a single PUT."""

    def __init__(self, backend: S3Backend, fs: Any, path: str, key: str, create_only: bool,
                 storage_class: str | None) -> None:
        self.key = key
        self._backend, self._fs = backend, fs
        self._bucket, self._key = _split(path)
        self._path = path
        self._create_only, self._class = create_only, storage_class
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    def _extra(self) -> dict[str, Any]:
        return {"StorageClass": self._class} if self._class else {}

    def write_part(self, data: bytes | memoryview) -> None:
        if self._upload_id is None:
            resp = self._fs.call_s3("create_multipart_upload", Bucket=self._bucket,
                                    Key=self._key, **self._extra())
            self._upload_id = resp["UploadId"]
        number = len(self._parts) + 1
        resp = self._fs.call_s3("upload_part", Bucket=self._bucket, Key=self._key,
                                UploadId=self._upload_id, PartNumber=number, Body=bytes(data))
        self._parts.append({"PartNumber": number, "ETag": resp["ETag"]})

    def finish(self, tail: bytes | memoryview = b"") -> None:
        if self._upload_id is None:
            self._backend.put(self._fs, self._path, tail, create_only=self._create_only,
                              storage_class=self._class)
            return
        if len(tail):
            self.write_part(tail)
        cond = {"IfNoneMatch": "*"} if self._create_only else {}
        self._fs.call_s3("complete_multipart_upload", Bucket=self._bucket, Key=self._key,
                         UploadId=self._upload_id, MultipartUpload={"Parts": self._parts}, **cond)
        self._upload_id = None

    def abort(self) -> None:
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            self._fs.call_s3("abort_multipart_upload", Bucket=self._bucket, Key=self._key,
                             UploadId=upload_id)


class S3Backend(BackendBase):
    """``s3://bucket/prefix``. Options go to ``s3fs.S3FileSystem``; ``AWS_*`` environment
    variables (``AWS_ENDPOINT_URL_S3``, profiles, instance roles) work as in boto3."""

    min_part_size = 5 * 1024 * 1024
    storage_classes = S3_CLASSES

    def make_fs(self, options: Mapping[str, Any], bucket: str) -> Any:
        import s3fs

        opts = dict(options)
        config = {
            "connect_timeout": CONNECT_TIMEOUT,
            "read_timeout": READ_TIMEOUT,
            "retries": {"total_max_attempts": 1, "mode": "standard"},
            **opts.pop("config_kwargs", {}),
        }
        opts.setdefault("use_listings_cache", False)
        fs = s3fs.S3FileSystem(config_kwargs=config, **opts)
        fs.retries = 1  # s3fs's own retry loop off: our policy retries, bounded
        return fs

    def put(self, fs: Any, path: str, data: bytes | memoryview, *, create_only: bool,
            storage_class: str | None) -> None:
        bucket, key = _split(path)
        extra: dict[str, Any] = {"IfNoneMatch": "*"} if create_only else {}
        if storage_class:
            extra["StorageClass"] = check_storage_class(storage_class, S3_CLASSES, "s3")
        fs.call_s3("put_object", Bucket=bucket, Key=key, Body=bytes(data), **extra)

    def start_upload(self, fs: Any, path: str, key: str, *, create_only: bool,
                     storage_class: str | None) -> Upload:
        cls = check_storage_class(storage_class, S3_CLASSES, "s3") if storage_class else None
        return _S3Upload(self, fs, path, key, create_only, cls)

    def set_storage_class(self, fs: Any, path: str, storage_class: str) -> None:
        cls = check_storage_class(storage_class, S3_CLASSES, "s3")
        bucket, key = _split(path)
        fs.call_s3("copy_object", Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": key},
                   StorageClass=cls, MetadataDirective="COPY")

    def info_to_object(self, fs: Any, path: str, key: str, info: Mapping[str, Any],
                       *, full: bool) -> ObjectInfo:
        return generic_object_info(key, info, etag_field="ETag", mtime_fields=("LastModified",),
                                   storage_class=str(info.get("StorageClass") or "STANDARD"))

    def list_pending(self, fs: Any, root: str) -> list[tuple[str, PendingUpload]]:
        bucket, prefix = _split(root)
        prefix = prefix + "/" if prefix else ""
        out: list[tuple[str, PendingUpload]] = []
        kw: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        while True:
            resp = fs.call_s3("list_multipart_uploads", **kw)
            for u in resp.get("Uploads", []):
                full = f"{bucket}/{u['Key']}"
                out.append((full, PendingUpload(u["Key"][len(prefix):], u["UploadId"],
                                                u.get("Initiated"))))
            if not resp.get("IsTruncated"):
                return out
            kw["KeyMarker"] = resp.get("NextKeyMarker")
            kw["UploadIdMarker"] = resp.get("NextUploadIdMarker")

    def abort_pending(self, fs: Any, path: str, pending: PendingUpload) -> None:
        bucket, key = _split(path)
        fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=pending.upload_id)
