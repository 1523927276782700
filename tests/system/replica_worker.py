"""Trainer process for the killed-copier test: ``PRIMARY OPTS REPLICAS STEPS`` saves STEPS
steps to PRIMARY (retention keeps 2) with REPLICAS (a JSON list of ``[uri, options]``), prints
``SAVED <step>`` after each commit, then sleeps until it is killed. Weights after step N are a
pure function of N (:func:`weights`)."""

from __future__ import annotations

import json
import sys
import time

import torch

import cloudckpt
from cloudckpt.storage import RetryPolicy

N = 128 * 1024  # floats: 512 KiB frozen + 512 KiB trained per step


def weights(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return {"frozen": torch.cos(torch.arange(N, dtype=torch.float32)),
            "trained": torch.randn(N, generator=g)}


def main() -> None:
    primary, opts = sys.argv[1], json.loads(sys.argv[2])
    replicas = [cloudckpt.Replica(u, o, retry=RetryPolicy(deadline=60))
                for u, o in json.loads(sys.argv[3])]
    mgr = cloudckpt.CheckpointManager(primary, storage_options=opts, keep_last=2, keep_best=None,
                                      incremental=cloudckpt.IncrementalOptions(grace=0),
                                      replicas=replicas)
    for step in range(1, int(sys.argv[4]) + 1):
        mgr.save(step, extra=weights(step))
        print(f"SAVED {step}", flush=True)
    time.sleep(300)  # replication goes on in the background until the test kills us


if __name__ == "__main__":
    main()
