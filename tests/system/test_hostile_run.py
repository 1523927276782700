"""A run root with damaged checkpoints in it: run-level operations skip them with a WARNING
naming them; nothing is fatal to the run."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

import cloudckpt
from cloudckpt.format.keys import MANIFEST_KEY, step_dir
from tests.conftest import StoreFactory
from tests.system.test_lifecycle import _model
from tests.unit.test_integrity import _forge


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_damaged_manifests_are_skipped_by_run_level_operations(backend: str, emus, tmp_path,  # type: ignore[no-untyped-def]
                                                                caplog) -> None:
    f = StoreFactory(backend, emus, tmp_path)
    uri = f.uri("run")
    mgr = cloudckpt.CheckpointManager(uri, keep_last=10, storage_options=f.options)
    for step in (100, 200, 300, 400):
        mgr.save(step, model=_model(step))
    store = mgr.store
    store.put(f"{step_dir(200)}/{MANIFEST_KEY}", b"\x80\x04garbage, maybe a pickle")
    if backend == "local":  # malformed run metadata and a hostile tree, with valid checksums
        _forge(f"{uri}/{step_dir(300)}",
               lambda d: d["metadata"]["cloudckpt.manager"].update(time="yesterday"))
        _forge(f"{uri}/{step_dir(400)}", lambda d: d.update(tree={"t": "dict", "items": 5}))
    caplog.set_level(logging.WARNING, logger="cloudckpt")
    fresh = cloudckpt.CheckpointManager(uri, keep_last=2, storage_options=f.options)
    steps = fresh.steps()
    assert 200 not in steps and 100 in steps
    assert any(step_dir(200) in r.getMessage() for r in caplog.records)
    m = _model(0)
    st = fresh.restore(model=m)  # the newest *intact* checkpoint
    assert st is not None and st.step == (100 if backend == "local" else 400)
    assert float(m.w[0]) == st.step
    # the run goes on: saves and retention work around the damaged ones
    fresh.save(500, model=_model(500))
    assert 500 in fresh.steps()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([sys.executable, "-m", "cloudckpt", "-o", json.dumps(f.options), "ls", uri,
                        "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = {row["step"]: row for row in json.loads(r.stdout)}
    assert rows[200]["status"] == "corrupt" and rows[500]["status"] == "committed"
    assert rows[500]["signature"] == "unsigned"
