"""Resident-set-size readings (Linux ``/proc`` and ``getrusage``), in bytes."""

from __future__ import annotations

import resource


def rss_of(pid: int | str = "self") -> int | None:
    """Current VmRSS of process ``pid`` (default: this one); None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def rss_now() -> int:
    """Current resident set size of this process."""
    rss = rss_of()
    if rss is None:
        raise RuntimeError("VmRSS not found in /proc/self/status")
    return rss


def rss_peak() -> int:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
