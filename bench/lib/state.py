"""The deterministic "model + Adam moments" flat state of the save/load, dist and profile
scenarios, and the checks on it (raw size, exact digests, faulting in mapped pages).

3 equal groups (params, exp_avg, exp_avg_sq) of a 3-layer transformer-like model: 36 large
matrices, 21 LayerNorm-size vectors and 19 scalar ``step`` tensors (76 tensors).
"""

from __future__ import annotations

import math
from typing import Any

from bench.lib import MiB

PAGE = 4096
DTYPES = ("fp32", "bf16")

State = dict[str, Any]  # flat {name: torch.Tensor}


def state_spec(size_mib: int) -> list[tuple[str, tuple[int, ...], str]]:
    """``(name, shape, kind)`` of every tensor; fp32 total is close to ``size_mib`` MiB.

    Per group: 3 layers x (qkv 3h x h, out h x h, fc1 4h x h, fc2 h x 4h) = 36 h^2 elements,
    plus 2 LayerNorm vectors per layer and a final one; Adam's ``step`` is one scalar per
    parameter. bf16 uses the same shapes (half the bytes).
    """
    h = max(8, int(math.sqrt(size_mib * MiB / 3 / 4 / 36)))
    params: list[tuple[str, tuple[int, ...]]] = []
    for layer in range(3):
        p = f"layers.{layer}"
        params += [(f"{p}.attn.qkv.weight", (3 * h, h)), (f"{p}.attn.out.weight", (h, h)),
                   (f"{p}.mlp.fc1.weight", (4 * h, h)), (f"{p}.mlp.fc2.weight", (h, 4 * h)),
                   (f"{p}.ln1.weight", (h,)), (f"{p}.ln2.weight", (h,))]
    params.append(("final_ln.weight", (h,)))
    spec: list[tuple[str, tuple[int, ...], str]] = []
    for name, shape in params:
        spec.append((f"model.{name}", shape, "param"))
        spec.append((f"optim.exp_avg.{name}", shape, "exp_avg"))
        spec.append((f"optim.exp_avg_sq.{name}", shape, "exp_avg_sq"))
        spec.append((f"optim.step.{name}", (), "step"))
    return spec


def torch_dtype(dtype: str) -> Any:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]


def build_state(size_mib: int, dtype: str) -> State:
    """The deterministic state, generated in place (peak memory = the state itself)."""
    import torch

    td = torch_dtype(dtype)
    state: State = {}
    for i, (name, shape, kind) in enumerate(state_spec(size_mib)):
        g = torch.Generator().manual_seed(i)
        if kind == "step":
            state[name] = torch.tensor(1000.0)  # Adam keeps step as a float32 scalar tensor
            continue
        t = torch.empty(shape, dtype=td)
        if kind == "param":
            t.normal_(1.0 if t.dim() == 1 else 0.0, 0.02, generator=g)  # LayerNorm: ~1
        elif kind == "exp_avg":
            t.normal_(0.0, 1e-3, generator=g)
        else:  # exp_avg_sq: (N(0, 1e-4))^2
            t.normal_(0.0, 1e-4, generator=g)
            t.mul_(t)
        state[name] = t
    return state


def empty_state(size_mib: int, dtype: str) -> State:
    """Uninitialised tensors of the state's shapes (DCP loads into a preallocated dict)."""
    import torch

    td = torch_dtype(dtype)
    return {name: torch.empty(shape, dtype=torch.float32 if kind == "step" else td)
            for name, shape, kind in state_spec(size_mib)}


def raw_bytes(tensors: Any) -> int:
    """Bytes of the tensors in ``tensors`` (any iterable of tensors)."""
    return sum(t.numel() * t.element_size() for t in tensors)


def tensor_bytes(t: Any) -> Any:
    """A tensor's bytes as a buffer (for hashing), without copying a contiguous tensor."""
    import torch

    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().data


def digest(state: State) -> dict[str, str]:
    """xxh3-64 of each tensor's bytes (exact equality check between saver and loader)."""
    import xxhash

    return {name: xxhash.xxh3_64_hexdigest(tensor_bytes(t)) for name, t in sorted(state.items())}


def touch(state: State) -> None:
    """Read one element per 4 KiB page of every tensor (faults in lazily mapped data)."""
    for t in state.values():
        flat = t.reshape(-1)
        step = max(1, PAGE // t.element_size())
        if flat.numel():
            flat[::step].sum()
