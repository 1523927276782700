"""The ``torch.nn.Module`` and the fake training step of the async scenarios.

The model is ``size_mib / 64`` ``Linear(4096, 4096)`` layers (fp32, with bias). A step is an
in-place update of every parameter (the state changes between saves, so an async snapshot has
to be a real copy) followed by ``k`` 1024x1024 fp32 matmuls (``work="matmul"``), or by a sleep
(``work="sleep"``: a GPU-bound step, where the host thread mostly waits).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench.lib import MiB
from bench.lib.state import raw_bytes, tensor_bytes

HIDDEN = 4096
#: the model size of the async scenarios, by default and under ``--quick`` (one layer)
SIZE_MIB = 512
QUICK_SIZE_MIB = 64


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The options of the model and the step: ``--size-mib`` (unset: None) and
    ``--train-threads``."""
    p.add_argument("--size-mib", type=int,
                   help=f"fp32 model size, 64 MiB layers (default {SIZE_MIB})")
    p.add_argument("--train-threads", type=int, default=1, help="torch threads of the step")


def empty_model(size_mib: int) -> Any:
    """The model with uninitialised parameters (a restore target)."""
    import torch

    layers = max(1, round(size_mib * MiB / (HIDDEN * HIDDEN * 4)))
    model = torch.nn.Sequential(*[torch.nn.Linear(HIDDEN, HIDDEN, device="meta")
                                  for _ in range(layers)])
    return model.to_empty(device="cpu")


def build_model(size_mib: int) -> Any:
    """The model with deterministic N(0, 0.02) parameters, built in place."""
    import torch

    model = empty_model(size_mib)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=g)
    return model


def model_bytes(model: Any) -> int:
    return raw_bytes(model.parameters())


def model_digest(model: Any) -> str:
    """One xxh3-64 over the names and bytes of the model's state dict."""
    import xxhash

    h = xxhash.xxh3_64()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


class Trainer:
    """The fake step: in-place parameter update + ``k`` fixed matmuls (or a sleep)."""

    def __init__(self, model: Any, threads: int, work: str = "matmul") -> None:
        import torch

        torch.set_num_threads(threads)
        self.model = model
        self.work = work
        self.sleep_s = 0.0
        g = torch.Generator().manual_seed(1)
        self.a = torch.randn(1024, 1024, generator=g)
        self.b = torch.randn(1024, 1024, generator=g)
        self.k = 0

    def update(self) -> None:
        import torch

        with torch.no_grad():
            for p in self.model.parameters():
                p.add_(1e-4)

    def step(self) -> None:
        self.update()
        if self.work == "sleep":
            time.sleep(self.sleep_s)
            return
        c = self.a
        for _ in range(self.k):
            c = self.a @ self.b
        del c

    def matmul_while(self, busy: Any) -> dict[str, float]:
        """1024x1024 matmuls on this thread while ``busy()``; rate and this thread's CPU share."""
        n, t0, c0 = 0, time.perf_counter(), time.thread_time()
        while busy():
            self.a @ self.b
            n += 1
        wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
        return {"matmul_per_s": n / wall, "cpu_share": cpu / wall, "wall_s": wall}

    def calibrate(self, step_s: float) -> dict[str, float]:
        """Choose ``k`` so that one step takes ~``step_s`` s on an idle machine."""
        self.update()  # warm
        t0 = time.perf_counter()
        self.update()
        upd = time.perf_counter() - t0
        self.a @ self.b  # warm
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 0.5:
            self.a @ self.b
            n += 1
        mm = (time.perf_counter() - t0) / n
        self.k = max(0, round((step_s - upd) / mm)) if step_s > 0 else 0
        self.sleep_s = max(0.0, step_s - upd)
        return {"update_s": upd, "matmul_s": mm, "k": self.k, "sleep_s": self.sleep_s}
