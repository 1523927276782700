"""Where a benchmark writes: a scratch directory on local disk, or a bucket on a moto S3 server
that :func:`open_place` starts for the run (``cloudckpt.testing.emulators``: a free
127.0.0.1 port, stopped by PID afterwards). Workers get the endpoint in their job and build
their storage options and filesystem with the same helpers."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.lib import BUCKET, REPO
from bench.lib.memory import rss_of

#: what moto accepts; the benches only ever talk to a local moto server
CREDS = {"key": "testing", "secret": "testing"}


def storage_options(endpoint: str | None) -> dict[str, Any] | None:
    """cloudckpt/fsspec storage options for the moto server at ``endpoint`` (None: local)."""
    return {"endpoint_url": endpoint, **CREDS} if endpoint else None


def s3fs(endpoint: str | None) -> Any:
    """An ``s3fs.S3FileSystem`` on the moto server at ``endpoint``."""
    import s3fs as _s3fs

    return _s3fs.S3FileSystem(endpoint_url=endpoint, **CREDS)


@dataclass
class Place:
    """A local scratch directory, or (with ``emulator``) the bench bucket on a moto server."""

    workdir: Path
    emulator: Any = None  # cloudckpt.testing.emulators.Emulator

    @property
    def endpoint(self) -> str | None:
        return self.emulator.endpoint if self.emulator else None

    def location(self, name: str) -> str:
        """Where a run called ``name`` writes: a directory or an ``s3://`` prefix."""
        return f"s3://{BUCKET}/{name}" if self.emulator else str(self.workdir / name)

    def _fs(self) -> Any:
        fs = s3fs(self.endpoint)
        fs.invalidate_cache()  # instances are shared: see what the workers wrote
        return fs

    def stored_bytes(self, loc: str) -> int:
        """Bytes of every file/object under ``loc``."""
        if self.emulator:
            return int(self._fs().du(loc))
        return sum(p.stat().st_size for p in Path(loc).rglob("*") if p.is_file())

    def remove(self, loc: str) -> None:
        """Delete everything under ``loc`` (nothing there is fine)."""
        if self.emulator:
            fs = self._fs()
            if fs.exists(loc):
                fs.rm(loc, recursive=True)
        else:
            shutil.rmtree(loc, ignore_errors=True)

    def server_rss(self) -> int | None:
        """Current RSS of the moto server (None for local disk)."""
        return rss_of(self.emulator.proc.pid) if self.emulator else None


@contextmanager
def open_place(kind: str, workdir: Path) -> Iterator[Place]:
    """``kind`` ``"local"``: ``workdir`` itself; ``"s3"``: a moto server (log in
    ``workdir/logs``) with the bench bucket, stopped when the block ends."""
    if kind == "local":
        yield Place(workdir)
        return
    if kind != "s3":
        raise ValueError(f"unknown store kind {kind!r}")
    from cloudckpt.testing import emulators

    emu = emulators.start("s3", workdir / "logs", REPO)
    try:
        s3fs(emu.endpoint).mkdir(BUCKET)
        yield Place(workdir, emu)
    finally:
        emu.stop()
