"""Option objects of :class:`~cloudckpt.CheckpointManager`: how saves run in the background,
how preemption signals are handled, and where checkpoints leaving the hot set go.

Each is a frozen dataclass validated on construction, so a bad value fails where it is written,
not at the first save. Pure: nothing here touches a store, a thread or a signal handler.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cloudckpt.errors import InvalidArgument

__all__ = ["ArchivePolicy", "AsyncOptions", "PreemptionOptions", "preemption_options", "require"]

_DEFAULT_SIGNALS: tuple[int, ...] = tuple(
    int(s) for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None))
    if s is not None)


def _check_seconds(name: str, value: float, *, positive: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and (value > 0 if positive else value >= 0)
    if not ok:
        raise InvalidArgument(f"{name} must be a finite number of seconds "
                              f"{'> 0' if positive else '>= 0'}, not {value!r}")


@dataclass(frozen=True)
class AsyncOptions:
    """Background saves. ``blocking`` is the default of :meth:`CheckpointManager.save`'s own
    ``blocking`` argument. Non-blocking, the training thread only copies the tensors into
    reused host staging buffers (pinned for CUDA tensors) and returns; encoding, upload, commit
    and retention run on a background thread. At most one save is in flight; another ``save``
    meanwhile waits (``when_busy="wait"``) or is skipped and logged (``"skip"``). At
    interpreter exit an in-flight save is waited for up to ``exit_timeout`` seconds.

    Raises:
        InvalidArgument: ``when_busy`` is not ``"wait"``/``"skip"``, ``exit_timeout`` is not a
            finite number >= 0, or ``blocking`` is not a bool.
    """

    blocking: bool = True
    when_busy: str = "wait"
    exit_timeout: float = 300.0

    def __post_init__(self) -> None:
        if not isinstance(self.blocking, bool):
            raise InvalidArgument(f"blocking must be True or False, not {self.blocking!r}")
        if self.when_busy not in ("wait", "skip"):
            raise InvalidArgument(f"when_busy must be 'wait' or 'skip', not {self.when_busy!r}")
        _check_seconds("exit_timeout", self.exit_timeout, positive=False)


@dataclass(frozen=True)
class PreemptionOptions:
    """Preemption handling: ``signals`` (default SIGTERM, the spot / preemptible VM notice, and
    SIGUSR1, SLURM's requeue) set a flag instead of killing the process; an ERROR is logged if
    no final checkpoint committed within ``deadline`` seconds of the signal. The manager
    installs the handlers, so it must then be created on the main thread.

    Raises:
        InvalidArgument: no signals, an unknown signal number, or ``deadline`` not > 0.
    """

    signals: tuple[int, ...] = _DEFAULT_SIGNALS
    deadline: float = 90.0

    def __post_init__(self) -> None:
        sigs = tuple(self.signals)
        if not sigs:
            raise InvalidArgument("PreemptionOptions needs at least one signal")
        for s in sigs:
            try:
                signal.Signals(s)
            except (ValueError, TypeError):
                raise InvalidArgument(f"{s!r} is not a signal number on this platform") from None
        object.__setattr__(self, "signals", sigs)
        _check_seconds("deadline", self.deadline, positive=True)


@dataclass(frozen=True)
class ArchivePolicy:
    """Where checkpoints leaving the hot set go: ``storage_class`` (in place: S3
    ``STANDARD_IA``/``GLACIER_IR``/``GLACIER``/``DEEP_ARCHIVE``, GCS ``NEARLINE``/
    ``COLDLINE``/``ARCHIVE``, Azure ``Cool``/``Cold``/``Archive``) or ``uri`` (copied there,
    optionally with ``storage_class`` applied to the copy; ``storage_options`` open that URI).

    Raises:
        InvalidArgument: neither ``storage_class`` nor ``uri``.
    """

    storage_class: str | None = None
    uri: str | None = None
    storage_options: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.storage_class and not self.uri:
            raise InvalidArgument("ArchivePolicy needs a storage_class, a uri, or both")


def require(ok: bool, name: str, value: Any, what: str) -> None:
    """Argument check for the manager's constructor. Pure; any caller.

    Raises:
        InvalidArgument: not ``ok``: "``name`` must be ``what``, not ``value``".
    """
    if not ok:
        raise InvalidArgument(f"{name} must be {what}, not {value!r}")


def preemption_options(preemption: PreemptionOptions | bool) -> PreemptionOptions | None:
    """The manager's ``preemption`` argument: ``True`` means the defaults, ``False`` none.
    Pure; any caller.

    Raises:
        InvalidArgument: anything else.
    """
    if preemption is True:
        return PreemptionOptions()
    if preemption is False:
        return None
    require(isinstance(preemption, PreemptionOptions), "preemption", preemption,
            "True, False or a PreemptionOptions")
    return preemption
