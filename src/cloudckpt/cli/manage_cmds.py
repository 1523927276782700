"""``gc``, ``rm``, ``archive``, ``rehydrate``, ``cp``: change what is stored.

``gc`` and ``rm`` are dry runs unless given ``--yes``. torch is imported by ``gc`` alone (the
manager's garbage collection), not by the others.
"""

from __future__ import annotations

import argparse
from typing import Any

from cloudckpt.cli.output import human, print_json, progress
from cloudckpt.cli.session import options_arg
from cloudckpt.cli.targets import absence, is_checkpoint, open_location, survey
from cloudckpt.engine.commit import copy_checkpoint, delete_checkpoint, read_manifest
from cloudckpt.engine.verify import verify
from cloudckpt.errors import AlreadyExists, CorruptCheckpoint, InvalidArgument, NotFound
from cloudckpt.format.keys import STEP_RE, step_dir
from cloudckpt.manager.context import RunContext
from cloudckpt.manager.index import CheckpointRecord
from cloudckpt.storage import Store, open_store, parse_uri, substore

__all__ = ["register"]

_RAW = argparse.RawDescriptionHelpFormatter
_GC_EPILOG = """examples:
  cloudckpt gc s3://bucket/runs/exp1                  dry run: what would be deleted
  cloudckpt gc s3://bucket/runs/exp1 --yes --grace 600"""
_RM_EPILOG = """examples:
  cloudckpt rm s3://bucket/runs/exp1 --step 100            dry run: what would be deleted
  cloudckpt rm s3://bucket/runs/exp1 --step 100 --step 200 --yes
  cloudckpt rm s3://bucket/ckpts/one --yes                 a standalone checkpoint

A step directory of a run (RUN/step-000000000100) is deleted through its run, so data that
other checkpoints of the run share stays."""
_ARCHIVE_EPILOG = """examples:
  cloudckpt archive s3://bucket/runs/exp1 --step 100 --storage-class GLACIER_IR
  cloudckpt archive s3://bucket/runs/exp1 --step 100 --to gs://cold/runs/exp1 \\
      --dst-storage-options '{"token": "/path/key.json"}'

A step already archived as asked says so and exits 0; one archived elsewhere exits 6
(rehydrate it first)."""
_REHYDRATE_EPILOG = """examples:
  cloudckpt rehydrate s3://bucket/runs/exp1 --step 100     back to STANDARD (Azure: Hot)
  cloudckpt rehydrate s3://bucket/runs/exp1 --step 100 --storage-class STANDARD_IA

A step archived in place gets its objects' storage class changed back; one copied to an
archive URI is copied back under the run root, verified, and its archive pointer removed (the
archive copy stays). S3 Glacier Flexible / Deep Archive objects need a provider restore first
(exit 7, says so)."""
_CP_EPILOG = """examples:
  cloudckpt cp s3://bucket/runs/exp1 gs://other/runs/exp1 --dst-storage-options @gcs.json
  cloudckpt cp ./run/step-000000000100 s3://bucket/ckpts/step100"""


def _dst_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dst-storage-options", type=options_arg, default=None, metavar="JSON",
                   help="storage options for the destination, as JSON or @FILE")


def register(sub: Any) -> None:
    p = sub.add_parser("gc", help="delete unreferenced data and stale uploads (dry run unless "
                                  "--yes)", epilog=_GC_EPILOG, formatter_class=_RAW)
    p.add_argument("root", help="the run root (as given to CheckpointManager)")
    p.add_argument("--yes", action="store_true", help="really delete")
    p.add_argument("--grace", type=float, default=3600.0,
                   help="only touch objects older than this many seconds (default 3600)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser("rm", help="delete checkpoints (manifest first, then data; dry run "
                                  "unless --yes)", epilog=_RM_EPILOG, formatter_class=_RAW)
    p.add_argument("uri", help="a run root (with --step) or one checkpoint")
    p.add_argument("--step", type=int, action="append", help="step(s) of a run root; repeatable")
    p.add_argument("--yes", action="store_true", help="really delete")
    p.set_defaults(func=cmd_rm)

    p = sub.add_parser("archive", help="move a checkpoint to a colder tier or an archive URI",
                       epilog=_ARCHIVE_EPILOG, formatter_class=_RAW)
    p.add_argument("root", help="the run root")
    p.add_argument("--step", type=int, required=True, action="append",
                   help="step(s) to archive; repeatable")
    p.add_argument("--storage-class", help="e.g. GLACIER_IR, COLDLINE, Cool")
    p.add_argument("--to", help="archive root URI (another bucket, prefix or cloud)")
    _dst_options(p)
    p.set_defaults(func=cmd_archive)

    p = sub.add_parser("rehydrate", help="bring archived checkpoints back to the hot tier / "
                                         "the run root", epilog=_REHYDRATE_EPILOG,
                       formatter_class=_RAW)
    p.add_argument("root", help="the run root")
    p.add_argument("--step", type=int, required=True, action="append",
                   help="step(s) to bring back; repeatable")
    p.add_argument("--storage-class", help="class to move to (default: STANDARD; Azure: Hot)")
    p.set_defaults(func=cmd_rehydrate)

    p = sub.add_parser("cp", help="copy a checkpoint or a run (also across clouds), verified",
                       epilog=_CP_EPILOG, formatter_class=_RAW)
    p.add_argument("src", help="a checkpoint or a run root")
    p.add_argument("dst", help="destination URI (a run is copied step by step below it)")
    _dst_options(p)
    p.set_defaults(func=cmd_cp)


def cmd_gc(args: argparse.Namespace) -> int:
    from cloudckpt.manager import CheckpointManager

    mgr = CheckpointManager(args.root, keep_last=None, storage_options=args.storage_options)
    rep = mgr.gc(dry_run=not args.yes, grace=args.grace)
    if args.json:
        print_json({"dry_run": rep.dry_run, "orphans": rep.orphans, "bytes": rep.bytes,
                    "uploads": [{"key": u.key, "upload_id": u.upload_id} for u in rep.uploads],
                    "skipped_corrupt_steps": rep.skipped_corrupt})
        return 0
    verb = "would delete" if rep.dry_run else "deleted"
    for key in rep.orphans:
        print(f"{verb} {key}")
    for u in rep.uploads:
        print(f"{'would abort' if rep.dry_run else 'aborted'} upload {u.key} ({u.upload_id})")
    print(f"{verb} {len(rep.orphans)} objects ({human(rep.bytes)}) and {len(rep.uploads)} "
          f"uploads" + ("; pass --yes to delete" if rep.dry_run else ""))
    if rep.skipped_corrupt:
        print(f"left alone: steps {rep.skipped_corrupt} have a manifest that does not validate")
    return 0


def _records(ctx: RunContext) -> dict[int, CheckpointRecord]:
    return {r.step: r for r in ctx.records()}


def _run_of(text: str, store: Store, options: Any) -> tuple[RunContext, int] | None:
    """(the run, the step) when ``store`` (given as ``text``) is the step directory of a run,
    else None."""
    name = parse_uri(store.uri).prefix.rstrip("/").rpartition("/")[2]
    m = STEP_RE.match(name)
    parent = text.rstrip("/").rpartition("/")[0]
    if m is None or not parent or parent.endswith(":/"):
        return None
    return RunContext.open(parent, storage_options=options), int(m.group(1))


def _delete_steps(ctx: RunContext, steps: list[int], really: bool) -> None:
    from cloudckpt.manager.lifecycle import delete_step

    recs = _records(ctx)
    missing = [s for s in steps if s not in recs]
    if missing:
        raise NotFound(f"no committed checkpoint for step(s) {', '.join(map(str, missing))} "
                       f"under {ctx.uri}")
    for step in steps:
        r = recs[step]
        where = f" (archived at {r.uri})" if r.location == "archived" else ""
        if really:
            delete_step(ctx, step)
            print(f"deleted step {step}{where}")
        else:
            print(f"would delete step {step}{where}: {human(r.stored_bytes)} stored")


def cmd_rm(args: argparse.Namespace) -> int:
    store = open_location(args.uri, args.storage_options)
    if not args.step:
        if not is_checkpoint(store):
            found = survey(store)
            if not found.exists:
                raise absence(store, args.uri, found)
            raise InvalidArgument(f"{store.uri} is not a checkpoint; to delete steps of a run "
                                  "root pass --step N")
        run = _run_of(args.uri, store, args.storage_options)
        if run is not None and run[1] in _records(run[0]):
            _delete_steps(run[0], [run[1]], args.yes)
        elif args.yes:
            n = delete_checkpoint(store)
            print(f"deleted {store.uri} ({n} objects)")
        else:
            m = read_manifest(store)
            print(f"would delete {store.uri} ({len(m.objects) + 1} objects, "
                  f"{human(m.stored_bytes)} stored)")
    else:
        _delete_steps(RunContext.open(store, storage_options=args.storage_options),
                      sorted(set(args.step)), args.yes)
    if not args.yes:
        print("dry run: nothing deleted; pass --yes to delete")
    return 0


def _already(rec: CheckpointRecord, tier: str | None, args: argparse.Namespace) -> str | None:
    """Why archiving ``rec`` as asked is already done (a message), or None to go ahead.

    Raises:
        AlreadyExists: it is archived elsewhere than asked.
    """
    if rec.location == "archived":
        want = args.to.rstrip("/") if args.to else None
        if want and rec.uri.startswith(open_store(want, storage_options=args.dst_storage_options
                                                  or args.storage_options).uri.rstrip("/") + "/"):
            return f"step {rec.step} is already archived at {rec.uri}; nothing to do"
        raise AlreadyExists(f"step {rec.step} is already archived at {rec.uri}; to archive it "
                            "elsewhere, bring it back first (cloudckpt rehydrate)")
    if not args.to and args.storage_class and tier is not None \
            and tier.lower() == args.storage_class.lower():
        return f"step {rec.step} is already in storage class {tier}; nothing to do"
    return None


def cmd_archive(args: argparse.Namespace) -> int:
    from cloudckpt.manager.archive import archive_checkpoint
    from cloudckpt.manager.options import ArchivePolicy

    if not args.storage_class and not args.to:
        raise InvalidArgument("archive needs --storage-class, --to, or both")
    ctx = RunContext.open(args.root, storage_options=args.storage_options)
    policy = ArchivePolicy(storage_class=args.storage_class, uri=args.to,
                           storage_options=args.dst_storage_options or args.storage_options)
    recs = _records(ctx)
    for step in args.step:
        if step not in recs:
            raise NotFound(f"no committed checkpoint for step {step} under {ctx.uri}")
        done = _already(recs[step], recs[step].tier, args)
        if done:
            print(done)
            continue
        archive_checkpoint(ctx, step, policy)
        where = args.to or ctx.uri
        print(f"archived step {step} -> {where}" + (f" ({args.storage_class})"
                                                     if args.storage_class else ""))
    return 0


def cmd_rehydrate(args: argparse.Namespace) -> int:
    from cloudckpt.manager.rehydrate import rehydrate_checkpoint

    ctx = RunContext.open(args.root, storage_options=args.storage_options)
    for step in args.step:
        done = rehydrate_checkpoint(ctx, step, storage_class=args.storage_class)
        if done.action == "none":
            print(f"step {step} is not archived (hot under {ctx.uri}); nothing to do")
        elif done.action == "tier":
            print(f"rehydrated step {step}: {done.objects} object(s) {done.source} -> "
                  f"{done.storage_class}")
        else:
            print(f"rehydrated step {step}: copied back from {done.source or 'its archive'} "
                  f"to {ctx.uri}/{step_dir(step)} (verified; the archive copy stays)")
    return 0


def _copy_one(src: Store, dst: Store, options: Any) -> int:
    m = read_manifest(src)
    with progress(m.stored_bytes, f"cp {src.uri}") as bar:
        copy_checkpoint(src, dst, progress=bar.update, storage_options=options)
    rep = verify(dst)
    if not rep.ok:
        raise CorruptCheckpoint(f"copy at {dst.uri} failed verification: {rep.problems[0]}")
    print(f"copied {src.uri} -> {dst.uri} ({human(m.stored_bytes)}, verified)")
    return m.stored_bytes


def cmd_cp(args: argparse.Namespace) -> int:
    src = open_location(args.src, args.storage_options)
    dst = open_store(args.dst, storage_options=args.dst_storage_options)
    if is_checkpoint(src):
        _copy_one(src, dst, args.storage_options)
        return 0
    ctx = RunContext.open(src, storage_options=args.storage_options)
    records = ctx.records()
    if not records:
        raise absence(src, args.src)
    recs = [r for r in records if r.location == "hot"]
    if not recs:
        raise InvalidArgument(f"{src.uri} holds no hot checkpoint to copy (all archived: "
                              "cloudckpt rehydrate brings them back)")
    for r in recs:
        _copy_one(substore(src, step_dir(r.step)), substore(dst, step_dir(r.step)),
                  args.storage_options)
    return 0
