"""What practitioners need besides resuming (issue 15, items 3, 4 and 6), on local disk and S3:

- verify after save: a checkpoint whose stored bytes do not match their checksums right after
  the commit is quarantined, reported, never the latest or the best, and nothing older is
  deleted because of it;
- disk full: a save that runs out of space (a real tmpfs; an S3 quota refusal at the HTTP
  level) fails with StorageFull naming the target, is not retried, leaves nothing behind and
  the previous checkpoint committed and loadable;
- experiment tracking: the on_commit hook (async saves included; a failing hook never breaks
  the save) and the MLflow logger against a local file-based tracking store.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from cloudckpt import (
    AsyncOptions,
    CheckpointManager,
    CommitOptions,
    CommitRecord,
    CorruptCheckpoint,
    StorageError,
    StorageFull,
)
from cloudckpt.storage import Store, open_store
from cloudckpt.storage.base import StoreWrapper
from tests.conftest import StoreFactory
from tests.helpers import tensor_bytes

MiB = 1 << 20


def _model(seed: int, rows: int = 256) -> torch.nn.Linear:
    """``rows`` x 1024 fp32 weights: 1 MiB per 256 rows (random: incompressible)."""
    torch.manual_seed(seed)
    return torch.nn.Linear(1024, rows)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(tensor_bytes(sa[k]) == tensor_bytes(sb[k]) for k in sa)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _run(backend: str, emus: Any, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    f = StoreFactory(backend, emus, tmp_path)
    return f.uri("run"), f.options


# -- disk full ------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 24 MiB filesystem (tmpfs), mounted for the test and unmounted after it."""
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_on_a_real_small_filesystem(small_disk: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    run = small_disk / "run"
    mgr = CheckpointManager(run, keep_last=1, compression="none")
    first = _model(1, rows=768)  # 3 MiB
    mgr.save(1, model=first)
    before, used = _files(small_disk), shutil.disk_usage(small_disk).used
    # 32 MiB in two 16 MiB data objects, written in parallel: one fills the disk
    with caplog.at_level(logging.WARNING, "cloudckpt"), pytest.raises(StorageFull) as ei:
        mgr.save(2, model=_model(2, rows=8192))
    err = ei.value
    assert isinstance(err, StorageError) and isinstance(err, OSError)
    assert f"{run}/step-000000000002/data/" in str(err)  # names the target
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]  # ENOSPC: no retry
    assert _files(small_disk) == before  # what it wrote (and its temporary files) is gone
    assert shutil.disk_usage(small_disk).used == used
    assert mgr.steps() == [1] and mgr.latest() == 1
    back = _model(9, rows=768)
    state = CheckpointManager(run).restore(model=back)
    assert state is not None and state.step == 1 and _same(first, back)
    mgr.save(3, model=_model(3, rows=768))  # the space is there again: saves go on
    assert mgr.steps() == [3]


class S3Quota:
    """An S3 quota enforced at the HTTP level in front of moto: PutObject requests beyond
    ``budget`` bytes get the response a full MinIO (507 ``XMinioStorageFull``) or an
    over-quota Ceph RGW (403 ``QuotaExceeded``) sends, parsed by botocore and s3fs and
    translated by our error table like a real one."""

    BODY = ('<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>quota '
            'reached</Message><RequestId>test</RequestId></Error>')

    def __init__(self, store: Store, budget: int, code: str = "XMinioStorageFull",
                 status: int = 507) -> None:
        store.list()  # connect, so that the client exists
        self.client = store.fs.s3  # type: ignore[attr-defined]
        self.budget, self.code, self.status = budget, code, status
        self.refused: list[str] = []
        self._lock = threading.Lock()

    def _handler(self, request: Any, **_: Any) -> Any:
        from aiobotocore.awsrequest import AioAWSResponse

        size = int(request.headers.get("Content-Length", 0))
        with self._lock:
            if size <= self.budget:
                self.budget -= size
                return None  # sent to moto
            self.refused.append(request.url)

        class Raw:
            async def read(self_) -> bytes:
                return S3Quota.BODY.format(code=self.code).encode()

        return AioAWSResponse(request.url, self.status, {"content-type": "application/xml"},
                              Raw())

    def __enter__(self) -> S3Quota:
        self.client.meta.events.register("before-send.s3.PutObject", self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.client.meta.events.unregister("before-send.s3.PutObject", self._handler)


@pytest.mark.parametrize(("code", "status"), [("XMinioStorageFull", 507),
                                              ("QuotaExceeded", 403)])
def test_s3_quota_fails_with_storage_full_and_keeps_the_previous(
        code: str, status: int, emus: Any, tmp_path: Path) -> None:
    uri, opts = _run("s3", emus, tmp_path)
    mgr = CheckpointManager(uri, storage_options=opts, keep_last=1, compression="none")
    first = _model(1)
    mgr.save(1, model=first)
    keys = sorted(o.key for o in mgr.store.list())
    with S3Quota(mgr.store, budget=2 * MiB, code=code, status=status) as quota:
        with pytest.raises(StorageFull) as ei:  # blocking
            mgr.save(2, model=_model(2, rows=2048))  # 8 MiB, one object: refused
        assert f"{uri}/step-000000000002/data/" in str(ei.value)
        assert len(quota.refused) == 1  # not retried
        mgr.save(3, model=_model(3, rows=2048), blocking=False)  # async: reported by wait
        with pytest.raises(StorageFull):
            mgr.wait()
    assert sorted(o.key for o in mgr.store.list()) == keys  # nothing of steps 2, 3 is left
    assert mgr.latest() == 1
    back = _model(9)
    assert CheckpointManager(uri, storage_options=opts).restore(model=back) is not None
    assert _same(first, back)


# -- verify after save ----------------------------------------------------------------------
class CorruptOnWrite(StoreWrapper):
    """A store that silently flips one byte of every data object written for ``steps`` (a
    bad disk, NIC or RAM on the write path): the save commits, only a read-back sees it."""

    def __init__(self, inner: Store, steps: set[int]) -> None:
        super().__init__(inner)
        self.steps = steps

    def _hit(self, key: str) -> bool:
        return "/data/" in key and any(key.startswith(f"step-{s:012d}/") for s in self.steps)

    def put(self, key: str, data: bytes | memoryview, *, create_only: bool = False,
            storage_class: str | None = None) -> None:
        self.inner.put(key, _flip(data) if self._hit(key) else data, create_only=create_only,
                       storage_class=storage_class)

    def start_upload(self, key: str, *, create_only: bool = False,
                     storage_class: str | None = None) -> Any:
        up = self.inner.start_upload(key, create_only=create_only, storage_class=storage_class)
        return _FlipOnFinish(up) if self._hit(key) else up


def _flip(data: bytes | memoryview) -> bytes:
    buf = bytearray(data)
    buf[len(buf) // 2] ^= 0x40
    return bytes(buf)


class _FlipOnFinish:
    """An upload whose bytes, sent whole at ``finish`` (how local data objects are written),
    arrive with one bit flipped."""

    def __init__(self, up: Any) -> None:
        self._up, self.key = up, up.key

    def write_part(self, data: bytes | memoryview) -> None:
        self._up.write_part(data)

    def finish(self, tail: bytes | memoryview = b"") -> None:
        self._up.finish(_flip(tail) if tail else tail)

    def abort(self) -> None:
        self._up.abort()


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_verify_after_save_quarantines_a_damaged_checkpoint(
        backend: str, emus: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    uri, opts = _run(backend, emus, tmp_path)
    store = CorruptOnWrite(open_store(uri, storage_options=opts), steps={3})
    seen: list[CommitRecord] = []
    mgr = CheckpointManager(store, keep_last=1, keep_best=1, metric="loss", mode="min",
                            commit_options=CommitOptions(verify_after_save=True,
                                                         on_commit=seen.append))
    models = {s: _model(s) for s in (1, 2, 3, 4)}
    mgr.save(1, model=models[1], metrics={"loss": 0.5})
    mgr.save(2, model=models[2], metrics={"loss": 0.4})
    assert mgr.steps() == [2]
    with caplog.at_level(logging.ERROR, "cloudckpt"), pytest.raises(CorruptCheckpoint) as ei:
        mgr.save(3, model=models[3], metrics={"loss": 0.1})  # would be the latest and best
    assert "step 3" in str(ei.value) and "quarantined" in str(ei.value)
    assert any(r.levelno == logging.ERROR and "step 3" in r.getMessage()
               for r in caplog.records)
    # quarantined: not the latest, not the best; retention did not run (step 2 is kept)
    assert mgr.steps() == [2] and mgr.latest() == 2 and mgr.best() == 2
    back = _model(9)
    state = CheckpointManager(uri, storage_options=opts, metric="loss").restore(model=back)
    assert state is not None and state.step == 2 and _same(models[2], back)
    # the next good save becomes latest and best; retention removes 2 and leaves 3 (quarantined)
    mgr.save(4, model=models[4], metrics={"loss": 0.3})
    assert mgr.steps() == [4] and mgr.best() == 4
    assert any(o.key.startswith("step-000000000003/") for o in store.list())
    assert [(r.step, r.verified) for r in seen] == [(1, True), (2, True), (4, True)]
    # a new save of the quarantined step replaces it (it is in nobody's lineage)
    store.steps.clear()
    mgr.save(3, model=models[3], metrics={"loss": 0.2})  # the best: kept
    assert mgr.steps() == [3, 4]
    assert CheckpointManager(uri, storage_options=opts).restore(3, model=back) is not None
    assert _same(models[3], back)


# -- experiment tracking --------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["local", "s3"])
def test_on_commit_hook_blocking_and_async(backend: str, emus: Any, tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    uri, opts = _run(backend, emus, tmp_path)
    seen: list[tuple[CommitRecord, str]] = []

    def hook(rec: CommitRecord) -> None:
        seen.append((rec, threading.current_thread().name))
        if rec.step == 20:
            raise RuntimeError("tracking server down")

    mgr = CheckpointManager(uri, storage_options=opts, keep_last=2,
                            async_options=AsyncOptions(blocking=False),
                            commit_options=CommitOptions(on_commit=hook))
    model = _model(0)
    mgr.save(10, model=model, epoch=1, metrics={"loss": 0.5}, blocking=True)
    with caplog.at_level(logging.ERROR, "cloudckpt"):
        assert mgr.save(20, model=model, epoch=2, metrics={"loss": 0.4}) is None  # async
        info = mgr.wait()  # the hook's error is logged, not raised
    assert info is not None and mgr.latest() == 20
    assert any("on_commit hook" in r.getMessage() and "tracking server down" in (r.exc_text or "")
               for r in caplog.records)
    mgr.close()
    (r10, t10), (r20, t20) = seen
    assert t10 == threading.main_thread().name and t20 != t10  # async: the background thread
    assert (r10.step, r10.epoch, dict(r10.metrics), r10.background) == (10, 1, {"loss": 0.5}, False)
    assert (r20.step, r20.epoch, r20.background, r20.verified) == (20, 2, True, None)
    assert r20.uri == info.uri == f"{mgr.uri}/step-000000000020" and r20.save_id == info.save_id
    assert r20.raw_bytes == info.raw_bytes > 1 * MiB and r20.stored_bytes == info.stored_bytes
    assert r20.seconds == info.seconds > 0


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_mlflow_logs_each_commit_to_the_active_run(backend: str, emus: Any, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    mlflow = pytest.importorskip("mlflow")
    from cloudckpt.integrations.mlflow import MlflowLogger

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3: the file store opt-in
    tracking = (tmp_path / "mlruns").as_uri()
    mlflow.set_tracking_uri(tracking)
    uri, opts = _run(backend, emus, tmp_path)
    try:
        with mlflow.start_run() as active:
            mgr = CheckpointManager(uri, storage_options=opts, keep_last=5,
                                    commit_options=CommitOptions(verify_after_save=True,
                                                                 on_commit=MlflowLogger()))
            model = _model(0)
            infos = [mgr.save(1, model=model)]
            mgr.save(2, model=model, blocking=False)  # logged from the background thread
            infos.append(mgr.wait())
            mgr.close()
    finally:
        mlflow.set_tracking_uri("")
    client = mlflow.MlflowClient(tracking_uri=tracking)
    run = client.get_run(active.info.run_id)
    stored = client.get_metric_history(run.info.run_id, "checkpoint/stored_bytes")
    assert [(m.step, m.value) for m in stored] == [(s, float(i.stored_bytes))
                                                   for s, i in zip((1, 2), infos, strict=True)]
    raw = client.get_metric_history(run.info.run_id, "checkpoint/raw_bytes")
    assert [m.value for m in raw] == [float(i.raw_bytes) for i in infos]
    assert len(client.get_metric_history(run.info.run_id, "checkpoint/verify_seconds")) == 2
    assert run.data.tags["cloudckpt.checkpoint_uri"] == f"{mgr.uri}/step-000000000002"
    assert run.data.tags["cloudckpt.checkpoint_step"] == "2"
    arts = [a.path for a in client.list_artifacts(run.info.run_id, "cloudckpt/checkpoints")]
    assert arts == ["cloudckpt/checkpoints/step-000000000001.json",
                    "cloudckpt/checkpoints/step-000000000002.json"]
