"""A loopback HTTP proxy that throttles like a storage service above a request rate.

Put it between a client and an emulator and point the client at :attr:`ThrottlingProxy.endpoint`::

    with ThrottlingProxy("http://127.0.0.1:9000", rate=50, burst=10) as proxy:
        store = open_store("s3://bucket/run", storage_options={"endpoint_url": proxy.endpoint})
        ...
        proxy.accepted, proxy.throttled, proxy.accepted_per_second()

Requests are admitted by a token bucket (``rate`` per second, ``burst`` deep) shared by all
connections; a request over the rate gets the service's throttling answer without reaching the
upstream (``flavor``: ``"s3"`` 503 SlowDown, ``"gcs"`` 429 rateLimitExceeded, ``"azure"`` 503
ServerBusy). Admitted requests are forwarded whole (HTTP/1.1, keep-alive, ``Content-Length`` or
chunked bodies; ``Expect: 100-continue`` answered here) and their answers relayed whole: fine
for the small objects of request-rate tests, not a streaming proxy.

Listens on 127.0.0.1 only, on a free port. Threads: one serving, one per connection. Any thread
may read the counters; :meth:`close` stops it.
"""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

__all__ = ["ThrottlingProxy"]

HOST = "127.0.0.1"
_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection", "te",
        "upgrade", "content-length"}
_ANSWERS = {
    "s3": (503, "application/xml", b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>"
           b"SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"),
    "gcs": (429, "application/json", b'{"error":{"code":429,"message":"The rate of change '
            b'requests to the bucket is too high","errors":[{"reason":"rateLimitExceeded"}]}}'),
    "azure": (503, "application/xml", b"<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>"
              b"ServerBusy</Code><Message>Ingress is over the account limit.</Message></Error>"),
}


class ThrottlingProxy:
    """See the module docstring. ``upstream``: ``http://host:port``."""

    def __init__(self, upstream: str, *, rate: float, burst: float = 1.0,
                 flavor: str = "s3") -> None:
        parts = urlsplit(upstream)
        if parts.hostname is None or parts.port is None or flavor not in _ANSWERS:
            raise ValueError(f"need http://host:port and a flavor in {sorted(_ANSWERS)}")
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.upstream = (parts.hostname, parts.port)
        self.rate, self.burst, self.flavor = rate, burst, flavor
        self._lock = threading.Lock()
        self._tokens, self._last = burst, time.monotonic()
        self.accepted = 0
        self.throttled = 0
        self.admitted_at: list[float] = []  # monotonic time of each admitted request
        self.throttled_at: list[float] = []
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name=f"throttle-proxy-{self.port}")
        self._thread.start()

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT`` to give clients instead of the upstream's."""
        return f"http://{HOST}:{self.port}"

    def admit(self) -> bool:
        """Take a token if one is there (the token bucket of every request)."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= 1:
                self._tokens -= 1
                self.accepted += 1
                self.admitted_at.append(now)
                return True
            self.throttled += 1
            self.throttled_at.append(now)
            return False

    def reset_counts(self) -> None:
        with self._lock:
            self.accepted = self.throttled = 0
            self.admitted_at, self.throttled_at = [], []

    def accepted_per_second(self) -> float:
        """Admitted requests per second between the first and the last admitted one."""
        with self._lock:
            ts = list(self.admitted_at)
        return (len(ts) - 1) / (ts[-1] - ts[0]) if len(ts) > 1 and ts[-1] > ts[0] else 0.0

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2)

    def __enter__(self) -> ThrottlingProxy:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class _Handler(BaseHTTPRequestHandler):
    owner: ThrottlingProxy
    protocol_version = "HTTP/1.1"
    _conn: http.client.HTTPConnection | None = None

    def log_message(self, format: str, *args: object) -> None:
        return

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _relay(self) -> None:
        body = self._body()
        if not self.owner.admit():
            status, ctype, text = _ANSWERS[self.owner.flavor]
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)
            return
        for fresh in (self._conn is None, True):  # a kept-alive upstream may have gone away
            if fresh or self._conn is None:
                if self._conn is not None:
                    self._conn.close()
                self._conn = http.client.HTTPConnection(*self.owner.upstream, timeout=120)
            conn = self._conn
            try:
                conn.putrequest(self.command, self.path, skip_host=True,
                                skip_accept_encoding=True)
                for k, v in self.headers.items():
                    if k.lower() not in _HOP:
                        conn.putheader(k, v)
                if body or self.command in ("PUT", "POST", "PATCH"):
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body or None)
                resp = conn.getresponse()
                data = resp.read()
                break
            except (http.client.RemoteDisconnected, ConnectionError):
                if fresh:
                    raise
        self.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in _HOP:
                self.send_header(k, v)
        length = resp.getheader("Content-Length")
        self.send_header("Content-Length", length if self.command == "HEAD" and length
                         else str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        if resp.will_close:
            conn.close()
            self._conn = None

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _relay
