"""The Lightning integration's version gate (``lightning._private``), the manifest-path rule of
``checkpoint_uri`` and the summary ``CloudckptIO`` records for ``cloudckpt ls``.

No emulator and no training: these only import lightning. Skipped without it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("lightning.pytorch", reason="lightning is not installed")

from lightning.pytorch.callbacks import ModelCheckpoint

from cloudckpt.errors import CloudckptError, UnsupportedFramework
from cloudckpt.integrations.lightning import _private as gate
from cloudckpt.integrations.lightning.io import checkpoint_uri, summary_metadata
from cloudckpt.manager.index import META_KEY


def test_the_range_is_the_one_pyproject_declares() -> None:
    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert f'lightning = ["lightning{gate.SUPPORTED_LIGHTNING}"]' in text


def test_installed_lightning_passes() -> None:
    gate.check_lightning()
    gate.CloudckptModelCheckpoint(dirpath="memory://x/run")


@pytest.mark.parametrize("version", ["2.6.0", "2.6.6", "2.99.1", "2.7.0.dev0"])
def test_versions_inside_the_range_pass(version: str) -> None:
    gate.check_version(version)


@pytest.mark.parametrize("version", ["2.5.9", "2.6.0rc1", "1.9.5", "3.0.0.dev0", "3.0.0",
                                     "not-a-version"])
def test_versions_outside_the_range_are_refused(version: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UnsupportedFramework, match=r">=2\.6,<3") as e:
        gate.check_version(version)
    assert isinstance(e.value, ImportError) and isinstance(e.value, CloudckptError)
    monkeypatch.setattr(importlib.import_module("lightning"), "__version__", version)
    with pytest.raises(UnsupportedFramework):
        gate.check_lightning()
    with pytest.raises(UnsupportedFramework):  # the constructor checks too
        gate.CloudckptModelCheckpoint(dirpath="memory://x/run")


def test_a_changed_private_signature_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def changed(self: Any, trainer: Any, extra: int) -> set[str]:
        return set()

    monkeypatch.setattr(ModelCheckpoint, "_find_last_checkpoints", changed)
    with pytest.raises(UnsupportedFramework, match=r"_find_last_checkpoints\(self, trainer, extra\)"):
        gate.check_private()


def test_a_missing_private_function_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(importlib.import_module("lightning.pytorch.core.saving"), "_load_state")
    with pytest.raises(UnsupportedFramework, match="_load_state is gone"):
        gate.check_private()


def test_signature_shape() -> None:
    def f(a: int, b: int = 1, *args: Any, c: str = "x", **kw: Any) -> None: ...

    assert gate.signature_shape(f) == "(a, b=1, *args, c='x', **kw)"


def test_state_key_is_a_plain_modelcheckpoints() -> None:
    ours = gate.CloudckptModelCheckpoint(dirpath="memory://x/run", monitor="val_loss")
    assert ours.state_key == ModelCheckpoint(dirpath="memory://x/run", monitor="val_loss").state_key


@pytest.mark.parametrize(("path", "uri"), [
    ("s3://b/run/last.ckpt/manifest.json", "s3://b/run/last.ckpt"),
    ("/tmp/run/last.ckpt/manifest.json", "/tmp/run/last.ckpt"),
    ("s3://b/run/last.ckpt", "s3://b/run/last.ckpt"),
    ("manifest.json", "manifest.json"),
    ("/manifest.json", "/manifest.json"),
    ("s3://b/run/manifest.json.ckpt", "s3://b/run/manifest.json.ckpt"),
])
def test_checkpoint_uri(path: str, uri: str) -> None:
    assert checkpoint_uri(path) == uri


def test_summary_metadata() -> None:
    ck = {"epoch": 2, "global_step": 12, "pytorch-lightning_version": "2.6.6",
          "callbacks": {
              "ModelCheckpoint{'monitor': 'val_loss'}": {
                  "monitor": "val_loss", "current_score": torch.tensor(0.25),
                  "best_model_score": torch.tensor(0.125), "best_model_path": "s3://b/r/x.ckpt",
                  "last_model_path": "s3://b/r/last.ckpt", "dirpath": "s3://b/r"},
              "ModelCheckpoint{'monitor': None}": {
                  "monitor": None, "current_score": None, "best_model_score": None,
                  "best_model_path": "", "dirpath": "s3://b/other"},
              "EarlyStopping{}": {"wait_count": 1}}}
    meta = summary_metadata(ck)
    assert meta[META_KEY] == {"step": 12, "epoch": 2, "metrics": {"val_loss": 0.25}}
    light = meta["lightning"]
    assert (light["epoch"], light["global_step"], light["pytorch-lightning_version"]) == (2, 12,
                                                                                          "2.6.6")
    assert light["model_checkpoints"][0] == {
        "monitor": "val_loss", "current_score": 0.25, "best_model_score": 0.125,
        "best_model_path": "s3://b/r/x.ckpt", "last_model_path": "s3://b/r/last.ckpt",
        "dirpath": "s3://b/r"}
    assert len(light["model_checkpoints"]) == 2
    # wrong types are left out, never guessed; no step, no run summary
    odd = summary_metadata({"epoch": True, "global_step": -1, "callbacks": [1],
                            "pytorch-lightning_version": 3})
    assert odd == {"lightning": {}}
    nan = summary_metadata({"global_step": 3, "callbacks": {"m": {
        "monitor": "loss", "current_score": torch.tensor(float("nan")), "best_model_path": ""}}})
    assert nan[META_KEY] == {"step": 3, "epoch": None, "metrics": {}}
