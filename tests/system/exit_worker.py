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


def value(name: str, step: int) -> float:
    return (1000.0 if name == "live" else 2000.0) + step


def script(uri: str, opts: dict, name: str, sync: str, actions: str) -> None:
    """Run ``actions`` (comma-separated: restore, save:N, wait:FILE, touch:FILE), printing
    what happened; a node that crashes exits non-zero."""
    import os
    import time

    mgr = cloudckpt.CheckpointManager(uri, storage_options=opts)
    model = torch.nn.Module()
    model.register_buffer("w", torch.zeros(1000))
    for action in actions.split(","):
        verb, _, arg = action.partition(":")
        if verb == "restore":
            st = mgr.restore(model=model)
            print(f"RESTORED {st.step if st else 0}", flush=True)
        elif verb == "save":
            model.w.fill_(value(name, int(arg)))
            info = mgr.save(int(arg), model=model)
            print(f"{'SAVED' if info is not None else 'SKIPPED'} {arg}", flush=True)
        elif verb == "wait":
            deadline = time.monotonic() + 120
            while not os.path.exists(os.path.join(sync, arg)):
                assert time.monotonic() < deadline, f"timed out waiting for {arg}"
                time.sleep(0.02)
        elif verb == "touch":
            open(os.path.join(sync, arg), "w").close()
    mgr.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    mode, uri, opts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    if mode == "async-exit":
        async_then_return(uri, opts, float(sys.argv[4]))
    elif mode == "script":
        script(uri, opts, sys.argv[4], sys.argv[5], sys.argv[6])
