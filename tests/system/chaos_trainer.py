"""A tiny deterministic trainer for the chaos test: restores, then saves every step, printing
``RESTORED <step>`` and ``COMMITTED <step>`` (flushed) so the test knows what was promised.
Next to the trained weights it holds a frozen buffer, so that every save shares chunks with
the previous one (incremental checkpoints); retention keeps 3 and every third step collects
garbage with no grace period, so a kill can land in a save, a deletion or a sweep.

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


def frozen() -> torch.Tensor:
    return torch.cos(torch.arange(N, dtype=torch.float32))


def main() -> None:
    uri, opts, total = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    mgr = cloudckpt.CheckpointManager(uri, keep_last=3, storage_options=opts,
                                      incremental=cloudckpt.IncrementalOptions(grace=0))
    w = torch.zeros(N)
    model = torch.nn.Module()
    model.register_buffer("w", w)
    model.register_buffer("frozen", frozen())
    state = mgr.restore(model=model)
    step = state.step if state else 0
    print(f"RESTORED {step}", flush=True)
    while step < total:
        step += 1
        advance(model.w, step)
        mgr.save(step, model=model)
        print(f"COMMITTED {step}", flush=True)
        if step % 3 == 0:
            mgr.gc(dry_run=False, grace=0)
    mgr.close()


if __name__ == "__main__":
    main()
