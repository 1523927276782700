"""Repair a run: find damaged checkpoints, restore what an intact copy exists for, quarantine
the rest (``cloudckpt repair``).

Every committed hot checkpoint of the run root is checked: its manifest, and each of its data
objects chunk by chunk (present, the recorded length, stored and decoded checksums). A damaged
object is rebuilt in memory from its own intact chunks plus donors (:mod:`.repair_sources`:
identical chunks elsewhere in the run, in archived copies, or in replicas given as
``replicas``, e.g. a ``cloudckpt cp`` copy of the run or of one checkpoint). A manifest that
does not validate is replaced by a replica's copy of it, which must name the same save (the
save id of the data objects still there). A checkpoint is repaired only if *every* damaged
object in it can be rebuilt and verifies; otherwise nothing of it is rewritten and it is
quarantined (:mod:`.quarantine`): restore, retention and every run-level query skip it without
reading it again.

Safety: planning reads only, and finishes for the whole run before anything is written (bad
input and read failures change nothing). Each repaired object is one atomic ``put`` of bytes
that verified in memory (a crash leaves the old bytes or the new complete ones), data before
the manifest; the checkpoint is checked again afterwards. A healthy checkpoint is never
written. A checkpoint whose manifest changed since it was checked is left alone. A failing
read is an error, never taken for damage. Not checked: archived copies (they serve as donors)
and checkpoints in an offline tier. Limit: a save that replaces a damaged step's manifest at
the very moment repair replaces it from a replica can lose that race (run repair while
nothing writes that step).

Who calls what: operators (the ``repair`` command), one repair per run at a time; any thread.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cloudckpt.engine.commit import read_manifest, read_manifest_bytes
from cloudckpt.engine.trust import resolve_verifier
from cloudckpt.errors import CorruptCheckpoint, InvalidArgument, NotFound
from cloudckpt.format.keys import MANIFEST_KEY, quarantine_key, step_dir
from cloudckpt.format.manifest import Manifest, decode_manifest
from cloudckpt.manager.archive import needs_rehydration
from cloudckpt.manager.context import RunContext
from cloudckpt.manager.index import META_KEY, Listing, RunIndex
from cloudckpt.manager.quarantine import condemns, marker_for, read_marker, write_marker
from cloudckpt.manager.repair_sources import DonorIndex, check_objects, rebuild_object
from cloudckpt.storage import ObjectInfo, Store, open_store, substore

__all__ = ["ObjectFix", "RepairReport", "StepRepair", "repair_run"]

log = logging.getLogger("cloudckpt.manager")


@dataclass(frozen=True)
class ObjectFix:
    """A damaged data object (key under its checkpoint) and where its lost chunks come from."""

    key: str
    problem: str
    sources: tuple[str, ...]


@dataclass(frozen=True)
class StepRepair:
    """What repair found (and, unless a dry run, did) for one checkpoint. ``action``:
    ``healthy``, ``repair``, ``quarantine`` or ``skip``; ``done`` once acted on;
    ``quarantined``: a marker condemned it when repair began."""

    step: int
    uri: str
    action: str
    problems: tuple[str, ...] = ()
    fixes: tuple[ObjectFix, ...] = ()
    manifest_from: str | None = None
    reason: str = ""
    quarantined: bool = False
    done: bool = False

    @property
    def status(self) -> str:
        """``healthy``, ``repairable``, ``repaired``, ``unrepairable``, ``quarantined`` or
        ``skipped``."""
        if self.action == "repair":
            return "repaired" if self.done else "repairable"
        if self.action == "quarantine":
            return "quarantined" if self.done or self.quarantined else "unrepairable"
        return "skipped" if self.action == "skip" else "healthy"


@dataclass(frozen=True)
class RepairReport:
    """The outcome of :func:`repair_run`, one entry per committed hot checkpoint."""

    uri: str
    dry_run: bool
    steps: tuple[StepRepair, ...]
    stale_markers: tuple[int, ...] = ()

    @property
    def damage_left(self) -> bool:
        """Whether any checkpoint is still damaged (a dry run, or quarantined)."""
        return any(s.status in ("repairable", "unrepairable", "quarantined") for s in self.steps)


@dataclass(frozen=True)
class _ReplicaCkpt:
    store: Store
    manifest: Manifest
    raw: bytes
    step: int | None
    label: str


@dataclass(frozen=True)
class _Plan:
    report: StepRepair
    info: ObjectInfo
    manifest: Manifest | None = None
    replacement: bytes | None = None
    tier: str | None = None


def _meta_step(m: Manifest) -> int | None:
    meta = m.metadata.get(META_KEY) if isinstance(m.metadata, dict) else None
    step = meta.get("step") if isinstance(meta, dict) else None
    return step if type(step) is int else None


def open_replica(uri: str, storage_options: Mapping[str, Any] | None) -> list[_ReplicaCkpt]:
    """The validated checkpoints of a replica: one checkpoint, or a run root of them.
    Damaged ones are left out with a WARNING. Reads only.

    Raises:
        InvalidURI: ``uri`` cannot be opened. NotFound: nothing is there.
        InvalidArgument: it holds no valid checkpoint. StorageError: a read failed.
    """
    store = open_store(uri, storage_options=storage_options)
    if store.exists(MANIFEST_KEY):
        found: list[tuple[Store, int | None]] = [(store, None)]
    else:
        listing = RunIndex(store).scan()
        found = [(substore(store, step_dir(s)), s) for s in sorted(listing.committed)]
        if not found and not store.list():
            raise NotFound(f"--from {store.uri}: nothing there")
    out: list[_ReplicaCkpt] = []
    for st, step in found:
        try:
            raw = read_manifest_bytes(st)
            m = decode_manifest(raw, resolve_verifier(None))
        except (CorruptCheckpoint, NotFound) as e:
            log.warning("replica %s: skipping damaged checkpoint: %s", st.uri, e)
            continue
        out.append(_ReplicaCkpt(st, m, raw, _meta_step(m) if step is None else step,
                                f"replica {st.uri}"))
    if not out:
        raise InvalidArgument(f"--from {store.uri} holds no valid checkpoint (a `cloudckpt cp` "
                              "copy of the run or of one of its checkpoints is needed)")
    return out


def _save_ids(listing: Listing, step: int) -> set[str]:
    """Save ids of the data objects under ``step`` (``step-N/data/<save_id>/...``)."""
    return {o.key.split("/")[2] for o in listing.data.get(step, []) if o.key.count("/") >= 3}


def _check_run(ctx: RunContext, listing: Listing) -> None:
    if ctx.store.exists(MANIFEST_KEY):
        raise InvalidArgument(f"{ctx.uri} is a single checkpoint, not a run root; repair "
                              "works on the run root that holds step-NNNNNNNNNNNN/ checkpoints")
    if not (listing.committed or listing.data or listing.archived):
        if not ctx.store.list():
            raise NotFound(f"nothing at {ctx.uri}")
        raise InvalidArgument(f"{ctx.uri} is not the root of a CheckpointManager run (no "
                              "step-NNNNNNNNNNNN/ checkpoints under it)")


def _check_replicas(ctx: RunContext, listing: Listing, replicas: Sequence[tuple[str, list[
        _ReplicaCkpt]]], archived_ids: Callable[[], set[str]]) -> None:
    ours: set[str] = set()
    for step in listing.data:
        ours |= _save_ids(listing, step)
    for uri, ckpts in replicas:
        theirs = {c.manifest.save_id for c in ckpts}
        if not theirs & ours and not theirs & archived_ids():
            raise InvalidArgument(f"--from {uri} is not a copy of the run at {ctx.uri}: none "
                                  "of its checkpoints is one of this run's saves")


class _Repairer:
    """One repair pass over a run (planning, then acting). Used by one thread."""

    def __init__(self, ctx: RunContext, listing: Listing,
                 replicas: list[_ReplicaCkpt]) -> None:
        self.ctx, self.listing, self.replicas = ctx, listing, replicas
        self._donors: DonorIndex | None = None
        self._archived: list[tuple[Store, Manifest, str]] | None = None
        self._manifests: dict[int, Manifest | None] = {}

    def manifest(self, step: int) -> Manifest | None:
        """The validated manifest of hot ``step`` (``None``: it does not validate or is
        gone), read once. Unlike the run index, a failing read raises: a store that fails
        is never taken for damage.

        Raises:
            StorageError: the read failed.
        """
        if step not in self._manifests:
            try:
                raw = read_manifest_bytes(self.ctx.step_store(step))
                self._manifests[step] = decode_manifest(raw, resolve_verifier(None))
            except (CorruptCheckpoint, NotFound):
                self._manifests[step] = None
        return self._manifests[step]

    def archived(self) -> list[tuple[Store, Manifest, str]]:
        """Archived copies readable now, with their manifests (read once, lazily)."""
        if self._archived is None:
            self._archived = []
            for rec in self.ctx.records(self.listing):
                if rec.location != "archived" or (rec.tier and needs_rehydration(rec.tier)):
                    continue
                try:
                    st = self.ctx.record_store(rec)
                    self._archived.append((st, read_manifest(st), f"archived step {rec.step} "
                                                                 f"({rec.uri})"))
                except (CorruptCheckpoint, NotFound) as e:
                    log.warning("archived copy of step %d is not usable: %s", rec.step, e)
        return self._archived

    def donors(self) -> DonorIndex:
        """Every donor the run knows, cheapest first: hot checkpoints, archived copies,
        replicas. Built on first use."""
        if self._donors is None:
            d = DonorIndex()
            for step in sorted(self.listing.committed, reverse=True):
                tier = self.ctx.index.tier(step) if step in self.listing.tiers else None
                m = self.manifest(step)
                if m is not None and not (tier and needs_rehydration(tier)):
                    d.add(self.ctx.step_store(step), m, f"step {step}")
            for st, m, label in self.archived():
                d.add(st, m, label)
            for r in self.replicas:
                d.add(r.store, r.manifest, r.label)
            self._donors = d
        return self._donors

    def plan(self, step: int, info: ObjectInfo) -> _Plan:
        ctx, uri = self.ctx, f"{self.ctx.uri}/{step_dir(step)}"
        quarantined = False
        if step in self.listing.quarantined:
            try:
                quarantined = condemns(read_marker(ctx.store, step), info)
            except (CorruptCheckpoint, NotFound):
                quarantined = False
        rep = StepRepair(step, uri, "healthy", quarantined=quarantined)
        tier = ctx.index.tier(step) if step in self.listing.tiers else None
        if tier and needs_rehydration(tier):
            return _Plan(dataclasses.replace(rep, action="skip", reason=f"in the {tier} tier: "
                                             "restore it before it can be checked"), info)
        store = ctx.step_store(step)
        m = self.manifest(step)
        problems: list[str] = []
        replacement: bytes | None = None
        if m is None:
            problems.append(f"{MANIFEST_KEY}: does not validate")
            ids = _save_ids(self.listing, step)
            same = [r for r in self.replicas if r.manifest.save_id in ids
                    and r.step in (step, None)]
            if not same:
                return _Plan(dataclasses.replace(
                    rep, action="quarantine", problems=tuple(problems),
                    reason="its manifest does not validate and no replica of it is known "
                           "(pass a copy with --from)"), info)
            m, replacement = same[0].manifest, same[0].raw
            rep = dataclasses.replace(rep, manifest_from=same[0].label)
        damage = check_objects(store, m)
        problems += [f"{d.key}: {d.problem}" for d in damage]
        if not problems:
            return _Plan(rep, info, m, tier=tier)
        fixes: list[ObjectFix] = []
        for d in damage:
            rb = rebuild_object(store, d.key, m, self.donors())
            if rb.data is None:
                return _Plan(dataclasses.replace(
                    rep, action="quarantine", problems=tuple(problems),
                    reason=f"{d.key}: {rb.missing}"), info, m)
            fixes.append(ObjectFix(d.key, d.problem, rb.sources))
        return _Plan(dataclasses.replace(rep, action="repair", problems=tuple(problems),
                                         fixes=tuple(fixes)), info, m, replacement, tier)

    def act(self, p: _Plan) -> StepRepair:
        """Carry out ``p`` (see the module docstring for the order and the checks)."""
        ctx, rep = self.ctx, p.report
        if rep.action == "skip" or (rep.action == "healthy" and not rep.quarantined):
            return rep
        key = f"{step_dir(rep.step)}/{MANIFEST_KEY}"
        if not self._unchanged(key, p.info):
            return dataclasses.replace(rep, action="skip", reason="its manifest changed or "
                                       "vanished while repair ran; run repair again")
        if rep.action == "quarantine":
            return self._quarantine(rep, p.info, rep.reason)
        store = ctx.step_store(rep.step)
        assert p.manifest is not None
        for fix in rep.fixes:
            rb = rebuild_object(store, fix.key, p.manifest, self.donors())
            if rb.data is None:
                return self._quarantine(rep, p.info, f"repair failed: {fix.key}: {rb.missing}")
            store.put(fix.key, rb.data)
            if p.tier:
                store.set_storage_class(fix.key, p.tier)
        left = check_objects(store, p.manifest)
        if left:
            return self._quarantine(rep, p.info, f"still damaged after repair: {left[0].key}: "
                                                 f"{left[0].problem}")
        if p.replacement is not None:
            if not self._unchanged(key, p.info):
                return dataclasses.replace(rep, action="skip", reason="its manifest changed "
                                           "while repair ran; run repair again")
            store.put(MANIFEST_KEY, p.replacement)
            decode_manifest(read_manifest_bytes(store), resolve_verifier(None))
        if rep.quarantined:
            ctx.store.delete(quarantine_key(rep.step))
        log.info("repair: step %d of %s %s", rep.step, ctx.uri,
                 "repaired and verified" if rep.action == "repair" else "released from quarantine")
        return dataclasses.replace(rep, done=True)

    def _unchanged(self, key: str, info: ObjectInfo) -> bool:
        try:
            now = self.ctx.store.stat(key)
        except NotFound:
            return False
        return now.etag == info.etag and now.size == info.size

    def _quarantine(self, rep: StepRepair, info: ObjectInfo, reason: str) -> StepRepair:
        if not rep.quarantined:
            write_marker(self.ctx.store, marker_for(rep.step, info, reason, list(rep.problems),
                                                    self.ctx.clock()))
            log.warning("repair: quarantined step %d of %s: %s", rep.step, self.ctx.uri, reason)
        return dataclasses.replace(rep, action="quarantine", reason=reason, done=True)


def repair_run(ctx: RunContext, *, dry_run: bool = True, replicas: Sequence[str] = (),
               replica_options: Mapping[str, Any] | None = None) -> RepairReport:
    """Check every committed hot checkpoint of the run ``ctx`` and, unless ``dry_run``,
    repair or quarantine the damaged ones (see the module docstring). ``replicas`` are URIs
    of copies (a run root or one checkpoint) opened with ``replica_options`` (default: the
    run's). For operators; one repair per run at a time.

    Raises:
        NotFound: nothing at the run root or at a replica URI.
        InvalidArgument: the root is not a run root (e.g. a single checkpoint); a replica
            holds no valid checkpoint or none of this run's saves. Nothing was changed.
        InvalidURI: a URI cannot be opened.
        StorageError: a read or write failed; what was done is complete and verified, and
            re-running finishes the job.
    """
    listing = ctx.index.scan()
    _check_run(ctx, listing)
    opts = ctx.storage_options if replica_options is None else replica_options
    opened = [(u, open_replica(u, opts)) for u in replicas]
    work = _Repairer(ctx, listing, [c for _, cs in opened for c in cs])
    _check_replicas(ctx, listing, opened,
                    lambda: {m.save_id for _, m, _ in work.archived()})
    plans = [work.plan(step, info) for step, info in sorted(listing.committed.items())]
    stale = []
    for step in sorted(listing.quarantined):
        try:
            if not condemns(read_marker(ctx.store, step), listing.committed.get(step)):
                stale.append(step)
        except CorruptCheckpoint:
            stale.append(step)
        except NotFound:
            continue
    if dry_run:
        return RepairReport(ctx.uri, True, tuple(p.report for p in plans), tuple(stale))
    done = tuple(work.act(p) for p in plans)
    if stale:
        ctx.store.delete_many([quarantine_key(s) for s in stale])
    return RepairReport(ctx.uri, False, done, tuple(stale))

