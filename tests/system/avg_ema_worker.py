"""Subprocess bodies for test_average_ema.py (``python -m tests.system.avg_ema_worker CMD ...``).

``train``: the one training loop with an EMA, used both uninterrupted (in the test process) and
resumed from a checkpoint (here, in a fresh process). ``rss``: peak RSS growth of an average.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import torch

import cloudckpt

EMA_EVERY = 3  # update() counts calls: the call counter must survive the restore


def net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.BatchNorm1d(32),
                               torch.nn.ReLU(), torch.nn.Linear(32, 4))


def train(uri: str, opts: dict[str, Any], *, stop: int, save_at: int | None,
          resume: bool) -> cloudckpt.EMA:
    """Train steps 1..``stop`` (from the restored step when ``resume``), saving model,
    optimizer and EMA at ``save_at``; returns the EMA."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ema = cloudckpt.EMA(model, decay=0.9, every=EMA_EVERY)
    mgr = cloudckpt.CheckpointManager(uri, keep_last=None, storage_options=opts)
    start = 1
    if resume:
        st = mgr.restore(model=model, optimizer=opt, ema=ema)
        assert st is not None
        start = st.step + 1
    for step in range(start, stop + 1):
        x = torch.randn(8, 16)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update()
        if step == save_at:
            mgr.save(step, model=model, optimizer=opt, ema=ema)
    mgr.close()
    return ema


def _kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def rss_of_average(run: str, out: str, batch_bytes: int, memory_budget: int) -> dict[str, Any]:
    """Peak RSS growth (KiB) of one :func:`cloudckpt.average` over steps 1-3 of ``run``.

    A warm-up average of a tiny run first pays the one-time costs (imports, thread pools,
    codecs) without leaving big freed blocks behind; then the kernel's peak-RSS mark is reset
    (``/proc/self/clear_refs``), and growth = peak during the call - RSS before it."""
    tiny = out + "-tiny-run"
    mgr = cloudckpt.CheckpointManager(tiny, keep_last=None)
    for step in (1, 2):
        mgr.save(step, model=torch.nn.Linear(4, 4))
    cloudckpt.average(tiny, out + "-tiny-avg", steps=[1, 2], compression="none")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _kib("VmRSS")
    info = cloudckpt.average(run, out, steps=[1, 2, 3], batch_bytes=batch_bytes,
                             memory_budget=memory_budget, compression="none")
    peak = _kib("VmHWM")
    return {"growth_kib": peak - before, "rss_before_kib": before, "raw_bytes": info.raw_bytes}


def main(argv: list[str]) -> None:
    cmd = argv[0]
    if cmd == "resume":  # argv[1]: JSON list of [run uri, storage options, stop step, out uri]
        for uri, opts, stop, out in json.loads(argv[1]):
            ema = train(uri, opts, stop=stop, save_at=None, resume=True)
            cloudckpt.save(ema.state_dict(), out, storage_options=opts)
    elif cmd == "rss":
        print(json.dumps(rss_of_average(argv[1], argv[2], int(argv[3]), int(argv[4]))))
    else:
        raise SystemExit(f"unknown command {cmd!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
