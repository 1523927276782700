"""``report``: a run as one self-contained HTML page of plots (no network needed to view it)."""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path
from typing import Any

__all__ = ["register"]

_EXAMPLES = """examples:
  cloudckpt report s3://bucket/runs/exp1 --html exp1.html
  cloudckpt report ./runs/exp1 --html exp1.html --metric loss --keep-last 3 --keep-every 1000

The page plots stored and shared bytes, compression ratio, save duration and throughput,
every metric, tiers, lineage, and which checkpoints retention keeps and why. The retention
policy is not stored in the run: give the one your training uses (the defaults are the
CheckpointManager's: keep the last 3 and the best 1 by --metric).
"""


def _nonneg_int(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _seconds(text: str) -> float:
    v = float(text)
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, got {text}")
    return v


def register(sub: Any) -> None:
    p = sub.add_parser("report", help="write a run's checkpoints as one HTML page of plots",
                       description=__doc__, epilog=_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("uri", help="run root (the URI given to CheckpointManager)")
    p.add_argument("--html", required=True, metavar="FILE",
                   help="where to write the page ('-' for standard output)")
    p.add_argument("--metric", default=None,
                   help="the metric retention ranks by (the manager's metric=)")
    p.add_argument("--mode", choices=("min", "max"), default="min",
                   help="whether a lower or higher --metric is better (default: min)")
    p.add_argument("--keep-last", type=_nonneg_int, default=3, metavar="N",
                   help="retention keeps the N newest (default: 3)")
    p.add_argument("--keep-best", type=_nonneg_int, default=1, metavar="K",
                   help="and the K best by --metric (default: 1)")
    p.add_argument("--keep-every", type=_nonneg_int, default=None, metavar="N",
                   help="and every step that is a multiple of N")
    p.add_argument("--keep-within", type=_seconds, default=None, metavar="SECONDS",
                   help="and every checkpoint committed within SECONDS of now")
    p.set_defaults(func=cmd_report)


def _policy(args: argparse.Namespace) -> Any:
    from cloudckpt.manager.retention import (
        AnyOf,
        KeepBest,
        KeepEvery,
        KeepLast,
        KeepWithin,
        RetentionPolicy,
    )

    parts: list[RetentionPolicy] = [KeepLast(args.keep_last)]
    if args.keep_best and args.metric:
        parts.append(KeepBest(args.keep_best, args.metric, args.mode))
    if args.keep_every:
        parts.append(KeepEvery(args.keep_every))
    if args.keep_within is not None:
        parts.append(KeepWithin(args.keep_within))
    return AnyOf(tuple(parts))


def _write(path: str, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (a temp file renamed into place)."""
    if path == "-":
        sys.stdout.write(text)
        return
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:  # the umask applies, as for any new file
            f.write(text)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def cmd_report(args: argparse.Namespace) -> int:
    """Gather the run and write the page.

    Raises:
        NotFound: nothing at the URI, or no checkpoint there (exit 3).
        InvalidArgument: the URI is one checkpoint, not a run root (exit 2).
        StorageError: the run could not be listed (exit 7); OSError: the page not written.
    """
    from cloudckpt.cli.report_html import render_html
    from cloudckpt.cli.targets import is_checkpoint
    from cloudckpt.errors import InvalidArgument, NotFound
    from cloudckpt.manager.context import RunContext
    from cloudckpt.manager.report import gather_report

    ctx = RunContext.open(args.uri, storage_options=args.storage_options, metric=args.metric,
                          mode=args.mode, retention=_policy(args))
    if is_checkpoint(ctx.store):
        raise InvalidArgument(f"{ctx.uri} is one checkpoint, not a run: give its run root")
    report = gather_report(ctx)
    if not report.rows:
        anything = next(iter(ctx.store.list()), None) is not None
        raise NotFound(f"no checkpoints under {ctx.uri}" if anything
                       else f"nothing at {ctx.uri} (check the URI)")
    _write(args.html, render_html(report))
    bad = sum(r.damaged for r in report.rows)
    if args.html != "-":
        print(f"wrote {args.html}: {len(report.rows)} checkpoints"
              + (f" ({bad} damaged)" if bad else ""))
    return 0
