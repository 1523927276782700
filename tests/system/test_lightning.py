"""Lightning end to end on local disk and on S3 (moto): ``trainer.fit(ckpt_path="last")`` with
:class:`CloudckptModelCheckpoint` resumes from our latest checkpoint and ends bit-identical to an
uninterrupted run; ``load_from_checkpoint`` rebuilds the module with its hyperparameters and
weights; ``find_checkpoint`` resolves "last" and "best"; ``cloudckpt ls`` shows epoch and step.

Skipped when ``lightning`` is not installed.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
import torch

import cloudckpt
from cloudckpt.cli import main as cli_main
from tests.conftest import Emulators, StoreFactory

pl = pytest.importorskip("lightning.pytorch", reason="lightning is not installed")

from lightning.pytorch.callbacks import Callback, ModelCheckpoint  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from cloudckpt.integrations.lightning import (  # noqa: E402
    CloudckptIO,
    CloudckptModelCheckpoint,
    find_checkpoint,
    load_from_checkpoint,
)


class Tiny(pl.LightningModule):  # type: ignore[misc, unused-ignore]
    def __init__(self, lr: float = 0.05, hidden: int = 8, tag: str = "a") -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden, 1))

    def training_step(self, batch: Any, idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch: Any, idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class Probe(Callback):  # type: ignore[misc, unused-ignore]
    """What the trainer starts from."""

    def on_train_start(self, trainer: Any, module: Any) -> None:
        self.step = trainer.global_step
        self.weights = copy.deepcopy(module.state_dict())


def _loaders() -> tuple[DataLoader[Any], DataLoader[Any]]:
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g))
    return DataLoader(ds, batch_size=4), DataLoader(ds, batch_size=8)  # 4 steps per epoch


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models: intra-op threads only contend for the test machine's shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=["local", "s3"])
def place(request: pytest.FixtureRequest, emus: Emulators, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, dict[str, Any]]]:
    """(dirpath, storage options). On S3, fsspec's defaults point at the emulator too, as a
    MinIO user sets them (ModelCheckpoint lists ``dirpath`` without storage options)."""
    if request.param == "local":
        yield str(tmp_path / "ckpts"), {}
        return
    s3 = StoreFactory("s3", emus, tmp_path)
    uri = s3.uri("lightning-run")
    monkeypatch.setitem(fsspec.config.conf, "s3", dict(s3.options))
    yield uri, s3.options


def _fit(dirpath: str, opts: dict[str, Any], max_steps: int, *, seed: int,
         ckpt_path: str | None = None, model: Any = None) -> tuple[Any, Any, Probe, Any]:
    torch.manual_seed(seed)
    model = model or Tiny()
    probe = Probe()
    ckpt = CloudckptModelCheckpoint(dirpath=dirpath, monitor="val_loss", save_top_k=1,
                                    save_last=True)
    trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
                         plugins=[CloudckptIO(storage_options=opts)], callbacks=[ckpt, probe],
                         enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    train, val = _loaders()
    trainer.fit(model, train, val, ckpt_path=ckpt_path)
    return trainer, ckpt, probe, model


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_fit_ckpt_path_last_resumes_from_our_latest_checkpoint(
        place: tuple[str, dict[str, Any]], caplog: pytest.LogCaptureFixture) -> None:
    dirpath, opts = place
    _, _, _, reference = _fit(f"{dirpath}-reference", opts, 8, seed=0)
    # a first run with ckpt_path="last" and nothing there yet starts from scratch
    t1, _, probe1, _ = _fit(dirpath, opts, 4, seed=0, ckpt_path="last")
    assert probe1.step == 0 and t1.global_step == 4
    assert find_checkpoint(dirpath, "last", storage_options=opts) == f"{dirpath}/last.ckpt"
    saved = cloudckpt.load(f"{dirpath}/last.ckpt", storage_options=opts, keys=["state_dict"])
    # a new process: other initial weights, which must come from the checkpoint
    with caplog.at_level(logging.INFO, "cloudckpt.integrations.lightning"):
        t2, ck2, probe2, resumed = _fit(dirpath, opts, 8, seed=7, ckpt_path="last")
    assert probe2.step == 4
    _same(probe2.weights, saved["state_dict"])
    assert "1 committed candidate(s)" in caplog.text
    assert t2.global_step == 8 and t2.ckpt_path == f"{dirpath}/last.ckpt/manifest.json"
    _same(resumed.state_dict(), reference.state_dict())  # as if never interrupted (CPU)
    # ModelCheckpoint's own state came back from the checkpoint: best-of-2 across both runs
    assert ck2.best_model_path == find_checkpoint(dirpath, "best", storage_options=opts)
    assert ck2.best_model_path.startswith(f"{dirpath}/epoch=")


def test_load_from_checkpoint_rebuilds_the_module(place: tuple[str, dict[str, Any]]) -> None:
    dirpath, opts = place
    _, ck, _, model = _fit(dirpath, opts, 4, seed=0, model=Tiny(lr=0.01, hidden=6, tag="x"))
    last = find_checkpoint(dirpath, "last", storage_options=opts)
    assert last is not None
    with pytest.raises(Exception) as stock:  # what users hit with Lightning's own method
        Tiny.load_from_checkpoint(last)
    assert not isinstance(stock.value, cloudckpt.CloudckptError)
    back = load_from_checkpoint(Tiny, last, storage_options=opts)
    assert type(back) is Tiny and back.device.type == "cpu"
    assert dict(back.hparams) == {"lr": 0.01, "hidden": 6, "tag": "x"}
    _same(back.state_dict(), model.state_dict())
    over = load_from_checkpoint(Tiny, f"{last}/manifest.json", storage_options=opts, tag="y",
                                map_location="cpu")
    assert over.hparams.tag == "y" and over.hparams.hidden == 6
    _same(over.state_dict(), model.state_dict())
    best = find_checkpoint(dirpath, "best", storage_options=opts)
    assert best == ck.best_model_path
    _same(load_from_checkpoint(Tiny, best, storage_options=opts).state_dict(), model.state_dict())
    with pytest.raises(RuntimeError, match="size mismatch"):  # strict, as Lightning's
        load_from_checkpoint(Tiny, last, storage_options=opts, hidden=5)
    loose = load_from_checkpoint(Tiny, last, storage_options=opts, strict=False)
    _same(loose.state_dict(), model.state_dict())


def test_ls_shows_step_epoch_and_the_monitored_metric(place: tuple[str, dict[str, Any]],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    dirpath, opts = place
    trainer, ck, _, _ = _fit(dirpath, opts, 8, seed=0)
    val_loss = float(trainer.callback_metrics["val_loss"])  # the last validation, at step 8
    capsys.readouterr()
    flags = ["-o", json.dumps(opts)] if opts else []
    assert cli_main([*flags, "ls", f"{dirpath}/last.ckpt", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["step"], row["epoch"]) == (8, 1)
    assert row["metrics"] == {"val_loss": pytest.approx(val_loss)}
    # the ModelCheckpoint directory: one row per checkpoint, with its own step and epoch
    assert cli_main([*flags, "ls", dirpath, "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    best = ck.best_model_path.rsplit("/", 1)[1]
    assert set(rows) == {"last.ckpt", best}
    assert (rows["last.ckpt"]["step"], rows["last.ckpt"]["epoch"]) == (8, 1)
    epoch, step = (int(p.split("=")[1]) for p in best.removesuffix(".ckpt").split("-"))
    assert (rows[best]["step"], rows[best]["epoch"]) == (step, epoch)
    assert cli_main([*flags, "ls", f"{dirpath}/last.ckpt"]) == 0
    table = capsys.readouterr().out.splitlines()
    head = table[0].split()
    cells = table[1].split()
    assert (cells[head.index("STEP")], cells[head.index("EPOCH")]) == ("8", "1")
    assert f"val_loss={val_loss:.4g}" in table[1]


def test_plain_modelcheckpoint_still_starts_from_scratch_on_s3(
        emus: Emulators, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Why CloudckptModelCheckpoint exists: Lightning's own lookup loses the scheme (if this
    starts passing, Lightning fixed #18261 and the override can go)."""
    s3 = StoreFactory("s3", emus, tmp_path)
    dirpath = s3.uri("stock")
    monkeypatch.setitem(fsspec.config.conf, "s3", dict(s3.options))
    _fit(dirpath, s3.options, 4, seed=0)
    torch.manual_seed(0)
    probe = Probe()
    trainer = pl.Trainer(max_steps=8, accelerator="cpu", logger=False, enable_progress_bar=False,
                         plugins=[CloudckptIO(storage_options=s3.options)],
                         callbacks=[ModelCheckpoint(dirpath=dirpath, save_last=True), probe],
                         enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(Tiny(), _loaders()[0], ckpt_path="last")
    assert probe.step == 0  # stock Lightning: "no last checkpoint available"
