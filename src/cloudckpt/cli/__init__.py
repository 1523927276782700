"""The ``cloudckpt`` command line: see, check, move and clean checkpoints without Python.

Commands: ``ls``, ``show``, ``verify``, ``diff``, ``gc``, ``rm``, ``archive``, ``cp``,
``export``, ``import``, ``average``, ``repair``, ``report``, ``download``, ``demo``. ``--json``
on listing commands prints machine-readable output;
data-moving commands show a progress bar on a terminal. Errors are one line (``--debug`` for a
traceback).

Exit status:
  0  success
  1  problems found (``verify``/``ls --verify`` found damage; ``diff`` found differences;
     ``repair`` left damage: a dry run, or checkpoints it had to quarantine)
  2  usage error (bad arguments, malformed URI or key)
  3  not found (no checkpoint, incomplete checkpoint)
  4  access denied
  5  corrupt checkpoint
  6  already exists (refusing to overwrite)
  7  other storage error
  130 interrupted
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from cloudckpt.errors import (
    AccessDenied,
    AlreadyExists,
    CloudckptError,
    CorruptCheckpoint,
    InvalidArgument,
    InvalidKey,
    InvalidURI,
    NotFound,
    UnsupportedValue,
)

__all__ = ["main"]

EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (InvalidURI, 2), (InvalidKey, 2), (InvalidArgument, 2), (UnsupportedValue, 2),
    (NotFound, 3), (AccessDenied, 4), (CorruptCheckpoint, 5), (AlreadyExists, 6),
    (CloudckptError, 7),
)


def _parser() -> argparse.ArgumentParser:
    from cloudckpt.cli import (
        average_cmds,
        convert_cmds,
        download_cmds,
        inspect_cmds,
        manage_cmds,
        repair_cmds,
        report_cmds,
    )

    p = argparse.ArgumentParser(prog="cloudckpt", description=__doc__.split("\n\n")[0],
                                epilog="exit status: 0 ok, 1 problems found, 2 usage, 3 not found,"
                                       " 4 access denied, 5 corrupt, 6 exists, 7 storage error")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("-o", "--storage-options", type=json.loads, default=None, metavar="JSON",
                   help="fsspec storage options for the (source) URI, as JSON")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (inspect_cmds, manage_cmds, convert_cmds, average_cmds, repair_cmds,
                   report_cmds, download_cmds):
        module.register(sub)
    demo = sub.add_parser("demo", help="train, checkpoint, get killed, resume (the main job)",
                          add_help=False)
    demo.set_defaults(func=None)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cloudckpt`` command; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "demo":
        from cloudckpt.demo import main as demo_main

        return demo_main(args_list[1:])
    parser = _parser()
    args = parser.parse_args(args_list)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("cloudckpt: interrupted", file=sys.stderr)
        return 130
    except CloudckptError as e:
        if args.debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"cloudckpt: error: {msg}", file=sys.stderr)
        return next(code for cls, code in EXIT_CODES if isinstance(e, cls))
    except (OSError, ValueError) as e:  # e.g. a local file that cannot be read
        if args.debug:
            raise
        print(f"cloudckpt: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 7 if isinstance(e, OSError) else 2


if __name__ == "__main__":
    sys.exit(main())
