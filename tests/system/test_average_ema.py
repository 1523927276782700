"""Checkpoint averaging and EMA (issue 15 items 1-2): API and CLI, on local disk and S3 (moto)."""

from __future__ import annotations

import json
import subprocess
import sys
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch

import cloudckpt
from cloudckpt import CheckpointManager, InvalidArgument, NotFound
from cloudckpt.cli import main
from cloudckpt.engine.reader import read_leaves
from cloudckpt.engine.writer import write_leaves
from cloudckpt.manager.average_plan import plan_items
from cloudckpt.storage import open_store
from tests.conftest import PROJECT, StoreFactory
from tests.helpers import assert_same
from tests.system import avg_ema_worker as worker

AVG = "cloudckpt.manager.average"  # the module whose reads/writes/plan the tests spy on
STEPS_LOSS = [(10, 0.5), (20, 0.3), (30, 0.4), (40, 0.2)]


class Net(torch.nn.Module):
    """fp32 layers, a bf16 buffer, an int64 and a bool buffer (which must match)."""

    def __init__(self, seed: int, hidden: int = 32, count: int = 3, flip: bool = False) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc = torch.nn.Linear(16, hidden)
        self.head = torch.nn.Linear(hidden, 4)
        self.register_buffer("scale", torch.randn(8).to(torch.bfloat16))
        self.register_buffer("count", torch.tensor(count))
        mask = torch.ones(8, dtype=torch.bool)
        mask[0] = not flip
        self.register_buffer("mask", mask)


def cli(*args: str, opts: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in a real subprocess (costs an interpreter start: used once per command)."""
    pre = ["-o", json.dumps(opts)] if opts else []
    return subprocess.run([sys.executable, "-m", "cloudckpt", *pre, *args],
                          capture_output=True, text=True, timeout=180)


def cli_here(capsys: pytest.CaptureFixture[str], *args: str,
             opts: dict[str, Any] | None = None) -> tuple[int, str, str]:
    """The CLI's ``main`` in this process (same code, exit status and output; no start-up)."""
    capsys.readouterr()
    rc = main([*(["-o", json.dumps(opts)] if opts else []), *args])
    out, err = capsys.readouterr()
    return rc, out, err


States = dict[int, dict[str, torch.Tensor]]


def make_run(f: StoreFactory, models: dict[int, torch.nn.Module] | None = None) -> tuple[str, States]:
    uri = f.uri("run")
    mgr = CheckpointManager(uri, keep_last=None, metric="loss", storage_options=f.options)
    states = {}
    for step, loss in STEPS_LOSS:
        model = (models or {}).get(step) or Net(step)
        mgr.save(step, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                 metrics={"loss": loss})
        states[step] = {k: v.clone() for k, v in model.state_dict().items()}
    return uri, states


def expected(states: States, steps: list[int]) -> dict[str, torch.Tensor]:
    """The documented rule: sum in order in fp64 (fp32 inputs) / fp32 (bf16), divide, cast."""
    out = {}
    for k, v in states[steps[0]].items():
        if not v.is_floating_point():
            out[k] = v
            continue
        acc_dt = torch.float64 if v.dtype == torch.float32 else torch.float32
        acc = states[steps[0]][k].to(acc_dt)
        for s in steps[1:]:
            acc = acc + states[s][k].to(acc_dt)
        out[k] = (acc / len(steps)).to(v.dtype)
        naive = torch.stack([states[s][k].float() for s in steps]).mean(0).to(v.dtype)
        assert torch.allclose(out[k].float(), naive.float(), rtol=1e-2, atol=1e-2)
    return out


def assert_tensors_equal(got: Any, want: dict[str, torch.Tensor], ordered: bool = True) -> None:
    assert (list(got) if ordered else sorted(got)) == (list(want) if ordered else sorted(want))
    for k in want:
        assert_same(want[k], got[k], k)


def nothing_at(uri: str, opts: dict[str, Any]) -> bool:
    return open_store(uri, storage_options=opts).list() == []


@pytest.fixture(params=["local", "s3"])
def factory(request, emus, tmp_path) -> StoreFactory:  # type: ignore[no-untyped-def]
    return StoreFactory(request.param, emus, tmp_path)


# -- averaging ------------------------------------------------------------------------------

def test_average_best_k_and_steps_api_and_cli(factory: StoreFactory, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    uri, states = make_run(factory)
    out = factory.uri("avg-api")
    info = cloudckpt.average(uri, out, best=3, metric="loss", storage_options=factory.options)
    assert info.steps == (20, 30, 40) and info.tensors == len(states[10])
    got = cloudckpt.load(out, storage_options=factory.options)
    assert_tensors_equal(got, expected(states, [20, 30, 40]))
    Net(0).load_state_dict(got)  # a regular checkpoint of the model's state_dict
    meta = cloudckpt.inspect(out, storage_options=factory.options).metadata
    assert meta["cloudckpt.average"]["steps"] == [20, 30, 40]
    assert cloudckpt.verify(out, storage_options=factory.options).ok

    # CLI in a subprocess: listed steps
    out2 = factory.uri("avg-cli")
    r = cli("average", uri, out2, "--steps", "10,30", "--json", opts=factory.options)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["steps"] == [10, 30]
    assert_tensors_equal(cloudckpt.load(out2, storage_options=factory.options),
                         expected(states, [10, 30]))
    # CLI in process: best-K by max; an existing output is not overwritten without --overwrite
    out3 = factory.uri("avg-cli-max")
    rc, stdout, err = cli_here(capsys, "average", uri, out3, "--best", "2", "--metric", "loss",
                               "--mode", "max", opts=factory.options)
    assert rc == 0 and "steps 10, 30" in stdout, stdout + err
    rc, _, err = cli_here(capsys, "average", uri, out3, "--steps", "10,20", opts=factory.options)
    assert rc == 6 and err.count("\n") == 1, err
    rc, _, err = cli_here(capsys, "average", uri, out3, "--steps", "10,20", "--overwrite",
                          opts=factory.options)
    assert rc == 0, err
    assert_tensors_equal(cloudckpt.load(out3, storage_options=factory.options),
                         expected(states, [10, 20]))
    st = tmp_path / "avg.safetensors"  # safetensors straight from the CLI
    rc, _, err = cli_here(capsys, "average", uri, str(st), "--steps", "20,40", "--format",
                          "safetensors", opts=factory.options)
    assert rc == 0, err
    from safetensors.torch import load_file

    assert_tensors_equal(load_file(str(st)), expected(states, [20, 40]), ordered=False)


def test_integer_and_bool_mismatch_is_refused(factory: StoreFactory,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    uri, _ = make_run(factory, {30: Net(30, count=4), 40: Net(40, flip=True)})
    out = factory.uri("avg")
    with pytest.raises(InvalidArgument, match=r"model/count: torch.int64 tensor differs"):
        cloudckpt.average(uri, out, steps=[10, 20, 30], storage_options=factory.options)
    with pytest.raises(InvalidArgument, match=r"model/mask: torch.bool tensor differs"):
        cloudckpt.average(uri, out, steps=[10, 40], storage_options=factory.options)
    assert nothing_at(out, factory.options)  # refused: nothing written, nothing committed
    rc, _, err = cli_here(capsys, "average", uri, out, "--steps", "20,30", opts=factory.options)
    assert rc == 2 and "model/count" in err and err.count("\n") == 1, err
    assert nothing_at(out, factory.options)
    cloudckpt.average(uri, out, steps=[10, 20], storage_options=factory.options)  # these match


def test_refused_after_writes_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An integer mismatch found after some batches were written: their objects are removed."""
    f = StoreFactory("local", None, tmp_path)  # type: ignore[arg-type]
    uri, _ = make_run(f, {20: Net(20, count=9)})
    # integer tensors last: their mismatch is found only after float batches were written
    monkeypatch.setattr(f"{AVG}.plan_items", lambda *a: list(reversed(plan_items(*a))))
    out = f.uri("avg")
    with pytest.raises(InvalidArgument, match="model/count"):
        cloudckpt.average(uri, out, steps=[10, 20], batch_bytes=1)
    assert not list(Path(out).rglob("*.bin")) and not (Path(out) / "manifest.json").exists()


def test_mismatched_models_and_bad_selections_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = StoreFactory("local", None, tmp_path)  # type: ignore[arg-type]
    other = torch.nn.Sequential(torch.nn.Linear(16, 32))
    uri, _ = make_run(f, {20: Net(20, hidden=64), 30: other})
    out = f.uri("avg")
    with pytest.raises(InvalidArgument, match=r"model/fc.weight: float32\[32, 16\] in step 10 .* "
                                               r"float32\[64, 16\] in step 20"):
        cloudckpt.average(uri, out, steps=[10, 20])
    with pytest.raises(InvalidArgument, match=r"missing .*fc.weight.*; extra 0.bias, 0.weight "
                                              r"\(checkpoints of different models"):
        cloudckpt.average(uri, out, steps=[10, 30])
    with pytest.raises(InvalidArgument, match="no 'objects/ema'"):
        cloudckpt.average(uri, out, steps=[10, 40], obj="ema")
    with pytest.raises(InvalidArgument, match="needs metric"):
        cloudckpt.average(uri, out, best=2)
    with pytest.raises(InvalidArgument, match="either steps"):
        cloudckpt.average(uri, out, best=2, steps=[10], metric="loss")
    with pytest.raises(InvalidArgument, match="only 4 checkpoint"):
        cloudckpt.average(uri, out, best=5, metric="loss")
    with pytest.raises(NotFound, match=r"step\(s\) \[15\]"):
        cloudckpt.average(uri, out, steps=[10, 15])
    with pytest.raises(InvalidArgument, match="outside the run"):
        cloudckpt.average(uri, uri, steps=[10, 40])
    assert nothing_at(out, {})
    rc, _, err = cli_here(capsys, "average", uri, out, "--steps", "10,30")
    assert rc == 2 and "different models" in err and err.count("\n") == 1, err


def test_average_streams_one_batch_of_one_input_at_a_time(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """What is measured: the bytes of input tensors alive (tracked with weakrefs on every
    tensor the reader returns) never exceed one batch, and outputs are written batch by batch.
    torch's CPU allocator is invisible to tracemalloc, so this counts tensors instead."""
    f = StoreFactory("local", None, tmp_path)  # type: ignore[arg-type]
    uri = f.uri("run")
    mgr = CheckpointManager(uri, keep_last=None)
    tensor_bytes = 256 * 1024
    for step in (1, 2, 3, 4):
        torch.manual_seed(step)
        model = torch.nn.Module()
        for i in range(12):
            model.register_buffer(f"w{i}", torch.randn(tensor_bytes // 4))
        mgr.save(step, model=model)
    alive = {"now": 0, "peak": 0}
    written: list[int] = []

    def gone(n: int) -> None:
        alive["now"] -= n

    real_read, real_write = read_leaves, write_leaves

    def spy_read(*a: Any, **kw: Any) -> Any:
        got = real_read(*a, **kw)
        for t in got.values():
            n = t.numel() * t.element_size()
            alive["now"] += n
            alive["peak"] = max(alive["peak"], alive["now"])
            weakref.finalize(t, gone, n)
        return got

    def spy_write(store: Any, leaves: list[Any], *a: Any, **kw: Any) -> Any:
        written.append(sum(leaf.value.numel() * 4 for leaf in leaves))
        return real_write(store, leaves, *a, **kw)

    monkeypatch.setattr(f"{AVG}.read_leaves", spy_read)
    monkeypatch.setattr(f"{AVG}.write_leaves", spy_write)
    batch = 3 * tensor_bytes
    info = cloudckpt.average(uri, f.uri("avg"), steps=[1, 2, 3, 4], batch_bytes=batch)
    assert info.raw_bytes == 12 * tensor_bytes
    assert alive["peak"] <= batch, alive  # never two inputs' batches (or the model) at once
    assert written == [batch] * 4


def test_average_peak_rss_is_bounded(tmp_path: Path) -> None:
    """Peak RSS growth (kernel high-water mark, reset just before the call) of a fresh process
    averaging 3 checkpoints of 64 MiB (fp32, 16 tensors of 4 MiB) with 4 MiB batches. A
    whole-model implementation holds at least the fp64 accumulators (128 MiB) and the output
    (64 MiB); the streamed one about 5 batches plus the reads in flight."""
    f = StoreFactory("local", None, tmp_path)  # type: ignore[arg-type]
    uri = f.uri("run")
    mgr = CheckpointManager(uri, keep_last=None, compression="none")
    for step in (1, 2, 3):
        torch.manual_seed(step)
        model = torch.nn.Module()
        for i in range(16):
            model.register_buffer(f"w{i}", torch.randn(1024 * 1024))
        mgr.save(step, model=model)
    del model
    mib = 1024 * 1024
    r = subprocess.run([sys.executable, "-m", "tests.system.avg_ema_worker", "rss", uri,
                        f.uri("avg"), str(4 * mib), str(16 * mib)], cwd=PROJECT,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    print(f"peak RSS growth {res['growth_kib'] / 1024:.1f} MiB while averaging 3 x "
          f"{res['raw_bytes'] / mib:.0f} MiB")
    assert res["raw_bytes"] == 64 * mib
    assert res["growth_kib"] * 1024 < 96 * mib, res  # measured 33-57 MiB


# -- EMA ------------------------------------------------------------------------------------

def test_ema_update_rule_and_every() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = cloudckpt.EMA(model, decay=0.75, every=2)
    before = ema.shadow["weight"].clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    assert ema.update(step=3) is False and torch.equal(ema.shadow["weight"], before)
    assert ema.update(step=4) is True
    assert torch.equal(ema.shadow["weight"], before * 0.75 + model.weight.detach() * 0.25)
    assert [ema.update() for _ in range(4)] == [False, True, False, True]
    assert ema.updates == 3 and ema.calls == 4
    with pytest.raises(InvalidArgument):
        cloudckpt.EMA(model, decay=1.5)
    with pytest.raises(InvalidArgument):
        cloudckpt.EMA(model, every=0)


def test_ema_restored_in_new_process_is_bit_identical(emus, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """On local disk and S3: the uninterrupted run here saves at step 7 and goes on to 16; a
    new process restores step 7 and trains to 16; their EMA states are equal bit for bit."""
    jobs: list[tuple[str, dict[str, Any], int, str]] = []
    references = []
    threads = torch.get_num_threads()
    try:
        for backend in ("local", "s3"):
            f = StoreFactory(backend, emus, tmp_path)
            uri = f.uri("run")
            references.append(worker.train(uri, f.options, stop=16, save_at=7, resume=False))
            jobs.append((uri, f.options, 16, f.uri("resumed-ema")))
    finally:
        torch.set_num_threads(threads)
    r = subprocess.run([sys.executable, "-m", "tests.system.avg_ema_worker", "resume",
                        json.dumps(jobs)], cwd=PROJECT, capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, r.stderr
    for reference, (_uri, opts, _stop, out) in zip(references, jobs, strict=True):
        assert reference.calls == 16 and reference.updates == 16 // worker.EMA_EVERY
        resumed = cloudckpt.load(out, storage_options=opts)
        assert_same(reference.state_dict(), resumed)  # shadow weights and counters


def test_ema_rides_along_and_exports(factory: StoreFactory, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    uri = factory.uri("run")
    model = Net(1)
    ema = cloudckpt.EMA(model, decay=0.5)
    with torch.no_grad():
        model.fc.weight.mul_(3.0)
    ema.update()
    mgr = CheckpointManager(uri, storage_options=factory.options)
    mgr.save(5, model=model, ema=ema)
    fresh = cloudckpt.EMA(Net(2), decay=0.5)
    assert mgr.restore(ema=fresh) is not None
    assert_same(ema.state_dict(), fresh.state_dict())

    st = tmp_path / "ema.safetensors"
    if factory.backend == "local":  # once through a real subprocess
        r = cli("export", uri, str(st), "--ema")
        assert r.returncode == 0, r.stderr
    else:
        rc, _, err = cli_here(capsys, "export", uri, str(st), "--ema", opts=factory.options)
        assert rc == 0, err
    from safetensors.torch import load_file

    assert_tensors_equal(load_file(str(st)), dict(ema.shadow), ordered=False)
    evaluated = Net(3)
    ema.copy_to(evaluated)
    assert torch.equal(evaluated.fc.weight, ema.shadow["fc.weight"])
    if factory.backend == "local":
        plain = f"{uri}-plain"
        CheckpointManager(plain).save(1, model=model)
        rc, _, err = cli_here(capsys, "export", plain, str(tmp_path / "x.safetensors"), "--ema")
        assert rc == 2 and "holds no EMA weights" in err and err.count("\n") == 1, err
        assert not (tmp_path / "x.safetensors").exists()
        # averaging EMA weights over checkpoints: the shadow sub-tree, not the counters
        ema.update()
        mgr.save(6, model=model, ema=ema)
        with pytest.raises(InvalidArgument, match="ema/calls: a non-tensor value differs"):
            cloudckpt.average(uri, f"{uri}-avg", steps=[5, 6], obj="ema")
        cloudckpt.average(uri, f"{uri}-avg", steps=[5, 6], obj="ema/shadow")


def test_ema_for_a_different_model_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    model = Net(1)
    ema = cloudckpt.EMA(model)
    ema.update()
    uri = str(tmp_path / "run")
    CheckpointManager(uri).save(1, model=model, ema=ema)
    cases = [(torch.nn.Linear(16, 4), r"missing weight, bias; extra scale, count, mask, fc.weight"),
             (Net(2, hidden=8), r"shapes differ: fc.weight \[32, 16\] vs \[8, 16\] here")]
    for other, match in cases:
        wrong = cloudckpt.EMA(other)
        before = {k: v.clone() for k, v in wrong.shadow.items()}
        with pytest.raises(InvalidArgument, match=match + ".*an EMA for a different model"):
            wrong.load_state_dict(ema.state_dict())
        with pytest.raises(InvalidArgument, match=match):
            CheckpointManager(uri).restore(ema=wrong, rng=False)
        assert_same(before, dict(wrong.shadow))
        assert wrong.calls == 0 and wrong.updates == 0
    with pytest.raises(InvalidArgument, match="not an EMA state"):
        cloudckpt.EMA(model).load_state_dict({"shadow": {}})
