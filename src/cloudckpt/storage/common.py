"""Small helpers shared by the backends."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from cloudckpt.errors import InvalidArgument, UnsupportedOperation
from cloudckpt.storage.base import ObjectInfo

__all__ = ["check_storage_class", "generic_object_info", "to_datetime"]


def to_datetime(value: Any) -> datetime | None:
    """Normalise the many mtime spellings of fsspec backends to an aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(float(value), tz=timezone.utc)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


def generic_object_info(key: str, info: Mapping[str, Any], *, etag_field: str,
                        mtime_fields: tuple[str, ...], storage_class: str | None) -> ObjectInfo:
    """Build an :class:`ObjectInfo` from an fsspec info dict."""
    mtime = next((to_datetime(info[f]) for f in mtime_fields if info.get(f) is not None), None)
    etag = info.get(etag_field)
    return ObjectInfo(key=key, size=int(info.get("size") or 0),
                      etag=str(etag) if etag is not None else None, mtime=mtime,
                      storage_class=storage_class)


def check_storage_class(value: str, allowed: frozenset[str], protocol: str) -> str:
    """Return the canonical spelling of ``value`` among ``allowed`` (case-insensitive).

    Raises:
        UnsupportedOperation: the backend has no storage classes.
        InvalidArgument: ``value`` is not one of them.
    """
    if not allowed:
        raise UnsupportedOperation(f"{protocol} stores have no storage classes / tiers")
    by_lower = {c.lower(): c for c in allowed}
    try:
        return by_lower[value.lower()]
    except KeyError:
        raise InvalidArgument(
            f"unknown {protocol} storage class {value!r}; choose one of {sorted(allowed)}"
        ) from None
