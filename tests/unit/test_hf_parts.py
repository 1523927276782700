"""Pieces of the Hugging Face integration that need no training: the stock checkpoint file
names, URI detection for ``save_model``, the RNG and weight conversions of ``download`` and
the stored model config. Skipped without transformers."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="transformers is not installed")

from cloudckpt.errors import CorruptCheckpoint, InvalidArgument
from cloudckpt.integrations.hf import _names
from cloudckpt.integrations.hf.callback import model_config
from cloudckpt.integrations.hf.download import _hf_rng, _weights
from cloudckpt.manager.state import capture_rng


def test_file_names_are_those_of_the_installed_transformers() -> None:
    import transformers.trainer as trainer
    import transformers.trainer_utils as trainer_utils
    import transformers.utils as utils

    assert _names.STATE_FILE == trainer.TRAINER_STATE_NAME
    assert _names.OPTIMIZER_FILE == trainer.OPTIMIZER_NAME
    assert _names.SCHEDULER_FILE == trainer.SCHEDULER_NAME
    assert _names.SCALER_FILE == trainer.SCALER_NAME
    assert _names.WEIGHTS_FILE == utils.SAFE_WEIGHTS_NAME
    assert _names.CONFIG_FILE == utils.CONFIG_NAME
    assert _names.PREFIX_CHECKPOINT_DIR == trainer_utils.PREFIX_CHECKPOINT_DIR
    assert _names.CHECKPOINT_DIR_RE.match("checkpoint-12")
    assert not _names.CHECKPOINT_DIR_RE.match(".checkpoint-12.cloudckpt-abcd")


@pytest.mark.parametrize("path,remote", [
    ("s3://bucket/model", True), ("gs://b/m", True), ("file:///tmp/m", True),
    ("s3:/bucket/model", True), ("memory://x", True), ("out/model", False),
    ("/abs/model", False), ("C:\\models\\m", False), ("model", False), ("./s3/x", False)])
def test_is_remote(path: str, remote: bool) -> None:
    assert _names.is_remote(path) is remote


def test_rng_in_the_trainers_layout_restores_the_same_streams() -> None:
    random.seed(5)
    np.random.seed(6)
    torch.manual_seed(7)
    saved = capture_rng()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    hf = _hf_rng(saved, "x")
    assert set(hf) == {"python", "numpy", "cpu"}
    random.setstate(hf["python"])  # as Trainer._load_rng_state does
    np.random.set_state(hf["numpy"])
    torch.random.set_rng_state(hf["cpu"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


@pytest.mark.parametrize("bad", [{}, {"python": 1, "numpy": 2, "torch": 3},
                                 {"python": (3, (1, 2), None), "numpy": ("MT19937",),
                                  "torch": torch.zeros(2)}])
def test_malformed_rng_is_corrupt(bad: Any) -> None:
    with pytest.raises(CorruptCheckpoint, match="malformed RNG"):
        _hf_rng(bad, "x")


def test_weights_copy_tied_tensors_and_refuse_non_tensors() -> None:
    shared = torch.ones(3)
    out = _weights({"a": shared, "b": shared, "c": torch.zeros(2)}, "x")
    assert out["a"].data_ptr() != out["b"].data_ptr() and torch.equal(out["a"], out["b"])
    with pytest.raises(InvalidArgument, match="not a named tensor"):
        _weights({"a": 1}, "x")
    with pytest.raises(InvalidArgument, match="not a state_dict"):
        _weights([torch.ones(1)], "x")


def test_model_config_is_the_config_json_content() -> None:
    from transformers import BertConfig

    class M(torch.nn.Module):
        config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=8)

    cfg = model_config(M())
    assert cfg is not None and cfg["hidden_size"] == 32 and cfg["model_type"] == "bert"
    assert BertConfig.from_dict(cfg).to_dict() == M.config.to_dict()
    assert model_config(torch.nn.Linear(2, 2)) is None


def test_preemption_in_manager_options_is_handled_by_the_callback(tmp_path: Any) -> None:
    from cloudckpt import PreemptionOptions
    from cloudckpt.integrations.hf import CloudckptCallback

    cb = CloudckptCallback(str(tmp_path), manager_options={"preemption": True})
    assert cb.preemption == PreemptionOptions() and "preemption" not in cb.manager_options
    cb = CloudckptCallback(str(tmp_path), preemption=PreemptionOptions(deadline=5.0))
    assert cb.preemption is not None and cb.preemption.deadline == 5.0
    assert CloudckptCallback(str(tmp_path)).preemption is None
    with pytest.raises(InvalidArgument):
        CloudckptCallback(str(tmp_path), preemption="yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        CloudckptCallback(str(tmp_path), async_save="yes")  # type: ignore[arg-type]
