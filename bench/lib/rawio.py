"""The raw I/O limits the save/load figures are held against: the same tensor bytes written
and read with nothing but plain I/O calls (no format, no checksums, no encoding).

- ``raw`` (local): save = every tensor's bytes ``write``-n from tensor memory into one file,
  then ``fsync`` of the file and of its directory; load = allocate empty tensors of the
  state's shapes and ``readinto`` each one's memory straight from the file.
- ``raw-boto3`` (S3): save = ``boto3`` ``upload_fileobj`` of the concatenated tensor bytes
  (a reader over tensor memory, no joined copy; boto3's default ``TransferConfig``: multipart
  above 8 MiB, 8 MiB parts, 10 threads); load = one plain ``GET`` of the whole object, its
  body read straight into preallocated tensors.

Each is a :class:`bench.lib.peers.Method` in ``peers.METHODS``; the tensor order is the
state's (sorted by name), which is all the loader needs.
"""

from __future__ import annotations

import io
import os
from typing import Any

from bench.lib import stores
from bench.lib.state import State, empty_state

RAW_FILE = "raw.bin"


def _views(state: State) -> list[memoryview]:
    import torch

    return [t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().data
            for _, t in sorted(state.items())]


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_local(state: State, loc: str, ctx: Any) -> None:
    os.makedirs(loc)
    path = os.path.join(loc, RAW_FILE)
    with open(path, "wb", buffering=0) as f:
        for mv in _views(state):
            f.write(mv)
        os.fsync(f.fileno())
    _fsync(loc)


def _read_into(read: Any, state: State) -> State:
    for mv in _views(state):
        got = 0
        while got < len(mv):
            n = read(mv[got:])
            if not n:
                raise OSError(f"short raw read: {got} of {len(mv)} bytes")
            got += n
    return state


def load_local(loc: str, ctx: Any) -> State:
    return read_into_file(loc, empty_state(ctx.size_mib, ctx.dtype))


def read_into_file(loc: str, state: State) -> State:
    """``readinto`` the raw file under ``loc`` straight into ``state``'s tensors (sorted by
    name; preallocated by the caller). Raises OSError on a short file."""
    with open(os.path.join(loc, RAW_FILE), "rb", buffering=0) as f:
        return _read_into(f.readinto, state)


class _Concat(io.RawIOBase):
    """A read-only stream over several buffers, read without joining them."""

    def __init__(self, views: list[memoryview]) -> None:
        self._views, self._i, self._pos = views, 0, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        out = memoryview(b).cast("B")
        n = 0
        while n < len(out) and self._i < len(self._views):
            v = self._views[self._i]
            take = min(len(out) - n, len(v) - self._pos)
            out[n:n + take] = v[self._pos:self._pos + take]
            n += take
            self._pos += take
            if self._pos == len(v):
                self._i, self._pos = self._i + 1, 0
        return n


def _client(ctx: Any) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=ctx.endpoint, region_name="us-east-1",
                        aws_access_key_id=stores.CREDS["key"],
                        aws_secret_access_key=stores.CREDS["secret"])


def _bucket_key(loc: str) -> tuple[str, str]:
    bucket, _, prefix = loc.removeprefix("s3://").partition("/")
    return bucket, f"{prefix}/{RAW_FILE}"


def save_s3(state: State, loc: str, ctx: Any) -> None:
    bucket, key = _bucket_key(loc)
    _client(ctx).upload_fileobj(io.BufferedReader(_Concat(_views(state)), 8 << 20), bucket, key)


def load_s3(loc: str, ctx: Any) -> State:
    return get_into(loc, ctx, empty_state(ctx.size_mib, ctx.dtype))


def get_into(loc: str, ctx: Any, state: State) -> State:
    """One plain ``GET`` of the raw object under ``loc``, its body read straight into
    ``state``'s tensors (sorted by name; preallocated by the caller). Raises OSError on a
    short body, botocore's errors on a failed request."""
    bucket, key = _bucket_key(loc)
    body = _client(ctx).get_object(Bucket=bucket, Key=key)["Body"]
    try:
        return _read_into(body.readinto, state)
    finally:
        body.close()
