"""Worker processes for the concurrent save-vs-GC test: ``train URI OPTS SECONDS`` saves a
model with a frozen part every step (incremental, retention keeps 2, grace ``GRACE``) for
SECONDS and prints ``COMMITTED <step>``; ``gc URI OPTS SECONDS`` collects garbage with the same
grace in a loop for SECONDS. Weights after step N are a pure function of N."""

from __future__ import annotations

import json
import sys
import time

import torch

import cloudckpt

GRACE = 2.0  # seconds: far above a loopback commit, short enough for the test
N = 64 * 1024


def weights(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return {"frozen": torch.cos(torch.arange(4 * N, dtype=torch.float32)),
            "trained": torch.randn(N, generator=g)}


def main() -> None:
    mode, uri, opts, seconds = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), float(sys.argv[4])
    mgr = cloudckpt.CheckpointManager(uri, keep_last=2, keep_best=None, storage_options=opts,
                                      incremental=cloudckpt.IncrementalOptions(grace=GRACE))
    end = time.monotonic() + seconds
    step = 0
    while time.monotonic() < end:
        if mode == "train":
            step += 1
            mgr.save(step, extra=weights(step))
            print(f"COMMITTED {step}", flush=True)
        else:
            mgr.gc(dry_run=False, grace=GRACE)


if __name__ == "__main__":
    main()
