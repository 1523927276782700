"""Verify a checkpoint end to end without materialising its tensors.

Reads every data object the manifest references (bounded in flight, in parallel), checks
sizes, stored checksums, decodes, and checks decoded checksums. Collects every problem instead
of stopping at the first, so an operator sees the whole damage.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from cloudckpt.engine.commit import read_manifest
from cloudckpt.engine.delta import materialize
from cloudckpt.engine.refs import resolver
from cloudckpt.errors import CloudckptError, CorruptCheckpoint
from cloudckpt.format.checksums import decode_chunk
from cloudckpt.format.keys import REF_MARK
from cloudckpt.format.manifest import Manifest
from cloudckpt.format.signing import Verifier
from cloudckpt.storage import Store, open_store

__all__ = ["VerifyReport", "signature_status", "verify"]


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of :func:`verify`; ``ok`` iff ``problems`` is empty."""

    uri: str
    objects: int
    chunks: int
    stored_bytes: int
    problems: list[str] = field(default_factory=list)
    #: "verified (alg, key)", "signed (alg, key), not checked" or "unsigned"
    signature: str = "unsigned"

    @property
    def ok(self) -> bool:
        return not self.problems


def _tensors_of(m: Manifest) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for t in m.tensors:
        for s in t.segments:
            out.setdefault(s.chunk, []).append(t.path)
    return out


def verify(uri: str | os.PathLike[str] | Store, *,
           storage_options: Mapping[str, Any] | None = None, max_workers: int = 8,
           progress: Callable[[int], None] | None = None,
           verifier: Verifier | None = None) -> VerifyReport:
    """Check every checksum of the checkpoint at ``uri``. ``progress(n)`` is called with the
    stored bytes of each object checked. Any thread may call this.

    Raises:
        NotFound, IncompleteCheckpoint: no committed checkpoint at ``uri``.
        CorruptCheckpoint: the manifest itself does not validate.
        UntrustedCheckpoint: a verification key is set and the signature is missing or bad.
    """
    store = open_store(uri, storage_options=storage_options)
    m = read_manifest(store, verifier)
    owners = _tensors_of(m)
    by_obj: dict[str, list[int]] = {}
    for i, c in enumerate(m.chunks):
        by_obj.setdefault(c.object, []).append(i)
    problems: list[str] = []
    lock = threading.Lock()
    resolve = resolver(store, storage_options)

    def check(obj: str) -> None:
        ids = by_obj[obj]
        found: list[str] = []
        size = max(m.chunks[i].offset + m.chunks[i].stored_size for i in ids)
        # capped at the declared size, + 1 to detect appended bytes in an object of our own
        # (a referenced object may hold chunks this manifest does not use)
        ref = obj.startswith(REF_MARK)
        try:
            holder, key = resolve(obj)
            data = memoryview(holder.get_range(key, 0, size + (0 if ref else 1)))
        except CloudckptError as e:
            found.append(f"{obj}: cannot read: {e}")
            data = memoryview(b"")
        if not found and len(data) != size:
            found.append(f"{obj}: {len(data)} bytes, expected {size} (truncated or altered)")
        for i in ids if not found else []:
            c = m.chunks[i]
            stored = data[c.offset:c.offset + c.stored_size]
            who = ", ".join(sorted(set(owners.get(i, [])))[:3]) or "no tensor"
            try:
                base = None if c.base is None else materialize(m, c.base, resolve)
                decode_chunk(c, stored, base_raw=base)
            except CorruptCheckpoint as e:
                found.append(f"{obj}: chunk {i} ({who}) {e}")
        with lock:
            problems.extend(found)
        if progress is not None:
            progress(size)

    with ThreadPoolExecutor(max(1, min(max_workers, len(by_obj) or 1))) as pool:
        list(pool.map(check, by_obj))
    return VerifyReport(store.uri, len(by_obj), len(m.chunks), m.stored_bytes, sorted(problems),
                        signature_status(m))


def signature_status(m: Manifest) -> str:
    """How ``m`` is signed, in words: ``verified (alg, key id)``, ``signed (alg, key id), not
    checked`` (no verification key configured) or ``unsigned``."""
    if m.signature is None:
        return "unsigned"
    alg, key_id = m.signature
    return f"verified ({alg}, {key_id})" if m.signature_verified else \
        f"signed ({alg}, {key_id}), not checked"
