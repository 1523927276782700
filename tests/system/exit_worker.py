"""Subprocess bodies for the lifecycle tests (run as ``python -m tests.system.exit_worker``)."""

from __future__ import annotations

import json
import logging
import sys

import torch

import cloudckpt


def async_then_return(uri: str, opts: dict, exit_timeout: float) -> None:
    """Save step 1 blocking, step 2 in the background, and return from main without close()."""
    mgr = cloudckpt.CheckpointManager(
        uri, storage_options=opts,
        async_options=cloudckpt.AsyncOptions(blocking=False, exit_timeout=exit_timeout))
    torch.manual_seed(0)
    model = torch.nn.Linear(2048, 2048)  # 16 MiB: several objects, still uploading at exit
    mgr.save(1, model=model, blocking=True)
    with torch.no_grad():
        model.weight.add_(1.0)
    mgr.save(2, model=model)
    print("returning", flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    mode, uri, opts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    if mode == "async-exit":
        async_then_return(uri, opts, float(sys.argv[4]))
