"""How a run root is laid out, and what is in it right now (read from the store every time).

Under a run root::

    step-000000000100/manifest.json, data/...   one checkpoint (see cloudckpt.engine.commit)
    step-000000000100/tier.json                  its storage class, after an in-place move
    archived/step-000000000100.json              pointer to a copy moved to an archive URI
    pins/step-000000000100                       the user pinned this step
    quarantine/step-000000000100.json            damaged beyond repair (see manager.quarantine):
                                                 skipped without reading its manifest

Only a validated manifest makes a checkpoint exist. Summaries come from each manifest's
metadata (written by the manager at save time); parsed manifests are cached per manager by
(key, etag), so a listing costs one LIST plus one GET per *new* checkpoint; entries for
checkpoints no longer listed are dropped, so the cache stays as large as the run.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from cloudckpt.engine.trust import resolve_verifier
from cloudckpt.engine.verify import signature_status
from cloudckpt.errors import CloudckptError, CorruptCheckpoint, NotFound
from cloudckpt.format.keys import (
    DATA_PREFIX,
    GENERATIONS_PREFIX,
    MANIFEST_KEY,
    QUARANTINE_PREFIX,
    RELEASED_PREFIX,
    STEP_RE,
    TIER_FILE,
    step_dir,
    tier_key,
)
from cloudckpt.format.manifest import MAX_MANIFEST_BYTES, Manifest, decode_manifest
from cloudckpt.manager.quarantine import QuarantineMarker, condemns, read_marker
from cloudckpt.storage import ObjectInfo, Store

__all__ = ["CheckpointRecord", "RunIndex", "step_dir"]

META_KEY = "cloudckpt.manager"
_MAX_POINTER_BYTES = 64 * 1024
log = logging.getLogger("cloudckpt.manager")


def _epoch(v: Any) -> int | None:
    if v is None or (type(v) is int and v >= 0):
        return v
    raise TypeError(f"epoch {v!r} is not a non-negative int")


def _metrics(v: Any) -> dict[str, float]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise TypeError("metrics must be an object")
    return {str(k): float(x) for k, x in v.items()}


def _generation(meta: dict[str, Any]) -> int:
    g = meta.get("generation", 0)
    return g if type(g) is int and g >= 0 else 0


@dataclass(frozen=True)
class CheckpointRecord:
    """One checkpoint of a run, as the store shows it now."""

    step: int
    uri: str
    location: str  # "hot" (under the run root) or "archived" (at an archive URI)
    time: float
    epoch: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    raw_bytes: int = 0
    stored_bytes: int = 0
    tier: str | None = None
    pinned: bool = False
    generation: int = 0  # the lineage generation that wrote it (see manager.lineage)
    signature: str = "unsigned"  # engine.verify.signature_status of its manifest


@dataclass(frozen=True)
class Listing:
    """Everything found under a run root in one LIST."""

    committed: dict[int, ObjectInfo]
    data: dict[int, list[ObjectInfo]]
    tiers: set[int]
    archived: dict[int, ObjectInfo]
    pinned: set[int]
    quarantined: dict[int, ObjectInfo] = field(default_factory=dict)  # marker objects
    generations: list[ObjectInfo] = field(default_factory=list)  # lineage claims
    released: list[ObjectInfo] = field(default_factory=list)  # release records (manager.sharing)


class RunIndex:
    """Reads the layout above. Thread-safe; holds only a cache derived from the store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._cache: dict[tuple[str, str | None], Manifest | None] = {}
        self._lock = threading.Lock()
        self._markers: dict[tuple[str, str | None], QuarantineMarker | None] = {}
        #: parsed lineage claims by (key, etag), filled by manager.lineage.read_generations
        self.claims: dict[tuple[str, str | None], Any] = {}
        #: parsed release records by (key, etag), filled by manager.sharing.read_releases
        self.releases: dict[tuple[str, str | None], frozenset[str] | None] = {}

    def scan(self) -> Listing:
        committed: dict[int, ObjectInfo] = {}
        data: dict[int, list[ObjectInfo]] = {}
        tiers: set[int] = set()
        archived: dict[int, ObjectInfo] = {}
        pinned: set[int] = set()
        quarantined: dict[int, ObjectInfo] = {}
        gens: list[ObjectInfo] = []
        released: list[ObjectInfo] = []
        for o in self.store.list():
            head, _, rest = o.key.partition("/")
            m = STEP_RE.match(head)
            if m:
                step = int(m.group(1))
                if rest == MANIFEST_KEY:
                    committed[step] = o
                elif rest.startswith(DATA_PREFIX + "/"):
                    data.setdefault(step, []).append(o)
                elif rest == TIER_FILE:
                    tiers.add(step)
            elif head == "archived" and (m2 := STEP_RE.match(rest.removesuffix(".json"))):
                archived[int(m2.group(1))] = o
            elif head == "pins" and (m3 := STEP_RE.match(rest)):
                pinned.add(int(m3.group(1)))
            elif head == QUARANTINE_PREFIX and (m4 := STEP_RE.match(rest.removesuffix(".json"))):
                quarantined[int(m4.group(1))] = o
            elif head == GENERATIONS_PREFIX and "/" not in rest:
                gens.append(o)
            elif head == RELEASED_PREFIX and "/" not in rest:
                released.append(o)
        return Listing(committed, data, tiers, archived, pinned, quarantined, gens, released)

    def manifest(self, step: int, info: ObjectInfo) -> Manifest | None:
        """The validated manifest of a hot checkpoint, or None if it does not validate (or,
        with a verification key configured, is not validly signed): such a checkpoint is
        skipped by every run-level operation, with one WARNING naming it."""
        ck = (info.key, info.etag)
        with self._lock:
            if ck in self._cache:
                return self._cache[ck]
        try:
            if info.size > MAX_MANIFEST_BYTES:
                raise CorruptCheckpoint(f"larger than the {MAX_MANIFEST_BYTES} bytes allowed")
            m: Manifest | None = decode_manifest(
                self.store.get_range(info.key, 0, MAX_MANIFEST_BYTES), resolve_verifier(None))
        except CloudckptError as e:
            log.warning("skipping damaged checkpoint of step %d at %s/%s: %s", step,
                        self.store.uri, info.key, e)
            m = None
        with self._lock:
            self._cache[ck] = m
        return m

    def records(self, listing: Listing | None = None) -> list[CheckpointRecord]:
        """Every committed checkpoint, hot and archived, oldest first."""
        lst = listing or self.scan()
        out: dict[int, CheckpointRecord] = {}
        for step, info in lst.archived.items():
            try:
                d = json.loads(self.store.get_range(info.key, 0, _MAX_POINTER_BYTES))
                out[step] = CheckpointRecord(
                    step=step, uri=str(d["uri"]), location="archived", time=float(d["time"]),
                    epoch=d.get("epoch"), metrics=dict(d.get("metrics") or {}),
                    raw_bytes=int(d.get("raw_bytes", 0)), stored_bytes=int(d.get("stored_bytes", 0)),
                    tier=d.get("tier"), pinned=step in lst.pinned,
                    generation=_generation(d))
            except (CloudckptError, ValueError, KeyError, TypeError, RecursionError) as e:
                log.warning("skipping malformed archive record %s/%s: %s", self.store.uri,
                            info.key, e)
                continue
        live = {(info.key, info.etag) for info in lst.committed.values()}
        with self._lock:  # forget manifests of deleted or rewritten checkpoints
            for stale in [k for k in self._cache if k not in live]:
                del self._cache[stale]
        root = self.store.uri.rstrip("/")
        skip = self.quarantined(lst)
        for step, info in lst.committed.items():
            if step in skip:
                continue
            m = self.manifest(step, info)
            if m is None:
                continue
            meta = m.metadata.get(META_KEY, {}) if isinstance(m.metadata, dict) else {}
            meta = meta if isinstance(meta, dict) else {}
            tier = self.tier(step) if step in lst.tiers else None
            try:
                out[step] = CheckpointRecord(
                    step=step, uri=f"{root}/{step_dir(step)}", location="hot",
                    time=float(meta.get("time") or (info.mtime.timestamp() if info.mtime else 0)),
                    epoch=_epoch(meta.get("epoch")), metrics=_metrics(meta.get("metrics")),
                    raw_bytes=m.raw_bytes, stored_bytes=m.stored_bytes, tier=tier,
                    pinned=step in lst.pinned, generation=_generation(meta),
                    signature=signature_status(m))
            except (ValueError, TypeError, OverflowError) as e:
                log.warning("skipping checkpoint of step %d at %s: malformed run metadata: %s",
                            step, self.store.uri, e)
        return [out[s] for s in sorted(out)]

    def quarantined(self, listing: Listing) -> dict[int, str]:
        """Steps whose committed checkpoint a quarantine marker condemns (step -> reason),
        from ``listing`` plus one small cached GET per marker; stale or malformed markers are
        ignored. One WARNING per marker the first time this index sees it. A marker that
        cannot be read now (the store failing) counts as condemning, for this call only."""
        out: dict[int, str] = {}
        live = {(i.key, i.etag) for i in listing.quarantined.values()}
        with self._lock:  # forget markers deleted or rewritten since
            for stale in [k for k in self._markers if k not in live]:
                del self._markers[stale]
        for step, minfo in sorted(listing.quarantined.items()):
            ck = (minfo.key, minfo.etag)
            with self._lock:
                known, marker = ck in self._markers, self._markers.get(ck)
            if not known:
                try:
                    marker = read_marker(self.store, step)
                except NotFound:
                    continue
                except CorruptCheckpoint as e:
                    log.warning("ignoring %s/%s: %s", self.store.uri, minfo.key, e)
                    marker = None
                except CloudckptError as e:
                    log.warning("skipping step %d at %s: its quarantine marker cannot be read "
                                "now: %s", step, self.store.uri, e)
                    out[step] = f"quarantine marker unreadable: {e}"
                    continue
                with self._lock:
                    self._markers[ck] = marker
            if marker is None or not condemns(marker, listing.committed.get(step)):
                continue
            out[step] = marker.reason
            if not known:
                log.warning("skipping quarantined checkpoint of step %d at %s/%s: %s (see %s)",
                            step, self.store.uri, step_dir(step), marker.reason, minfo.key)
        return out

    def tier(self, step: int) -> str | None:
        try:
            return str(json.loads(self.store.get(tier_key(step)))["storage_class"])
        except (CloudckptError, ValueError, KeyError, TypeError):
            return None
