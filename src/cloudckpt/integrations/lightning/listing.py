"""Which committed Lightning checkpoints a ``ModelCheckpoint`` directory holds, newest first:
shared by :class:`~._private.CloudckptModelCheckpoint` (``ckpt_path="last"``) and
:func:`~.resume.find_checkpoint`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from cloudckpt.engine.commit import read_manifest
from cloudckpt.errors import CorruptCheckpoint, NotFound
from cloudckpt.format.keys import MANIFEST_KEY
from cloudckpt.format.manifest import Manifest
from cloudckpt.storage import open_store, substore

__all__ = ["committed", "last_manifests"]

log = logging.getLogger("cloudckpt.integrations.lightning")


def committed(dirpath: str, storage_options: Mapping[str, Any] | None,
              name: re.Pattern[str]) -> list[tuple[str, float, Manifest]]:
    """``(name, commit time, manifest)`` of each committed checkpoint directly in ``dirpath``
    whose name matches ``name`` (commit time: the manifest's modification time, else the time
    it records), newest first. A checkpoint whose manifest does not validate (or is not validly
    signed, with a verification key configured) is skipped with a WARNING; storage failures
    propagate, never read as "nothing found". Any caller.

    Raises:
        StorageError and subclasses: ``dirpath`` cannot be listed or a manifest read.
    """
    store = open_store(dirpath, storage_options=storage_options)
    out: list[tuple[str, float, Manifest]] = []
    for o in store.list():
        head, _, rest = o.key.partition("/")
        if rest != MANIFEST_KEY or not name.fullmatch(head):
            continue
        try:
            m = read_manifest(substore(store, head))
        except NotFound:  # deleted since the listing
            continue
        except CorruptCheckpoint as e:
            log.warning("skipping checkpoint %s/%s: %s", store.uri, head, e)
            continue
        t = o.mtime.timestamp() if o.mtime else datetime.fromisoformat(m.created).timestamp()
        out.append((head, t, m))
    return sorted(out, key=lambda x: x[1], reverse=True)


def last_manifests(dirpath: str, storage_options: Mapping[str, Any] | None, *,
                   name: str = "last", extension: str = ".ckpt") -> list[tuple[str, float]]:
    """``(manifest URI, commit time)`` of each committed ``last.ckpt`` / ``last-vN.ckpt``
    checkpoint directly in ``dirpath`` (``name``/``extension``: ``ModelCheckpoint``'s
    ``CHECKPOINT_NAME_LAST`` and ``FILE_EXTENSION``), newest first. Any caller.

    Raises:
        StorageError and subclasses: ``dirpath`` cannot be listed or a manifest read.
    """
    pattern = re.compile(rf"{re.escape(name)}(-v?\d+)?{re.escape(extension)}")
    base = dirpath.rstrip("/")
    return [(f"{base}/{n}/{MANIFEST_KEY}", t) for n, t, _ in
            committed(dirpath, storage_options, pattern)]
