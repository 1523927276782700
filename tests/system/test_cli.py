"""The cloudckpt CLI, through a real subprocess, on local and S3 (moto)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cloudckpt
from cloudckpt import CheckpointManager
from cloudckpt.format.keys import DATA_PREFIX, step_dir
from cloudckpt.storage import open_store, substore
from tests.conftest import StoreFactory
from tests.helpers import assert_same


def cli(*args: str, opts: dict | None = None) -> subprocess.CompletedProcess[str]:
    pre = ["-o", json.dumps(opts)] if opts else []
    return subprocess.run([sys.executable, "-m", "cloudckpt", *pre, *args],
                          capture_output=True, text=True, timeout=180)


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Linear(32, 4))


@pytest.fixture(params=["local", "s3"])
def run(request, emus, tmp_path):  # type: ignore[no-untyped-def]
    f = StoreFactory(request.param, emus, tmp_path)
    uri = f.uri("run")
    mgr = CheckpointManager(uri, keep_last=None, metric="loss", storage_options=f.options)
    for s, loss in [(10, 0.5), (20, 0.3), (30, 0.4)]:
        model = _model(s)
        opt = torch.optim.AdamW(model.parameters())
        mgr.save(s, model=model, optimizer=opt, metrics={"loss": loss})
    return uri, f.options


def test_ls_show_verify_diff(run) -> None:  # type: ignore[no-untyped-def]
    uri, opts = run
    r = cli("ls", uri, "--json", opts=opts)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [x["step"] for x in rows] == [10, 20, 30]
    assert all(x["status"] == "committed" for x in rows)
    assert rows[1]["metrics"] == {"loss": 0.3}
    r = cli("ls", uri, opts=opts)
    assert "STEP" in r.stdout and "committed" in r.stdout

    r = cli("show", uri, "--step", "20", "--json", opts=opts)
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    paths = {t["path"]: t for t in shown["tensors"]}
    w = paths["state['objects']['model']['0.weight']"]
    assert w["dtype"] == "float32" and w["shape"] == [32, 16] and w["raw_bytes"] == 32 * 16 * 4
    assert "0.weight" in cli("show", f"{uri}/{step_dir(20)}", opts=opts).stdout

    r = cli("verify", uri, opts=opts)
    assert r.returncode == 0 and r.stdout.count("committed") == 3, r.stdout + r.stderr
    r = cli("verify", f"{uri}/{step_dir(10)}", "--json", opts=opts)
    assert r.returncode == 0 and json.loads(r.stdout)["ok"] is True

    a, b = f"{uri}/{step_dir(10)}", f"{uri}/{step_dir(20)}"
    r = cli("diff", a, a, opts=opts)
    assert r.returncode == 0 and "identical" in r.stdout
    r = cli("diff", a, b, "--json", opts=opts)
    assert r.returncode == 1
    d = json.loads(r.stdout)
    changed = {c["key"]: c for c in d["changed"]}
    assert changed["objects/model/0.weight"]["max_abs_diff"] > 0
    assert "step" in changed


def test_verify_detects_corruption_with_exit_status(run) -> None:  # type: ignore[no-untyped-def]
    uri, opts = run
    sub = substore(open_store(uri, storage_options=opts), step_dir(20))
    key = sub.list(DATA_PREFIX)[0].key
    data = bytearray(sub.get(key))
    data[7] ^= 0x20
    sub.put(key, bytes(data))
    r = cli("verify", f"{uri}/{step_dir(20)}", opts=opts)
    assert r.returncode == 1
    assert key in r.stdout and "checksum" in r.stdout
    r = cli("ls", uri, "--verify", "--json", opts=opts)
    assert r.returncode == 1
    status = {x["step"]: x["status"] for x in json.loads(r.stdout)}
    assert status == {10: "committed", 20: "corrupt", 30: "committed"}
    assert cli("verify", uri, opts=opts).returncode == 1


def test_gc_rm_archive(run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    uri, opts = run
    store = open_store(uri, storage_options=opts)
    substore(store, step_dir(40)).put("data/crashed/000000.bin", b"orphan")
    r = cli("gc", uri, "--grace", "0", opts=opts)
    assert r.returncode == 0 and "would delete" in r.stdout and "--yes" in r.stdout
    assert store.exists(f"{step_dir(40)}/data/crashed/000000.bin")
    r = cli("gc", uri, "--grace", "0", "--yes", "--json", opts=opts)
    assert r.returncode == 0 and json.loads(r.stdout)["orphans"] == [
        f"{step_dir(40)}/data/crashed/000000.bin"]
    assert not store.exists(f"{step_dir(40)}/data/crashed/000000.bin")

    r = cli("rm", uri, "--step", "10", opts=opts)  # a dry run without --yes, like gc
    assert r.returncode == 0, r.stderr
    assert "would delete step 10" in r.stdout and "--yes" in r.stdout
    assert CheckpointManager(store, keep_last=None).steps() == [10, 20, 30]
    r = cli("rm", uri, "--step", "10", "--yes", opts=opts)
    assert r.returncode == 0, r.stderr
    assert CheckpointManager(store, keep_last=None).steps() == [20, 30]

    archive_root = str(tmp_path / "archive-root")
    r = cli("archive", uri, "--step", "20", "--to", archive_root, "--dst-storage-options", "{}",
            opts=opts)
    assert r.returncode == 0, r.stderr
    recs = {x.step: x for x in CheckpointManager(store, keep_last=None).checkpoints()}
    assert recs[20].location == "archived" and recs[20].uri.startswith("file://")
    assert len(cloudckpt.inspect(f"{archive_root}/{step_dir(20)}").tensors) > 0
    r = cli("archive", uri, "--step", "20", "--to", archive_root, "--dst-storage-options", "{}",
            opts=opts)  # again: says so, changes nothing
    assert r.returncode == 0 and "already archived" in r.stdout, r.stdout + r.stderr
    assert r.stderr == ""
    if store.protocol == "s3":
        r = cli("archive", uri, "--step", "30", "--storage-class", "STANDARD_IA", opts=opts)
        assert r.returncode == 0, r.stderr
        assert {o.storage_class for o in substore(store, step_dir(30)).list(DATA_PREFIX)} == {
            "STANDARD_IA"}
        assert "STANDARD_IA" in cli("ls", uri, opts=opts).stdout
    r = cli("rm", uri, opts=opts)
    assert r.returncode == 2 and "--step" in r.stderr


def test_cp_across_s3_gcs_azure_and_back_bit_exact(emus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    stores = {b: StoreFactory(b, emus, tmp_path) for b in ("s3", "gcs", "az")}
    uris = {b: f.uri("ckpt") for b, f in stores.items()}
    state = {"w": torch.randn(300_000), "b": torch.randn(77).bfloat16(), "step": 5}
    cloudckpt.save(state, uris["s3"], storage_options=stores["s3"].options,
                   chunk_size=256 * 1024, object_size=512 * 1024)
    hops = [("s3", "gcs"), ("gcs", "az"), ("az", "s3")]
    back = stores["s3"].uri("back")
    for src, dst in hops:
        target = back if dst == "s3" and src == "az" else uris[dst]
        r = cli("cp", uris[src], target, "--dst-storage-options", json.dumps(stores[dst].options),
                opts=stores[src].options)
        assert r.returncode == 0, r.stderr
        assert "verified" in r.stdout
    assert_same(state, cloudckpt.load(back, storage_options=stores["s3"].options))


def test_export_import_roundtrips(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import load_file

    run_uri = str(tmp_path / "run")
    model = _model(1)
    opt = torch.optim.AdamW(model.parameters())
    CheckpointManager(run_uri).save(5, model=model, optimizer=opt)
    # --inference safetensors: model weights only
    out = tmp_path / "w.safetensors"
    r = cli("export", run_uri, str(out), "--inference")
    assert r.returncode == 0, r.stderr
    weights = load_file(str(out))
    assert_same(dict(model.state_dict()), {k: weights[k] for k in model.state_dict()})
    # sharded HF-style set with an index, then import the directory back
    shard_dir = tmp_path / "hf"
    r = cli("export", run_uri, str(shard_dir), "--inference", "--max-shard-size", "1KB")
    assert r.returncode == 0, r.stderr
    index = json.loads((shard_dir / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    r = cli("import", str(shard_dir), str(tmp_path / "imported"))
    assert r.returncode == 0, r.stderr
    assert_same(dict(model.state_dict()), dict(sorted(cloudckpt.load(tmp_path / "imported").items(),
                                                       key=lambda kv: list(model.state_dict()).index(kv[0]))))
    # full torch.save export keeps the training state; import from a torch file
    pt = tmp_path / "full.pt"
    assert cli("export", run_uri, str(pt)).returncode == 0
    full = torch.load(pt, weights_only=False)  # our own export; it holds numpy RNG state
    assert full["step"] == 5 and "optimizer" in full["objects"]
    torch.save(dict(model.state_dict()), tmp_path / "weights.pt")
    assert cli("import", str(tmp_path / "weights.pt"), str(tmp_path / "from_pt")).returncode == 0
    assert_same(dict(model.state_dict()), cloudckpt.load(tmp_path / "from_pt"))
    r = cli("import", str(out), str(tmp_path / "from_pt"))
    assert r.returncode == 6 and "overwrite" in r.stderr


def test_errors_are_one_line_with_documented_exit_codes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = cli("show", str(tmp_path / "nothing"))
    assert r.returncode == 3
    assert r.stderr.startswith("cloudckpt: error:") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = cli("ls", "ftp://host/x")
    assert r.returncode == 2 and "unknown scheme" in r.stderr
    r = cli("--debug", "show", str(tmp_path / "nothing"))
    assert r.returncode != 0 and "Traceback" in r.stderr
    assert cli("--help").returncode == 0 and "exit status" in cli("--help").stdout
    p = Path(tmp_path / "nothing")
    assert not p.exists()
