"""Option objects of :class:`~cloudckpt.CheckpointManager`: how saves run in the background,
what happens right after each commit, how preemption signals are handled, and where
checkpoints leaving the hot set go.

Each is a frozen dataclass validated on construction, so a bad value fails where it is written,
not at the first save. Pure: nothing here touches a store, a thread or a signal handler.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cloudckpt.errors import InvalidArgument

__all__ = ["ArchivePolicy", "AsyncOptions", "CommitOptions", "CommitRecord", "IncrementalOptions",
           "PreemptionOptions", "option", "preemption_options", "require"]

T = TypeVar("T")
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
class CommitRecord:
    """One committed checkpoint, as handed to :attr:`CommitOptions.on_commit`: its ``step``,
    ``uri`` and ``save_id``; ``raw_bytes`` (the tensors) and ``stored_bytes`` (after the
    codec); ``seconds`` to write and commit it (on the background thread for async saves);
    the ``metrics`` and ``epoch`` it was saved with; ``verified`` (True: read back and every
    checksum matched; None: ``verify_after_save`` is off) and ``verify_seconds``;
    ``background``: committed by an async save."""

    step: int
    uri: str
    save_id: str
    raw_bytes: int
    stored_bytes: int
    seconds: float
    metrics: Mapping[str, float] = field(default_factory=dict)
    epoch: int | None = None
    verified: bool | None = None
    verify_seconds: float = 0.0
    background: bool = False


@dataclass(frozen=True)
class CommitOptions:
    """What happens right after each save commits, before retention runs.

    ``verify_after_save``: read back every stored byte of the checkpoint just committed and
    check it against its checksums (:func:`cloudckpt.verify`). One that fails is quarantined
    (``restore``, ``latest()``, ``best()`` and retention skip it; nothing older is deleted),
    logged as an ERROR, and the save raises :class:`~cloudckpt.CorruptCheckpoint` (for an
    async save: the next ``save`` or ``wait`` does). Costs one full read of each checkpoint.

    ``on_commit(record)``: called with a :class:`CommitRecord` after each commit (and after
    verification and retention), on the thread that committed: the training thread, or the
    background thread for async saves. An exception it raises is logged, never raised. Not
    called for a checkpoint that failed verification.

    Raises:
        InvalidArgument: ``verify_after_save`` is not a bool, ``on_commit`` not callable.
    """

    verify_after_save: bool = False
    on_commit: Callable[[CommitRecord], None] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.verify_after_save, bool):
            raise InvalidArgument(f"verify_after_save must be True or False, not "
                                  f"{self.verify_after_save!r}")
        if self.on_commit is not None and not callable(self.on_commit):
            raise InvalidArgument(f"on_commit must be callable, not {self.on_commit!r}")


@dataclass(frozen=True)
class IncrementalOptions:
    """Incremental checkpoints (on by default).

    ``dedup``: a chunk whose bytes equal one the newest checkpoint of the run's lineage
    already stores is referenced by the new manifest instead of uploaded again (frozen
    layers, LoRA bases, unchanged optimizer entries cost a manifest line).

    ``grace``: seconds that data no committed checkpoint references any more (after retention
    or deletion) is kept before it is deleted, so a save that chose to reference it just
    before cannot lose it (see "Shared data" in docs/design.md). It must exceed the longest
    time a save takes from its last check to its commit (the commit's time bound, minutes at
    most). ``0`` deletes at once: only for a run with one writer and no concurrent ``gc``.

    ``delta`` (opt-in): a changed float chunk is stored as the XOR of its bits with the
    previous save's (byte-grouped, zstd) while the chain a restore must read stays within
    1.3x the full chunk's size; ``full_every``: a full copy of each chunk at least every that
    many saves, so a restore reads at most ``full_every`` links per chunk. Costs one host
    copy of the saved float tensors, kept between saves.

    Raises:
        InvalidArgument: ``dedup``/``delta`` not bools, ``grace`` negative, ``full_every``
            not an int in 1..64.
    """

    dedup: bool = True
    grace: float = 900.0
    delta: bool = False
    full_every: int = 4

    def __post_init__(self) -> None:
        if not isinstance(self.dedup, bool) or not isinstance(self.delta, bool):
            raise InvalidArgument(f"dedup and delta must be True or False, not "
                                  f"{self.dedup!r}, {self.delta!r}")
        if type(self.full_every) is not int or not 1 <= self.full_every <= 64:
            raise InvalidArgument(f"full_every must be an int in 1..64, not {self.full_every!r}")
        if not isinstance(self.grace, (int, float)) or self.grace < 0:
            raise InvalidArgument(f"grace must be a number of seconds >= 0, not {self.grace!r}")


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


def option(value: T | None, cls: type[T], name: str) -> T:
    """An option object argument of the manager: ``value``, or ``cls()`` when it is None.
    Pure; any caller.

    Raises:
        InvalidArgument: ``value`` is not a ``cls``.
    """
    out = cls() if value is None else value
    article = "an" if cls.__name__[0] in "AEIOU" else "a"
    require(isinstance(out, cls), name, value, f"{article} {cls.__name__}")
    return out


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
