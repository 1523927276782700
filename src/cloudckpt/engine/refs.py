"""Chunk references between checkpoints under one parent prefix (incremental saves): how a
reference is read, how a save against a named base finds what it may reference, and how a
copy takes the referenced data along so that it stands alone.

A manifest chunk whose object is ``@<sibling>/<key>`` lives in the checkpoint ``<sibling>``
next to this one (see :mod:`cloudckpt.format.keys`). Reads go through the parent prefix's
store, never outside it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from cloudckpt.errors import CorruptCheckpoint
from cloudckpt.format.keys import DATA_PREFIX, REF_MARK, join_key, run_key
from cloudckpt.format.manifest import Manifest
from cloudckpt.storage import Store, open_store
from cloudckpt.storage.prefixed import PrefixedStore

__all__ = ["Resolver", "local_key", "parent_of", "resolver", "standalone"]

Resolver = Callable[[str], tuple[Store, str]]


def parent_of(store: Store, storage_options: Mapping[str, Any] | None) -> tuple[Store, str]:
    """The store of the parent prefix of the checkpoint at ``store``, and the checkpoint's
    name under it. A run's step stores resolve through the run's own store (its retries and
    faults); other stores by URI.

    Raises:
        CorruptCheckpoint: the checkpoint has no parent prefix (a bucket root).
    """
    if isinstance(store, PrefixedStore) and "/" not in store.prefix:
        return store.inner, store.prefix
    parsed = getattr(store, "parsed_uri", None)
    canonical = parsed.canonical.rstrip("/") if parsed is not None else ""
    if parsed is None or not parsed.prefix.strip("/"):
        raise CorruptCheckpoint(f"{store.uri}: chunk references need a checkpoint below a prefix")
    parent, _, name = canonical.rpartition("/")
    return open_store(parent, storage_options=storage_options), name


def resolver(store: Store, storage_options: Mapping[str, Any] | None) -> Resolver:
    """``resolve(ref) -> (store, key)`` for the chunk objects of the checkpoint at ``store``:
    own keys in ``store``, references in its parent (opened once, on first use).
    Thread-safe."""
    lock = threading.Lock()
    cached: list[tuple[Store, str]] = []

    def resolve(ref: str) -> tuple[Store, str]:
        if not ref.startswith(REF_MARK):
            return store, ref
        with lock:
            if not cached:
                cached.append(parent_of(store, storage_options))
            parent, name = cached[0]
        return parent, run_key(name, ref)

    return resolve


def local_key(ref: str) -> str:
    """Where a copy stores the object a reference points at: under its own ``data/``
    (``@step-1/data/<id>/000003.bin`` -> ``data/shared/step-1/<id>/000003.bin``)."""
    sibling, _, rest = ref[len(REF_MARK):].partition("/")
    return join_key(DATA_PREFIX, "shared", sibling, rest.removeprefix(DATA_PREFIX + "/"))


def standalone(m: Manifest) -> Manifest:
    """``m`` with every reference rewritten to :func:`local_key` (for a copy that holds the
    referenced data itself)."""
    return replace(m, chunks=tuple(
        replace(c, object=local_key(c.object)) if c.object.startswith(REF_MARK) else c
        for c in m.chunks))
