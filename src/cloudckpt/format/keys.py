"""Object keys: how keys are validated, and where each record lives. Pure, no I/O.

Under a checkpoint root::

    manifest.json                  the commit record, written last (create-only)
    data/<save_id>/<n>.bin         data objects of the save with that id
    superseded/<save_id>           that save was replaced by an overwrite (its data is kept
                                   for a grace period, for readers in flight)

Under a run root (the manager's layout)::

    step-000000000100/manifest.json, data/...   one checkpoint
    step-000000000100/tier.json                  its storage class, after an in-place move
    archived/step-000000000100.json              pointer to a copy moved to an archive URI
    pins/step-000000000100                       the user pinned this step
    generations/0000000002.json                  lineage: generation 2 resumed from a step of
                                                 an older generation (claimed create-only)
    quarantine/step-000000000100.json            ``cloudckpt repair`` found that checkpoint
                                                 damaged beyond repair (restore and retention
                                                 skip it)
    released/<time>-<id>.json                    data objects no committed manifest references
                                                 any more, no longer to be referenced; deleted
                                                 once the grace period has passed (see
                                                 cloudckpt.manager.sharing)

A chunk of a manifest lives in the checkpoint's own data (``data/<save_id>/<n>.bin``) or is a
*reference* ``@<sibling>/<key>`` to an object of another checkpoint under the same parent
prefix (the run root): ``@step-000000000100/data/<save_id>/000003.bin``. References never
leave the parent prefix (:func:`run_key`).

Keys are relative POSIX paths that can never leave the root they are relative to.
"""

from __future__ import annotations

import re

from cloudckpt.errors import InvalidKey

__all__ = [
    "DATA_PREFIX",
    "GENERATIONS_PREFIX",
    "GENERATION_RE",
    "MANIFEST_KEY",
    "QUARANTINE_PREFIX",
    "REF_MARK",
    "RELEASED_PREFIX",
    "SAVE_ID_RE",
    "STEP_RE",
    "SUPERSEDED_PREFIX",
    "TIER_FILE",
    "archived_key",
    "data_key",
    "generation_key",
    "join_key",
    "parse_step_dir",
    "pin_key",
    "quarantine_key",
    "ref_to",
    "released_key",
    "run_key",
    "step_dir",
    "superseded_key",
    "tier_key",
    "validate_key",
]

MANIFEST_KEY = "manifest.json"
DATA_PREFIX = "data"
#: ``superseded/<save_id>``: that save was replaced by an overwrite at the marker's mtime
SUPERSEDED_PREFIX = "superseded"
SAVE_ID_RE = re.compile(r"^(?!\.{1,2}$)[A-Za-z0-9._-]{1,128}$")
TIER_FILE = "tier.json"
STEP_RE = re.compile(r"^step-(\d{12})$")


def validate_key(key: str) -> str:
    """Check that ``key`` is a relative object key that stays inside the store's root.
    Any caller; pure.

    Raises:
        InvalidKey: empty, absolute, containing ``.``/``..``/empty segments, backslashes or
            NUL bytes.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKey(f"object key must be a non-empty string, got {key!r}")
    if key.startswith("/"):
        raise InvalidKey(f"object key {key!r} is absolute; keys are relative to the store root")
    if "\\" in key or "\x00" in key:
        raise InvalidKey(f"object key {key!r} contains a backslash or NUL byte")
    for seg in key.split("/"):
        if seg in ("", ".", ".."):
            raise InvalidKey(
                f"object key {key!r} has an empty, '.' or '..' segment; keys cannot leave the store root"
            )
    return key


def join_key(*parts: str) -> str:
    """Join key fragments with ``/`` and validate the result (raises :class:`InvalidKey`)."""
    return validate_key("/".join(p.strip("/") for p in parts if p))


def data_key(save_id: str, n: int) -> str:
    """The key of data object ``n`` of the save ``save_id``."""
    return f"{DATA_PREFIX}/{save_id}/{n:06d}.bin"


def superseded_key(save_id: str) -> str:
    """The marker saying the save ``save_id`` was replaced by an overwrite."""
    return f"{SUPERSEDED_PREFIX}/{save_id}"


def step_dir(step: int) -> str:
    """The sub-prefix of a run root that holds the checkpoint of ``step``."""
    return f"step-{step:012d}"


def parse_step_dir(name: str) -> int | None:
    """The step of a ``step-NNNNNNNNNNNN`` name, or ``None`` for any other name."""
    m = STEP_RE.match(name)
    return int(m.group(1)) if m else None


GENERATIONS_PREFIX = "generations"
GENERATION_RE = re.compile(r"^(\d{10})\.json$")


def generation_key(number: int) -> str:
    """The claim record of lineage generation ``number``."""
    return f"{GENERATIONS_PREFIX}/{number:010d}.json"


def archived_key(step: int) -> str:
    return f"archived/{step_dir(step)}.json"


def pin_key(step: int) -> str:
    return f"pins/{step_dir(step)}"


def tier_key(step: int) -> str:
    return f"{step_dir(step)}/{TIER_FILE}"


QUARANTINE_PREFIX = "quarantine"


def quarantine_key(step: int) -> str:
    """The marker saying the checkpoint of ``step`` is quarantined (damaged beyond repair)."""
    return f"{QUARANTINE_PREFIX}/{step_dir(step)}.json"


RELEASED_PREFIX = "released"
REF_MARK = "@"


def released_key(token: str) -> str:
    """A release record (``token``: a sortable time and a unique id)."""
    return join_key(RELEASED_PREFIX, f"{token}.json")


def run_key(checkpoint: str, ref: str) -> str:
    """The key, relative to the parent prefix (the run root), of the object that chunk
    reference ``ref`` in the manifest of checkpoint ``checkpoint`` (its name under the parent)
    points at. Pure; any caller.

    Raises:
        InvalidKey: ``ref`` or ``checkpoint`` would leave the parent prefix.
    """
    if ref.startswith(REF_MARK):
        return validate_key(ref[1:])
    return join_key(validate_key(checkpoint), ref)


def ref_to(key: str) -> str:
    """The chunk reference to the object at ``key`` (relative to the parent prefix), for a
    manifest of any checkpoint under that prefix. Pure; any caller."""
    return REF_MARK + validate_key(key)
