"""Out of space: the error table maps ENOSPC / EDQUOT and the object stores' quota codes to
StorageFull, which is never retried, and a commit refused for space removes the save's data.
Plus the validation of CommitOptions (no emulator needed)."""

from __future__ import annotations

import errno

import pytest
import torch
from botocore.exceptions import ClientError

import cloudckpt
from cloudckpt import CommitOptions, StorageFull
from cloudckpt.engine.commit import commit_manifest
from cloudckpt.engine.writer import write_leaves
from cloudckpt.errors import AccessDenied, InvalidArgument, StorageError, TransientStorageError
from cloudckpt.format.keys import MANIFEST_KEY
from cloudckpt.format.manifest import new_manifest
from cloudckpt.format.tree import encode_tree
from cloudckpt.storage import RetryPolicy, Store, open_store
from cloudckpt.storage.base import StoreWrapper
from cloudckpt.storage.retry import RetryingStore
from cloudckpt.storage.translate import is_transient, translate_error


def _client_error(code: str, status: int) -> OSError:
    err = ClientError({"Error": {"Code": code, "Message": "m"},
                       "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")
    wrapped = OSError(errno.EIO, "s3fs translated it")  # as s3fs does: ClientError as cause
    wrapped.__cause__ = err
    return wrapped


@pytest.mark.parametrize(("exc", "cls"), [
    (OSError(errno.ENOSPC, "No space left on device"), StorageFull),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), StorageFull),
    (_client_error("XMinioStorageFull", 507), StorageFull),  # MinIO: drive threshold
    (_client_error("XMinioStorageFull", 500), StorageFull),  # old MinIO: 500, not transient
    (_client_error("XMinioAdminBucketQuotaExceeded", 400), StorageFull),  # MinIO bucket quota
    (_client_error("QuotaExceeded", 403), StorageFull),  # Ceph RGW: 403, not AccessDenied
    (_client_error("Whatever", 507), StorageFull),  # HTTP 507 Insufficient Storage
    (_client_error("AccessDenied", 403), AccessDenied),
    (_client_error("InsufficientAccountPermissions", 403), AccessDenied),  # Azure: auth, not space
    (OSError(errno.EIO, "I/O error"), StorageError),
])
def test_error_table(exc: BaseException, cls: type) -> None:
    out = translate_error(exc, "write of", "s3://b/run/step-000000000002/data/x.bin")
    assert type(out) is cls
    assert is_transient(exc) is False
    if cls is StorageFull:
        assert isinstance(out, StorageError) and isinstance(out, OSError)
        assert "s3://b/run/step-000000000002/data/x.bin" in str(out)  # names the target
        assert "out of space or over its quota" in str(out)


def test_storage_full_is_exported_and_never_retried() -> None:
    assert cloudckpt.StorageFull is StorageFull
    assert not issubclass(StorageFull, TransientStorageError)
    calls = []

    class Full(StoreWrapper):
        def put(self, key: str, data: bytes | memoryview, **kw: object) -> None:
            calls.append(key)
            raise translate_error(OSError(errno.ENOSPC, "No space left on device"), "write of",
                                  key)

    store = RetryingStore(Full(open_store("memory://full/run")),
                          RetryPolicy(max_attempts=5, sleep=lambda s: None))
    with pytest.raises(StorageFull):
        store.put("k", b"x")
    assert calls == ["k"]  # one attempt, no retry


class _FullAt(StoreWrapper):
    """Refuses writes of one key for lack of space, as the local disk does."""

    def __init__(self, inner: Store, key: str) -> None:
        super().__init__(inner)
        self.full_key = key

    def put(self, key: str, data: bytes | memoryview, *, create_only: bool = False,
            storage_class: str | None = None) -> None:
        if key == self.full_key:
            raise translate_error(OSError(errno.ENOSPC, "No space left on device"),
                                  "write of", f"{self.uri}/{key}")
        self.inner.put(key, data, create_only=create_only, storage_class=storage_class)


def test_a_manifest_refused_for_space_removes_the_saves_data() -> None:
    store = _FullAt(open_store("memory://full2/ck"), MANIFEST_KEY)
    tree, leaves = encode_tree({"w": torch.arange(1000.0)})
    written = write_leaves(store, leaves, "sid-1")
    manifest = new_manifest("sid-1", tree, written.tensors, written.chunks, {})
    assert store.list("data")  # the data objects landed
    with pytest.raises(StorageFull):
        commit_manifest(store, manifest)
    assert store.list() == []  # nothing of the save is left


def test_commit_options_are_validated() -> None:
    with pytest.raises(InvalidArgument):
        CommitOptions(verify_after_save="yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        CommitOptions(on_commit=42)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        cloudckpt.CheckpointManager("memory://x/run", commit_options={"verify_after_save": True})  # type: ignore[arg-type]
    assert CommitOptions().verify_after_save is False
