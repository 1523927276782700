"""Chaos: a real trainer process SIGKILLed at random moments while saving (incrementally,
sharing a frozen buffer), retaining and collecting garbage (grace 0) on S3, many lives. Every
listed checkpoint restores bit-exact, and a restart never resumes before the last commit the
previous life reported."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import cloudckpt
from tests.conftest import StoreFactory
from tests.system.chaos_trainer import expected, frozen

PROJECT = Path(__file__).resolve().parents[2]
LIVES = int(os.environ.get("CLOUDCKPT_CHAOS_LIVES", "6"))


def _life(uri: str, opts: dict, total: int, kill_after: float | None) -> list[str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.system.chaos_trainer", uri,
                             json.dumps(opts), str(total)], cwd=PROJECT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    start: float | None = None  # the clock starts once the trainer has restored
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    while proc.poll() is None:
        chunk = proc.stdout.readline()
        if chunk:
            lines.append(chunk.strip())
            if start is None and lines[-1].startswith("RESTORED"):
                start = time.monotonic()
            continue
        if kill_after is not None and start is not None and time.monotonic() - start > kill_after:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            break
        time.sleep(0.005)
    rest = proc.stdout.read() or ""
    lines += [x.strip() for x in rest.splitlines() if x.strip()]
    return lines


@pytest.mark.parametrize("backend", ["s3"])
def test_sigkill_at_random_moments_never_loses_a_reported_commit(backend: str, emus,  # type: ignore[no-untyped-def]
                                                                  tmp_path) -> None:
    f = StoreFactory(backend, emus, tmp_path)
    uri = f.uri("chaos")
    rng = random.Random(int(os.environ.get("CLOUDCKPT_CHAOS_SEED", "7")))
    total = 10_000
    last_commit = 0
    for _life_no in range(LIVES):
        # killed at a random moment after the restore: mid-save, mid-retention, mid-step
        lines = _life(uri, f.options, total, kill_after=rng.uniform(0.2, 2.0))
        restored = [int(x.split()[1]) for x in lines if x.startswith("RESTORED")]
        assert restored, lines
        assert restored[0] >= last_commit, f"resumed at {restored[0]} after commit {last_commit}"
        commits = [int(x.split()[1]) for x in lines if x.startswith("COMMITTED")]
        last_commit = max([last_commit, *commits])
    assert last_commit > 0
    mgr = cloudckpt.CheckpointManager(uri, keep_last=3, storage_options=f.options)
    steps = mgr.steps()
    assert steps and steps[-1] >= last_commit
    for s in steps:  # every listed checkpoint restores bit for bit
        model = torch.nn.Module()
        model.register_buffer("w", torch.zeros_like(expected(0)))
        model.register_buffer("frozen", torch.zeros_like(expected(0)))
        st = mgr.restore(s, model=model)
        assert st is not None and st.step == s
        assert torch.equal(model.w, expected(s)), f"step {s} differs"
        assert torch.equal(model.frozen, frozen()), f"step {s}: shared data differs"
    assert any(cloudckpt.inspect(f"{uri}/step-{s:012d}", storage_options=f.options).shared_bytes
               for s in steps)  # the run really shared data
