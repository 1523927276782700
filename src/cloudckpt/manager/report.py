"""What a report of a run shows, gathered from the store: one frozen row per checkpoint
(committed or damaged), the lineage generations, and which checkpoints retention keeps and why.

Everything here is read from the store and therefore untrusted: numbers are validated (a value
that is not a finite number is dropped), text is kept as text for the renderer to escape, and
a damaged checkpoint becomes a row with a status and its problems, never an exception.

Who calls what: ``cloudckpt report`` (and any operator tool) calls :func:`gather_report` with a
:class:`RunContext` carrying the retention policy to explain; :func:`explain_retention` is pure
and decides nothing (:func:`~cloudckpt.manager.retention.plan_retention` decides).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cloudckpt.engine.commit import read_manifest
from cloudckpt.errors import CloudckptError
from cloudckpt.format.keys import step_dir
from cloudckpt.format.manifest import Manifest
from cloudckpt.manager.context import RunContext
from cloudckpt.manager.index import META_KEY, CheckpointRecord
from cloudckpt.manager.lineage import Generation, in_lineage, newest, read_generations
from cloudckpt.manager.resolve import summarize
from cloudckpt.manager.retention import (
    AnyOf,
    CheckpointSummary,
    KeepBest,
    KeepEvery,
    KeepLast,
    KeepPinned,
    KeepWithin,
    RetentionPolicy,
    best_step,
    plan_retention,
)
from cloudckpt.manager.sharing import pending, read_releases

__all__ = ["DAMAGED", "ReportRow", "RunReport", "describe_policy", "explain_retention",
           "gather_report", "save_seconds"]

#: statuses of checkpoints that are damaged (``released``: deleted, its data awaiting gc)
DAMAGED = frozenset({"corrupt", "incomplete", "quarantined"})

#: longest save duration taken at face value (a week); beyond it the record is not believed
_MAX_SECONDS = 7 * 86400.0


def describe_policy(policy: RetentionPolicy | None) -> str:
    """A short text for a policy: ``"last 3 | best 1 by loss (min)"``. Pure; any caller."""
    if policy is None:
        return "none"
    if isinstance(policy, AnyOf):
        return " | ".join(describe_policy(p) for p in policy.policies) or "none"
    if isinstance(policy, KeepLast):
        return f"last {policy.n}"
    if isinstance(policy, KeepBest):
        return f"best {policy.k} by {policy.metric} ({policy.mode})"
    if isinstance(policy, KeepEvery):
        return f"every {policy.every} steps"
    if isinstance(policy, KeepWithin):
        return f"within {policy.seconds:g} s"
    if isinstance(policy, KeepPinned):
        return "pinned"
    return type(policy).__name__


def _leaves(policy: RetentionPolicy) -> list[RetentionPolicy]:
    if isinstance(policy, AnyOf):
        return [q for p in policy.policies for q in _leaves(p)]
    return [policy]


def explain_retention(ckpts: Sequence[CheckpointSummary], policy: RetentionPolicy, now: float,
                      *, metric: str | None = None, mode: str = "min"
                      ) -> dict[int, tuple[str, ...]]:
    """Why each checkpoint is kept: step -> reasons (``"latest"``, ``"the best by loss"``,
    ``"pinned"``, then one :func:`describe_policy` text per part of ``policy`` that keeps
    it); an empty tuple for the steps :func:`plan_retention` would remove. Decides nothing:
    the kept set is exactly the complement of ``plan_retention(ckpts, policy, now, ...)``.
    Pure; any caller.

    Raises:
        InvalidArgument: ``mode`` is not "min"/"max".
    """
    reasons: dict[int, list[str]] = {c.step: [] for c in ckpts}
    if not ckpts:
        return {}
    reasons[max(reasons)].append("latest")
    best = best_step(ckpts, metric, mode)
    if best is not None:
        reasons[best].append(f"the best by {metric}")
    for c in ckpts:
        if c.pinned:
            reasons[c.step].append("pinned")
    for part in _leaves(policy):
        text = describe_policy(part)
        for s in sorted(part.keep(ckpts, now)):
            if s in reasons and text not in reasons[s]:
                reasons[s].append(text)
    doomed = set(plan_retention(ckpts, policy, now, metric=metric, mode=mode))
    for s, why in reasons.items():  # a policy that is not a union of its parts: its own word
        if s not in doomed and not why:
            why.append(describe_policy(policy))
        elif s in doomed:
            why.clear()
    return {s: tuple(why) for s, why in sorted(reasons.items())}


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def save_seconds(m: Manifest) -> float | None:
    """How long the save of ``m`` took, from its data upload to its manifest: the manager's
    ``write_started`` against the manifest's ``created`` (both wall clock). ``None`` when not
    recorded (older or non-manager checkpoints) or not believable. Pure; any caller."""
    meta = m.metadata.get(META_KEY) if isinstance(m.metadata, Mapping) else None
    started = _number(meta.get("write_started")) if isinstance(meta, Mapping) else None
    if started is None:
        return None
    try:
        created = datetime.fromisoformat(m.created).timestamp()
    except (ValueError, TypeError, OverflowError, OSError):
        return None
    seconds = created - started
    return seconds if 0.0 <= seconds <= _MAX_SECONDS else None


@dataclass(frozen=True)
class ReportRow:
    """One checkpoint of the run as the report shows it. ``status`` as ``cloudckpt ls``:
    ``committed``, ``corrupt``, ``incomplete`` or ``quarantined``; or ``released``: deleted,
    its data listed by a release record until gc removes it. ``retention``: ``keep``,
    ``remove`` (the policy would remove it at the next pass) or ``n/a`` (retention does not
    consider it), with ``reasons``. Byte counts of damaged rows are what could be counted."""

    step: int
    status: str
    uri: str
    location: str | None = None  # "hot" / "archived"; None when damaged
    tier: str | None = None
    time: float | None = None
    epoch: int | None = None
    generation: int | None = None
    live: bool = False  # in the live lineage
    raw_bytes: int = 0
    stored_bytes: int = 0
    added_bytes: int | None = None
    shared_bytes: int | None = None
    save_seconds: float | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    pinned: bool = False
    signature: str = "-"
    retention: str = "n/a"
    reasons: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def damaged(self) -> bool:
        return self.status in DAMAGED

    @property
    def ratio(self) -> float | None:
        """Stored over raw bytes (``None`` without raw bytes)."""
        return self.stored_bytes / self.raw_bytes if self.raw_bytes else None

    @property
    def throughput(self) -> float | None:
        """Raw (state) bytes saved per second."""
        return self.raw_bytes / self.save_seconds if self.save_seconds else None

    @property
    def upload_rate(self) -> float | None:
        """Bytes this save uploaded (its own, not shared) per second."""
        own = self.stored_bytes if self.added_bytes is None else self.added_bytes
        return own / self.save_seconds if self.save_seconds else None


@dataclass(frozen=True)
class RunReport:
    """A run as the report shows it: rows oldest first, the claimed generations, and the
    retention policy that the ``retention`` column explains."""

    uri: str
    created: float
    policy: str
    metric: str | None
    mode: str
    live_generation: int
    generations: tuple[Generation, ...]
    rows: tuple[ReportRow, ...]

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Every metric some checkpoint reports, sorted."""
        return tuple(sorted({k for r in self.rows for k in r.metrics}))


def _manifest_of(ctx: RunContext, rec: CheckpointRecord, listing: Any) -> Manifest | None:
    if rec.location == "hot":
        info = listing.committed.get(rec.step)
        return None if info is None else ctx.index.manifest(rec.step, info)
    try:
        return read_manifest(ctx.record_store(rec))
    except CloudckptError:  # an archive not readable now (cold tier, gone): sizes from pointer
        return None


def _committed_row(ctx: RunContext, rec: CheckpointRecord, m: Manifest | None,
                   live: bool) -> ReportRow:
    metrics = {str(k): f for k, v in rec.metrics.items() if (f := _number(v)) is not None}
    epoch = rec.epoch if type(rec.epoch) is int else None
    return ReportRow(
        step=rec.step, status="committed", uri=rec.uri, location=rec.location,
        tier=None if rec.tier is None else str(rec.tier), time=_number(rec.time), epoch=epoch,
        generation=rec.generation, live=live, raw_bytes=int(rec.raw_bytes),
        stored_bytes=int(rec.stored_bytes),
        added_bytes=None if m is None else m.added_bytes,
        shared_bytes=None if m is None else m.shared_bytes,
        save_seconds=None if m is None else save_seconds(m), metrics=metrics,
        pinned=rec.pinned, signature=rec.signature)


def _not_considered(row: ReportRow) -> str:
    if row.location == "archived":
        return "archived: outside the hot set"
    if row.tier is not None:
        return f"moved to storage class {row.tier}: retention leaves it"
    return f"generation {row.generation} is not in the live lineage: retention leaves it"


def gather_report(ctx: RunContext) -> RunReport:
    """The report of the run under ``ctx`` (one LIST, the cached manifest GETs of the run
    index, one small GET per archived checkpoint and per lineage claim). Retention is
    explained for ``ctx.retention`` with ``ctx.metric``/``ctx.mode``, over the same
    checkpoints :func:`~cloudckpt.manager.lifecycle.apply_retention` considers (hot, not
    moved to another tier, in the live lineage). Damaged checkpoints become rows with their
    problems. For operators; any thread.

    Raises:
        StorageError: the run root (or its lineage records) could not be listed.
    """
    index = ctx.index
    listing = index.scan()
    gens = read_generations(ctx.store, index.claims)
    live_gen = newest(gens)
    root = ctx.uri.rstrip("/")
    rows: dict[int, ReportRow] = {}
    for step, reason in index.quarantined(listing).items():
        rows[step] = ReportRow(step=step, status="quarantined", uri=f"{root}/{step_dir(step)}",
                               problems=(reason,))
    records = index.records(listing)
    for rec in records:
        live = in_lineage(rec.step, rec.generation, gens, live_gen)
        rows[rec.step] = _committed_row(ctx, rec, _manifest_of(ctx, rec, listing), live)
    for step, info in listing.committed.items():
        if step not in rows:
            rows[step] = ReportRow(step=step, status="corrupt", uri=f"{root}/{step_dir(step)}",
                                   problems=(f"{info.key}: manifest does not validate",))
    released = _released(ctx) if set(listing.data) - set(rows) else set()
    for step, objs in listing.data.items():
        if step not in rows:
            gone = {o.key for o in objs} <= released
            rows[step] = ReportRow(step=step, status="released" if gone else "incomplete",
                                   uri=f"{root}/{step_dir(step)}",
                                   stored_bytes=sum(o.size for o in objs),
                                   problems=() if gone else ("data without a committed manifest",))
    rows = _with_retention(ctx, rows, records)
    return RunReport(uri=ctx.uri, created=ctx.clock(), policy=describe_policy(ctx.retention),
                     metric=ctx.metric, mode=ctx.mode, live_generation=live_gen,
                     generations=tuple(gens[g] for g in sorted(gens)),
                     rows=tuple(rows[s] for s in sorted(rows)))


def _released(ctx: RunContext) -> set[str]:
    try:
        return pending(read_releases(ctx))
    except CloudckptError:  # unreadable now: such data shows as incomplete
        return set()


def _with_retention(ctx: RunContext, rows: dict[int, ReportRow],
                    records: list[CheckpointRecord]) -> dict[int, ReportRow]:
    from dataclasses import replace

    candidates = [r for r in records if r.location == "hot" and r.tier is None
                  and rows[r.step].live]
    reasons: dict[int, tuple[str, ...]] = {}
    if ctx.retention is not None:
        reasons = explain_retention(summarize(candidates), ctx.retention, ctx.clock(),
                                    metric=ctx.metric, mode=ctx.mode)
    out: dict[int, ReportRow] = {}
    for step, row in rows.items():
        if row.status == "released":
            out[step] = replace(row, reasons=("deleted: its data stays until gc (shared, or "
                                              "within the grace period)",))
        elif row.status != "committed":
            out[step] = replace(row, reasons=("damaged: run-level operations skip it",))
        elif step in reasons:
            why = reasons[step]
            out[step] = replace(row, retention="keep" if why else "remove", reasons=why)
        elif ctx.retention is None and row.location == "hot" and row.tier is None and row.live:
            out[step] = replace(row, retention="keep", reasons=("no retention policy",))
        else:
            out[step] = replace(row, reasons=(_not_considered(row),))
    return out
