"""What every run of a command shares: credentials kept out of all output, log records as one
line each, a reader that closes stdout early (``| head``) ending the command quietly.

Only :func:`cloudckpt.cli.main` uses this module; each context manager restores what it
changed when the command ends (the process's streams, the root logger's handlers, the
warning filters), so an in-process caller (tests) sees no lasting change.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

__all__ = ["EXIT_BROKEN_PIPE", "options_arg", "quiet_broken_pipe", "secrets_of", "session"]

#: exit status when stdout's reader went away (128 + SIGPIPE, as a shell reports ``ls | head``)
EXIT_BROKEN_PIPE = 141
#: storage option names whose values are not credentials (everything else is treated as one)
_PLAIN_KEYS = frozenset({
    "endpoint_url", "region_name", "region", "anon", "account_name", "project", "use_ssl",
    "requester_pays", "default_block_size", "use_listings_cache", "skip_instance_cache",
    "version_aware", "timeout", "connection_timeout", "read_timeout", "consistency",
    "default_location", "client_kwargs", "config_kwargs", "s3_additional_kwargs",
})
#: parts of a connection string / SAS query that are credentials
_SECRET_PARTS = ("accountkey", "sharedaccesssignature", "sig", "password", "secret", "token")
_MIN_SECRET = 6  # shorter values are not scrubbed (they would clobber ordinary words)


def options_arg(text: str) -> dict[str, Any]:
    """argparse ``type`` of the storage-options flags: a JSON object, or ``@FILE`` holding
    one. Error messages never repeat the value (it may hold credentials).

    Raises:
        argparse.ArgumentTypeError: not a JSON object, or the file cannot be read.
    """
    if text.startswith("@"):
        try:
            text = Path(text[1:]).expanduser().read_text()
        except OSError as e:
            raise argparse.ArgumentTypeError(
                f"cannot read {text[1:]!r}: {e.strerror or type(e).__name__}") from None
    try:
        value = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            "not valid JSON (the value is not shown: it may hold credentials)") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object like '{{\"endpoint_url\": ...}}', got {type(value).__name__}")
    return value


def _collect(value: Any, key: str, out: set[str]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _collect(v, str(k), out)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _collect(v, key, out)
    elif isinstance(value, str) and key.lower() not in _PLAIN_KEYS:
        out.add(value)
        for part in value.replace("&", ";").replace("?", ";").split(";"):
            name, eq, val = part.partition("=")
            if eq and name.strip().lower() in _SECRET_PARTS:
                out.add(val.strip())


def secrets_of(args: argparse.Namespace) -> frozenset[str]:
    """Every credential-like string in the command's storage options (each ``*storage_options``
    attribute of ``args``): values of keys other than known plain settings, and the key / SAS
    parts of connection strings. Pure."""
    out: set[str] = set()
    for name, value in vars(args).items():
        if name.endswith("storage_options") and value:
            _collect(value, name, out)
    return frozenset(s for s in out if len(s) >= _MIN_SECRET)


def scrub(text: str, secrets: frozenset[str]) -> str:
    """``text`` with every secret replaced by ``***`` (longest first). Pure."""
    for s in sorted(secrets, key=len, reverse=True):
        if s in text:
            text = text.replace(s, "***")
    return text


class _Scrubbing(io.TextIOBase):
    """A text stream that writes to ``inner`` with the secrets replaced."""

    def __init__(self, inner: TextIO, secrets: frozenset[str]) -> None:
        super().__init__()
        self._inner, self._secrets = inner, secrets

    def write(self, s: str) -> int:
        self._inner.write(scrub(s, self._secrets))
        return len(s)

    def flush(self) -> None:
        self._inner.flush()

    def fileno(self) -> int:
        return self._inner.fileno()

    def isatty(self) -> bool:
        return self._inner.isatty()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._inner, "encoding", "utf-8")


class _OneLine(logging.Handler):
    """Log records as ``cloudckpt: warning: <first line>`` on the current stderr. Without
    ``debug``: only cloudckpt's own records, and none of the storage layer's retry notes (the
    command's error line says how the retries ended); with it: every record, in full."""

    def __init__(self, debug: bool) -> None:
        super().__init__(logging.DEBUG if debug else logging.WARNING)
        self._debug = debug

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self._debug:
                text = f"cloudckpt: {record.levelname.lower()}: {record.name}: " \
                       f"{self.format(record)}"
            else:
                if not record.name.startswith("cloudckpt") or (
                        record.name.startswith("cloudckpt.storage")
                        and record.levelno < logging.ERROR):
                    return
                lines = record.getMessage().strip().splitlines() or [""]
                text = f"cloudckpt: {record.levelname.lower()}: {lines[0]}"
            sys.stderr.write(text + "\n")
        except Exception:  # a log line must never end the command
            self.handleError(record)


@contextlib.contextmanager
def session(debug: bool, secrets: frozenset[str]) -> Iterator[None]:
    """For the duration of one command: stdout and stderr scrubbed of ``secrets`` (when there
    are any); log records through :class:`_OneLine`, added next to the root logger's handlers
    (with none configured, as in a shell, it replaces logging's last-resort output); warnings
    silenced unless ``debug``. All restored on exit."""
    root = logging.getLogger()
    saved_level = root.level
    handler = _OneLine(debug)
    root.addHandler(handler)
    if debug:
        root.setLevel(logging.INFO)
    streams = contextlib.ExitStack()
    if secrets:
        streams.enter_context(contextlib.redirect_stdout(_Scrubbing(sys.stdout, secrets)))
        streams.enter_context(contextlib.redirect_stderr(_Scrubbing(sys.stderr, secrets)))
    try:
        with streams, warnings.catch_warnings():
            if not debug:
                warnings.simplefilter("ignore")
            yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved_level)


def quiet_broken_pipe() -> int:
    """stdout's reader went away (``cloudckpt show ... | head -1``): point the stdout file
    descriptor at ``/dev/null`` so that the interpreter's final flush cannot fail again (the
    recipe of Python's ``signal`` documentation) and return :data:`EXIT_BROKEN_PIPE`."""
    with contextlib.suppress(OSError, ValueError):  # no file descriptor (in-process callers)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return EXIT_BROKEN_PIPE
