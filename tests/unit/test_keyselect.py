"""``load(uri, keys=[...])``: exact keys, dotted prefixes on flat state_dicts, and the ambiguous
cases of the rule in :mod:`cloudckpt.engine.keyselect` (memory store, no emulator)."""

from __future__ import annotations

import collections
import uuid
from typing import Any

import pytest
import torch

import cloudckpt
from cloudckpt.engine.keyselect import select_keys
from cloudckpt.errors import CorruptCheckpoint, InvalidArgument


def _saved(state: Any) -> str:
    uri = f"memory://keysel-{uuid.uuid4().hex[:8]}/ck"
    cloudckpt.save(state, uri)
    return uri


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(11)])
        self.encoder2 = torch.nn.Linear(2, 2)
        self.encoder_norm = torch.nn.LayerNorm(2)
        self.decoder = torch.nn.Linear(2, 1)


def test_a_module_name_selects_its_entries_of_a_flat_state_dict() -> None:
    net = Net()
    sd = net.state_dict()
    uri = _saved(sd)
    enc = cloudckpt.load(uri, keys=["encoder"])
    assert type(enc) is collections.OrderedDict
    assert list(enc) == [k for k in sd if k.startswith("encoder.")]
    assert len(enc) == 22 and "encoder2.weight" not in enc and "encoder_norm.bias" not in enc
    for k, v in enc.items():
        assert torch.equal(v, sd[k])
    # the selection loads as it is into the model it came from
    fresh = Net()
    result = fresh.load_state_dict(enc, strict=False)
    assert sorted(result.missing_keys) == sorted(k for k in sd if not k.startswith("encoder."))
    assert torch.equal(fresh.encoder[10].weight, net.encoder[10].weight)
    # a deeper dotted prefix stops at the dot: layer 1 is not layer 10
    assert list(cloudckpt.load(uri, keys=["encoder.1"])) == ["encoder.1.weight", "encoder.1.bias"]
    assert list(cloudckpt.load(uri, keys=["encoder.1.weight"])) == ["encoder.1.weight"]
    assert list(cloudckpt.load(uri, keys=["encoder2"])) == ["encoder2.weight", "encoder2.bias"]


def test_exact_names_win_and_a_trailing_dot_forces_the_prefix() -> None:
    a, b, c = torch.ones(1), torch.zeros(2), torch.full((3,), 2.0)
    uri = _saved({"encoder": a, "encoder.bias": b, "encoders.x": c})
    assert list(cloudckpt.load(uri, keys=["encoder"])) == ["encoder"]
    assert list(cloudckpt.load(uri, keys=["encoder."])) == ["encoder.bias"]
    assert list(cloudckpt.load(uri, keys=["encoder", "encoder."])) == ["encoder", "encoder.bias"]
    assert list(cloudckpt.load(uri, keys=["encoders"])) == ["encoders.x"]
    with pytest.raises(InvalidArgument, match="encod"):  # a prefix ends at a dot, never mid-name
        cloudckpt.load(uri, keys=["encod"])


def test_nested_paths_overlaps_and_order() -> None:
    sd = Net().state_dict()
    uri = _saved({"model": sd, "step": 3, "optimizer": {"state": {0: torch.ones(1)}}})
    got = cloudckpt.load(uri, keys=["model/decoder", "step"])
    assert list(got) == ["model", "step"] and got["step"] == 3
    assert list(got["model"]) == ["decoder.weight", "decoder.bias"]
    # an entry selected whole by one key and in part by another is whole
    assert list(cloudckpt.load(uri, keys=["model/encoder.3", "model"])["model"]) == list(sd)
    both = cloudckpt.load(uri, keys=["model/encoder", "model/encoder.0"])["model"]
    assert len(both) == 22
    # saved order, not the order of the keys
    assert list(cloudckpt.load(uri, keys=["step", "model/decoder"])) == ["model", "step"]
    assert list(cloudckpt.load(uri, keys=["//model///decoder/"])["model"]) == ["decoder.weight",
                                                                                "decoder.bias"]
    assert set(cloudckpt.load(uri, keys=[])) == {"model", "step", "optimizer"}


@pytest.mark.parametrize(("keys", "match"), [
    (["model/nope"], r"no such key.*under model: \['nope'\]"),
    (["model/encoder/weight"], "selected whole"),   # a prefix match must be the last segment
    (["model/encoder./weight"], "selected whole"),
    (["step/x"], "not a dict"),
    (["optimizer/state/0"], "no such key"),          # int keys are not selected by name
    ([""], "empty key"),
    (["//"], "empty key"),
    ([3], "must be strings"),
    ("model", "not a string"),
])
def test_refusals_name_the_key(keys: Any, match: str) -> None:
    uri = _saved({"model": Net().state_dict(), "step": 3,
                  "optimizer": {"state": {0: torch.ones(1)}}})
    with pytest.raises(InvalidArgument, match=match):
        cloudckpt.load(uri, keys=keys)


def test_malformed_trees_are_corrupt_not_crashes() -> None:
    with pytest.raises(CorruptCheckpoint):
        select_keys({"t": "dict", "items": [["a"]]}, ["a"])
    with pytest.raises(CorruptCheckpoint):
        select_keys({"t": "dict", "items": "nope"}, ["a"])
    with pytest.raises(KeyError, match="not a dict"):
        select_keys({"t": "list", "items": []}, ["a"])
