"""One measurement in a fresh interpreter, so that ``ru_maxrss`` is that measurement's own peak.

The parent calls :func:`run` with a worker function named ``"module:function"`` (a function of
one JSON-able ``job`` dict that returns a JSON-able dict) and gets that dict back. The child is
``python -m bench.lib.worker MODULE:FUNCTION JOB_JSON``: it imports the module, calls the
function and prints its result as the last JSON line of its stdout, or ``{"error": ...,
"traceback": ...}`` if it raised, so the parent reports a failed run and keeps going.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import traceback
from typing import Any

from bench.lib import REPO
from bench.lib.stores import CREDS


def env() -> dict[str, str]:
    """A worker's environment: ``bench`` importable, moto credentials, no AWS profile or
    instance-metadata look-ups (the benches only ever talk to a local moto server)."""
    e = dict(os.environ)
    e.pop("AWS_PROFILE", None)
    # byte-compiled modules are cached as for any user; otherwise every fresh worker would
    # recompile every module it imports, inside the timed region of lazily imported ones
    e.pop("PYTHONDONTWRITEBYTECODE", None)
    e.update(AWS_ACCESS_KEY_ID=CREDS["key"], AWS_SECRET_ACCESS_KEY=CREDS["secret"],
             AWS_EC2_METADATA_DISABLED="true", PYTHONUNBUFFERED="1",
             PYTHONPATH=os.pathsep.join(p for p in (str(REPO), e.get("PYTHONPATH")) if p))
    return e


def command(target: str, job: dict[str, Any]) -> list[str]:
    """The command line of a worker running ``target`` (``"module:function"``) on ``job``."""
    return [sys.executable, "-m", "bench.lib.worker", target, json.dumps(job)]


def last_json(stdout: str) -> dict[str, Any] | None:
    """The last line of ``stdout`` that is a JSON object, parsed; None if there is none."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else None


def run(target: str, job: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run ``target`` on ``job`` in a fresh interpreter; its result, or ``{"error": ...}``."""
    try:
        proc = subprocess.run(command(target, job), capture_output=True, text=True,
                              timeout=timeout, env=env(), cwd=REPO, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"worker timed out after {timeout} s"}
    result = last_json(proc.stdout)
    if proc.returncode != 0 or result is None:
        return {"error": f"worker exit {proc.returncode}: {proc.stderr.strip()[-1500:]}"}
    return result


def spawn(target: str, job: dict[str, Any]) -> subprocess.Popen[str]:
    """Start a worker with pipes on stdin and stdout (for a worker that waits for a cue)."""
    return subprocess.Popen(command(target, job), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env(), cwd=REPO)


def main(argv: list[str]) -> int:
    target, spec = argv
    module, _, name = target.partition(":")
    try:
        result = getattr(importlib.import_module(module), name)(json.loads(spec))
    except BaseException as e:  # reported to the parent, which keeps going
        result = {"error": f"{type(e).__name__}: {e}"[:2000],
                  "traceback": traceback.format_exc()[-3000:]}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
