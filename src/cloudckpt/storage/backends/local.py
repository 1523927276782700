"""The local filesystem backend.

Local writes go to a temporary file beside the target, are fsynced, then published with
``os.link`` (create-only: fails if the target exists, atomically) or ``os.replace``; the
directory is fsynced too. A reader never sees a partial file, and a crash leaves only a
temporary file that :meth:`LocalBackend.list_pending` reports for clean-up.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import fsspec

from cloudckpt.errors import AlreadyExists, CorruptCheckpoint
from cloudckpt.storage.backends.base import BackendBase, generic_object_info
from cloudckpt.storage.base import ObjectInfo, PendingUpload, Upload

__all__ = ["LocalBackend", "fsync_path"]

_TMP_RE = re.compile(r"^\.(?P<name>.+)\.cloudckpt-tmp-(?P<id>[0-9a-f]{32})$")


def _tmp_path(path: str) -> str:
    head, name = os.path.split(path)
    return os.path.join(head, f".{name}.cloudckpt-tmp-{uuid.uuid4().hex}")


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or a directory by path (durability of local writes and renames)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: str, path: str, create_only: bool) -> None:
    """Atomically move the fsynced ``tmp`` to ``path``; removes ``tmp`` in every case."""
    try:
        if create_only:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise AlreadyExists(f"create-only write: {path} already exists") from None
        else:
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_path(os.path.dirname(path))


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> int:
    """Write all of ``data`` at ``offset``: ``os.pwrite`` may write less than asked (a disk
    filling up writes what fits and returns the count; the next write raises ENOSPC), and a
    short write taken for a whole one would leave a hole. Returns the bytes written.

    Raises:
        OSError: the write failed (ENOSPC, EIO, ...).
    """
    view = memoryview(data).cast("B")
    total = len(view)
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(errno.ENOSPC, "no progress writing: the disk is full")
        view, offset = view[n:], offset + n
    return total


class _LocalUpload:
    """A streamed write into a temporary file, published on :meth:`finish`."""

    def __init__(self, path: str, key: str, create_only: bool) -> None:
        self.key = key
        self._path = path
        self._create_only = create_only
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._tmp = _tmp_path(path)
        self._fd: int | None = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._offset = 0

    def write_part(self, data: bytes | memoryview) -> None:
        assert self._fd is not None, "upload already finished or aborted"
        # pwrite at the part's own offset: a retried part overwrites itself, never appends twice
        self._offset += _pwrite_all(self._fd, data, self._offset)

    def finish(self, tail: bytes | memoryview = b"") -> None:
        assert self._fd is not None, "upload already finished or aborted"
        if tail:
            self._offset += _pwrite_all(self._fd, tail, self._offset)
        os.ftruncate(self._fd, self._offset)
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        _publish(self._tmp, self._path, self._create_only)

    def abort(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if os.path.exists(self._tmp):
            os.unlink(self._tmp)


class LocalBackend(BackendBase):
    """``file://`` and plain paths."""

    protocol = "local filesystem"

    def make_fs(self, options: Mapping[str, Any], bucket: str) -> Any:
        return fsspec.filesystem("file", **{"auto_mkdir": True, **options})

    def put(self, fs: Any, path: str, data: bytes | memoryview, *, create_only: bool,
            storage_class: str | None) -> None:
        self.no_class(storage_class)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = _tmp_path(path)
        try:
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        _publish(tmp, path, create_only)

    def start_upload(self, fs: Any, path: str, key: str, *, create_only: bool,
                     storage_class: str | None) -> Upload:
        self.no_class(storage_class)
        return _LocalUpload(path, key, create_only)

    def read_into(self, path: str, start: int, out: memoryview) -> int:
        """Read from ``start`` into ``out`` until it is full or the file ends; bytes read.
        Straight into the caller's memory: no new buffer per read (fresh memory is what
        costs most in a load, see docs/benchmarks.md)."""
        # the key's path was checked (no symlink, no special file); these flags keep a swap
        # after that check from following a link or blocking forever on a FIFO
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        got = 0
        with open(fd, "rb", buffering=0) as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise CorruptCheckpoint(f"{path} is not a regular file; cloudckpt never reads "
                                        "special files inside a store")
            f.seek(start)
            while got < len(out):
                n = f.readinto(out[got:])
                if not n:
                    break
                got += n
        return got

    def guard(self, root: str, key: str) -> None:
        path = root
        for part in key.split("/"):
            path = os.path.join(path, part)
            try:
                st = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                return  # nothing (yet) to follow: a write creates real directories and files
            if stat.S_ISLNK(st.st_mode) or not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "a special file"
                raise CorruptCheckpoint(f"{path} is {kind}; cloudckpt never follows links or "
                                        "opens special files inside a store")

    def info_to_object(self, fs: Any, path: str, key: str, info: Mapping[str, Any],
                       *, full: bool) -> ObjectInfo:
        etag = f"{info.get('ino', 0)}-{info.get('size', 0)}-{info.get('mtime', 0)}"
        return generic_object_info(key, {**info, "etag": etag}, etag_field="etag",
                                   mtime_fields=("mtime",), storage_class=None)

    def is_internal(self, path: str) -> bool:
        return _TMP_RE.match(os.path.basename(path)) is not None

    def after_delete(self, fs: Any, paths: list[str], root: str) -> None:
        root = os.path.abspath(root)
        for d in sorted({os.path.dirname(p) for p in paths}, key=len, reverse=True):
            while d.startswith(root + os.sep):
                try:
                    os.rmdir(d)  # only succeeds when empty
                except OSError:
                    break
                d = os.path.dirname(d)

    def list_pending(self, fs: Any, root: str) -> list[tuple[str, PendingUpload]]:
        out = []
        if not os.path.isdir(root):
            return []
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                m = _TMP_RE.match(name)
                if m is None:
                    continue
                full = os.path.join(dirpath, name)
                target = os.path.relpath(os.path.join(dirpath, m.group("name")), root)
                try:
                    mtime = datetime.fromtimestamp(os.stat(full).st_mtime, tz=timezone.utc)
                except FileNotFoundError:
                    continue
                out.append((full, PendingUpload(target.replace(os.sep, "/"), name, mtime)))
        return sorted(out, key=lambda p: p[0])

    def abort_pending(self, fs: Any, path: str, pending: PendingUpload) -> None:
        if os.path.exists(path):
            os.unlink(path)
