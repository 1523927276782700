"""Async saves: snapshot consistency, errors surfaced, SIGTERM ends in a committed checkpoint."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading

import pytest
import torch

import cloudckpt
from cloudckpt import AsyncOptions, CheckpointManager
from cloudckpt.demo import train
from cloudckpt.errors import AccessDenied, InvalidArgument
from cloudckpt.storage import open_store
from cloudckpt.storage.base import StoreWrapper
from cloudckpt.testing import FaultPlan, FaultyStore
from tests.conftest import StoreFactory
from tests.helpers import assert_same


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8))


def test_mutation_after_async_save_does_not_leak_lightning_20953(tmp_path) -> None:  # type: ignore[no-untyped-def]
    mgr = CheckpointManager(tmp_path / "run", async_options=AsyncOptions(blocking=False))
    model = _model()
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 64)).sum().backward()
    opt.step()
    before = model.state_dict()
    before = type(before)((k, v.clone()) for k, v in before.items())
    before._metadata = model.state_dict()._metadata  # type: ignore[attr-defined]
    before_opt = {k: {n: t.clone() for n, t in s.items()} for k, s in opt.state_dict()["state"].items()}
    assert mgr.save(1, model=model, optimizer=opt) is None  # returned right after the snapshot
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1000.0)  # training goes on and mutates in place
    for s in opt.state.values():
        s["exp_avg"].mul_(-1)
    info = mgr.wait()
    assert info is not None and info.tensors > 0
    target, topt = _model(5), None
    topt = torch.optim.AdamW(target.parameters())
    mgr.restore(1, model=target, optimizer=topt)
    assert_same(before, target.state_dict())
    assert_same(before_opt, {k: dict(v) for k, v in topt.state_dict()["state"].items()})
    mgr.close()


def test_staging_buffers_are_reused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    mgr = CheckpointManager(tmp_path / "run", async_options=AsyncOptions(blocking=False),
                            keep_last=2)
    model = _model()
    mgr.save(1, model=model, rng=False)
    first = mgr.staging_bytes
    ptrs = {i: b.data_ptr() for i, b in mgr._stager._torch.items()}
    for s in range(2, 6):
        mgr.save(s, model=model, rng=False)
    mgr.wait()
    assert mgr.staging_bytes == first
    assert {i: b.data_ptr() for i, b in mgr._stager._torch.items()} == ptrs
    assert mgr.steps() == [4, 5]
    mgr.close()


def test_background_failure_surfaces_and_commits_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = open_store(tmp_path / "run")
    CheckpointManager(root).save(1, model=_model(1))
    faulty = FaultyStore(root, FaultPlan(ops=frozenset({"put"}), fail_calls=frozenset({0}),
                                         kind="permanent"))
    mgr = CheckpointManager(faulty, async_options=AsyncOptions(blocking=False))
    assert mgr.save(2, model=_model(2)) is None
    with pytest.raises(AccessDenied):
        mgr.save(3, model=_model(3))  # the next call raises the background error...
    assert mgr.steps() == [1]  # ...instead of saving; step 2 never committed
    mgr.save(3, model=_model(3))  # the error was raised once; saving works again
    mgr.wait()
    assert mgr.steps() == [1, 3]
    assert not root.exists("step-000000000002/manifest.json")
    # and through wait()
    faulty2 = FaultyStore(root, FaultPlan(ops=frozenset({"put"}), fail_calls=frozenset({0}),
                                          kind="permanent"))
    mgr2 = CheckpointManager(faulty2, async_options=AsyncOptions(blocking=False))
    mgr2.save(4, model=_model(4))
    with pytest.raises(AccessDenied):
        mgr2.wait()
    assert 4 not in mgr2.steps()
    mgr2.wait()  # raised once only


class _GatedStore(StoreWrapper):
    """Writes wait until ``gate`` is set: keeps a background save provably in flight."""

    def __init__(self, inner, gate: threading.Event) -> None:  # type: ignore[no-untyped-def]
        super().__init__(inner)
        self.gate = gate

    def put(self, key, data, **kw) -> None:  # type: ignore[no-untyped-def]
        assert self.gate.wait(60), "gate never opened"
        self.inner.put(key, data, **kw)


def test_skip_policy_and_context_manager(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    gate = threading.Event()
    store = _GatedStore(open_store(tmp_path / "run"), gate)
    with caplog.at_level(logging.WARNING, logger="cloudckpt.manager"), \
            CheckpointManager(store, async_options=AsyncOptions(blocking=False,
                                                                when_busy="skip")) as mgr:
        assert mgr.save(1, model=_model(1)) is None  # in flight, held at the gate
        assert mgr.save(2, model=_model(2)) is None  # skipped, not queued
        gate.set()
    # leaving the context waited for step 1
    assert mgr.steps() == [1]
    assert "skipping the save of step 2" in caplog.text
    with pytest.raises(InvalidArgument):
        CheckpointManager(tmp_path / "x", async_options=AsyncOptions(when_busy="drop"))


def _spawn(uri: str, steps: int, opts: dict, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cloudckpt.demo", "worker", "--uri", uri, "--steps", str(steps),
         "--save-every", "7", "--storage-options", json.dumps(opts), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_sigterm_mid_run_commits_final_checkpoint_and_resumes_bit_exact(backend: str, emus,  # type: ignore[no-untyped-def]
                                                                         tmp_path) -> None:
    f = StoreFactory(backend, emus, tmp_path)
    uri = f.uri("run")
    reference = train(None, 60)
    proc = _spawn(uri, 60, f.options, "--async-save", "--preemption")
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("STEP") and int(line.split()[1]) >= 24:
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "DONE" not in out  # it stopped early, cleanly
    last = CheckpointManager(uri, storage_options=f.options).latest()
    assert last is not None and last >= 24 and last % 7 != 0  # the final, not a periodic save
    assert "final checkpoint" in err
    resumed = _spawn(uri, 60, f.options, "--async-save")
    out2, err2 = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err2
    assert out2.strip().splitlines()[-1] == f"DONE {reference}"
    assert len(cloudckpt.inspect(f"{uri}/step-{60:012d}", storage_options=f.options).tensors) > 0
