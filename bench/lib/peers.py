"""Peer adapters: how each compared method saves and loads a flat state dict, and the DCP
storage writers of the multi-rank scenario.

Each save takes ``(state, location, ctx)`` and each load ``(location, ctx)``, where location
is a directory or an ``s3://`` prefix; opening the filesystem/client is part of the call (so
it is timed for every method alike). Local saves are durable: every file flushed and fsynced,
and its directory. A method whose library is not installed is reported as such, never dropped.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.lib import rawio, stores
from bench.lib.state import State, empty_state


@dataclass(frozen=True)
class Ctx:
    """What a worker knows about its run."""

    endpoint: str | None
    size_mib: int
    dtype: str

    @property
    def storage_options(self) -> dict[str, Any] | None:
        return stores.storage_options(self.endpoint)

    def s3fs(self) -> Any:
        return stores.s3fs(self.endpoint)


@dataclass(frozen=True)
class Method:
    name: str
    save: Callable[[State, str, Ctx], None]
    load: Callable[[str, Ctx], State]
    modules: tuple[str, ...]  # imported before the RSS baseline is read

    def missing(self) -> str | None:
        """The first package this method needs that is not installed (None: all are)."""
        for mod in self.modules:
            if importlib.util.find_spec(mod.partition(".")[0]) is None:
                return mod.partition(".")[0]
        return None


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- cloudckpt ------------------------------------------------------------------------------


def _cloudckpt_save(compression: str) -> Callable[[State, str, Ctx], None]:
    def save(state: State, loc: str, ctx: Ctx) -> None:
        import cloudckpt

        cloudckpt.save(state, loc, compression=compression, storage_options=ctx.storage_options)

    return save


def _cloudckpt_load(loc: str, ctx: Ctx) -> State:
    import cloudckpt

    out: State = cloudckpt.load(loc, storage_options=ctx.storage_options)
    return out


# -- local peers ----------------------------------------------------------------------------


def _torch_save_local(state: State, loc: str, ctx: Ctx) -> None:
    import torch

    os.makedirs(loc)
    with open(os.path.join(loc, "ckpt.pt"), "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_path(loc)


def _torch_load_local(loc: str, ctx: Ctx) -> State:
    import torch

    out: State = torch.load(os.path.join(loc, "ckpt.pt"), map_location="cpu", weights_only=True)
    return out


def _safetensors_save_local(state: State, loc: str, ctx: Ctx) -> None:
    from safetensors.torch import save_file

    os.makedirs(loc)
    path = os.path.join(loc, "model.safetensors")
    save_file(state, path)
    _fsync_path(path)
    _fsync_path(loc)


def _safetensors_load_local(loc: str, ctx: Ctx) -> State:
    from safetensors.torch import load_file

    out: State = load_file(os.path.join(loc, "model.safetensors"))
    return out


def _dcp_save_local(state: State, loc: str, ctx: Ctx) -> None:
    import torch.distributed.checkpoint as dcp

    dcp.save(state, storage_writer=dcp_writer("dcp-fs", loc), no_dist=True)
    _fsync_path(loc)


def _dcp_load_local(loc: str, ctx: Ctx) -> State:
    import torch.distributed.checkpoint as dcp

    state = empty_state(ctx.size_mib, ctx.dtype)
    dcp.load(state, storage_reader=dcp.FileSystemReader(loc), no_dist=True)
    return state


# -- S3 peers -------------------------------------------------------------------------------


def _torch_save_s3fs(state: State, loc: str, ctx: Ctx) -> None:
    import torch

    with ctx.s3fs().open(f"{loc}/ckpt.pt", "wb") as f:
        torch.save(state, f)


def _torch_load_s3fs(loc: str, ctx: Ctx) -> State:
    import torch

    with ctx.s3fs().open(f"{loc}/ckpt.pt", "rb") as f:
        out: State = torch.load(f, map_location="cpu", weights_only=True)
    return out


def _safetensors_save_s3fs(state: State, loc: str, ctx: Ctx) -> None:
    from safetensors.torch import save

    ctx.s3fs().pipe(f"{loc}/model.safetensors", save(state))


def _safetensors_load_s3fs(loc: str, ctx: Ctx) -> State:
    from safetensors.torch import load

    out: State = load(ctx.s3fs().cat(f"{loc}/model.safetensors"))
    return out


def _dcp_save_fsspec(state: State, loc: str, ctx: Ctx) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

    # sync_files=False: with s3fs, True makes DCP call os.sync() for the whole machine
    writer = FsspecWriter(loc, sync_files=False, thread_count=2, **(ctx.storage_options or {}))
    dcp.save(state, storage_writer=writer, no_dist=True)


def _dcp_load_fsspec(loc: str, ctx: Ctx) -> State:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

    state = empty_state(ctx.size_mib, ctx.dtype)
    dcp.load(state, storage_reader=FsspecReader(loc, **(ctx.storage_options or {})),
             no_dist=True)
    return state


def _s3_checkpoint(ctx: Ctx) -> Any:
    from s3torchconnector import S3Checkpoint, S3ClientConfig

    return S3Checkpoint(region="us-east-1", endpoint=ctx.endpoint,
                        s3client_config=S3ClientConfig(force_path_style=True))


def _s3tc_save(state: State, loc: str, ctx: Ctx) -> None:
    import torch

    with _s3_checkpoint(ctx).writer(f"{loc}/ckpt.pt") as w:
        torch.save(state, w)


def _s3tc_load(loc: str, ctx: Ctx) -> State:
    import torch

    with _s3_checkpoint(ctx).reader(f"{loc}/ckpt.pt") as r:
        out: State = torch.load(r, map_location="cpu", weights_only=True)
    return out


_CC = ("torch", "cloudckpt", "cloudckpt.engine.writer", "cloudckpt.engine.reader")
_DCP = ("torch", "torch.distributed.checkpoint")
LOCAL_METHODS = {m.name: m for m in (
    Method("cloudckpt", _cloudckpt_save("auto"), _cloudckpt_load, _CC),
    Method("cloudckpt-none", _cloudckpt_save("none"), _cloudckpt_load, _CC),
    # the default on local disk before issue 14 ("auto" is "none" there now)
    Method("cloudckpt-bg", _cloudckpt_save("bg-zstd"), _cloudckpt_load, _CC),
    Method("torch.save", _torch_save_local, _torch_load_local, ("torch",)),
    Method("safetensors", _safetensors_save_local, _safetensors_load_local,
           ("torch", "safetensors.torch")),
    Method("dcp", _dcp_save_local, _dcp_load_local, _DCP),
    Method("raw", rawio.save_local, rawio.load_local, ("torch",)),
)}
S3_METHODS = {m.name: m for m in (
    Method("cloudckpt", _cloudckpt_save("auto"), _cloudckpt_load, (*_CC, "s3fs")),
    Method("cloudckpt-none", _cloudckpt_save("none"), _cloudckpt_load, (*_CC, "s3fs")),
    Method("torch.save+s3fs", _torch_save_s3fs, _torch_load_s3fs, ("torch", "s3fs")),
    Method("safetensors+s3fs", _safetensors_save_s3fs, _safetensors_load_s3fs,
           ("torch", "safetensors.torch", "s3fs")),
    Method("dcp-fsspec", _dcp_save_fsspec, _dcp_load_fsspec,
           (*_DCP, "torch.distributed.checkpoint._fsspec_filesystem", "s3fs")),
    Method("s3torchconnector", _s3tc_save, _s3tc_load, ("torch", "s3torchconnector")),
    Method("raw-boto3", rawio.save_s3, rawio.load_s3, ("torch", "boto3")),
)}
#: per store kind (``stores.open_place``), the methods compared there
METHODS = {"local": LOCAL_METHODS, "s3": S3_METHODS}

# -- DCP storage writers (multi-rank scenario) ----------------------------------------------

#: cloudckpt's DCP writer (default, none, bg-zstd) and DCP's own durable FileSystemWriter
DCP_WRITERS = ("cloudckpt", "cloudckpt-none", "cloudckpt-bg", "dcp-fs")


def dcp_writer(name: str, loc: str) -> Any:
    """A ``torch.distributed.checkpoint`` StorageWriter for directory ``loc``."""
    if name == "dcp-fs":  # durable like cloudckpt's local store, which fsyncs files and dirs
        import torch.distributed.checkpoint as dcp

        return dcp.FileSystemWriter(loc, sync_files=True, thread_count=2)
    import cloudckpt.dcp

    compression = {"cloudckpt-none": "none", "cloudckpt-bg": "bg-zstd"}.get(name, "auto")
    return cloudckpt.dcp.Writer(loc, compression=compression)
