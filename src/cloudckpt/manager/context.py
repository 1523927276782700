"""The run context: what the manager's paths (save, restore, retention, archival, GC, the
distributed path) share about one run, so that they take this instead of the whole manager.

It holds the run root's store and :class:`RunIndex`, how to open archived copies, the metric
rule, the codec, the clock and the retention/archive policies. Frozen: built once by
:class:`~cloudckpt.CheckpointManager` (or by an operator tool with :meth:`RunContext.open`) and
shared by threads; the only state behind it is the index's cache, derived from the store.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cloudckpt.errors import InvalidArgument
from cloudckpt.format.keys import step_dir
from cloudckpt.manager.index import CheckpointRecord, Listing, RunIndex
from cloudckpt.manager.options import ArchivePolicy, IncrementalOptions
from cloudckpt.manager.resolve import resolve_step, summarize
from cloudckpt.manager.retention import CheckpointSummary, RetentionPolicy
from cloudckpt.storage import Store, open_store, substore

__all__ = ["RunContext"]


@dataclass(frozen=True, eq=False)
class RunContext:
    """One run under ``store`` (see the module docstring). ``storage_options`` are those the
    root was opened with; ``retention`` ``None`` means no retention.

    Raises (constructor):
        InvalidArgument: ``mode`` is not "min"/"max".
    """

    store: Store
    index: RunIndex
    storage_options: Mapping[str, Any] | None = None
    metric: str | None = None
    mode: str = "min"
    compression: str = "auto"
    clock: Callable[[], float] = time.time
    retention: RetentionPolicy | None = None
    archive: ArchivePolicy | None = None
    incremental: IncrementalOptions = field(default_factory=IncrementalOptions)

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise InvalidArgument(f"mode must be 'min' or 'max', not {self.mode!r}")

    @classmethod
    def open(cls, uri: str | os.PathLike[str] | Store, *,
             storage_options: Mapping[str, Any] | None = None, **fields: Any) -> RunContext:
        """Open the run root ``uri``; ``fields`` as for the constructor. Any caller.

        Raises:
            InvalidURI, InvalidArgument.
        """
        store = open_store(uri, storage_options=storage_options)
        return cls(store, RunIndex(store), storage_options, **fields)

    @property
    def uri(self) -> str:
        return self.store.uri

    @property
    def archive_storage_options(self) -> Mapping[str, Any] | None:
        """Options for opening archived copies: the archive policy's, else the run's."""
        ap = self.archive
        return ap.storage_options if ap is not None and ap.storage_options is not None \
            else self.storage_options

    def records(self, listing: Listing | None = None) -> list[CheckpointRecord]:
        """Every committed checkpoint, hot and archived, oldest first (one listing).

        Raises:
            StorageError: the listing failed.
        """
        return self.index.records(listing)

    def summaries(self) -> list[CheckpointSummary]:
        """:meth:`records` as retention / decision summaries. Raises as :meth:`records`."""
        return summarize(self.records())

    def best(self) -> int | None:
        """The best committed step by ``metric``/``mode`` (``None`` without either).
        Raises as :meth:`records`."""
        return resolve_step(self.records(), "best", self.metric, self.mode, uri=self.uri)

    def step_store(self, step: int) -> Store:
        """The hot checkpoint directory of ``step`` (whether or not it exists). No I/O."""
        return substore(self.store, step_dir(step))

    def record_store(self, rec: CheckpointRecord) -> Store:
        """Where ``rec``'s checkpoint lives: its hot directory, or its archive URI.

        Raises:
            InvalidURI: an archived record's URI cannot be opened.
        """
        if rec.location == "hot":
            return self.step_store(rec.step)
        return open_store(rec.uri, storage_options=self.archive_storage_options)
