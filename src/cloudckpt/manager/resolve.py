"""Which checkpoint ``"latest"``, ``"best"`` or a step number names: one rule for the manager's
queries and restore, the distributed coordinator, the CLI and the integrations. Pure: works on
the records a caller already listed (:meth:`RunIndex.records`), oldest first or in any order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cloudckpt.errors import InvalidArgument, NotFound
from cloudckpt.manager.index import CheckpointRecord
from cloudckpt.manager.retention import CheckpointSummary, best_step

__all__ = ["check_which", "resolve_step", "summarize"]


def summarize(records: Iterable[CheckpointRecord]) -> list[CheckpointSummary]:
    """What retention and the metric rules need of each record. Pure; any caller."""
    return [CheckpointSummary(r.step, r.time, r.metrics, r.pinned) for r in records]


def check_which(which: int | str) -> None:
    """Validate a step selector without looking at any checkpoint. Pure; any caller.

    Raises:
        InvalidArgument: ``which`` is not ``"latest"``, ``"best"`` or a (non-bool) int.
    """
    if which in ("latest", "best") or (isinstance(which, int) and not isinstance(which, bool)):
        return
    raise InvalidArgument(f"step must be 'latest', 'best' or an int, not {which!r}")


def resolve_step(records: Sequence[CheckpointRecord], which: int | str, metric: str | None = None,
                 mode: str = "min", *, uri: str = "") -> int | None:
    """The step ``which`` names among the committed ``records``: ``"latest"`` the newest,
    ``"best"`` the best by ``metric``/``mode`` (ties to the newer step), an int that step.
    ``uri`` (the run root) only goes into error messages. Pure; any caller.

    Returns ``None`` when the run has no checkpoint (``"latest"``) or none reports ``metric``
    (``"best"``, also without a ``metric``); callers decide whether that is an error.

    Raises:
        NotFound: an int step that is not committed.
        InvalidArgument: ``which`` is anything else, or ``mode`` is not "min"/"max".
    """
    check_which(which)
    if which == "latest":
        return max((r.step for r in records), default=None)
    if which == "best":
        return best_step(summarize(records), metric, mode)
    assert isinstance(which, int)
    if not any(r.step == which for r in records):
        raise NotFound(f"no committed checkpoint for step {which} under {uri or 'the run'}")
    return which
