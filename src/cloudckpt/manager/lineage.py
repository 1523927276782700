"""Which checkpoints belong to the live run: generations and lineage.

A run can fork. A node restores step 200 while a preempted node (a zombie) still runs and
commits steps 300, 400; a resumed run falls back past a damaged step 300 and reaches step 300
again; a user resumes from an older or the best step on purpose. Timestamps cannot say which
branch is "the run", so the rule is written into the bucket:

- The first save after a restore *claims* a new generation, ``G = newest + 1``, with a
  create-only write of ``generations/<G>.json`` holding its parent ``(step, generation)``: the
  checkpoint it resumed from. Two nodes can never claim the same number. A manager that did not
  restore joins the newest generation (a fresh run, or a second writer of the same run).
- Every manifest records the generation that wrote it (``generation`` in the manager metadata;
  absent means 0, the root).
- The *lineage* of ``G`` is its own checkpoints plus the lineage of its parent generation up to
  the parent step. ``restore("latest")`` resolves within the lineage of the newest generation:
  a zombie's later commits (an older generation, past the fork point) are ignored.
- Before committing, a manager whose generation is no longer the newest knows it is a zombie:
  it logs a WARNING and skips the commit and retention (no exception: neither node crashes).
- A step that already exists but is not in the saver's lineage (a damaged checkpoint skipped
  at restore, a zombie's or an abandoned branch's) is replaced: the new one wins. A step that
  exists in the saver's own lineage stays protected (``AlreadyExists``, as before).
- Retention only ever considers the live lineage; other branches are left for operators.

Who calls what: the manager calls :func:`prepare_commit` on the thread that commits (the
training thread, or the background thread for async saves), and :func:`lineage_of` from
restore and retention. Any thread may call :func:`read_generations`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cloudckpt.engine.commit import read_manifest
from cloudckpt.errors import AlreadyExists, CloudckptError
from cloudckpt.format.keys import (
    GENERATION_RE,
    GENERATIONS_PREFIX,
    MANIFEST_KEY,
    generation_key,
    step_dir,
)
from cloudckpt.manager.context import RunContext
from cloudckpt.manager.index import META_KEY, CheckpointRecord, Listing
from cloudckpt.manager.quarantine import condemns, read_marker
from cloudckpt.storage import ObjectInfo, Store

__all__ = ["CommitPlan", "Generation", "LineageState", "in_lineage", "lineage_of",
           "live_records", "newest", "prepare_commit", "read_generations"]

log = logging.getLogger("cloudckpt.manager")
_MAX_CLAIM_BYTES = 4096
_CLAIM_ATTEMPTS = 16


@dataclass(frozen=True)
class Generation:
    """A claimed generation: it resumed from ``parent_step`` of ``parent_generation``."""

    number: int
    parent_step: int | None
    parent_generation: int | None
    created: float


@dataclass
class LineageState:
    """The manager's own position: the checkpoint it restored (``parent``), and the
    generation it saves in once decided. Owned by one manager; not shared between threads
    except through the manager's one-save-at-a-time rule."""

    parent: tuple[int, int] | None = None  # (step, generation) restored from
    generation: int | None = None


@dataclass(frozen=True)
class CommitPlan:
    """How to commit a step: in ``generation``, replacing an existing checkpoint or not."""

    generation: int
    overwrite: bool


def _parse(key: str, raw: bytes) -> Generation | None:
    m = GENERATION_RE.match(key.rpartition("/")[2])
    try:
        d = json.loads(raw)
        number, ps, pg = d["number"], d["parent_step"], d["parent_generation"]
        ok = (m is not None and type(number) is int and number == int(m.group(1))
              and (ps is None or (type(ps) is int and ps >= 0))
              and (pg is None or (type(pg) is int and 0 <= pg < number)))
        if ok:
            return Generation(number, ps, pg, float(d.get("created") or 0.0))
    except (ValueError, KeyError, TypeError, RecursionError):
        pass
    return None


def read_generations(store: Store,
                     cache: dict[tuple[str, str | None], Any] | None = None,
                     listed: list[ObjectInfo] | None = None) -> dict[int, Generation]:
    """Every valid generation claim under the run root (malformed ones are skipped with a
    WARNING). One LIST (none when ``listed``, the claims of a listing just taken, is given),
    plus one small GET per claim not yet in ``cache`` (claims are written create-only, so a
    parsed one is kept by key and etag: a save costs one LIST, not a GET per generation).

    Raises:
        StorageError: the listing failed.
    """
    cache = {} if cache is None else cache
    out: dict[int, Generation] = {}
    for o in store.list(GENERATIONS_PREFIX) if listed is None else listed:
        ck = (o.key, o.etag)
        if ck not in cache:
            try:
                cache[ck] = _parse(o.key, store.get_range(o.key, 0, _MAX_CLAIM_BYTES))
            except CloudckptError:
                cache[ck] = None
            if cache[ck] is None:
                log.warning("ignoring malformed lineage record %s/%s", store.uri, o.key)
        g = cache[ck]
        if g is not None:
            out[g.number] = g
    return out


def newest(gens: dict[int, Generation]) -> int:
    """The newest claimed generation (0, the root, when none was claimed)."""
    return max(gens, default=0)


def in_lineage(step: int, generation: int, gens: dict[int, Generation], of: int) -> bool:
    """Whether the checkpoint ``(step, generation)`` belongs to the lineage of ``of``."""
    while True:
        if generation == of:
            return True
        g = gens.get(of)
        if g is None or g.parent_generation is None or g.parent_step is None \
                or step > g.parent_step:
            return False
        of = g.parent_generation  # strictly smaller: the walk ends


def lineage_of(records: list[CheckpointRecord], gens: dict[int, Generation],
               of: int) -> list[CheckpointRecord]:
    """The records (oldest first) that belong to the lineage of generation ``of``."""
    return [r for r in records if in_lineage(r.step, r.generation, gens, of)]


def live_records(ctx: RunContext, records: list[CheckpointRecord] | None = None,
                 of: int | None = None, listing: Listing | None = None) -> list[CheckpointRecord]:
    """The committed checkpoints of the live run: the lineage of generation ``of`` (default:
    the newest claimed one), oldest first; ``listing``: a run listing just taken (saves the
    LIST of claims).

    Raises:
        StorageError: a listing failed.
    """
    gens = read_generations(ctx.store, ctx.index.claims,
                            None if listing is None else listing.generations)
    return lineage_of(ctx.records() if records is None else records, gens,
                      newest(gens) if of is None else of)


def _claim(store: Store, parent: tuple[int, int], start: int,
           clock: Callable[[], float]) -> int:
    for number in range(start, start + _CLAIM_ATTEMPTS):
        body = json.dumps({"number": number, "parent_step": parent[0],
                           "parent_generation": parent[1], "created": clock()}).encode()
        try:
            store.put(generation_key(number), body, create_only=True)
        except AlreadyExists:
            continue  # another node claimed it first: take the next number
        return number
    raise AlreadyExists(f"could not claim a lineage generation under {store.uri} after "
                        f"{_CLAIM_ATTEMPTS} attempts (many nodes resuming at once?)")


def _quarantined(ctx: RunContext, step: int) -> bool:
    """Whether a quarantine marker condemns the checkpoint of ``step`` as listed now."""
    try:
        marker = read_marker(ctx.store, step)
        key = f"{step_dir(step)}/{MANIFEST_KEY}"
        return condemns(marker, next((o for o in ctx.store.list(step_dir(step))
                                      if o.key == key), None))
    except CloudckptError:  # no marker (NotFound), or one that does not parse
        return False


def _existing_generation(ctx: RunContext, step: int) -> int | None:
    """The generation of the committed checkpoint at ``step``; None if none; -1 if it is
    unreadable or quarantined (in nobody's lineage: a new save of the step replaces it)."""
    st = ctx.step_store(step)
    if not st.exists(MANIFEST_KEY):
        return None
    try:
        meta: Any = read_manifest(st).metadata.get(META_KEY, {})
    except CloudckptError:
        return -1  # damaged: in nobody's lineage
    if _quarantined(ctx, step):
        return -1
    g = meta.get("generation", 0) if isinstance(meta, dict) else 0
    return g if type(g) is int else -1


def prepare_commit(ctx: RunContext, state: LineageState, step: int) -> CommitPlan | None:
    """Decide how this manager commits ``step``: claim or join a generation on its first
    save, return ``None`` (after a WARNING) when a newer generation exists (this manager is
    a zombie and must not commit), and allow replacing an existing ``step`` that is not in
    this manager's lineage.

    Raises:
        AlreadyExists: no generation could be claimed.
        StorageError: the store failed.
    """
    gens = read_generations(ctx.store, ctx.index.claims)
    top = newest(gens)
    if state.generation is None:
        state.generation = _claim(ctx.store, state.parent, top + 1, ctx.clock) \
            if state.parent is not None else top
        if state.parent is not None:
            log.info("claimed lineage generation %d under %s (resumed from step %d of "
                     "generation %d)", state.generation, ctx.uri, *state.parent)
            gens = read_generations(ctx.store, ctx.index.claims)
            top = newest(gens)
    if top > state.generation:
        log.warning("not committing step %d to %s: generation %d resumed this run elsewhere "
                    "(this process, generation %d, is a stale node); skipping the save and "
                    "retention", step, ctx.uri, top, state.generation)
        return None
    existing = _existing_generation(ctx, step)
    if existing is None or in_lineage(step, existing, gens, state.generation):
        return CommitPlan(state.generation, overwrite=False)
    log.warning("replacing step %d under %s: the checkpoint there (generation %s) is not in "
                "this run's lineage (damaged, or written by a stale or abandoned branch)",
                step, ctx.uri, existing if existing >= 0 else "unreadable")
    return CommitPlan(state.generation, overwrite=True)
