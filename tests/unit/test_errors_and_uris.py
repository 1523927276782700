"""URI parsing, key validation, error translation and credential redaction."""

from __future__ import annotations

import pytest

from cloudckpt.errors import (
    AccessDenied,
    AlreadyExists,
    InvalidKey,
    InvalidURI,
    NotFound,
    RehydrationRequired,
    StorageError,
    TransientStorageError,
)
from cloudckpt.storage import open_store, parse_uri, validate_key
from cloudckpt.storage.translate import is_transient, translate_error
from cloudckpt.storage.uri import redact
from cloudckpt.testing import emulators


@pytest.mark.parametrize(("uri", "proto", "bucket", "prefix"), [
    ("s3://my.dotted.bucket/runs/exp1", "s3", "my.dotted.bucket", "runs/exp1"),
    ("gs://bkt/a/b/", "gcs", "bkt", "a/b"),
    ("gcs://bkt/a", "gcs", "bkt", "a"),
    ("az://container/p", "az", "container", "p"),
    ("abfs://container@acct.dfs.core.windows.net/p", "az", "container", "p"),
    ("memory://x/y", "memory", "", "x/y"),
])
def test_parse_cloud_uris(uri: str, proto: str, bucket: str, prefix: str) -> None:
    u = parse_uri(uri)
    assert (u.protocol, u.bucket, u.prefix) == (proto, bucket, prefix)


def test_local_paths(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert parse_uri(str(tmp_path)).prefix == str(tmp_path)
    assert parse_uri(f"file://{tmp_path}").prefix == str(tmp_path)
    assert parse_uri("relative/dir").protocol == "file"


@pytest.mark.parametrize(("uri", "fragment"), [
    ("ftp://host/x", "unknown scheme"),
    ("s3://", "missing bucket"),
    ("gs:///path", "missing bucket"),
    ("s3://bad_bucket!/x", "invalid bucket"),
    ("s3://b/x", "invalid bucket"),
    ("s3://bucket/a/../b", "invalid path segment"),
    ("", "empty"),
    ("s3:bucket/key", "malformed"),
])
def test_bad_uris(uri: str, fragment: str) -> None:
    with pytest.raises(InvalidURI, match=fragment):
        open_store(uri)


@pytest.mark.parametrize("key", ["", "/a", "..", "a/..", "a/./b", "a//b", "a\\b", "a\x00"])
def test_bad_keys(key: str) -> None:
    with pytest.raises(InvalidKey):
        validate_key(key)
    assert issubclass(InvalidKey, ValueError)


def test_redaction_hides_credentials() -> None:
    cs = emulators.azurite_connection_string("http://127.0.0.1:1")
    assert "Eby8vd" not in redact(cs)
    assert "AccountKey=***" in redact(cs)
    assert "pw" not in redact("s3://user:pw@host/b")
    assert "abc" not in redact("https://x/y?sig=abc&se=1")


def _client_error(code: str, status: int) -> Exception:
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": "m"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


@pytest.mark.parametrize(("code", "status", "cls"), [
    ("NoSuchKey", 404, NotFound),
    ("NoSuchBucket", 404, NotFound),
    ("AccessDenied", 403, AccessDenied),
    ("PreconditionFailed", 412, AlreadyExists),
    ("SlowDown", 503, TransientStorageError),
    ("InternalError", 500, TransientStorageError),
    ("Whatever", 502, TransientStorageError),
    ("Whatever", 429, TransientStorageError),
    ("InvalidObjectState", 403, RehydrationRequired),
    ("InvalidArgument", 400, StorageError),
])
def test_s3_codes(code: str, status: int, cls: type) -> None:
    err = _client_error(code, status)
    wrapped = OSError("s3fs translated it")  # as s3fs does: ClientError kept as __cause__
    wrapped.__cause__ = err
    out = translate_error(wrapped, "write of", "s3://b/k")
    assert type(out) is cls
    assert "s3://b/k" in str(out)
    assert is_transient(wrapped) == (cls is TransientStorageError)


def test_message_text_is_not_used_for_classification() -> None:
    assert not is_transient(ValueError("SlowDown 503 please retry timeout"))


def test_azure_and_gcs_errors() -> None:
    from azure.core.exceptions import HttpResponseError, ServiceRequestError
    from gcsfs.retry import HttpError

    e = HttpResponseError(message="busy")
    e.status_code = 503
    assert isinstance(translate_error(e, "read of", "az://c/k"), TransientStorageError)
    e2 = HttpResponseError(message="x")
    e2.status_code, e2.error_code = 403, "AuthenticationFailed"
    assert isinstance(translate_error(e2, "read of", "az://c/k"), AccessDenied)
    assert isinstance(translate_error(ServiceRequestError("reset"), "r", "az://c/k"),
                      TransientStorageError)
    assert isinstance(translate_error(HttpError({"code": 429, "message": "rate"}), "r", "gs://b"),
                      TransientStorageError)
    assert isinstance(translate_error(HttpError({"code": 404, "message": "no"}), "r", "gs://b"),
                      NotFound)
    assert isinstance(translate_error(ConnectionResetError(), "r", "gs://b"), TransientStorageError)
    assert isinstance(translate_error(TimeoutError(), "r", "gs://b"), TransientStorageError)


def test_access_denied_from_real_server_azurite_wrong_key(emus) -> None:  # type: ignore[no-untyped-def]
    ep = emus.endpoint("az")
    good = emus.options("az")
    open_store("az://denied-test", storage_options=good).fs.mkdir("denied-test")  # type: ignore[attr-defined]
    bad_key = "A" * 86 + "=="
    st = open_store("az://denied-test/p", storage_options={
        "connection_string": emulators.azurite_connection_string(ep, key=bad_key)})
    with pytest.raises(AccessDenied) as ei:
        st.put("k", b"v")
    assert isinstance(ei.value, PermissionError)
    assert "denied-test" in str(ei.value)
    assert bad_key not in str(ei.value)
    assert ei.value.__cause__ is not None


def test_standard_env_vars_work_unchanged(emus, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ep = emus.endpoint("s3")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", ep)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    st = open_store("s3://env-bucket-test/p", storage_options={"skip_instance_cache": True})
    st.fs.mkdir("env-bucket-test")  # type: ignore[attr-defined]
    st.put("k", b"via env")
    assert st.get("k") == b"via env"
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", emulators.azurite_connection_string(
        emus.endpoint("az")))
    az = open_store("az://env-container-test/p", storage_options={"skip_instance_cache": True})
    az.fs.mkdir("env-container-test")  # type: ignore[attr-defined]
    az.put("k", b"via env")
    assert az.get("k") == b"via env"
