"""README.md's Python blocks run as written, against the S3 emulator.

The mechanism (README.md, "Development", says the same):

* every ```python block runs, in README order, in one namespace: later blocks use the names
  earlier ones define, as a reader pasting them into one Python session would;
* ``s3://bucket/`` in a block is rewritten to a fresh bucket on the emulator, and the ``AWS_*``
  environment variables point at the emulator, as they would at MinIO; no block gets storage
  options, so code that reaches the bucket through fsspec's defaults (Lightning's
  ``ModelCheckpoint``) is exercised as a user would run it;
* torch runs on one intra-op thread (the models are tiny; more threads only contend for the
  test machine's shared cores); the working directory is a temporary one; MLflow tracks to a
  file store there, and MLflow telemetry and the Hugging Face hub are switched off (no traffic
  leaves 127.0.0.1);
* a block whose previous non-blank line is ``<!-- not-run: reason -->`` is skipped; any other
  block that raises fails the test, naming its README line (tracebacks show README lines).

Then the quick start is run again in a fresh namespace: it must resume at its last step, as
the README says it does.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import Emulators, StoreFactory
from tests.unit.test_readme import Block, python_blocks

log = logging.getLogger(__name__)


def _code(b: Block, bucket: str) -> Any:
    code = b.code.replace("s3://bucket/", f"s3://{bucket}/")
    assert "s3://bucket" not in code, f"README.md:{b.line}: write bucket URIs as s3://bucket/..."
    return compile("\n" * b.line + code, "README.md", "exec")  # line numbers are README's


def _run(blocks: list[Block], bucket: str, ns: dict[str, Any]) -> None:
    for b in blocks:
        t0 = time.perf_counter()
        try:
            exec(_code(b, bucket), ns)
        except BaseException as e:  # SystemExit and KeyboardInterrupt are failures here too
            pytest.fail(f"README.md:{b.line}: the python block failed: {type(e).__name__}: "
                        f"{e}\n{''.join(traceback.format_exception(e)[-12:])}", pytrace=False)
        log.info("README.md:%d ran in %.1f s", b.line, time.perf_counter() - t0)


@pytest.fixture
def readme_env(emus: Emulators, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh bucket reachable through the environment alone; returns its name."""
    s3fs = pytest.importorskip("s3fs")
    s3 = StoreFactory("s3", emus, tmp_path)
    s3.uri("probe")  # creates the bucket
    assert s3.bucket is not None
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for k, v in {"AWS_ENDPOINT_URL_S3": s3.options["endpoint_url"],
                 "AWS_ACCESS_KEY_ID": s3.options["key"],
                 "AWS_SECRET_ACCESS_KEY": s3.options["secret"],
                 "MLFLOW_TRACKING_URI": (tmp_path / "mlruns").as_uri(),
                 "MLFLOW_ALLOW_FILE_STORE": "true", "MLFLOW_DISABLE_TELEMETRY": "true",
                 "DO_NOT_TRACK": "true", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"
                 }.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    s3fs.S3FileSystem.clear_instance_cache()  # filesystems made under another environment
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: intra-op threads only contend for shared cores
    try:
        yield s3.bucket
    finally:
        torch.set_num_threads(threads)
        s3fs.S3FileSystem.clear_instance_cache()


def test_the_readme_python_blocks_run_as_written(readme_env: str) -> None:
    found = python_blocks()
    runnable = [b for b in found if b.not_run is None]
    assert len(runnable) >= 8, "most README blocks must run"
    ns: dict[str, Any] = {"__name__": "__readme__"}
    _run(runnable, readme_env, ns)

    # the quick start checkpoints during its loop, not only at the final step
    kept = ns["kept"]
    assert 300 in kept and len(kept) >= 3, kept
    # the Lightning example's second fit resumed from the first's last.ckpt (4 steps an epoch)
    assert ns["trainer"].global_step == 8 and str(ns["trainer"].ckpt_path).endswith(
        "lightning/run1/last.ckpt/manifest.json")
    assert type(ns["best"]).__name__ == "LitNet"
    # ... and, run again as on a new machine, resumes at its last step with nothing to redo
    quick = [b for b in runnable if "class Net(" in b.code or "total_steps = 300" in b.code]
    assert len(quick) == 2
    again: dict[str, Any] = {"__name__": "__readme__"}
    _run(quick, readme_env, again)
    assert again["start"] == 300 and again["kept"] == kept
