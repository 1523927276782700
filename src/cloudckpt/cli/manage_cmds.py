"""``gc``, ``rm``, ``archive``, ``cp``: change what is stored."""

from __future__ import annotations

import argparse
import json
from typing import Any

from cloudckpt.cli.output import human, print_json, progress
from cloudckpt.cli.targets import is_checkpoint
from cloudckpt.engine.commit import copy_checkpoint, delete_checkpoint, read_manifest
from cloudckpt.engine.verify import verify
from cloudckpt.errors import CorruptCheckpoint, InvalidArgument
from cloudckpt.format.keys import step_dir
from cloudckpt.manager import ArchivePolicy, CheckpointManager
from cloudckpt.manager.archive import archive_checkpoint
from cloudckpt.storage import open_store, substore

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser("gc", help="delete unreferenced data and stale uploads (dry run unless --yes)")
    p.add_argument("root")
    p.add_argument("--yes", action="store_true", help="really delete")
    p.add_argument("--grace", type=float, default=3600.0,
                   help="only touch objects older than this many seconds (default 3600)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser("rm", help="delete a checkpoint (manifest first, then data)")
    p.add_argument("uri")
    p.add_argument("--step", type=int, action="append", help="step(s) of a run root")
    p.set_defaults(func=cmd_rm)

    p = sub.add_parser("archive", help="move a checkpoint to a colder tier or an archive URI")
    p.add_argument("root")
    p.add_argument("--step", type=int, required=True, action="append")
    p.add_argument("--storage-class", help="e.g. GLACIER_IR, COLDLINE, Cool")
    p.add_argument("--to", help="archive root URI (another bucket, prefix or cloud)")
    p.add_argument("--dst-storage-options", type=json.loads, default=None, metavar="JSON")
    p.set_defaults(func=cmd_archive)

    p = sub.add_parser("cp", help="copy a checkpoint or a run (also across clouds), verified")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--dst-storage-options", type=json.loads, default=None, metavar="JSON")
    p.set_defaults(func=cmd_cp)


def cmd_gc(args: argparse.Namespace) -> int:
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


def cmd_rm(args: argparse.Namespace) -> int:
    store = open_store(args.uri, storage_options=args.storage_options)
    if not args.step:
        if not is_checkpoint(store):
            raise InvalidArgument(f"{store.uri} is not a checkpoint; to delete steps of a run "
                                  "root pass --step N")
        n = delete_checkpoint(store)
        print(f"deleted {store.uri} ({n} objects)")
        return 0
    mgr = CheckpointManager(store, keep_last=None)
    for step in args.step:
        if step not in mgr.steps():
            raise InvalidArgument(f"no committed checkpoint for step {step} under {store.uri}")
        mgr.delete(step)
        print(f"deleted step {step}")
    return 0


def cmd_archive(args: argparse.Namespace) -> int:
    if not args.storage_class and not args.to:
        raise InvalidArgument("archive needs --storage-class, --to, or both")
    mgr = CheckpointManager(args.root, keep_last=None, storage_options=args.storage_options)
    policy = ArchivePolicy(storage_class=args.storage_class, uri=args.to,
                           storage_options=args.dst_storage_options or args.storage_options)
    steps = mgr.steps()
    for step in args.step:
        if step not in steps:
            raise InvalidArgument(f"no committed checkpoint for step {step} under {mgr.uri}")
        archive_checkpoint(mgr.context, step, policy)
        where = args.to or mgr.uri
        print(f"archived step {step} -> {where}" + (f" ({args.storage_class})"
                                                     if args.storage_class else ""))
    return 0


def _copy_one(src: Any, dst: Any) -> int:
    m = read_manifest(src)
    with progress(m.stored_bytes, f"cp {src.uri}") as bar:
        copy_checkpoint(src, dst, progress=bar.update)
    rep = verify(dst)
    if not rep.ok:
        raise CorruptCheckpoint(f"copy at {dst.uri} failed verification: {rep.problems[0]}")
    print(f"copied {src.uri} -> {dst.uri} ({human(m.stored_bytes)}, verified)")
    return m.stored_bytes


def cmd_cp(args: argparse.Namespace) -> int:
    src = open_store(args.src, storage_options=args.storage_options)
    dst = open_store(args.dst, storage_options=args.dst_storage_options)
    if is_checkpoint(src):
        _copy_one(src, dst)
        return 0
    mgr = CheckpointManager(src, keep_last=None)
    recs = [r for r in mgr.checkpoints() if r.location == "hot"]
    if not recs:
        raise InvalidArgument(f"{src.uri} holds no checkpoint to copy")
    for r in recs:
        _copy_one(substore(src, step_dir(r.step)), substore(dst, step_dir(r.step)))
    return 0
