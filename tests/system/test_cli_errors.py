"""The CLI against real protocol servers and as a process (issue 13, items 8, 9, 12): S3 (moto)
prefixes that do not exist, parent prefixes, options after the command, in-place tiers archived
twice and rehydrated, credentials never in any output, ``show | head`` quiet, and unreachable
GCS / S3 / Azure endpoints failing within a bound with one line and exit 7."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import cloudckpt
from cloudckpt import CheckpointManager
from cloudckpt.cli import main
from cloudckpt.format.keys import DATA_PREFIX, step_dir
from cloudckpt.storage import open_store, substore
from cloudckpt.testing.emulators import azurite_connection_string
from tests.conftest import StoreFactory

SECRET = "FAKE-s3cr3t-9876543210zyxw"
KEY_ID = "AKIAFAKEKEYID0042"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cloudckpt", *args], capture_output=True,
                          text=True, timeout=180, env={**os.environ, **(env or {})})


def in_process(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cloudckpt: error: "), err
    return lines[0]


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))


@pytest.fixture
def s3(emus, tmp_path) -> StoreFactory:  # type: ignore[no-untyped-def]
    return StoreFactory("s3", emus, tmp_path)


def _run(f: StoreFactory, name: str, steps: tuple[int, ...] = (10, 20)) -> str:
    uri = f.uri(name)
    mgr = CheckpointManager(uri, keep_last=None, metric="loss", storage_options=f.options)
    for s in steps:
        mgr.save(s, model=_model(s), metrics={"loss": 1 / s, "acc": 0.5})
    return uri


def test_s3_missing_prefix_and_bucket_are_exit_3(s3: StoreFactory,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    uri = _run(s3, "runs/exp1")
    o = json.dumps(s3.options)
    for argv in (["ls", f"{uri}-typo"], ["verify", f"{uri}-typo"], ["show", f"{uri}-typo"],
                 ["ls", "s3://no-such-bucket-cktest/run"]):
        code, out, err = in_process(capsys, *argv, "-o", o)  # -o after the command
        assert code == 3 and out == "", (argv, out, err)
        assert "nothing at" in one_line(err) or "NoSuchBucket" in err
    root = f"s3://{s3.bucket}"
    code, out, _ = in_process(capsys, "ls", f"{root}/runs", "--json", "-o", o)
    assert code == 0 and [(r["name"], r["kind"], r["step"]) for r in json.loads(out)] == [
        ("exp1", "run", 20)]
    code, out, _ = in_process(capsys, "ls", uri, "--metrics", "acc", "--json", "-o", o)
    assert code == 0 and [r["metrics"] for r in json.loads(out)] == [{"acc": 0.5}] * 2
    rows = json.loads(out)
    assert all(r["added_bytes"] + r["shared_bytes"] > 0 for r in rows)


def test_s3_archive_twice_and_rehydrate_in_place(s3: StoreFactory,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    uri = _run(s3, "tiers")
    o = json.dumps(s3.options)
    code, out, err = in_process(capsys, "-o", o, "archive", uri, "--step", "10",
                                "--storage-class", "STANDARD_IA")
    assert code == 0, err
    sub = substore(open_store(uri, storage_options=s3.options), step_dir(10))
    assert {x.storage_class for x in sub.list(DATA_PREFIX)} == {"STANDARD_IA"}
    code, out, err = in_process(capsys, "-o", o, "archive", uri, "--step", "10",
                                "--storage-class", "standard_ia")
    assert code == 0 and err == "" and "already in storage class STANDARD_IA" in out
    code, out, err = in_process(capsys, "-o", o, "rehydrate", uri, "--step", "10")
    assert code == 0 and "STANDARD_IA -> STANDARD" in out, err
    assert {x.storage_class for x in sub.list(DATA_PREFIX)} == {"STANDARD"}
    code, out, _ = in_process(capsys, "-o", o, "ls", uri, "--json")
    assert [r["tier"] for r in json.loads(out)] == [None, None]
    code, out, _ = in_process(capsys, "-o", o, "rehydrate", uri, "--step", "10")
    assert code == 0 and "not archived" in out
    code, out, _ = in_process(capsys, "-o", o, "rm", uri, "--step", "10")
    assert code == 0 and "would delete step 10" in out
    assert CheckpointManager(uri, keep_last=None, storage_options=s3.options).steps() == [10, 20]


def test_credentials_never_appear_in_any_output(emus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    s3 = StoreFactory("s3", emus, tmp_path)
    uri = _run(s3, "secret-run")
    opts = {**s3.options, "key": KEY_ID, "secret": SECRET}  # moto accepts any credentials
    o = json.dumps(opts)
    az = StoreFactory("az", emus, tmp_path)
    az_uri = az.uri("ckpt")
    cloudckpt.save({"w": torch.ones(4)}, az_uri, storage_options=az.options)
    az_key = az.options["connection_string"].split("AccountKey=")[1].split(";")[0]
    runs = [cli("ls", uri, "-o", o), cli("show", uri, "--json", "-o", o),
            cli("verify", uri, "-o", o), cli("ls", f"{uri}-missing", "-o", o),
            cli("show", uri, "--step", "99", "-o", o), cli("--debug", "ls", uri, "-o", o),
            cli("ls", f"{uri}/{SECRET}", "-o", o),
            cli("ls", uri, "-o", o.replace('"secret"', '"secret" ')[:-1]),  # malformed JSON
            cli("ls", az_uri, "-o", json.dumps(az.options)),
            cli("ls", f"{az_uri}-missing", "-o", json.dumps(az.options))]
    for r in runs:
        text = r.stdout + r.stderr
        for secret in (SECRET, KEY_ID, az_key):
            assert secret not in text, (r.args, text[-2000:])
    assert [r.returncode for r in runs] == [0, 0, 0, 3, 3, 0, 3, 2, 0, 3], [
        (r.returncode, r.stderr[-300:]) for r in runs]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_endpoints_fail_fast_with_one_line(tmp_path: Path) -> None:
    port = _closed_port()
    ep = f"http://127.0.0.1:{port}"
    az = azurite_connection_string(ep, key="RkFLRS1hY2NvdW50LWtleQ==")
    cases: dict[str, tuple[list[str], dict[str, str]]] = {
        "gs": (["ls", "gs://bkt/run"], {"STORAGE_EMULATOR_HOST": ep}),
        "s3": (["ls", "s3://bkt/run", "-o", json.dumps(
            {"endpoint_url": ep, "key": KEY_ID, "secret": SECRET})], {}),
        "az": (["verify", "az://cont/run", "-o", json.dumps({"connection_string": az})], {}),
    }
    t0 = time.monotonic()
    procs: dict[str, Any] = {
        name: subprocess.Popen([sys.executable, "-m", "cloudckpt", *argv], text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, **env})
        for name, (argv, env) in cases.items()}
    results = {name: (*p.communicate(timeout=120), p.returncode) for name, p in procs.items()}
    took = time.monotonic() - t0
    for name, (out, err, code) in results.items():
        assert code == 7, (name, err[-2000:])
        assert out == ""
        line = one_line(err)
        assert "cannot reach" in line and str(port) in line, line
        assert SECRET not in err and KEY_ID not in err and "RkFLRS1hY2NvdW50LWtleQ==" not in err
    assert took < 30, f"took {took:.1f} s"  # connect budget 10 s + start, three at once


def test_show_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    uri = str(tmp_path / "many")
    cloudckpt.save({f"layer{i:04d}": torch.zeros(2) for i in range(1500)}, uri)  # > pipe buffer
    for argv in (["show", uri], ["show", uri, "--json"]):
        p = subprocess.Popen([sys.executable, "-m", "cloudckpt", *argv], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        assert p.stdout is not None and p.stderr is not None
        first = p.stdout.readline()  # like `| head -1`
        p.stdout.close()
        err = p.stderr.read()
        code = p.wait(timeout=120)
        assert first.strip() and code == 141, (code, err)
        assert err == "", err  # no BrokenPipeError traceback, no "Exception ignored"
