"""Hugging Face end to end with the real library (tiny BERT built here, nothing downloaded):
async saves committed before ``train()`` returns, SIGTERM in a real subprocess, forks from
"best" and older steps, ``save_model``/``export_pretrained`` to ``from_pretrained``, and
``cloudckpt download`` resumed by a stock ``Trainer``; on local disk and S3 (moto).

Skipped when ``transformers``/``accelerate`` are not installed.
"""

from __future__ import annotations

import copy
import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is not installed")
pytest.importorskip("accelerate", reason="accelerate (needed by transformers.Trainer) is not "
                    "installed")

from transformers import Trainer, TrainerCallback

import cloudckpt
from cloudckpt.errors import InvalidURI
from cloudckpt.integrations.hf import (
    STATE_KEY,
    CloudckptCallback,
    CloudckptTrainer,
    download_checkpoint,
    export_pretrained,
)
from cloudckpt.storage import Store, open_store
from cloudckpt.storage.base import StoreWrapper
from tests.conftest import StoreFactory
from tests.system.hf_worker import TokenDataset, args, bert, same_weights, weights

logging.getLogger("transformers").setLevel(logging.ERROR)
PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, emus: Any, tmp_path: Path) -> StoreFactory:
    return StoreFactory(str(request.param), emus, tmp_path)


@pytest.fixture
def s3(emus: Any, tmp_path: Path) -> StoreFactory:
    return StoreFactory("s3", emus, tmp_path)


class Probe(TrainerCallback):  # type: ignore[misc, unused-ignore]
    """Records the step training starts from, and ``best_model_checkpoint`` at each save."""

    def __init__(self) -> None:
        self.start: int | None = None
        self.saves: list[tuple[int, int | None, str | None]] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.start = state.global_step
        self.optimizer = copy.deepcopy(kw["optimizer"].state_dict())

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.saves.append((state.global_step, state.best_global_step,
                             state.best_model_checkpoint))


class StopAt(TrainerCallback):  # type: ignore[misc, unused-ignore]
    """Stops training after ``step`` (the schedule still spans ``max_steps``)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step == self.step:
            control.should_training_stop = True


def _trainer(uri: Any, opts: dict[str, Any], out: Path, *, seed: int = 0, scores: Any = None,
             callbacks: list[Any] | None = None, cloud: dict[str, Any] | None = None,
             **kw: Any) -> CloudckptTrainer:
    extra: dict[str, Any] = {}
    if scores is not None:
        extra = dict(compute_metrics=lambda _: {"score": next(scores)})
        kw = {"metric_for_best_model": "score", "greater_is_better": True, **kw}
    return CloudckptTrainer(model=bert(seed), args=args(out, **kw),
                            train_dataset=TokenDataset(40, 1), eval_dataset=TokenDataset(16, 2),
                            callbacks=callbacks, checkpoint_uri=uri, storage_options=opts,
                            **(cloud or {}), **extra)


def _model_at(uri: str, opts: dict[str, Any]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = cloudckpt.load(uri, keys=["objects/model"],
                                                  storage_options=opts)["objects"]["model"]
    return out


class SlowCommits(StoreWrapper):
    """Each checkpoint's manifest (its commit) lands 0.4 s late: async saves are still in
    flight when training ends."""

    def put(self, key: str, data: Any, *, create_only: bool = False,
            storage_class: str | None = None) -> None:
        if key.endswith("manifest.json"):
            time.sleep(0.4)
        self.inner.put(key, data, create_only=create_only, storage_class=storage_class)


# -- 1. async saves ------------------------------------------------------------------------

def test_async_saves_are_committed_before_train_returns_and_the_best_is_best_global_step(
        s3: StoreFactory, tmp_path: Path) -> None:
    uri = s3.uri("async")
    slow: Store = SlowCommits(open_store(uri, storage_options=s3.options))
    probe = Probe()
    # the score rises at every evaluation: the best is the last step, whose save is in flight
    tr = _trainer(slow, s3.options, tmp_path / "o", scores=iter([0.1, 0.2, 0.3, 0.4, 0.9]),
                  callbacks=[probe], cloud=dict(async_save=True), save_steps=2, eval_steps=2,
                  load_best_model_at_end=True)
    tr.train()
    # nothing waited here: train() itself returned only after every save committed
    mgr = cloudckpt.CheckpointManager(uri, storage_options=s3.options, metric="eval_score",
                                      mode="max")
    records = {r.step: r for r in mgr.checkpoints()}
    assert sorted(records) == [2, 4, 6, 8, 10]
    assert tr.state.best_global_step == 10 and mgr.best() == 10
    assert tr.state.best_model_checkpoint == records[10].uri
    assert same_weights(weights(tr.model), _model_at(records[10].uri, s3.options))
    assert tr.cloudckpt.last_save is None  # the saves really were asynchronous
    # during on_save the Trainer state already names the best checkpoint by its URI
    assert probe.saves == [(s, s, records[s].uri) for s in (2, 4, 6, 8, 10)]
    state = cloudckpt.load(records[6].uri, keys=["extra"], storage_options=s3.options)
    assert state["extra"][STATE_KEY]["best_model_checkpoint"] == records[6].uri


# -- 2. preemption (a real SIGTERM to a real Trainer in a subprocess) ----------------------

@pytest.mark.parametrize("mode,backend", [("trainer", "s3"), ("callback", "local")])
def test_sigterm_stops_at_the_next_step_saves_it_and_exits_0(mode: str, backend: str, emus: Any,
                                                             tmp_path: Path) -> None:
    f = StoreFactory(backend, emus, tmp_path)
    uri = f.uri("preempt")
    proc = subprocess.Popen([sys.executable, "-m", "tests.system.hf_worker", mode, uri,
                             json.dumps(f.options), str(tmp_path / "out")], cwd=PROJECT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    signalled_at = None
    try:
        for line in proc.stdout:
            if line.startswith("STEP") and int(line.split()[1]) >= 3:
                signalled_at = int(line.split()[1])
                proc.send_signal(signal.SIGTERM)
                break
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # it ignored the signal: do not leave it running
            proc.kill()
            proc.wait()
    assert signalled_at is not None, err
    assert proc.returncode == 0, err[-3000:]
    assert "TRAIN RETURNED" not in out  # it exited from inside train(), cleanly
    steps = [int(x.split()[1]) for x in out.splitlines() if x.startswith("STEP")]
    stopped = max(steps, default=signalled_at)
    assert signalled_at <= stopped < 400  # stopped at the step boundary after the signal
    assert "exiting with status 0" in err
    mgr = cloudckpt.CheckpointManager(uri, storage_options=f.options)
    assert mgr.latest() == stopped  # the step it stopped at is committed...
    saved = cloudckpt.load(mgr.checkpoints()[-1].uri, keys=["extra"], storage_options=f.options)
    assert saved["extra"][STATE_KEY]["global_step"] == stopped
    # ... and a new Trainer resumes from it
    probe = Probe()
    again = CloudckptTrainer(model=bert(1), args=args(tmp_path / "again", max_steps=stopped + 1,
                                                      save_steps=1000, eval_strategy="no"),
                             train_dataset=TokenDataset(64, 1), callbacks=[probe],
                             checkpoint_uri=uri, storage_options=f.options)
    again.train()
    assert probe.start == stopped and again.state.global_step == stopped + 1
    if mode == "callback":  # the plain Trainer also wrote its own local checkpoint of it
        assert (tmp_path / "out" / f"checkpoint-{stopped}").is_dir()


# -- 3. resuming from "best" or an older step forks the run -------------------------------

def test_resume_from_best_or_an_older_step_forks_the_lineage(s3: StoreFactory,
                                                             tmp_path: Path) -> None:
    uri, opts = s3.uri("fork"), s3.options
    # run A: saves 2..10, best at step 4
    a = _trainer(uri, opts, tmp_path / "a", scores=iter([0.1, 0.9, 0.3, 0.2, 0.4]),
                 save_steps=2, eval_steps=2)
    a.train()
    mgr = cloudckpt.CheckpointManager(uri, storage_options=opts, metric="eval_score", mode="max")
    assert mgr.steps() == [2, 4, 6, 8, 10] and mgr.best() == 4
    a4, a6 = (_model_at(r.uri, opts) for r in mgr.checkpoints()[1:3])

    # B resumes from "best" (step 4) and stops at 6: a fork; 6 is replaced, 8 and 10 stay
    probe = Probe()
    b = _trainer(uri, opts, tmp_path / "b", seed=7, scores=iter([0.5]),
                 callbacks=[probe, StopAt(6)], save_steps=2, eval_steps=2)
    b.train(resume_from_checkpoint="best")
    assert probe.start == 4
    recs = {r.step: r for r in mgr.checkpoints()}
    assert sorted(recs) == [2, 4, 6, 8, 10]  # the abandoned branch's steps are still stored
    assert [r.step for r in cloudckpt.CheckpointManager(uri, storage_options=opts).checkpoints()
            if r.generation == recs[6].generation] == [6]
    assert recs[6].generation > recs[8].generation == recs[10].generation
    assert mgr.latest() == 6  # ... but outside the live lineage
    # resumed state is exact: step 6 of the fork is bit-identical to step 6 of run A
    assert same_weights(_model_at(recs[6].uri, opts), a6)
    assert same_weights(weights(b.model), a6)

    # C resumes from an older int step (2) and trains to 4: another fork
    probe = Probe()
    c = _trainer(uri, opts, tmp_path / "c", seed=8, scores=iter([0.5]),
                 callbacks=[probe, StopAt(4)], save_steps=2, eval_steps=2)
    c.train(resume_from_checkpoint=2)
    assert probe.start == 2 and mgr.latest() == 4
    assert mgr.steps() == [2, 4, 6, 8, 10]
    assert same_weights(_model_at(mgr.checkpoints()[1].uri, opts), a4)

    # a plain auto-resume follows the live lineage (step 4 of C), not the newest step (10)
    probe = Probe()
    d = _trainer(uri, opts, tmp_path / "d", seed=9, callbacks=[probe], max_steps=4,
                 eval_strategy="no")
    d.train()
    assert probe.start == 4


# -- 4. save_model to a URI and export_pretrained -> from_pretrained ----------------------

def _tokenizer() -> Any:
    from transformers import BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "alpha", "beta", "gamma", "delta"]
    return BertTokenizer(vocab={w: i for i, w in enumerate(words)})


def _fetch(uri: str, opts: dict[str, Any], dest: Path) -> Path:
    """Copy every object under ``uri`` into ``dest`` (what a user's `aws s3 cp --recursive`
    does), through cloudckpt's own store."""
    st = open_store(uri, storage_options=opts)
    for o in st.list(""):
        (dest / o.key).parent.mkdir(parents=True, exist_ok=True)
        (dest / o.key).write_bytes(st.get(o.key))
    return dest


def _check_pretrained(path: Path, model: Any) -> None:
    from transformers import AutoTokenizer, BertForSequenceClassification

    loaded = BertForSequenceClassification.from_pretrained(str(path))
    assert same_weights(weights(loaded), weights(model))
    assert loaded.config.to_dict()["hidden_size"] == 32
    tok = AutoTokenizer.from_pretrained(str(path))
    assert tok("alpha gamma delta")["input_ids"] == [2, 5, 7, 8, 3]


def test_export_pretrained_and_save_model_to_a_uri_load_with_from_pretrained(
        s3: StoreFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = bert(3)
    with torch.no_grad():
        model.classifier.weight.add_(1.0)  # not what a fresh init gives
    tok = _tokenizer()
    # local path
    files = export_pretrained(model, tmp_path / "local", processing_class=tok)
    assert any(f.endswith("config.json") for f in files)
    _check_pretrained(tmp_path / "local", model)
    # S3: a sharded export first, then a single-file one over it: stale shards are deleted
    uri = s3.uri("export")
    export_pretrained(model, uri, storage_options=s3.options, max_shard_size="20KB")
    keys = {o.key for o in open_store(uri, storage_options=s3.options).list("")}
    assert "model.safetensors.index.json" in keys
    export_pretrained(model, uri, processing_class=tok, storage_options=s3.options)
    keys = {o.key for o in open_store(uri, storage_options=s3.options).list("")}
    assert "model.safetensors" in keys and not any("-of-" in k or "index" in k for k in keys)
    _check_pretrained(_fetch(uri, s3.options, tmp_path / "from-s3"), model)

    # CloudckptTrainer.save_model with a URI goes to the store (with the processing class)
    monkeypatch.chdir(tmp_path)
    tr = CloudckptTrainer(model=model, args=args(tmp_path / "o", max_steps=1, eval_strategy="no"),
                          processing_class=tok, train_dataset=TokenDataset(8, 1),
                          checkpoint_uri=s3.uri("ckpt"), storage_options=s3.options)
    tr.save_model(s3.uri("saved"))
    _check_pretrained(_fetch(s3.uri("saved"), s3.options, tmp_path / "saved"), model)
    with pytest.raises(InvalidURI):  # one slash: an error, not a local directory "s3:"
        tr.save_model("s3:/bucket/model")
    assert not (tmp_path / "s3:").exists()
    assert not list(tmp_path.glob("s3*"))


# -- 5. cloudckpt download -> a stock Trainer resumes ---------------------------------------

def _cli_process(*argv: str, opts: dict[str, Any]) -> tuple[int, str, bool]:
    """``cloudckpt -o OPTS ARGV...`` in a fresh process: its exit status, stderr, and whether
    it imported transformers (it must not need to)."""
    code = ("import sys; from cloudckpt.cli import main; rc = main(sys.argv[1:]); "
            "print('transformers' in sys.modules); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code, "-o", json.dumps(opts), *argv],
                         cwd=PROJECT, capture_output=True, text=True, timeout=120)
    return out.returncode, out.stderr, out.stdout.strip().endswith("True")


def _cli(capsys: pytest.CaptureFixture[str], *argv: str,
         opts: dict[str, Any]) -> tuple[int, str]:
    """The same command in this process: exit status and stderr."""
    from cloudckpt.cli import main

    capsys.readouterr()
    rc = main(["-o", json.dumps(opts), *argv])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("writer,backend", [("callback", "s3"), ("trainer", "local")])
def test_download_writes_a_checkpoint_dir_a_stock_trainer_resumes_exactly(
        writer: str, backend: str, emus: Any, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from transformers import BertForSequenceClassification

    f = StoreFactory(backend, emus, tmp_path)
    uri, opts = f.uri("run"), f.options
    # the uninterrupted reference: 10 steps, checkpoints 5 and 10 written to the URI
    if writer == "callback":  # a plain Trainer, mirrored
        ref = Trainer(model=bert(0), args=args(tmp_path / "ref", eval_strategy="no"),
                      train_dataset=TokenDataset(40, 1),
                      callbacks=[CloudckptCallback(uri, storage_options=opts)])
    else:
        ref = _trainer(uri, opts, tmp_path / "ref", eval_strategy="no")
    ref.train()
    final = weights(ref.model)
    shutil.rmtree(tmp_path / "ref")  # whatever the Trainer wrote locally is gone

    rc, err, imported_transformers = _cli_process("download", uri, "--step", "5",
                                                  str(tmp_path / "dl"), opts=opts)
    assert rc == 0, err
    assert not imported_transformers
    ckpt = tmp_path / "dl" / "checkpoint-5"
    assert sorted(p.name for p in ckpt.iterdir()) == sorted(
        ["model.safetensors", "config.json", "optimizer.pt", "scheduler.pt", "rng_state.pth",
         "trainer_state.json"])
    assert json.loads((ckpt / "trainer_state.json").read_text())["global_step"] == 5
    # the directory is also a from_pretrained model: the step-5 weights
    step5 = BertForSequenceClassification.from_pretrained(str(ckpt))
    mgr = cloudckpt.CheckpointManager(uri, storage_options=opts)
    assert same_weights(weights(step5), _model_at(mgr.checkpoints()[0].uri, opts))

    # a stock Trainer (no cloudckpt at all) resumes from it and ends bit-identical
    probe = Probe()
    stock = Trainer(model=bert(42), args=args(tmp_path / "stock", eval_strategy="no",
                                              save_strategy="no"),
                    train_dataset=TokenDataset(40, 1), callbacks=[probe])
    stock.train(resume_from_checkpoint=str(ckpt))
    assert probe.start == 5 and stock.state.global_step == 10
    saved_opt = cloudckpt.load(mgr.checkpoints()[0].uri, keys=["objects/optimizer"],
                               storage_options=opts)["objects"]["optimizer"]
    assert all(torch.equal(saved_opt["state"][i]["exp_avg"], probe.optimizer["state"][i]["exp_avg"])
               for i in saved_opt["state"])
    assert same_weights(weights(stock.model), final)

    if writer == "callback":
        # mirrored again, from the downloaded step 5: the callback forks the run there
        # instead of refusing (steps 10 of the old branch are replaced by this run's)
        fork = Trainer(model=bert(43), args=args(tmp_path / "fork", eval_strategy="no"),
                       train_dataset=TokenDataset(40, 1),
                       callbacks=[CloudckptCallback(uri, storage_options=opts)])
        fork.train(resume_from_checkpoint=str(ckpt))
        recs = mgr.checkpoints()
        assert [r.step for r in recs] == [5, 10] and recs[1].generation > recs[0].generation
        assert same_weights(_model_at(recs[1].uri, opts), final)

    # refusals are one line with the right exit status
    rc, err = _cli(capsys, "download", uri, "--step", "5", str(tmp_path / "dl"), opts=opts)
    assert rc == 6 and "exists" in err and len(err.strip().splitlines()) == 1
    assert _cli(capsys, "download", uri, "--step", "5", str(tmp_path / "dl"), "--overwrite",
                opts=opts)[0] == 0
    rc, err = _cli(capsys, "download", uri, "--step", "7", str(tmp_path / "dl"), opts=opts)
    assert rc == 3 and len(err.strip().splitlines()) == 1
    plain = f.uri("plain")
    cloudckpt.CheckpointManager(plain, storage_options=opts).save(1, model=torch.nn.Linear(2, 2))
    rc, err = _cli(capsys, "download", plain, str(tmp_path / "dl2"), opts=opts)
    assert rc == 2 and "Trainer state" in err
    assert not (tmp_path / "dl2").exists() or not any((tmp_path / "dl2").iterdir())


def test_download_checkpoint_api_latest_and_a_checkpoint_uri(tmp_path: Path) -> None:
    uri = str(tmp_path / "run")
    tr = _trainer(uri, {}, tmp_path / "o", eval_strategy="no", max_steps=4, save_steps=2)
    tr.train()
    got = download_checkpoint(uri, tmp_path / "dl")
    assert got.step == 4 and got.path == tmp_path / "dl" / "checkpoint-4"
    state = json.loads((got.path / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] is None  # no metric: no best
    one = download_checkpoint(f"{uri}/step-{2:012d}", tmp_path / "dl")
    assert one.step == 2 and (tmp_path / "dl" / "checkpoint-2" / "optimizer.pt").is_file()
    assert not [p for p in (tmp_path / "dl").iterdir() if p.name.startswith(".")]
