"""Quarantine markers: a checkpoint that ``cloudckpt repair`` found damaged beyond repair, or
that failed the manager's read-back right after its save (``verify_after_save``,
:mod:`.postcommit`), is marked with ``quarantine/step-NNNNNNNNNNNN.json`` under the run root,
so that restore, retention and every other run-level query skip it without reading it again
(:meth:`cloudckpt.manager.index.RunIndex.records`).

A marker names the manifest it condemns by the etag, size and mtime the listing showed for it.
A marker whose manifest was since deleted or replaced (a resumed run saved that step again) is
stale and ignored, so a marker can never hide a newer checkpoint. Marker bytes are untrusted:
one that does not parse is ignored (the checkpoint is then treated as if unmarked: every read
of it still verifies its checksums).

Who calls what: ``repair`` (:mod:`.repair`) writes and deletes markers, the save path's
read-back (:mod:`.postcommit`) writes them; the run index and the lineage check read them.
Any thread may call these functions.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from cloudckpt.errors import CorruptCheckpoint
from cloudckpt.format.keys import quarantine_key
from cloudckpt.storage import ObjectInfo, Store

__all__ = ["QuarantineMarker", "condemns", "decode_marker", "encode_marker", "marker_for",
           "read_marker", "write_marker"]

MAX_MARKER_BYTES = 64 * 1024
_MAX_PROBLEMS = 20
_MAX_TEXT = 1000


@dataclass(frozen=True)
class QuarantineMarker:
    """Why the checkpoint of ``step`` is quarantined, and which manifest (by etag, size and
    mtime as listed) that applies to."""

    step: int
    reason: str
    manifest_etag: str | None
    manifest_size: int
    manifest_mtime: float | None
    time: float
    problems: tuple[str, ...] = ()


def marker_for(step: int, manifest: ObjectInfo, reason: str, problems: list[str],
               now: float) -> QuarantineMarker:
    """A marker condemning the manifest listed as ``manifest``. Pure; any caller."""
    return QuarantineMarker(step, reason[:_MAX_TEXT], manifest.etag, manifest.size,
                            manifest.mtime.timestamp() if manifest.mtime else None, now,
                            tuple(p[:_MAX_TEXT] for p in problems[:_MAX_PROBLEMS]))


def encode_marker(m: QuarantineMarker) -> bytes:
    """The JSON bytes of ``m``. Pure; any caller."""
    return json.dumps({"step": m.step, "reason": m.reason,
                       "manifest": {"etag": m.manifest_etag, "size": m.manifest_size,
                                    "mtime": m.manifest_mtime},
                       "time": m.time, "problems": list(m.problems)}, indent=1).encode()


def _opt_float(v: Any) -> float | None:
    if v is None:
        return None
    if type(v) not in (int, float) or not math.isfinite(v):
        raise TypeError(f"{v!r} is not a finite number")
    return float(v)


def decode_marker(raw: bytes, step: int) -> QuarantineMarker:
    """Parse marker bytes found for ``step``. Pure; any caller.

    Raises:
        CorruptCheckpoint: not a marker for ``step`` (malformed JSON, fields of the wrong type).
    """
    try:
        d = json.loads(raw)
        man = d["manifest"]
        etag, size = man["etag"], man["size"]
        if d["step"] != step or type(size) is not int or size < 0 \
                or not (etag is None or isinstance(etag, str)) or not isinstance(d["reason"], str):
            raise TypeError("fields of the wrong type or step")
        problems = d.get("problems") or []
        if not isinstance(problems, list) or not all(isinstance(p, str) for p in problems):
            raise TypeError("problems must be a list of strings")
        return QuarantineMarker(step, d["reason"][:_MAX_TEXT], etag, size,
                                _opt_float(man.get("mtime")), _opt_float(d.get("time")) or 0.0,
                                tuple(p[:_MAX_TEXT] for p in problems[:_MAX_PROBLEMS]))
    except (ValueError, KeyError, TypeError, RecursionError, UnicodeDecodeError) as e:
        raise CorruptCheckpoint(f"malformed quarantine marker for step {step}: {e}") from e


def read_marker(store: Store, step: int) -> QuarantineMarker:
    """The marker of ``step`` under the run root ``store``, read capped.

    Raises:
        NotFound: there is none. CorruptCheckpoint: it does not parse.
        StorageError: the read failed.
    """
    raw = store.get_range(quarantine_key(step), 0, MAX_MARKER_BYTES + 1)
    if len(raw) > MAX_MARKER_BYTES:
        raise CorruptCheckpoint(f"quarantine marker for step {step} is larger than "
                                f"{MAX_MARKER_BYTES} bytes")
    return decode_marker(raw, step)


def condemns(marker: QuarantineMarker, manifest: ObjectInfo | None) -> bool:
    """Whether ``marker`` applies to the manifest listed now as ``manifest`` (``None``: no
    manifest). A replaced or deleted manifest makes the marker stale. Pure; any caller."""
    if manifest is None or manifest.etag != marker.manifest_etag \
            or manifest.size != marker.manifest_size:
        return False
    listed = manifest.mtime.timestamp() if manifest.mtime else None
    return listed is None or marker.manifest_mtime is None \
        or abs(listed - marker.manifest_mtime) < 1e-3


def write_marker(store: Store, marker: QuarantineMarker) -> None:
    """Write (or replace) the marker of ``marker.step`` under the run root ``store``; one
    atomic put. Called by repair and by the read-back after a save.

    Raises:
        StorageError: the write failed (nothing was quarantined).
    """
    store.put(quarantine_key(marker.step), encode_marker(marker))
