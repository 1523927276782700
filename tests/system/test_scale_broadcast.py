"""Restore by broadcast on 4 gloo ranks against S3 (moto): replicated tensors are read from
storage once and broadcast, bit-exactly; every-rank reads fetch them four times. Bytes
fetched are counted by a loopback proxy in front of moto."""

from __future__ import annotations

import json

from cloudckpt.testing.emulators import free_port
from cloudckpt.testing.proxy import FreezableProxy
from tests.conftest import bucket_name, make_bucket
from tests.system import scale_worker

WORLD = 4
MiB = 1 << 20


def _run(mode: str, uri: str, opts: dict, tmp_path) -> list[dict]:  # type: ignore[no-untyped-def]
    out = tmp_path / mode
    out.mkdir()
    scale_worker.start_ranks(scale_worker.broadcast_job,
                             (WORLD, free_port(), mode, uri, json.dumps(opts), str(out)), WORLD)
    return [json.loads((out / f"rank{r}.txt").read_text()) for r in range(WORLD)]


def test_replicated_tensors_are_read_once_and_broadcast(emus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket = bucket_name("s3")
    opts = make_bucket(emus, "s3", bucket)
    uri = f"s3://{bucket}/bcast"
    assert [r["result"] for r in _run("save", uri, opts, tmp_path)] == ["saved"] * WORLD
    fetched = {}
    for mode in ("load-every", "load-bcast"):
        with FreezableProxy(emus.endpoint("s3")) as proxy:
            reports = _run(mode, uri, {**opts, "endpoint_url": proxy.endpoint}, tmp_path)
            fetched[mode] = proxy.bytes_down
        assert [r["result"] for r in reports] == ["equal"] * WORLD, (mode, reports)
    replicated = sum(scale_worker.REPLICATED.values()) * 4  # fp32 bytes, stored once
    sharded = WORLD * scale_worker.SHARD_ELEMS * 4
    print({k: round(v / MiB, 2) for k, v in fetched.items()}, "MiB fetched")
    # every rank reads: each replicated byte fetched 4 times; broadcast: once
    assert fetched["load-every"] >= WORLD * replicated + sharded
    assert replicated + sharded <= fetched["load-bcast"] < 1.25 * (replicated + sharded)
