"""Bit-exact comparison of state trees, and state builders shared by tests."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_same(a: Any, b: Any, path: str = "state") -> None:
    """Assert ``b`` equals ``a`` bit for bit, types and container kinds included."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{a.shape} != {b.dtype}{b.shape}"
        assert tensor_bytes(a) == tensor_bytes(b), f"{path}: tensor bytes differ"
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: array meta differs"
        assert a.tobytes() == b.tobytes(), f"{path}: array bytes differ"
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)} != {list(b)}"
        assert getattr(a, "_metadata", None) == getattr(b, "_metadata", None), f"{path}: _metadata"
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: length differs"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), f"{path}: nan lost"
    elif isinstance(a, float):
        assert a == b and math.copysign(1, a) == math.copysign(1, b), f"{path}: {a} != {b}"
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), f"{path}: {a!r} != {b!r}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def every_type_state() -> dict[Any, Any]:
    """A state holding every supported kind of value."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 8, generator=g)
    dtypes = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8,
              torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool, torch.complex64,
              torch.complex128, torch.float8_e4m3fn, torch.float8_e5m2, torch.uint16,
              torch.uint32, torch.uint64]
    tensors = {str(dt).removeprefix("torch."): (base * 10).to(dt) for dt in dtypes}
    state: dict[Any, Any] = {
        "tensors": tensors,
        "zero_dim": torch.tensor(3.5),
        "empty": torch.empty(0, 4),
        "non_contiguous": base.t(),
        "strided_slice": base[:, ::2],
        "views": {"whole": base, "row": base[1]},
        "big": torch.randn(700_000, generator=g),  # > 1 chunk with a small chunk size
        "numpy": {"f32": np.arange(12, dtype=np.float32).reshape(3, 4),
                  "i64": np.arange(5), "bool": np.array([True, False]),
                  "be": np.arange(4, dtype=">f4"), "fortran": np.asfortranarray(np.ones((3, 2))),
                  "scalar": np.float32(1.25), "int_scalar": np.int64(-3)},
        "plain": {"s": "héllo", "i": 42, "big": 2**200, "neg": -(2**70), "f": 0.1,
                  "nan": float("nan"), "inf": float("inf"), "ninf": float("-inf"),
                  "negzero": -0.0, "t": True, "none": None, "bytes": b"\x00\xff"},
        "module_state": torch.nn.BatchNorm1d(3).state_dict(),
        "containers": {"list": [1, [2, 3]], "tuple": (1, (2, "x")), "emptyd": {}, "emptyl": [],
                       "size": torch.Size([2, 3])},
        7: "int key", 2.5: "float key", None: "none key", (1, "a"): "tuple key", True: "bool key",
    }
    return state
