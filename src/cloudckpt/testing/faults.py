"""A store wrapper that injects failures, for testing what upper layers do when storage fails.

Put it *under* the retry layer to test retries (``RetryingStore(FaultyStore(raw))``), or
*over* it to test what a caller sees (``FaultyStore(open_store(uri))``). Every Store call and
every upload call (``write_part``, ``finish``, ``abort``) counts as one call, numbered from 0.
"""

from __future__ import annotations

import builtins
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from cloudckpt.errors import AccessDenied, TransientStorageError
from cloudckpt.storage.base import ObjectInfo, PendingUpload, Store, StoreWrapper, Upload

__all__ = ["FaultPlan", "FaultyStore", "SimulatedCrash"]

T = TypeVar("T")


class SimulatedCrash(BaseException):
    """The process "died" at this call. A BaseException, so ``except Exception`` clean-up code
    does not run, just as it would not after SIGKILL. Every later call raises it too."""


@dataclass(frozen=True)
class FaultPlan:
    """What to break.

    Attributes:
        fail_calls: call indices that fail.
        fail_rate: fraction of all calls that fail (seeded by ``seed``: reproducible).
        kind: ``"transient"`` (a retryable :class:`TransientStorageError`) or ``"permanent"``
            (:class:`AccessDenied`).
        after: fail *after* the real call ran (the outcome is unknown to the caller, as when
            a response is lost) instead of before it.
        crash_at: the call index at which the process crashes (:class:`SimulatedCrash`,
            raised before the call runs).
        ops: if given, only these operation names are counted and faulted (e.g. ``{"put"}``).
    """

    fail_calls: frozenset[int] = frozenset()
    fail_rate: float = 0.0
    kind: str = "transient"
    after: bool = False
    crash_at: int | None = None
    ops: frozenset[str] | None = None
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_rng", random.Random(self.seed))


class FaultyStore(StoreWrapper):
    """Wraps a store; see :class:`FaultPlan`. ``calls`` records ``(index, op, key)`` of every
    counted call; ``injected`` counts the failures raised. Thread-safe."""

    def __init__(self, inner: Store, plan: FaultPlan | None = None) -> None:
        super().__init__(inner)
        self.plan = plan or FaultPlan()
        self.calls: list[tuple[int, str, str]] = []
        self.injected = 0
        self.crashed = False
        self._lock = threading.Lock()

    def _run(self, op: str, key: str, fn: Callable[[], T]) -> T:
        plan = self.plan
        with self._lock:
            if self.crashed:
                raise SimulatedCrash(f"process already crashed; {op} {key} never ran")
            counted = plan.ops is None or op in plan.ops
            fail = False
            if counted:
                index = len(self.calls)
                self.calls.append((index, op, key))
                if plan.crash_at is not None and index >= plan.crash_at:
                    self.crashed = True
                    raise SimulatedCrash(f"simulated crash at call {index} ({op} {key})")
                fail = index in plan.fail_calls or (
                    plan.fail_rate > 0 and plan._rng.random() < plan.fail_rate)
                if fail:
                    self.injected += 1
        if fail and not plan.after:
            raise self._error(op, key)
        result = fn()
        if fail:
            raise self._error(op, key)
        return result

    def _error(self, op: str, key: str) -> Exception:
        if self.plan.kind == "permanent":
            return AccessDenied(f"injected permanent failure: {op} {self.uri}/{key}")
        return TransientStorageError(f"injected transient failure: {op} {self.uri}/{key}")

    def put(self, key: str, data: bytes | memoryview, *, create_only: bool = False,
            storage_class: str | None = None) -> None:
        self._run("put", key, lambda: self.inner.put(key, data, create_only=create_only,
                                                     storage_class=storage_class))

    def get(self, key: str) -> bytes:
        return self._run("get", key, lambda: self.inner.get(key))

    def get_range(self, key: str, start: int, end: int) -> bytes:
        return self._run("get_range", key, lambda: self.inner.get_range(key, start, end))

    def stat(self, key: str) -> ObjectInfo:
        return self._run("stat", key, lambda: self.inner.stat(key))

    def exists(self, key: str) -> bool:
        return self._run("exists", key, lambda: self.inner.exists(key))

    def list(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        return self._run("list", prefix, lambda: self.inner.list(prefix))

    def delete(self, key: str) -> None:
        self._run("delete", key, lambda: self.inner.delete(key))

    def delete_many(self, keys: Sequence[str]) -> None:
        self._run("delete_many", ",".join(keys)[:200], lambda: self.inner.delete_many(keys))

    def copy(self, src_key: str, dst_key: str) -> None:
        self._run("copy", dst_key, lambda: self.inner.copy(src_key, dst_key))

    def set_storage_class(self, key: str, storage_class: str) -> None:
        self._run("set_storage_class", key,
                  lambda: self.inner.set_storage_class(key, storage_class))

    def start_upload(self, key: str, *, create_only: bool = False,
                     storage_class: str | None = None) -> Upload:
        up = self._run("start_upload", key, lambda: self.inner.start_upload(
            key, create_only=create_only, storage_class=storage_class))
        return _FaultyUpload(self, up)

    def list_pending_uploads(self, prefix: str = "") -> builtins.list[PendingUpload]:
        return self._run("list_pending_uploads", prefix,
                         lambda: self.inner.list_pending_uploads(prefix))

    def abort_pending_upload(self, pending: PendingUpload) -> None:
        self._run("abort_pending_upload", pending.key,
                  lambda: self.inner.abort_pending_upload(pending))


class _FaultyUpload:
    def __init__(self, store: FaultyStore, inner: Upload) -> None:
        self._store, self._inner = store, inner
        self.key = inner.key

    def write_part(self, data: bytes | memoryview) -> None:
        self._store._run("write_part", self.key, lambda: self._inner.write_part(data))

    def finish(self, tail: bytes | memoryview = b"") -> None:
        self._store._run("finish", self.key, lambda: self._inner.finish(tail))

    def abort(self) -> None:
        self._store._run("abort", self.key, self._inner.abort)
