"""``cloudckpt repair``: damaged checkpoints of a run are rebuilt from intact copies (identical
chunks elsewhere in the run, a ``--from`` replica) or quarantined; dry runs and bad input change
nothing. On local disk and S3 (moto); the CLI through a real subprocess where it matters."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest
import torch

import cloudckpt
from cloudckpt import CheckpointManager, IncrementalOptions
from cloudckpt.cli import main
from cloudckpt.errors import TransientStorageError
from cloudckpt.format.keys import MANIFEST_KEY, quarantine_key, step_dir
from cloudckpt.manager import RunContext
from cloudckpt.manager.repair import repair_run
from cloudckpt.storage import Store, open_store, substore
from cloudckpt.testing.faults import FaultPlan, FaultyStore, SimulatedCrash
from tests.conftest import StoreFactory
from tests.helpers import assert_same

STEPS = (100, 200, 300)
FROZEN = "frozen"  # 4 MiB: a chunk of its own, identical in every checkpoint


def _model(step: int, frozen: torch.Tensor) -> torch.nn.Module:
    m = torch.nn.Module()
    m.register_buffer(FROZEN, frozen.clone())
    m.register_buffer("w", torch.arange(64, dtype=torch.float32) * step)
    return m


@dataclass
class Run:
    uri: str
    opts: dict[str, Any]
    factory: StoreFactory
    frozen: torch.Tensor

    @property
    def store(self) -> Store:
        return open_store(self.uri, storage_options=self.opts)

    def sub(self, step: int) -> Store:
        return substore(self.store, step_dir(step))

    def cli(self, *args: str) -> int:
        return main(["-o", json.dumps(self.opts), *args])

    def assert_restores(self, step: int) -> None:
        got = _model(0, torch.zeros_like(self.frozen))
        st = CheckpointManager(self.uri, keep_last=None, storage_options=self.opts).restore(
            step, model=got)
        assert st is not None and st.step == step
        assert_same(dict(_model(step, self.frozen).state_dict()), dict(got.state_dict()))


@pytest.fixture(params=["local", "s3"])
def run(request, emus, tmp_path) -> Run:  # type: ignore[no-untyped-def]
    f = StoreFactory(request.param, emus, tmp_path)
    uri = f.uri("run")
    torch.manual_seed(0)
    frozen = torch.randn(1024 * 1024)
    # written without dedup: the identical chunks the repairs draw on are separate copies
    mgr = CheckpointManager(uri, keep_last=None, storage_options=f.options,
                            incremental=IncrementalOptions(dedup=False))
    for s in STEPS:
        mgr.save(s, model=_model(s, frozen))
    return Run(uri, f.options, f, frozen)


def _chunk_of(store: Store, name: str) -> tuple[str, int]:
    """(object key, offset in it) of the chunk holding tensor ``name`` of the checkpoint."""
    m = cloudckpt.inspect(store)
    t = next(t for t in m.tensors if t.path.endswith(f"[{name!r}]"))
    c = m.chunks[t.segments[0].chunk]
    return c.object, c.offset


def _flip(store: Store, key: str, pos: int) -> None:
    data = bytearray(store.get(key))
    data[pos] ^= 0x10
    store.put(key, bytes(data))


def _snapshot(store: Store) -> dict[str, bytes]:
    return {o.key: store.get(o.key) for o in store.list()}


def _cli_subprocess(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cloudckpt", *args], capture_output=True,
                          text=True, timeout=180)


def test_flipped_chunk_is_repaired_from_an_identical_sibling_chunk(run: Run, capsys) -> None:  # type: ignore[no-untyped-def]
    sub = run.sub(200)
    key, off = _chunk_of(sub, FROZEN)
    original = sub.get(key)
    _flip(sub, key, off + 1000)
    before = _snapshot(run.store)
    etags = {o.key: o.etag for o in run.store.list()}

    assert run.cli("repair", run.uri) == 1  # dry run: damage found, nothing done
    out = capsys.readouterr().out
    assert "step 200: damaged" in out and f"would rewrite {key}" in out and "--yes" in out
    assert _snapshot(run.store) == before

    if run.factory.backend == "local":  # through a real process (in-process on S3: time)
        r = _cli_subprocess("-o", json.dumps(run.opts), "repair", run.uri, "--yes", "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        rep = json.loads(r.stdout)
    else:
        assert run.cli("repair", run.uri, "--yes", "--json") == 0
        rep = json.loads(capsys.readouterr().out)
    status = {s["step"]: s["status"] for s in rep["steps"]}
    assert status == {100: "healthy", 200: "repaired", 300: "healthy"}
    fixed = rep["steps"][1]["objects"]
    assert [o["key"] for o in fixed] == [key] and "(copied)" in fixed[0]["sources"][0]
    assert sub.get(key) == original  # bit-exact: the very bytes that were lost
    after = _snapshot(run.store)
    assert {k: v for k, v in after.items() if k != f"{step_dir(200)}/{key}"} == \
        {k: v for k, v in before.items() if k != f"{step_dir(200)}/{key}"}  # nothing else
    assert {o.key: o.etag for o in run.store.list() if not o.key.startswith(step_dir(200))} \
        == {k: e for k, e in etags.items() if not k.startswith(step_dir(200))}  # not rewritten
    run.assert_restores(200)
    assert cloudckpt.verify(sub).ok


def test_damaged_checkpoints_are_repaired_from_a_replica(run: Run, capsys) -> None:  # type: ignore[no-untyped-def]
    replica = run.factory.uri("replica")
    assert run.cli("cp", run.uri, replica, "--dst-storage-options", json.dumps(run.opts)) == 0
    # step 300: its only object gone (its own tensors exist nowhere else in the run);
    # step 200: a manifest that does not validate
    lost = run.sub(300).list("data")[0].key
    run.sub(300).delete(lost)
    run.sub(200).put(MANIFEST_KEY, b"\x80\x04 not a manifest")
    capsys.readouterr()

    assert run.cli("repair", run.uri, "--yes", "--json") == 1  # no copy known: quarantined
    st = {s["step"]: s for s in json.loads(capsys.readouterr().out)["steps"]}
    assert st[200]["status"] == st[300]["status"] == "quarantined"
    assert "--from" in st[200]["reason"]
    assert CheckpointManager(run.uri, storage_options=run.opts).steps() == [100]

    assert run.cli("repair", run.uri, "--yes", "--from", replica, "--json") == 0
    st = {s["step"]: s for s in json.loads(capsys.readouterr().out)["steps"]}
    assert st[200]["status"] == st[300]["status"] == "repaired"  # and released
    assert st[200]["manifest_from"].startswith("replica ")
    assert "replica" in " ".join(st[300]["objects"][0]["sources"])
    for step in (200, 300):
        run.assert_restores(step)
    assert not run.store.list("quarantine")
    assert CheckpointManager(run.uri, storage_options=run.opts).steps() == list(STEPS)
    assert run.cli("repair", run.uri) == 0  # nothing left to do


def test_unrepairable_checkpoint_is_quarantined_and_skipped(run: Run, capsys, caplog) -> None:  # type: ignore[no-untyped-def]
    sub = run.sub(300)
    key, off = _chunk_of(sub, "w")  # its own small tensors: no copy anywhere
    _flip(sub, key, off + 3)
    before = _snapshot(run.store)
    assert run.cli("repair", run.uri) == 1
    assert "step 300: would quarantine" in capsys.readouterr().out
    assert _snapshot(run.store) == before

    assert run.cli("repair", run.uri, "--yes") == 1  # damage remains (quarantined)
    assert "step 300: quarantined" in capsys.readouterr().out
    marker = json.loads(run.store.get(quarantine_key(300)))
    assert marker["step"] == 300 and key in marker["reason"] + " ".join(marker["problems"])
    assert {k: v for k, v in _snapshot(run.store).items() if k != quarantine_key(300)} == before

    # restore("latest") falls back to 200 without reading step 300 again, one WARNING
    counting = FaultyStore(run.store)
    caplog.set_level(logging.WARNING, logger="cloudckpt")
    caplog.clear()
    mgr = CheckpointManager(counting, keep_last=1, keep_best=None)
    got = _model(0, torch.zeros_like(run.frozen))
    st = mgr.restore(model=got)
    assert st is not None and st.step == 200
    assert_same(dict(_model(200, run.frozen).state_dict()), dict(got.state_dict()))
    assert not [c for c in counting.calls if c[2].startswith(step_dir(300)) and c[1] != "list"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len([w for w in warnings if "quarantined" in w]) == 1, warnings
    assert not [w for w in warnings if "unusable" in w or "incomplete" in w], warnings
    # retention: 200 is the latest it knows; 100 goes, 300 is left alone for operators
    assert mgr.apply_retention() == [100]
    assert mgr.steps() == [200] and run.sub(300).get(key) == before[f"{step_dir(300)}/{key}"]
    assert run.cli("ls", run.uri, "--json") == 0
    assert {r["step"]: r["status"] for r in json.loads(capsys.readouterr().out)} == {
        200: "committed", 300: "quarantined"}

    # the resumed run saves step 300 again: the marker is stale and hides nothing
    mgr.save(300, model=_model(300, run.frozen))
    assert mgr.steps() == [300]  # (and retention, keep_last=1, let 200 go)
    assert run.cli("repair", run.uri, "--yes") == 0
    assert "removed a stale quarantine marker" in capsys.readouterr().out
    assert not run.store.exists(quarantine_key(300))
    run.assert_restores(300)


def test_bad_input_is_one_line_and_changes_nothing(run: Run, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    other = run.factory.uri("other-run")
    CheckpointManager(other, storage_options=run.opts).save(1, model=_model(1, run.frozen[:10]))
    not_a_run = run.factory.uri("not-a-run")
    open_store(not_a_run, storage_options=run.opts).put("notes.txt", b"hello")
    _flip(run.sub(200), *_chunk_of(run.sub(200), FROZEN))
    before = _snapshot(run.store)
    cases = [
        (["repair", not_a_run, "--yes"], 2, "not the root of a CheckpointManager run"),
        (["repair", run.factory.uri("missing"), "--yes"], 3, "nothing at"),
        (["repair", f"{run.uri}/{step_dir(100)}", "--yes"], 2, "single checkpoint"),
        (["repair", run.uri, "--yes", "--from", other], 2, "not a copy of the run"),
        (["repair", run.uri, "--yes", "--from", run.factory.uri("missing2")], 3, "nothing there"),
        (["repair", run.uri, "--yes", "--from", not_a_run], 2, "holds no valid checkpoint"),
        (["repair", "ftp://host/x"], 2, "unknown scheme"),
    ]
    for args, code, text in cases:
        assert run.cli(*args) == code, args
        err = capsys.readouterr().err
        assert err.startswith("cloudckpt: error:") and text in err, (args, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert _snapshot(run.store) == before
    if run.factory.backend == "local":  # and through a real process
        r = _cli_subprocess("repair", not_a_run, "--yes")
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "Traceback" not in r.stderr and not r.stdout


def test_reencoded_donor_crash_midway_and_failing_reads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    uri = str(tmp_path / "run")
    torch.manual_seed(1)
    frozen = torch.randn(1024 * 1024)
    CheckpointManager(uri, keep_last=None, compression="none").save(100, model=_model(100, frozen))
    CheckpointManager(uri, keep_last=None, compression="bg-zstd").save(200, model=_model(200, frozen))
    sub = substore(open_store(uri), step_dir(200))
    key, off = _chunk_of(sub, FROZEN)
    original = sub.get(key)
    _flip(sub, key, off + 77)
    damaged = sub.get(key)

    # a store whose reads fail is never taken for damage: an error, nothing written
    failing = FaultyStore(open_store(uri), FaultPlan(ops=frozenset({"get_range"}), fail_rate=1.0))
    with pytest.raises(TransientStorageError):
        repair_run(RunContext.open(failing), dry_run=False)
    assert sub.get(key) == damaged and not open_store(uri).list("quarantine")

    # a crash at the first write leaves the old bytes; running again finishes the job
    crashing = FaultyStore(open_store(uri), FaultPlan(ops=frozenset({"put"}), crash_at=0))
    with pytest.raises(SimulatedCrash):
        repair_run(RunContext.open(crashing), dry_run=False)
    assert sub.get(key) == damaged

    rep = repair_run(RunContext.open(uri), dry_run=False)
    fixed = {s.step: s for s in rep.steps}[200]
    assert fixed.status == "repaired" and not rep.damage_left
    assert "step 100 (re-encoded)" in fixed.fixes[0].sources[0]  # stored raw there
    assert sub.get(key) == original
