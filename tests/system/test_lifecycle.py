"""The run lifecycle never loses work: async saves at exit, re-saving after a fallback, split
brain between a zombie and the live run, races with retention and overwrite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cloudckpt
from tests.conftest import StoreFactory

PROJECT = Path(__file__).resolve().parents[2]


def _run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tests.system.exit_worker", *args], cwd=PROJECT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_async_save_in_flight_at_exit_is_committed(backend: str, emus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = StoreFactory(backend, emus, tmp_path)
    uri = f.uri("run")
    r = _run("async-exit", uri, json.dumps(f.options), "120")
    assert r.returncode == 0, r.stderr
    assert "committed step 2" in r.stderr, r.stderr
    mgr = cloudckpt.CheckpointManager(uri, storage_options=f.options)
    assert mgr.steps() == [1, 2]
    model = torch.nn.Linear(2048, 2048)
    assert mgr.restore(model=model).step == 2  # type: ignore[union-attr]
    torch.manual_seed(0)
    expected = torch.nn.Linear(2048, 2048).weight + 1.0
    assert torch.equal(model.weight, expected)


def test_async_save_that_cannot_finish_at_exit_is_reported(emus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = StoreFactory("s3", emus, tmp_path)
    uri = f.uri("run")
    r = _run("async-exit", uri, json.dumps(f.options), "0.01")  # no time to finish
    assert "ERROR" in r.stderr and "step 2" in r.stderr, r.stderr
    mgr = cloudckpt.CheckpointManager(uri, storage_options=f.options)
    assert mgr.latest() == 1  # the previous checkpoint stays the latest
