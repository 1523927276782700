"""One conformance suite, run unchanged over memory, local, S3, GCS and Azure."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest

from cloudckpt.errors import AlreadyExists, InvalidKey, NotFound, UnsupportedOperation
from cloudckpt.storage import Store, copy_object, open_store, stream_write
from tests.conftest import StoreFactory

MiB = 1024 * 1024


def test_put_get_roundtrip_and_overwrite(store: Store) -> None:
    data = os.urandom(100_000)
    store.put("a/b/obj.bin", data)
    assert store.get("a/b/obj.bin") == data
    store.put("a/b/obj.bin", b"second")
    assert store.get("a/b/obj.bin") == b"second"
    store.put("empty", b"")
    assert store.get("empty") == b""
    assert store.stat("empty").size == 0


def test_get_missing_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFound) as ei:
        store.get("nope/missing.bin")
    assert "missing.bin" in str(ei.value)
    assert isinstance(ei.value, FileNotFoundError)


def test_get_range(store: Store) -> None:
    data = bytes(range(256)) * 40
    store.put("r", data)
    assert store.get_range("r", 0, 10) == data[:10]
    assert store.get_range("r", 1000, 5000) == data[1000:5000]
    assert store.get_range("r", len(data) - 5, len(data)) == data[-5:]
    assert store.get_range("r", 7, 7) == b""


def test_get_range_into(store: Store) -> None:
    """Local disk reads land in the caller's buffer (readinto); network stores may hand back
    their client's own bytes instead of copying them. Either way the bytes are right, short
    at the object's end, and a missing object is ``NotFound`` like ``get``."""
    data = bytes(range(256)) * 40
    store.put("r", data)
    buf = bytearray(5000)
    out = memoryview(buf)
    local = store.protocol == "file"
    got = store.get_range_into("r", 1000, out[:4000])
    assert bytes(got) == data[1000:5000] and (got.obj is buf or not local)
    got = store.get_range_into("r", len(data) - 5, out)  # past the end: short, no error
    assert bytes(got) == data[-5:]
    assert not local or (got.obj is buf and bytes(buf[:5]) == data[-5:])
    assert len(store.get_range_into("r", 0, out[:0])) == 0
    with pytest.raises(NotFound):
        store.get_range_into("missing", 0, out)


def test_stat_and_exists(store: Store) -> None:
    store.put("dir/x.bin", b"12345")
    info = store.stat("dir/x.bin")
    assert info.key == "dir/x.bin"
    assert info.size == 5
    assert info.etag
    assert info.mtime is not None
    assert abs(info.mtime - datetime.now(timezone.utc)) < timedelta(minutes=10)
    assert store.exists("dir/x.bin")
    assert not store.exists("dir/y.bin")
    with pytest.raises(NotFound):
        store.stat("dir/y.bin")
    store.put("dir/x.bin", b"other bytes")
    assert store.stat("dir/x.bin").etag != info.etag


def test_list_is_recursive_sorted_and_prefix_exact(store: Store) -> None:
    for k in ["b/2", "a/1", "a/sub/3", "ab/4", "top"]:
        store.put(k, k.encode())
    assert [o.key for o in store.list()] == ["a/1", "a/sub/3", "ab/4", "b/2", "top"]
    assert [o.key for o in store.list("a")] == ["a/1", "a/sub/3"]
    assert [o.size for o in store.list("a")] == [3, 7]
    assert store.list("missing") == []


def test_list_paginates_past_1000(store: Store) -> None:
    keys = [f"many/obj-{i:05d}" for i in range(1200)]
    with ThreadPoolExecutor(16) as ex:
        list(ex.map(lambda k: store.put(k, b"x"), keys))
    listed = store.list("many")
    assert [o.key for o in listed] == keys


def test_delete_and_delete_many(store: Store) -> None:
    for i in range(5):
        store.put(f"d/{i}", b"x")
    store.delete("d/0")
    store.delete("d/0")  # missing is fine
    assert not store.exists("d/0")
    store.delete_many(["d/1", "d/2", "d/missing"])
    assert [o.key for o in store.list("d")] == ["d/3", "d/4"]


def test_copy_within_store(store: Store) -> None:
    data = os.urandom(3000)
    store.put("src/a", data)
    store.copy("src/a", "dst/b")
    assert store.get("dst/b") == data
    assert store.get("src/a") == data


def test_copy_across_stores(store: Store) -> None:
    other = open_store(f"memory://xcopy-{id(store)}/root")
    data = os.urandom(70_000)
    other.put("blob", data)
    assert copy_object(other, "blob", store, "in/blob", part_size=256 * 1024) == len(data)
    assert store.get("in/blob") == data
    copy_object(store, "in/blob", other, "back", part_size=256 * 1024)
    assert other.get("back") == data


def test_create_only_write(store: Store) -> None:
    store.put("m.json", b"first", create_only=True)
    with pytest.raises(AlreadyExists) as ei:
        store.put("m.json", b"second", create_only=True)
    assert isinstance(ei.value, FileExistsError)
    assert store.get("m.json") == b"first"


def test_create_only_race_has_one_winner(store: Store) -> None:
    barrier = threading.Barrier(6)
    wins: list[int] = []

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            store.put("race", f"writer-{i}".encode(), create_only=True)
            wins.append(i)
        except AlreadyExists:
            pass

    with ThreadPoolExecutor(6) as ex:
        list(ex.map(attempt, range(6)))
    assert len(wins) == 1
    assert store.get("race") == f"writer-{wins[0]}".encode()


def test_streamed_write_in_three_or_more_parts(store: Store) -> None:
    part = max(store.min_part_size, 256 * 1024)
    data = os.urandom(3 * part + 12345)
    pieces = [data[i:i + 100_000] for i in range(0, len(data), 100_000)]
    assert stream_write(store, "big/obj", pieces, part_size=part) == len(data)
    assert store.get("big/obj") == data
    assert store.stat("big/obj").size == len(data)
    # exact multiple of the part size, and an empty stream
    stream_write(store, "big/exact", [data[: 3 * part]], part_size=part)
    assert store.get("big/exact") == data[: 3 * part]
    stream_write(store, "big/empty", [], part_size=part)
    assert store.get("big/empty") == b""


def test_streamed_create_only_keeps_existing(store: Store) -> None:
    part = max(store.min_part_size, 256 * 1024)
    store.put("obj", b"committed")
    with pytest.raises(AlreadyExists):
        stream_write(store, "obj", [os.urandom(3 * part)], part_size=part, create_only=True)
    assert store.get("obj") == b"committed"


def test_aborted_upload_is_invisible(store: Store) -> None:
    part = max(store.min_part_size, 256 * 1024)

    def chunks():  # type: ignore[no-untyped-def]
        yield os.urandom(part)
        yield os.urandom(part)
        raise RuntimeError("producer died")

    with pytest.raises(RuntimeError):
        stream_write(store, "partial", chunks(), part_size=part)
    assert not store.exists("partial")
    assert store.list_pending_uploads() == []


def test_pending_uploads_listed_and_aborted(store: Store, backend: str) -> None:
    reasons = {
        "gcs": "GCS resumable sessions are not listable; the service expires them after a week",
        "az": "Azure uncommitted blocks are not listable; the service drops them after a week",
        "memory": "memory:// parts live in the writer's process and die with it",
    }
    if backend in reasons:
        pytest.skip(f"{backend}: {reasons[backend]}")
    part = max(store.min_part_size, 256 * 1024)
    up = store.start_upload("stale/obj")
    up.write_part(os.urandom(part))
    pending = store.list_pending_uploads()
    assert [p.key for p in pending] == ["stale/obj"]
    assert store.list() == []  # temporary parts never show as objects
    store.abort_pending_upload(pending[0])
    assert store.list_pending_uploads() == []
    assert not store.exists("stale/obj")


STORAGE_CLASS = {"s3": ("STANDARD_IA", "GLACIER_IR"), "az": ("Cool", "Archive"),
                 "gcs": ("NEARLINE", "COLDLINE")}


def test_storage_class(store: Store, backend: str) -> None:
    if backend in ("local", "memory"):
        with pytest.raises(UnsupportedOperation):
            store.put("x", b"1", storage_class="COLD")
        pytest.skip(f"{backend}: no storage classes (UnsupportedOperation checked)")
    if backend == "gcs":
        pytest.skip("fake-gcs-server v1.54 ignores storageClass in rewriteTo (verified); "
                    "real GCS applies it")
    first, second = STORAGE_CLASS[backend]
    store.put("tiered", b"data", storage_class=first)
    assert store.stat("tiered").storage_class == first
    store.set_storage_class("tiered", second)
    assert store.stat("tiered").storage_class == second


@pytest.mark.parametrize("bad", ["", "/abs", "../escape", "a/../../b", "a//b", "./x", "a\\b"])
def test_bad_keys_rejected_and_nothing_written_outside(store: Store, bad: str,
                                                        backend: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidKey):
        store.put(bad, b"x")
    with pytest.raises(InvalidKey):
        store.get(bad)
    assert store.list() == []
    if backend == "local":
        assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["store"])


def test_missing_bucket_is_permanent_not_found(stores: StoreFactory) -> None:
    if stores.backend in ("local", "memory"):
        pytest.skip(f"{stores.backend}: no buckets")
    stores.uri()  # start the emulator, learn its options
    sleeps: list[float] = []
    from cloudckpt.storage import RetryPolicy

    scheme = {"s3": "s3", "gcs": "gs", "az": "az"}[stores.backend]
    st = open_store(f"{scheme}://no-such-bucket-xyz/p", storage_options=stores.options,
                    retry=RetryPolicy(sleep=sleeps.append))
    with pytest.raises(NotFound) as ei:
        st.put("k", b"data")
    assert "no-such-bucket-xyz" in str(ei.value)
    assert sleeps == []  # raised at once, no retry


def test_storage_options_reach_the_backend(stores: StoreFactory) -> None:
    # the same URI, reached with and without the options: options matter and pass through
    st = stores.open("opts")
    st.put("k", b"v")
    assert open_store(st.uri, storage_options=stores.options).get("k") == b"v"
