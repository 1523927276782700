"""Shared by the bench scripts: run one measurement in a fresh interpreter and read its JSON
result line back (fresh processes make peak-RSS figures per measurement)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

#: what moto accepts; the benches only ever talk to a local moto server
CREDS = {"key": "testing", "secret": "testing"}


def worker_env() -> dict[str, str]:
    """The environment of a worker: moto credentials, no AWS profile or metadata lookups."""
    env = dict(os.environ)
    env.pop("AWS_PROFILE", None)
    env.update(AWS_ACCESS_KEY_ID=CREDS["key"], AWS_SECRET_ACCESS_KEY=CREDS["secret"],
               AWS_EC2_METADATA_DISABLED="true", PYTHONUNBUFFERED="1")
    return env


def run_worker(script: str | Path, job: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run ``script --worker JOB`` in a fresh interpreter; its last JSON line (or ``error``)."""
    cmd = [sys.executable, str(Path(script).resolve()), "--worker", json.dumps(job)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=worker_env(), check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"worker timed out after {timeout} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"worker exit {proc.returncode}: {proc.stderr.strip()[-1500:]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


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
