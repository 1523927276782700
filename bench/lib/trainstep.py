"""The small real training setup of ``bench.first_step`` and its worker functions.

Model: ``LAYERS`` ``torch.nn.TransformerEncoderLayer`` blocks (pre-norm, ``d/64`` heads,
feed-forward ``4d``, no dropout) in an ``nn.Sequential``, with ``d`` (a multiple of 64)
chosen so that params + AdamW's two moments in fp32 come close to ``--size-mib``. Optimizer:
``torch.optim.AdamW(lr=1e-3)`` (defaults otherwise: on CPU, the single-tensor loop). One step
= ``zero_grad``, forward of a fixed ``(BATCH, SEQ, d)`` batch, MSE against a fixed target,
backward, ``optimizer.step()``.

Workers (run by :mod:`bench.lib.worker` in fresh interpreters):

- :func:`save_all`: builds the model with a seeded init, takes ``WARM_STEPS`` steps (so the
  optimizer has real state), digests the state, saves it once per method (cloudckpt
  ``CheckpointManager(uri).save(step, model=, optimizer=)`` with defaults; DCP
  ``dcp.save({"model", "optim"} of get_state_dict)``; the raw tensor bytes as one object or
  file), then takes one more step: the reference loss and post-step digest.
- :func:`first_step`: a "fresh node": imports, builds the model on the meta device and
  ``to_empty`` (uninitialised: the restore fills it), restores with one method, checks the
  restored state's digest against the saver's (untimed), takes one step, and checks the
  post-step digest against the saver's (untimed). ``step-only`` fills the state with
  arbitrary values (untimed) instead of restoring: the step alone, to subtract.
"""

from __future__ import annotations

import importlib
import math
import time
from typing import Any

from bench.lib import MiB, peers, rawio
from bench.lib.memory import rss_now, rss_peak
from bench.lib.state import State, raw_bytes, tensor_bytes

LAYERS = 4
HEAD_DIM = 64
BATCH, SEQ = 2, 32
WARM_STEPS = 2
#: the restore methods (and ``step-only``, no restore) of ``bench.first_step``
METHODS = ("cloudckpt", "dcp", "raw-get", "step-only")
#: imported in the "imports" phase by every method: constructing the first optimizer imports
#: ``torch._dynamo`` (2-4 s here), so it is counted with the imports, not in "build"
BASE_IMPORTS = ("torch", "torch._dynamo")
#: imported in the "imports" phase, per method and store kind (what a user's script imports;
#: cloudckpt's lazily imported reader is included, as DCP's modules are)
_DCP_MODS = ("torch.distributed.checkpoint", "torch.distributed.checkpoint.state_dict")
IMPORTS = {
    "cloudckpt": ("cloudckpt", "cloudckpt.engine.reader"),
    "dcp": _DCP_MODS,
    "raw-get": (),
    "step-only": (),
}
STORE_IMPORTS = {"s3": {"cloudckpt": ("s3fs",), "raw-get": ("boto3",),
                        "dcp": ("torch.distributed.checkpoint._fsspec_filesystem", "s3fs")}}


def width(size_mib: int) -> int:
    """``d``: params are ~``LAYERS * 12 d^2``; params + 2 moments = 3x that, 4 bytes each."""
    d = math.sqrt(size_mib * MiB / (3 * 4 * 12 * LAYERS))
    return max(1, round(d / HEAD_DIM)) * HEAD_DIM


def build_model(size_mib: int, init: bool) -> Any:
    """The model: seeded init (``init``), or uninitialised memory (a restore target)."""
    import torch

    d = width(size_mib)

    def make() -> Any:
        return torch.nn.Sequential(*[torch.nn.TransformerEncoderLayer(
            d, d // HEAD_DIM, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
            for _ in range(LAYERS)])

    if init:
        torch.manual_seed(0)
        return make()
    with torch.device("meta"):
        model = make()
    return model.to_empty(device="cpu")


def build(size_mib: int, init: bool) -> tuple[Any, Any, tuple[Any, Any]]:
    """Model, AdamW and the fixed batch ``(x, target)``."""
    import torch

    model = build_model(size_mib, init)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    d = width(size_mib)
    return model, opt, (torch.randn(BATCH, SEQ, d, generator=g),
                        torch.randn(BATCH, SEQ, d, generator=g))


def step(model: Any, opt: Any, batch: tuple[Any, Any]) -> float:
    """One training step on ``batch``; the loss."""
    x, y = batch
    opt.zero_grad(set_to_none=True)
    loss = ((model(x) - y) ** 2).mean()
    loss.backward()
    opt.step()
    return float(loss.item())


def flat_state(model: Any, opt: Any) -> State:
    """The tensors a restore must produce, by stable name: ``model.<p>``,
    ``optim.<exp_avg|exp_avg_sq|step>.<p>`` (the tensors themselves, not copies)."""
    out: State = {}
    for name, p in model.named_parameters():
        out[f"model.{name}"] = p.detach()
        for key, t in opt.state.get(p, {}).items():
            out[f"optim.{key}.{name}"] = t
    return out


def empty_optimizer_state(model: Any, opt: Any) -> None:
    """Give every parameter AdamW state tensors of the right shapes (uninitialised), as a
    preallocated target for the raw read."""
    import torch

    for p in model.parameters():
        opt.state[p] = {"step": torch.empty((), dtype=torch.float32),
                        "exp_avg": torch.empty_like(p, memory_format=torch.preserve_format),
                        "exp_avg_sq": torch.empty_like(p, memory_format=torch.preserve_format)}


def state_digest(model: Any, opt: Any) -> str:
    """One xxh3-64 over the names and bytes of :func:`flat_state` (exact equality)."""
    import xxhash

    h = xxhash.xxh3_64()
    for name, t in sorted(flat_state(model, opt).items()):
        h.update(name.encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


def _threads(job: dict[str, Any]) -> None:
    """``torch.set_num_threads(job["threads"])`` when it is set (else torch's default)."""
    if job.get("threads"):
        import torch

        torch.set_num_threads(job["threads"])


def _ctx(job: dict[str, Any]) -> peers.Ctx:
    return peers.Ctx(job["endpoint"], job["size_mib"], "fp32")


def _dcp_writer(loc: str, ctx: peers.Ctx) -> Any:
    import torch.distributed.checkpoint as dcp

    if ctx.endpoint is None:
        return dcp.FileSystemWriter(loc, sync_files=True, thread_count=2)
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

    # sync_files=False: with s3fs, True makes DCP call os.sync() for the whole machine
    return FsspecWriter(loc, sync_files=False, thread_count=2, **(ctx.storage_options or {}))


def _dcp_reader(loc: str, ctx: peers.Ctx) -> Any:
    import torch.distributed.checkpoint as dcp

    if ctx.endpoint is None:
        return dcp.FileSystemReader(loc)
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

    return FsspecReader(loc, **(ctx.storage_options or {}))


def save_all(job: dict[str, Any]) -> dict[str, Any]:
    """Worker: train ``WARM_STEPS`` steps, save with every method to ``job["locs"]``, then
    take the reference step. Returns digests, loss, save times, sizes."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from cloudckpt import CheckpointManager

    ctx, locs = _ctx(job), job["locs"]
    _threads(job)
    model, opt, batch = build(job["size_mib"], init=True)
    for _ in range(WARM_STEPS):
        step(model, opt, batch)
    out: dict[str, Any] = {"digest": state_digest(model, opt), "width": width(job["size_mib"]),
                           "params": sum(p.numel() for p in model.parameters()),
                           "raw_bytes": raw_bytes(flat_state(model, opt).values()),
                           "save_s": {}}
    t0 = time.perf_counter()
    with CheckpointManager(locs["cloudckpt"], storage_options=ctx.storage_options) as mgr:
        mgr.save(WARM_STEPS, model=model, optimizer=opt)
    out["save_s"]["cloudckpt"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, storage_writer=_dcp_writer(locs["dcp"], ctx),
             no_dist=True)
    out["save_s"]["dcp"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    save_raw = rawio.save_local if ctx.endpoint is None else rawio.save_s3
    save_raw(flat_state(model, opt), locs["raw-get"], ctx)
    out["save_s"]["raw-get"] = time.perf_counter() - t0
    out["loss"] = step(model, opt, batch)
    out["post_digest"] = state_digest(model, opt)
    return out


def _restore(method: str, model: Any, opt: Any, loc: str, ctx: peers.Ctx) -> None:
    if method == "cloudckpt":
        from cloudckpt import CheckpointManager

        with CheckpointManager(loc, storage_options=ctx.storage_options) as mgr:
            got = mgr.restore(model=model, optimizer=opt)
        if got is None or got.step != WARM_STEPS:
            raise RuntimeError(f"cloudckpt restored {got}")
    elif method == "dcp":
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        msd, osd = get_state_dict(model, opt)  # initialises AdamW's state (a zero-lr step)
        sd: dict[str, Any] = {"model": msd, "optim": osd}
        dcp.load(sd, storage_reader=_dcp_reader(loc, ctx), no_dist=True)
        set_state_dict(model, opt, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
    elif method == "raw-get":
        empty_optimizer_state(model, opt)
        flat = flat_state(model, opt)
        if ctx.endpoint is None:
            rawio.read_into_file(loc, flat)
        else:
            rawio.get_into(loc, ctx, flat)
    else:
        raise ValueError(f"unknown method {method!r}")


def _fill(model: Any, opt: Any) -> None:
    """``step-only``: arbitrary finite values in the params and a touched AdamW state."""
    import torch

    empty_optimizer_state(model, opt)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=g)
            st = opt.state[p]
            st["exp_avg"].fill_(1e-4)
            st["exp_avg_sq"].fill_(1e-8)
            st["step"].fill_(float(WARM_STEPS))


def first_step(job: dict[str, Any]) -> dict[str, Any]:
    """Worker: one fresh-node time to first step with ``job["method"]``; phase times,
    RSS and the checks. Raises RuntimeError when the restored state is not the saved one."""
    entry = time.time()
    method, kind = job["method"], "s3" if job["endpoint"] else "local"
    t0 = time.perf_counter()
    for mod in BASE_IMPORTS + IMPORTS[method] + STORE_IMPORTS.get(kind, {}).get(method, ()):
        importlib.import_module(mod)
    import torch

    _threads(job)
    t_imp = time.perf_counter()
    base = rss_now()
    model, opt, batch = build(job["size_mib"], init=False)
    t_build, c_build = time.perf_counter(), time.process_time()
    if method == "step-only":
        _fill(model, opt)  # untimed: there is no restore
        t_rest, c_rest = t_build, c_build
    else:
        _restore(method, model, opt, job["loc"], _ctx(job))
        t_rest, c_rest = time.perf_counter(), time.process_time()
    restore_peak = rss_peak()
    raw = raw_bytes(flat_state(model, opt).values())
    out: dict[str, Any] = {"startup_s": entry - job["spawn_wall"], "imports_s": t_imp - t0,
                           "build_s": t_build - t_imp, "restore_s": t_rest - t_build,
                           "restore_cpu_s": c_rest - c_build, "raw_bytes": raw,
                           "threads": torch.get_num_threads()}
    if method != "step-only":
        got = state_digest(model, opt)
        if got != job["digest"]:
            raise RuntimeError(f"restored state differs from the saved one ({got} != "
                               f"{job['digest']})")
        out["state_ok"] = True
    t1 = time.perf_counter()
    out["loss"] = step(model, opt, batch)
    out["step_s"] = time.perf_counter() - t1
    out["restore_step_s"] = out["restore_s"] + out["step_s"]
    out["ttfs_s"] = out["imports_s"] + out["build_s"] + out["restore_step_s"]
    out["restore_rss_above"] = restore_peak - base - raw
    out["rss_peak"] = rss_peak()
    if method != "step-only":
        out["post_step_same"] = state_digest(model, opt) == job["post_digest"]
        out["loss_same"] = out["loss"] == job["loss"]
    return out
