"""The options every scenario shares (``--quick``, ``--workdir``, ``--out``), defaults that
``--quick`` shrinks, and the run's own scratch directory."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.lib import REPO


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser described by ``doc``'s first paragraph, with the shared options."""
    p = argparse.ArgumentParser(prog=f"python -m bench.{Path(sys.argv[0]).stem}",
                                description=doc.split("\n\n")[0] if doc else None)
    p.add_argument("--quick", action="store_true",
                   help="smallest sizes, one repeat: checks that the scenario runs (its figures "
                   "mean nothing); explicit options still win")
    p.add_argument("--workdir", type=Path, default=REPO / "bench" / ".scratch",
                   help="local scratch directory (not a tmpfs); only the run's own "
                   "sub-directory is created and removed")
    p.add_argument("--out", type=Path, help="write the JSON results here")
    return p


def settle(args: argparse.Namespace, defaults: dict[str, Any],
           quick: dict[str, Any]) -> argparse.Namespace:
    """Fill each option in ``defaults`` left unset (None): from ``quick`` under ``--quick``
    where it has one, else from ``defaults``."""
    for name, value in defaults.items():
        if getattr(args, name, None) is None:
            setattr(args, name, quick.get(name, value) if args.quick else value)
    return args


@contextmanager
def scratch(args: argparse.Namespace, prefix: str) -> Iterator[Path]:
    """``WORKDIR/PREFIX-PID``, created now and removed (only it) when the block ends."""
    path = args.workdir.resolve() / f"{prefix}-{os.getpid()}"
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
