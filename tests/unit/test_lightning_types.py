"""The Lightning integration's encoding (its TypeRegistry), without a Trainer: every extra type
round-trips, checkpoints of the earlier encoding (RESERVED_KEY conversions) still load, and
hostile trees give CorruptCheckpoint. The Trainer-level tests are in
tests/system/test_integrations.py."""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import json
import pathlib
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import cloudckpt
from cloudckpt.errors import CorruptCheckpoint, UnsupportedValue
from cloudckpt.format.tree import decode_tree, encode_tree
from tests.unit.test_tree_fuzz import FUZZ, json_trees, same

pytest.importorskip("lightning.pytorch", reason="lightning is not installed")
from lightning.fabric.utilities.data import AttributeDict

from cloudckpt.integrations.lightning import (
    RESERVED_KEY,
    TYPES,
    CloudckptIO,
    decode_checkpoint,
    encode_checkpoint,
)


def _hparams() -> AttributeDict:
    return AttributeDict(
        lr=0.1, path=pathlib.PurePosixPath("a/b"), win=pathlib.PureWindowsPath("C:/x"),
        ns=argparse.Namespace(k=1, p=pathlib.Path("/x"), s={2}), tags={"a", ("b", 1)},
        frozen=frozenset({1}), every=datetime.timedelta(days=-1, seconds=2, microseconds=3),
        device=torch.device("cuda", 1), dtypes=[torch.bfloat16, torch.float8_e5m2, torch.bool],
        size=torch.Size([2, 3]), nested=[{"d": torch.float16, "p": pathlib.Path("rel")}])


def _roundtrip(ckpt: dict[str, Any]) -> dict[str, Any]:
    tree, leaves = encode_checkpoint(ckpt)
    return decode_checkpoint(json.loads(json.dumps(tree)), lambda i: leaves[i].value)


def _assert_hparams(hp: Any, back: Any) -> None:
    assert type(back) is AttributeDict and list(back) == list(hp)
    for k, v in hp.items():
        assert back[k] == v and type(back[k]) is type(v), k
    assert back.dtypes[0] is torch.bfloat16 and back.nested[0]["d"] is torch.float16
    assert type(back.ns.p) is pathlib.PosixPath and type(back.ns.s) is set


def test_every_lightning_type_roundtrips() -> None:
    hp = _hparams()
    sd = torch.nn.BatchNorm1d(3).state_dict()
    back = _roundtrip({"epoch": 1, "hyper_parameters": hp, "state_dict": sd})
    _assert_hparams(hp, back["hyper_parameters"])
    same(sd, back["state_dict"])
    assert list(back) == ["epoch", "hyper_parameters", "state_dict"]


def test_refusals() -> None:
    with pytest.raises(UnsupportedValue, match="must be a dict"):
        encode_checkpoint(AttributeDict(a=1))
    with pytest.raises(UnsupportedValue, match="reserved"):
        encode_checkpoint({RESERVED_KEY: 1})
    with pytest.raises(UnsupportedValue, match=r"state\['hp'\]\['d'\].*defaultdict"):
        encode_checkpoint({"hp": {"d": collections.defaultdict(int)}})


#: What cloudckpt's earlier Lightning encoding stored for a checkpoint like ``_hparams()``
#: (printed by that version's ``encode_checkpoint``), tensors aside.
OLD = {
    "epoch": 1,
    "hyper_parameters": {
        "lr": 0.1, "path": "a/b", "ns": {"k": 1, "p": "/x", "s": [2]}, "tags": ["a"],
        "frozen": [1], "every": [1, 2, 3], "device": "cpu", "dtype": "bfloat16",
        "size": torch.Size([2, 3]), "items": [{"d": "float16"}]},
    RESERVED_KEY: {"format": "cloudckpt.lightning/1", "conversions": [
        [["hyper_parameters", "path"], "PurePosixPath"],
        [["hyper_parameters", "ns", "p"], "PosixPath"], [["hyper_parameters", "ns", "s"], "set"],
        [["hyper_parameters", "ns"], "Namespace"], [["hyper_parameters", "tags"], "set"],
        [["hyper_parameters", "frozen"], "frozenset"],
        [["hyper_parameters", "every"], "timedelta"],
        [["hyper_parameters", "device"], "torch.device"],
        [["hyper_parameters", "dtype"], "torch.dtype"],
        [["hyper_parameters", "items", 0, "d"], "torch.dtype"],
        [["hyper_parameters"], "AttributeDict"]]},
}


def test_checkpoints_of_the_earlier_encoding_still_load(tmp_path: pathlib.Path) -> None:
    w = torch.randn(3)
    cloudckpt.save({**OLD, "state_dict": {"w": w}}, tmp_path / "old.ckpt")
    back = CloudckptIO().load_checkpoint(tmp_path / "old.ckpt")
    assert RESERVED_KEY not in back
    hp = back["hyper_parameters"]
    assert type(hp) is AttributeDict
    assert hp == AttributeDict(
        lr=0.1, path=pathlib.PurePosixPath("a/b"),
        ns=argparse.Namespace(k=1, p=pathlib.PosixPath("/x"), s={2}), tags={"a"},
        frozen=frozenset({1}), every=datetime.timedelta(days=1, seconds=2, microseconds=3),
        device=torch.device("cpu"), dtype=torch.bfloat16, size=torch.Size([2, 3]),
        items=[{"d": torch.float16}])
    assert type(hp.path) is pathlib.PurePosixPath and type(hp.frozen) is frozenset
    assert hp["items"][0]["d"] is torch.float16
    same(w, back["state_dict"]["w"])


@pytest.mark.parametrize("info", [
    5, {"format": "other"}, {"format": "cloudckpt.lightning/1", "conversions": 3},
    {"format": "cloudckpt.lightning/1", "conversions": [["x", "set"]]},
    {"format": "cloudckpt.lightning/1", "conversions": [[[], "set"]]},
    {"format": "cloudckpt.lightning/1", "conversions": [[["epoch"], "os.system"]]},
    {"format": "cloudckpt.lightning/1", "conversions": [[["epoch"], "set"]]},
    {"format": "cloudckpt.lightning/1", "conversions": [[["nope"], "set"]]},
    {"format": "cloudckpt.lightning/1", "conversions": [[["epoch", 0], "set"]]},
    {"format": "cloudckpt.lightning/1", "conversions": [[[["l"]], "set"]]},
    {"format": "cloudckpt.lightning/1", "conversions": [[["hp", 10**30], "set"]]},
    {"format": "cloudckpt.lightning/1", "conversions": [[["hp", "x"], "torch.dtype"]]},
    {"format": "cloudckpt.lightning/1", "conversions": [[["hp", "x"], "WindowsPath"]]},
    {"format": "cloudckpt.lightning/1", "conversions": [[["hp", "t"], "timedelta"]]},
    {"format": "cloudckpt.lightning/1", "conversions": [[["hp", "t", 0], "AttributeDict"]]},
])
def test_malformed_conversions_of_the_earlier_encoding(info: Any) -> None:
    tree, leaves = encode_tree({"epoch": 1, "hp": {"x": "save", "t": [10**10, 0, 0]},
                                RESERVED_KEY: info})
    with pytest.raises(CorruptCheckpoint):
        decode_checkpoint(json.loads(json.dumps(tree)), lambda i: leaves[i].value)


def test_plain_load_of_a_lightning_checkpoint_names_the_integration(tmp_path: pathlib.Path) -> None:
    CloudckptIO().save_checkpoint({"hyper_parameters": _hparams()}, tmp_path / "a.ckpt")
    with pytest.raises(CorruptCheckpoint, match=r"lightning\.AttributeDict.*through that integration"):
        cloudckpt.load(tmp_path / "a.ckpt")
    _assert_hparams(_hparams(), CloudckptIO().load_checkpoint(tmp_path / "a.ckpt")["hyper_parameters"])


@pytest.mark.parametrize(("name", "value"), [
    ("torch.dtype", "save"), ("torch.dtype", "__class__"), ("torch.dtype", "_dynamo"),
    ("torch.dtype", 3), ("torch.device", "cuda:-3"), ("torch.device", "warp drive"),
    ("pathlib.WindowsPath", "C:/x"), ("pathlib.PosixPath", {"t": "list", "items": ["a"]}),
    ("argparse.Namespace", {"t": "dict", "items": [[1, 2]]}),
    ("argparse.Namespace", {"t": "odict", "items": [], "meta": None}),
    ("lightning.AttributeDict", {"t": "list", "items": []}),
    ("set", {"t": "list", "items": [{"t": "list", "items": []}]}),
    ("frozenset", "abc"),
    ("datetime.timedelta", {"t": "list", "items": [10**12, 0, 0]}),
    ("datetime.timedelta", {"t": "list", "items": [1, 2]}),
    ("datetime.timedelta", {"t": "list", "items": [1.0, 2, 3]}),
])
def test_hostile_values_for_each_codec(name: str, value: Any) -> None:
    tree = {"t": "dict", "items": [["x", {"t": "ext", "name": name, "value": value}]]}
    with pytest.raises(CorruptCheckpoint, match=f"'{name}' cannot rebuild"):
        decode_checkpoint(tree, lambda i: [][i])


def test_dtype_names_are_looked_up_in_a_table_never_on_the_torch_module(
        monkeypatch: pytest.MonkeyPatch) -> None:
    looked_up: list[str] = []

    def spy(name: str) -> Any:  # torch's own __getattr__ imports _dynamo, onnx... by name
        looked_up.append(name)
        raise AttributeError(name)

    monkeypatch.setattr(torch, "__getattr__", spy, raising=False)
    for name in ("_dynamo", "onnx", "no_such_dtype", "float32"):
        tree = {"t": "ext", "name": "torch.dtype", "value": name}
        with contextlib.suppress(CorruptCheckpoint):
            decode_tree(tree, lambda i: [][i], types=TYPES)
    assert looked_up == []
    assert decode_tree({"t": "ext", "name": "torch.dtype", "value": "float32"},
                       lambda i: [][i], types=TYPES) is torch.float32


_names = st.sampled_from([c.name for c in TYPES] + ["pathlib.Path", "AttributeDict"])


@FUZZ
@given(_names, json_trees, st.lists(st.tuples(st.lists(json_trees, max_size=3), _names | st.text()),
                                    max_size=3))
def test_random_ext_values_and_conversions_decode_or_raise_corrupt_checkpoint(
        name: str, value: Any, conversions: list[Any]) -> None:
    tree = {"t": "dict", "items": [
        ["x", {"t": "ext", "name": name, "value": value}], ["y", value],
        [RESERVED_KEY, {"t": "dict", "items": [
            ["format", "cloudckpt.lightning/1"],
            ["conversions", {"t": "list", "items": [
                {"t": "list", "items": [{"t": "list", "items": k}, kind]}
                for k, kind in conversions]}]]}]]}
    with contextlib.suppress(CorruptCheckpoint):
        decode_checkpoint(tree, lambda i: [torch.ones(2)][i])
