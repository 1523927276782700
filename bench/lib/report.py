"""Output: number formatting, markdown tables, progress lines on stderr, the description of the
machine, and the JSON results file."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any


def fmt(v: float | None, spec: str, scale: float = 1.0) -> str:
    """``v / scale`` formatted with ``spec``, or ``n/a`` for a missing figure."""
    return "n/a" if v is None else format(v / scale, spec)


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """The lines of a markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def error_lines(label: str, errors: Iterable[str]) -> list[str]:
    """A blank line and one markdown bullet per distinct error of ``label`` (a failed run is
    reported, never dropped); nothing when there are none."""
    bullets = [f"- {label} error: `{err[:500]}`" for err in errors]
    return ["", *bullets] if bullets else []


def progress(label: str, rec: dict[str, Any], describe: Callable[[dict[str, Any]], str]) -> None:
    """One line on stderr about a finished run: ``describe(rec)``, or its error."""
    msg = f"ERROR {rec['error'][:300]}" if "error" in rec else describe(rec)
    print(f"  {label} {msg}", file=sys.stderr, flush=True)


def machine(**versions: str) -> dict[str, Any]:
    """What the figures were measured on (plus any extra library ``versions``)."""
    import platform
    from datetime import datetime, timezone

    import torch

    import cloudckpt

    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "torch": torch.__version__,
            "cloudckpt": cloudckpt.__version__, **versions,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def report(result: dict[str, Any], table: str, out: Path | None, **versions: str) -> None:
    """Print the markdown ``table`` and write ``result`` (with machine and argv) to ``out``."""
    result["machine"] = machine(**versions)
    result["argv"] = sys.argv
    print(table)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
