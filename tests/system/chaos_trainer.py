"""A tiny deterministic trainer for the chaos test: restores, then saves every step, printing
``RESTORED <step>`` and ``COMMITTED <step>`` (flushed) so the test knows what was promised.

The weights after step N are a pure function of N (same float operations in the same order
whether or not the run was interrupted), so any checkpoint can be checked bit for bit."""

from __future__ import annotations

import json
import sys

import torch

import cloudckpt

N = 256 * 1024  # 1 MiB of fp32


def advance(w: torch.Tensor, step: int) -> None:
    w.add_(torch.sin(torch.arange(N, dtype=torch.float32) * (step % 97 + 1)) * 1e-3)


def expected(step: int) -> torch.Tensor:
    w = torch.zeros(N)
    for s in range(1, step + 1):
        advance(w, s)
    return w


def main() -> None:
    uri, opts, total = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    mgr = cloudckpt.CheckpointManager(uri, keep_last=3, storage_options=opts)
    w = torch.zeros(N)
    model = torch.nn.Module()
    model.register_buffer("w", w)
    state = mgr.restore(model=model)
    step = state.step if state else 0
    print(f"RESTORED {step}", flush=True)
    while step < total:
        step += 1
        advance(model.w, step)
        mgr.save(step, model=model)
        print(f"COMMITTED {step}", flush=True)
    mgr.close()


if __name__ == "__main__":
    main()
