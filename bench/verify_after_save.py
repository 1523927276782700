"""What ``verify_after_save`` costs: a manager save with the read-back check against a plain
one, on local disk and on S3 (a moto server), side by side.

What it measures
    The deterministic "model + Adam moments" state (``bench/lib/state.py``, ``--size-mib``
    fp32) is saved with ``CheckpointManager(loc, keep_last=None, commit_options=
    CommitOptions(verify_after_save=..., on_commit=...)).save(step, state=...)``, in one warm
    process (one untimed warm-up save per store first, so that neither mode pays for opening
    the filesystem). Per repeat, on each store, a plain save and a verified save to fresh
    locations, in alternating order (plain first on even repeats, verified first on odd).

    - **save s**: wall time of ``mgr.save(...)`` (encode, upload, commit, and for the verified
      mode the read-back).
    - **read-back s**: ``CommitRecord.verify_seconds`` from the hook: reading every stored
      byte back and checking every checksum (``cloudckpt.verify``).
    - **overhead**: median verified save / median plain save - 1.

    Local reads come from the page cache (the bytes were just written): the read-back checks
    what the kernel holds, which is what the next restore on this node reads too. On S3 every
    byte comes back from the server.

Usage (from the repository root)::

    .venv/bin/python -m bench.verify_after_save --size-mib 256 --repeats 5 \\
        --out bench/results/verify-after-save-256.json
    .venv/bin/python -m bench.verify_after_save --quick
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from bench.lib import MiB, cli, stats
from bench.lib.report import fmt, md_table, report
from bench.lib.state import build_state, raw_bytes
from bench.lib.stores import Place, open_place, storage_options

MODES = ("plain", "verify")


class Holder:
    """The flat state as an object the manager saves (``state_dict()``)."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def state_dict(self) -> dict[str, Any]:
        return self.state


def save_once(place: Place, loc: str, holder: Holder, verify: bool) -> dict[str, Any]:
    """One save to a fresh ``loc``; its wall time and, verified, the read-back time."""
    from cloudckpt import CheckpointManager, CommitOptions, CommitRecord

    seen: list[CommitRecord] = []
    mgr = CheckpointManager(loc, keep_last=None, storage_options=storage_options(place.endpoint),
                            commit_options=CommitOptions(verify_after_save=verify,
                                                         on_commit=seen.append))
    t0 = time.perf_counter()
    info = mgr.save(1, state=holder)
    took = time.perf_counter() - t0
    assert info is not None and seen and seen[0].verified is (True if verify else None)
    place.remove(loc)
    return {"seconds": took, "write_s": info.seconds, "verify_s": seen[0].verify_seconds,
            "stored_bytes": info.stored_bytes}


def run_store(kind: str, args: Any, holder: Holder, workdir: Path) -> list[dict[str, Any]]:
    recs: list[dict[str, Any]] = []
    with open_place(kind, workdir) as place:
        save_once(place, place.location("warmup"), holder, verify=True)
        for r in range(args.repeats):
            for mode in (MODES if r % 2 == 0 else MODES[::-1]):
                rec = {"store": kind, "mode": mode, "repeat": r,
                       **save_once(place, place.location(f"{mode}-{r}"), holder,
                                   verify=mode == "verify")}
                print(f"  {kind} r{r} {mode:6} save {rec['seconds']:.3f} s, read-back "
                      f"{rec['verify_s']:.3f} s", file=sys.stderr, flush=True)
                recs.append(rec)
    return recs


def table(recs: list[dict[str, Any]], raw: int) -> str:
    rows = []
    for kind in dict.fromkeys(r["store"] for r in recs):
        med = {m: stats.median(r["seconds"] for r in recs if r["store"] == kind
                               and r["mode"] == m) for m in MODES}
        back = stats.median(r["verify_s"] for r in recs if r["store"] == kind
                            and r["mode"] == "verify")
        stored = next(r["stored_bytes"] for r in recs if r["store"] == kind)
        over = stats.ratio(med["verify"], med["plain"])
        rows.append([kind, fmt(raw, ".1f", MiB), fmt(stored, ".1f", MiB),
                     fmt(med["plain"], ".3f"), fmt(med["verify"], ".3f"), fmt(back, ".3f"),
                     "n/a" if over is None else f"{(over - 1) * 100:+.0f}%",
                     fmt(stored / back if back else None, ".0f", MiB)])
    n = max(r["repeat"] for r in recs) + 1
    header = ["store", "raw MiB", "stored MiB", "plain save median s", "verified save median s",
              "read-back median s", "overhead", "read-back MiB/s (stored)"]
    return "\n".join([*md_table(header, rows), "", f"Medians of {n} repeat(s) per mode."])


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__)
    p.add_argument("--size-mib", type=int, help="fp32 state size (default 256; --quick 16)")
    p.add_argument("--repeats", type=int, help="saves per mode and store (default 5; --quick 1)")
    p.add_argument("--stores", default="local,s3", help="comma-separated: local, s3")
    args = cli.settle(p.parse_args(argv), {"size_mib": 256, "repeats": 5},
                      {"size_mib": 16, "repeats": 1})
    state = build_state(args.size_mib, "fp32")
    holder, raw = Holder(state), raw_bytes(state.values())
    recs: list[dict[str, Any]] = []
    with cli.scratch(args, "verify-after-save") as workdir:
        for kind in args.stores.split(","):
            recs += run_store(kind, args, holder, workdir)
    report({"size_mib": args.size_mib, "raw_bytes": raw, "records": recs}, table(recs, raw),
           args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
