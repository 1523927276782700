"""The ``cloudckpt`` command line: see, check, move and clean checkpoints without Python.

Commands: ``ls``, ``show``, ``verify``, ``diff``, ``gc``, ``rm``, ``archive``, ``rehydrate``,
``cp``, ``export``, ``import``, ``average``, ``repair``, ``report``, ``download``, ``demo``.
``--json`` on listing commands prints machine-readable output; data-moving commands show a
progress bar on a terminal; commands that delete are dry runs unless given ``--yes``. The
global options (``-o/--storage-options``, ``--debug``) go before or after the command.
Errors are one line on stderr (``--debug`` for a traceback); credentials given in storage
options never appear in any output. Modules that need torch import it only when a command
that moves tensors runs: ``ls``, ``show`` and ``verify`` start without it.

Exit status:
  0   success (also: ``ls`` of an existing location that holds no checkpoint, which it says)
  1   problems found (``verify``/``ls --verify`` found damage; ``diff`` found differences;
      ``repair`` left damage: a dry run, or checkpoints it had to quarantine)
  2   usage error (bad arguments, malformed URI or key, an input file that cannot be used)
  3   not found (nothing at that path or prefix, no checkpoint there, no such step,
      an incomplete checkpoint)
  4   access denied
  5   corrupt checkpoint
  6   already exists (refusing to overwrite; a step archived elsewhere than asked)
  7   other storage error (an unreachable endpoint after the connect budget, timeouts, ...)
  70  internal error (a bug: ``--debug`` shows the traceback to report)
  130 interrupted
  141 stdout closed early by its reader (``cloudckpt ls RUN | head -1``); nothing printed
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from cloudckpt.cli.session import options_arg, quiet_broken_pipe, secrets_of, session
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

__all__ = ["EXIT_CODES", "main"]

EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (InvalidURI, 2), (InvalidKey, 2), (InvalidArgument, 2), (UnsupportedValue, 2),
    (NotFound, 3), (AccessDenied, 4), (CorruptCheckpoint, 5), (AlreadyExists, 6),
    (CloudckptError, 7),
)
EXIT_INTERNAL = 70
_EPILOG = """examples:
  cloudckpt ls s3://bucket/runs/exp1
  cloudckpt ls s3://bucket/runs/exp1 -o '{"endpoint_url": "http://localhost:9000"}'
  cloudckpt -o @s3-options.json verify s3://bucket/runs/exp1
  cloudckpt COMMAND --help

exit status: 0 ok, 1 problems found, 2 usage, 3 not found, 4 access denied, 5 corrupt,
6 exists, 7 storage error, 70 internal error, 130 interrupted, 141 stdout closed early"""


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (the command's subparsers inherit the class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _global_options(p: argparse.ArgumentParser, *, top: bool) -> None:
    """The options every command takes; on a command's own parser they default to SUPPRESS so
    that a value given before the command is not reset by the command's parser."""
    unset: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    p.add_argument("--debug", action="store_true", help="show tracebacks and every log record",
                   **unset)
    p.add_argument("-o", "--storage-options", type=options_arg, metavar="JSON",
                   help="fsspec storage options for the (source) URI: a JSON object, or @FILE "
                        "holding one (keeps credentials out of the process list)",
                   **({"default": None} if top else unset))


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

    p = _Parser(prog="cloudckpt", description=__doc__.split("\n\n")[0],
                epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _global_options(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           help="run 'cloudckpt COMMAND --help' for its options and examples")
    for module in (inspect_cmds, manage_cmds, convert_cmds, average_cmds, repair_cmds,
                   report_cmds, download_cmds):
        module.register(sub)
    for name, cmd in sub.choices.items():  # the global options after the command, too
        if name != "demo":
            _global_options(cmd, top=False)
    demo = sub.add_parser("demo", help="train, checkpoint, get killed, resume (the main job)",
                          add_help=False, epilog="example:\n  cloudckpt demo --steps 200\n"
                          "  cloudckpt demo --help   (the demo's own options)",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.set_defaults(func=None)
    return p


def _error_line(e: BaseException) -> str:
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(e, CloudckptError):
        return first or type(e).__name__
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _run(args: argparse.Namespace) -> int:
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a reader that went away shows here at the latest
        return code
    except BrokenPipeError:
        return quiet_broken_pipe()
    except KeyboardInterrupt:
        print("cloudckpt: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        if isinstance(e, CloudckptError):
            code = next(c for cls, c in EXIT_CODES if isinstance(e, cls))
        elif isinstance(e, ImportError):  # a missing extra (s3fs, gcsfs, adlfs...)
            code = 2
        elif isinstance(e, (OSError, ValueError)):  # e.g. a local file that cannot be read
            code = 7 if isinstance(e, OSError) else 2
        else:
            code = EXIT_INTERNAL
        hint = " (internal error; run with --debug for the traceback)" \
            if code == EXIT_INTERNAL else ""
        print(f"cloudckpt: error: {_error_line(e)}{hint}", file=sys.stderr)
        return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cloudckpt`` command; returns the exit status (see the module
    docstring). Any caller; a usage error exits through argparse (``SystemExit(2)``)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "demo":
        from cloudckpt.demo import main as demo_main

        return demo_main(args_list[1:])
    args = _parser().parse_args(args_list)
    with session(args.debug, secrets_of(args)):
        return _run(args)


if __name__ == "__main__":
    sys.exit(main())
