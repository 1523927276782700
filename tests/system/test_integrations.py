"""Framework integrations against the S3 emulator: Hugging Face Trainer and PyTorch Lightning.

Skipped when ``transformers``/``accelerate`` or ``lightning`` are not installed.
"""

from __future__ import annotations

import argparse
import collections
import copy
import datetime
import enum
import logging
import pathlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import fsspec
import pytest
import torch

import cloudckpt
from cloudckpt.errors import NotFound, UnsupportedValue
from cloudckpt.storage import open_store
from tests.conftest import Emulators, StoreFactory
from tests.helpers import assert_same


def _tensors_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _children(uri: str, opts: dict[str, Any]) -> set[str]:
    """Names directly below ``uri`` that hold a committed cloudckpt manifest."""
    keys = [o.key for o in open_store(uri, storage_options=opts).list("")]
    return {k.split("/", 1)[0] for k in keys if k.endswith("/manifest.json") and k.count("/") == 1}


@pytest.fixture
def s3(emus: Emulators, tmp_path: Path) -> StoreFactory:
    return StoreFactory("s3", emus, tmp_path)


# ======================================================================================
# Hugging Face transformers
# ======================================================================================

class _TokenDataset(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 100, (n, 8), generator=g)
        self.labels = (self.ids.sum(1) % 2).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(8, dtype=torch.long),
                "labels": self.labels[i]}


def _bert(seed: int) -> Any:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=16)  # 2 labels by default
    return BertForSequenceClassification(cfg)


def _args(out: Path, **kw: Any) -> Any:
    from transformers import TrainingArguments

    base: dict[str, Any] = dict(
        output_dir=str(out), report_to=[], use_cpu=True, max_steps=10, save_strategy="steps",
        save_steps=5, eval_strategy="steps", eval_steps=5, logging_steps=5,
        per_device_train_batch_size=4, per_device_eval_batch_size=8, learning_rate=5e-3,
        seed=0, disable_tqdm=True, dataloader_num_workers=0)
    base.update(kw)
    return TrainingArguments(**base)


@pytest.fixture
def hf() -> Any:
    pytest.importorskip("transformers", reason="transformers is not installed")
    pytest.importorskip("accelerate", reason="accelerate (needed by transformers.Trainer) "
                                             "is not installed")
    from cloudckpt.integrations import hf as module

    logging.getLogger("transformers").setLevel(logging.ERROR)
    return module


def _trainer(hf: Any, uri: str, opts: dict[str, Any], out: Path, *, seed: int = 0,
             callbacks: list[Any] | None = None, **kw: Any) -> Any:
    return hf.CloudckptTrainer(
        model=_bert(seed), args=_args(out, **kw), train_dataset=_TokenDataset(40, 1),
        eval_dataset=_TokenDataset(16, 2), callbacks=callbacks,
        checkpoint_uri=uri, storage_options=opts)


def test_hf_resume_continues_exactly(hf: Any, s3: StoreFactory, tmp_path: Path) -> None:
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):  # type: ignore[misc, unused-ignore]
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == 5:
                control.should_training_stop = True

    class Probe(TrainerCallback):  # type: ignore[misc, unused-ignore]
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.step = state.global_step
            self.optimizer = copy.deepcopy(kw["optimizer"].state_dict())
            self.scheduler = copy.deepcopy(kw["lr_scheduler"].state_dict())
            self.weights = copy.deepcopy(kw["model"].state_dict())

    # reference: 10 uninterrupted steps
    ref = _trainer(hf, s3.uri("ref"), s3.options, tmp_path / "ref")
    ref.train()
    assert ref.state.global_step == 10
    reference = ref.model.state_dict()

    # interrupted after the save at step 5
    uri = s3.uri("run")
    first = _trainer(hf, uri, s3.options, tmp_path / "a", callbacks=[StopAt()])
    first.train()
    assert first.state.global_step == 5
    saved_opt = copy.deepcopy(first.optimizer.state_dict())
    saved_sched = copy.deepcopy(first.lr_scheduler.state_dict())
    saved_weights = copy.deepcopy(first.model.state_dict())
    del first
    assert not list((tmp_path / "a").glob("checkpoint-*"))  # nothing written locally

    # a fresh Trainer with differently initialised weights continues from the URI
    probe = Probe()
    second = _trainer(hf, uri, s3.options, tmp_path / "b", seed=123, callbacks=[probe])
    out = second.train()
    assert probe.step == 5
    assert_same(saved_opt, probe.optimizer)
    assert_same(saved_sched, probe.scheduler)
    _tensors_equal(saved_weights, probe.weights)
    assert out.global_step == second.state.global_step == 10
    assert any(e.get("step") == 5 and "eval_loss" in e for e in second.state.log_history)
    _tensors_equal(reference, second.model.state_dict())  # bit-identical to the reference

    mgr = second.cloudckpt.manager(second.args)
    assert mgr.steps() == [5, 10]
    extra = cloudckpt.load(mgr.checkpoints()[-1].uri, keys=["extra"],
                           storage_options=s3.options)["extra"]
    state = hf.trainer_state_from_dict(extra[hf.STATE_KEY])
    # the saved history is the live one minus the train summary logged after the last save
    assert state.global_step == 10 and state.log_history == second.state.log_history[:-1]


def test_hf_retention_and_load_best(hf: Any, s3: StoreFactory, tmp_path: Path) -> None:
    scores = iter([0.1, 0.9, 0.3, 0.2, 0.4])  # best at step 4 (greater is better)

    def metrics(_: Any) -> dict[str, float]:
        return {"score": next(scores)}

    uri = s3.uri("best")
    tr = hf.CloudckptTrainer(
        model=_bert(0), train_dataset=_TokenDataset(40, 1), eval_dataset=_TokenDataset(16, 2),
        args=_args(tmp_path / "o", save_steps=2, eval_steps=2, save_total_limit=2,
                   load_best_model_at_end=True, metric_for_best_model="score",
                   greater_is_better=True),
        compute_metrics=metrics, checkpoint_uri=uri, storage_options=s3.options)
    tr.train()
    mgr = tr.cloudckpt.manager(tr.args)
    assert mgr.steps() == [4, 10]  # save_total_limit=2: the latest and the best
    assert mgr.best() == 4 and tr.state.best_global_step == 4
    best_uri = mgr.checkpoints()[0].uri
    assert tr.state.best_model_checkpoint == best_uri
    best = cloudckpt.load(best_uri, keys=["objects/model"], storage_options=s3.options)
    _tensors_equal(best["objects"]["model"], tr.model.state_dict())
    last = cloudckpt.load(mgr.checkpoints()[1].uri, keys=["objects/model"],
                          storage_options=s3.options)["objects"]["model"]
    assert not all(torch.equal(last[k], v) for k, v in tr.model.state_dict().items())


def test_hf_callback_mirrors_plain_trainer(hf: Any, s3: StoreFactory, tmp_path: Path) -> None:
    from transformers import Trainer

    uri = s3.uri("mirror")
    cb = hf.CloudckptCallback(uri, storage_options=s3.options)
    model = _bert(0)
    tr = Trainer(model=model, args=_args(tmp_path / "o", max_steps=4, save_steps=2,
                                         eval_strategy="no"),
                 train_dataset=_TokenDataset(40, 1), callbacks=[cb])
    tr.train()
    assert sorted(p.name for p in (tmp_path / "o").glob("checkpoint-*")) == \
        ["checkpoint-2", "checkpoint-4"]
    assert cb.manager(tr.args).steps() == [2, 4]
    saved = cloudckpt.load(cb.manager(tr.args).checkpoints()[-1].uri,
                           storage_options=s3.options)
    assert sorted(saved["objects"]) == ["lr_scheduler", "model", "optimizer"]
    _tensors_equal(saved["objects"]["model"], model.state_dict())
    # a fresh run into the same URI fails before training instead of colliding later
    again = Trainer(model=_bert(0), args=_args(tmp_path / "p", max_steps=4, save_steps=2,
                                               eval_strategy="no"),
                    train_dataset=_TokenDataset(40, 1),
                    callbacks=[hf.CloudckptCallback(uri, storage_options=s3.options)])
    with pytest.raises(cloudckpt.AlreadyExists, match="newer than step 0"):
        again.train()


# ======================================================================================
# PyTorch Lightning
# ======================================================================================

@pytest.fixture
def pl() -> Any:
    return pytest.importorskip("lightning.pytorch", reason="lightning is not installed")


@pytest.fixture
def fsspec_s3(s3: StoreFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[StoreFactory]:
    """ModelCheckpoint builds its own fsspec filesystem for ``dirpath`` without storage
    options: point fsspec's defaults for s3 at the emulator, as a MinIO user would."""
    s3.uri("probe")  # creates the bucket and fills s3.options
    monkeypatch.setitem(fsspec.config.conf, "s3", dict(s3.options))
    yield s3


def _lightning_module(pl: Any) -> Any:
    class Tiny(pl.LightningModule):  # type: ignore[misc, unused-ignore]
        def __init__(self, lr: float = 0.05, dims: tuple[int, ...] = (4, 1),
                     data_dir: pathlib.Path = pathlib.Path("/data/x"),
                     dtype: torch.dtype = torch.float32) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8),
                                           torch.nn.Linear(8, 1))
            self.val_losses = [3.0, 2.0, 1.0, 0.5, 0.25]  # scripted: epoch e logs val_losses[e]

        def training_step(self, batch: Any, idx: int) -> torch.Tensor:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch: Any, idx: int) -> None:
            self.log("val_loss", torch.tensor(self.val_losses[self.current_epoch]))

        def configure_optimizers(self) -> Any:
            opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)}

    return Tiny


def _loaders() -> tuple[Any, Any]:
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g))
    return DataLoader(ds, batch_size=4), DataLoader(ds, batch_size=8)


def test_lightning_modelcheckpoint_on_s3(pl: Any, fsspec_s3: StoreFactory) -> None:
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint

    from cloudckpt.integrations.lightning import CloudckptIO

    s3 = fsspec_s3
    uri = s3.uri("run")
    Tiny = _lightning_module(pl)

    def trainer(epochs: int, *extra: Any) -> tuple[Any, Any]:
        ckpt = ModelCheckpoint(dirpath=uri, save_top_k=2, monitor="val_loss", save_last=True)
        return pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False,
                          plugins=[CloudckptIO(storage_options=s3.options)],
                          callbacks=[ckpt, *extra], enable_progress_bar=False,
                          enable_model_summary=False, num_sanity_val_steps=0), ckpt

    train, val = _loaders()
    t1, ck1 = trainer(3)
    model = Tiny()
    t1.fit(model, train, val)
    assert t1.global_step == 12
    # top-2 by the scripted val_loss (3, 2, 1): epoch 0 was removed by ModelCheckpoint
    assert _children(uri, s3.options) == {"epoch=1-step=8.ckpt", "epoch=2-step=12.ckpt",
                                          "last.ckpt"}
    with pytest.raises(NotFound):
        cloudckpt.inspect(f"{uri}/epoch=0-step=4.ckpt", storage_options=s3.options)
    m = cloudckpt.inspect(f"{uri}/last.ckpt", storage_options=s3.options)
    assert m.metadata["lightning"]["global_step"] == 12
    # ModelCheckpoint's own fsspec checks see the cloudckpt "directories"
    assert ck1.file_exists(f"{uri}/last.ckpt", t1)
    assert ck1.file_exists(f"{uri}/epoch=2-step=12.ckpt", t1)
    assert not ck1.file_exists(f"{uri}/epoch=0-step=4.ckpt", t1)
    assert ck1.best_model_path == f"{uri}/epoch=2-step=12.ckpt"
    ck = CloudckptIO(storage_options=s3.options).load_checkpoint(f"{uri}/last.ckpt")
    assert ck["hyper_parameters"]["data_dir"] == pathlib.Path("/data/x")
    assert ck["hyper_parameters"]["dtype"] is torch.float32
    assert ck["hyper_parameters"]["dims"] == (4, 1)
    assert type(ck["state_dict"]) is collections.OrderedDict
    _tensors_equal(ck["state_dict"], model.state_dict())

    class Probe(Callback):  # type: ignore[misc, unused-ignore]
        def on_train_start(self, trainer: Any, module: Any) -> None:
            self.step, self.epoch = trainer.global_step, trainer.current_epoch
            self.weights = copy.deepcopy(module.state_dict())
            self.optimizer = copy.deepcopy(trainer.optimizers[0].state_dict())

    probe = Probe()
    t2, ck2 = trainer(5, probe)
    torch.manual_seed(7)  # different initial weights: they must come from the checkpoint
    t2.fit(Tiny(), train, val, ckpt_path=f"{uri}/last.ckpt")
    assert (probe.step, probe.epoch) == (12, 3)
    _tensors_equal(ck["state_dict"], probe.weights)
    assert_same(ck["optimizer_states"][0], probe.optimizer)
    assert t2.global_step == 20
    assert _children(uri, s3.options) == {"epoch=3-step=16.ckpt", "epoch=4-step=20.ckpt",
                                          "last.ckpt"}
    assert ck2.best_model_path == f"{uri}/epoch=4-step=20.ckpt"
    # ModelCheckpoint listed dirpath at setup (cached by fsspec); the plugin keeps that fresh
    assert ck2.file_exists(f"{uri}/epoch=4-step=20.ckpt", t2)
    assert not ck2.file_exists(f"{uri}/epoch=1-step=8.ckpt", t2)


class Color(enum.Enum):
    RED = 1


class Mode(str, enum.Enum):
    FAST = "fast"


class Pair(NamedTuple):
    x: int


def test_lightning_encoding_roundtrip_and_rejections(pl: Any, tmp_path: Path) -> None:
    from lightning.fabric.utilities.data import AttributeDict

    from cloudckpt.integrations.lightning import CloudckptIO

    io = CloudckptIO()
    sd = torch.nn.BatchNorm1d(3).state_dict()
    hp = AttributeDict(lr=0.1, path=pathlib.PurePosixPath("a/b"), ns=argparse.Namespace(
        k=1, p=pathlib.Path("/x")), tags={"a"}, frozen=frozenset({1}),
        every=datetime.timedelta(days=1, seconds=2, microseconds=3),
        device=torch.device("cpu"), dtype=torch.bfloat16, size=torch.Size([2, 3]))
    ckpt = {"epoch": 1, "global_step": 7, "state_dict": sd, "hyper_parameters": hp,
            "loops": {"fit_loop": {"state_dict": {}, "x": [1.5, None, "s", b"raw"]}}}
    path = tmp_path / "ck" / "a.ckpt"
    io.save_checkpoint(ckpt, path)
    io.save_checkpoint(ckpt, path)  # re-saving the same path replaces it (last.ckpt)
    back = io.load_checkpoint(str(path), map_location="cpu")
    assert type(back["hyper_parameters"]) is AttributeDict
    assert back["hyper_parameters"]["ns"] == hp["ns"]
    assert type(back["hyper_parameters"]["path"]) is pathlib.PurePosixPath
    for k in ("tags", "frozen", "every", "device", "dtype", "size", "lr", "path"):
        assert back["hyper_parameters"][k] == hp[k] and type(back["hyper_parameters"][k]) is type(hp[k])
    assert_same(sd, back["state_dict"])
    assert back["loops"] == ckpt["loops"]
    io.remove_checkpoint(path)
    assert not path.exists()
    io.remove_checkpoint(path)  # nothing there: no error

    bad: list[tuple[Any, str]] = [
        (Color.RED, "Color"), (Mode.FAST, "StrEnum"),
        (collections.defaultdict(int), "defaultdict"),
        (Pair(1), "Pair"), (object(), "object"),
    ]
    for value, needle in bad:
        with pytest.raises(UnsupportedValue, match=r"state\['hyper_parameters'\]\['v'\]") as e:
            io.save_checkpoint({"hyper_parameters": {"v": value}}, tmp_path / "bad.ckpt")
        assert needle in str(e.value)
    assert not (tmp_path / "bad.ckpt").exists()  # nothing written
