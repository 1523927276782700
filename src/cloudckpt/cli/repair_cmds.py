"""``repair``: restore damaged checkpoints of a run from intact copies, quarantine the rest
(dry run unless ``--yes``). The logic is :mod:`cloudckpt.manager.repair`."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from cloudckpt.cli.output import print_json
from cloudckpt.cli.session import options_arg

if TYPE_CHECKING:
    from cloudckpt.manager.repair import RepairReport, StepRepair

__all__ = ["register"]

_EPILOG = """examples:
  cloudckpt repair s3://bucket/runs/exp1                      dry run: what it would do
  cloudckpt repair s3://bucket/runs/exp1 --yes
  cloudckpt repair s3://bucket/runs/exp1 --from gs://backup/runs/exp1 --yes \\
      --from-storage-options '{"token": "/path/key.json"}'"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "repair", help="restore damaged checkpoints of a run from intact copies, quarantine "
                       "the rest (dry run unless --yes); exit 1 while damage remains",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="run root (the URI a CheckpointManager was given)")
    p.add_argument("--yes", action="store_true", help="really rewrite and quarantine")
    p.add_argument("--from", dest="replicas", action="append", default=[], metavar="URI",
                   help="a copy (`cloudckpt cp`) of the run or of one of its checkpoints to "
                        "restore from; repeatable")
    p.add_argument("--from-storage-options", type=options_arg, default=None, metavar="JSON",
                   help="fsspec storage options for the --from URIs, as JSON or @FILE "
                        "(default: -o's)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_repair)


def _row(s: StepRepair) -> dict[str, Any]:
    return {"step": s.step, "uri": s.uri, "status": s.status, "problems": list(s.problems),
            "objects": [{"key": f.key, "problem": f.problem, "sources": list(f.sources)}
                        for f in s.fixes],
            "manifest_from": s.manifest_from, "reason": s.reason,
            "was_quarantined": s.quarantined}


def _print_text(rep: RepairReport) -> None:
    would = rep.dry_run
    for s in rep.steps:
        for prob in s.problems[:10]:
            print(f"step {s.step}: damaged: {prob}")
        if len(s.problems) > 10:
            print(f"step {s.step}: ... and {len(s.problems) - 10} more problems")
        st = s.status
        if st == "healthy" and s.quarantined:
            print(f"step {s.step}: verifies now; {'would lift' if would else 'lifted'} "
                  "its quarantine")
        elif st in ("repairable", "repaired"):
            for f in s.fixes:
                src = "; ".join(f.sources) or "from its own intact chunks"
                print(f"step {s.step}: {'would rewrite' if would else 'rewrote'} {f.key}: {src}")
            if s.manifest_from:
                print(f"step {s.step}: {'would restore' if would else 'restored'} "
                      f"manifest.json from {s.manifest_from}")
            if not would:
                print(f"step {s.step}: repaired and verified")
        elif st == "unrepairable":
            print(f"step {s.step}: would quarantine: {s.reason}")
        elif st == "quarantined":
            print(f"step {s.step}: quarantined: {s.reason}")
        elif st == "skipped":
            print(f"step {s.step}: not checked: {s.reason}")
    for step in rep.stale_markers:
        print(f"step {step}: {'would remove' if would else 'removed'} a stale quarantine marker")
    counts: dict[str, int] = {}
    for s in rep.steps:
        counts[s.status] = counts.get(s.status, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    print(f"checked {len(rep.steps)} checkpoints of {rep.uri}: {summary or 'none'}"
          + ("; dry run, pass --yes to repair and quarantine" if would and rep.damage_left
             else ""))


def cmd_repair(args: argparse.Namespace) -> int:
    from cloudckpt.manager import RunContext
    from cloudckpt.manager.repair import repair_run

    ctx = RunContext.open(args.root, storage_options=args.storage_options)
    rep = repair_run(ctx, dry_run=not args.yes, replicas=args.replicas,
                     replica_options=args.from_storage_options)
    if args.json:
        print_json({"uri": rep.uri, "dry_run": rep.dry_run, "damage_left": rep.damage_left,
                    "steps": [_row(s) for s in rep.steps],
                    "stale_markers": list(rep.stale_markers)})
    else:
        _print_text(rep)
    return 1 if rep.damage_left else 0
