"""The demo job: train a small model, checkpoint it, get SIGKILLed, resume, compare.

``cloudckpt demo`` (see :func:`main`) runs three fresh processes of :func:`train`:
an uninterrupted reference run, a run that checkpoints to ``--uri`` and is SIGKILLed mid-run,
and a run that resumes from ``--uri`` alone. The resumed run must end bit-identical to the
reference. The same job backs the exact-resume tests.

The training loop exercises everything a resume must restore: dropout (global torch RNG), a
shuffled DataLoader driven by its own generator (restored to the epoch's start, then the
consumed batches skipped), AdamW, an LR scheduler, a GradScaler-style scaler, epoch/step
counters and metrics.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["main", "params_digest", "train"]

BATCH = 16
SAMPLES = 256


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Dropout(0.1), nn.Linear(64, 64),
                         nn.GELU(), nn.Dropout(0.1), nn.Linear(64, 4))


def params_digest(model: nn.Module) -> str:
    """SHA-256 over every parameter's bytes, in order: equal iff bit-identical."""
    h = hashlib.sha256()
    for p in model.state_dict().values():
        h.update(p.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def train(uri: str | None, total_steps: int, *, save_every: int = 10, seed: int = 0,
          storage_options: Mapping[str, Any] | None = None, keep_last: int = 3,
          emit: Any = None, async_save: bool = False, preemption: bool = False) -> str:
    """Train to ``total_steps``, resuming from ``uri`` when it has a checkpoint (or without
    checkpoints when ``uri`` is None). Returns :func:`params_digest` of the final model.
    ``emit(step, loss)`` is called after each step. ``async_save``: periodic saves run in the
    background. ``preemption``: SIGTERM/SIGUSR1 make the loop write a final checkpoint at the
    next step boundary and exit with status 0."""
    from cloudckpt import AsyncOptions, CheckpointManager, EveryNSteps

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    data_gen = torch.Generator().manual_seed(1234)
    x = torch.randn(SAMPLES, 32, generator=data_gen)
    y = (x[:, :4] * 3 + 0.1 * torch.randn(SAMPLES, 4, generator=data_gen)).argmax(1)
    loader_gen = torch.Generator().manual_seed(seed + 1)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True, generator=loader_gen)
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=25, gamma=0.7)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=7)
    step, epoch, skip = 0, 0, 0
    epoch_start_state = loader_gen.get_state()
    mgr = CheckpointManager(uri, keep_last=keep_last, keep_best=1, metric="loss", mode="min",
                            save_policy=EveryNSteps(save_every), storage_options=storage_options,
                            async_options=AsyncOptions(blocking=not async_save),
                            preemption=preemption) if uri else None
    if mgr is not None:
        st = mgr.restore(model=model, optimizer=opt, scheduler=sched, scaler=scaler)
        if st is not None:
            step, epoch, skip = st.step, int(st.epoch or 0), int(st.extra["batch"])
            epoch_start_state = st.extra["epoch_gen_state"]
    while step < total_steps:
        loader_gen.set_state(epoch_start_state)  # the shuffle of this epoch, as first drawn
        for i, (xb, yb) in enumerate(loader):
            if i < skip:
                continue
            model.train()
            loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
            scaler.step(opt)
            scaler.update()
            sched.step()
            step += 1
            if emit is not None:
                emit(step, float(loss))
            if mgr is not None:
                objs: dict[str, Any] = {
                    "model": model, "optimizer": opt, "scheduler": sched, "scaler": scaler,
                    "epoch": epoch, "metrics": {"loss": float(loss)},
                    "extra": {"batch": i + 1, "epoch_gen_state": epoch_start_state}}
                mgr.save_on_preemption(step, **objs)  # exits the process when preempted
                if mgr.should_save(step, final=step == total_steps):
                    mgr.save(step, **objs)
            if step >= total_steps:
                break
        else:
            epoch, skip = epoch + 1, 0
            epoch_start_state = loader_gen.get_state()
            continue
        break
    if mgr is not None:
        mgr.close()  # flush a background save
    return params_digest(model)


def _worker(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="cloudckpt-demo-worker")
    p.add_argument("--uri")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--save-every", type=int, default=10)
    p.add_argument("--storage-options", default="{}")
    p.add_argument("--async-save", action="store_true")
    p.add_argument("--preemption", action="store_true")
    a = p.parse_args(argv)

    def emit(step: int, loss: float) -> None:
        print(f"STEP {step} {loss:.6f}", flush=True)

    digest = train(a.uri, a.steps, save_every=a.save_every,
                   storage_options=json.loads(a.storage_options), emit=emit,
                   async_save=a.async_save, preemption=a.preemption)
    print(f"DONE {digest}", flush=True)
    return 0


def _spawn(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "cloudckpt.demo", "worker", *args],
                            stdout=subprocess.PIPE, text=True, bufsize=1)


def _run_until(proc: subprocess.Popen[str], bar: Any, kill_at: int | None) -> tuple[str | None, int]:
    """Follow a worker; SIGKILL it once it reports step ``kill_at``. (digest, last step)."""
    last = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        kind, _, rest = line.strip().partition(" ")
        if kind == "STEP":
            step = int(rest.split()[0])
            if bar is not None:
                bar.update(step - bar.n)
            last = step
            if kill_at is not None and step >= kill_at:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return None, last
        elif kind == "DONE":
            proc.wait()
            return rest, last
    proc.wait()
    if proc.returncode:
        raise SystemExit(f"demo worker failed with exit status {proc.returncode}")
    return None, last


def main(argv: list[str] | None = None) -> int:
    """``cloudckpt demo``: see the module docstring. Exit status 0 iff the resumed run is
    bit-identical to the uninterrupted one."""
    from tqdm import tqdm

    import cloudckpt

    p = argparse.ArgumentParser(
        prog="cloudckpt demo", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  cloudckpt demo\n  cloudckpt demo --uri s3://runs/demo --steps 200 "
               "--storage-options '{\"endpoint_url\": \"http://127.0.0.1:9000\"}'")
    p.add_argument("--uri", help="checkpoint root (default: a new local directory)")
    p.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    p.add_argument("--save-every", type=int, default=20,
                   help="checkpoint every N steps (default 20)")
    p.add_argument("--kill-at", type=int, help="step at which to SIGKILL (default: random, mid-run)")
    p.add_argument("--storage-options", default="{}", help="JSON storage options")
    a = p.parse_args(argv)
    uri = a.uri or os.path.join(tempfile.mkdtemp(prefix="cloudckpt-demo-"), "run")
    kill_at = a.kill_at or random.randint(int(a.steps * 0.4), int(a.steps * 0.7))
    common = ["--steps", str(a.steps), "--save-every", str(a.save_every),
              "--storage-options", a.storage_options]
    print(f"cloudckpt demo: {a.steps} steps, checkpoint every {a.save_every} to {uri}")
    t0 = time.time()
    with tqdm(total=a.steps, desc="reference run (no interruption)", unit="step") as bar:
        ref, _ = _run_until(_spawn(common), bar, None)
    with tqdm(total=a.steps, desc=f"training, SIGKILL at step {kill_at}", unit="step") as bar:
        _, killed = _run_until(_spawn(["--uri", uri, *common]), bar, kill_at)
    mgr = cloudckpt.CheckpointManager(uri, keep_last=3, keep_best=1, metric="loss",
                                      storage_options=json.loads(a.storage_options))
    resume_from = mgr.latest()
    with tqdm(total=a.steps, initial=resume_from or 0, desc=f"resumed from step {resume_from}",
              unit="step") as bar:
        resumed, _ = _run_until(_spawn(["--uri", uri, *common]), bar, None)
    recs = mgr.checkpoints()
    raw = sum(r.raw_bytes for r in recs)
    stored = sum(r.stored_bytes for r in recs)
    same = ref is not None and ref == resumed
    print("\nsummary")
    print(f"  killed at step {killed}; resumed from committed step {resume_from} in a new process")
    print(f"  final parameters {'IDENTICAL' if same else 'DIFFERENT'} to the uninterrupted run "
          f"(sha256 {str(resumed)[:16]}... vs {str(ref)[:16]}...)")
    print(f"  checkpoints kept: steps {[r.step for r in recs]} (keep_last=3 + best by loss: "
          f"step {mgr.best()})")
    print(f"  stored {stored / 1024:.1f} KiB for {raw / 1024:.1f} KiB raw "
          f"({stored / raw if raw else 1:.3f} of raw)")
    print(f"  total {time.time() - t0:.1f} s; checkpoints at {uri}")
    return 0 if same else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        sys.exit(_worker(sys.argv[2:]))
    sys.exit(main(sys.argv[1:]))
