"""A loopback TCP proxy that can freeze like a stopped server process, for chaos tests.

Put it between a client and a storage emulator (or any TCP server) and point the client at
:attr:`FreezableProxy.endpoint`::

    with FreezableProxy("http://127.0.0.1:9000") as proxy:
        store = open_store("s3://bucket/run", storage_options={"endpoint_url": proxy.endpoint})
        proxy.freeze_after(upstream_bytes=4 << 20)   # freeze mid-upload
        ...                                          # calls hang like against a frozen server
        proxy.thaw()

:meth:`~FreezableProxy.freeze` stops reading from and forwarding on every connection while
keeping them all open, and keeps accepting new ones (the kernel of a ``SIGSTOP``-ed server
still completes handshakes): a client's send blocks once the socket buffers are full and its
reads get nothing, with no error, exactly as against a frozen process. :meth:`~FreezableProxy.thaw`
resumes forwarding where it stopped; nothing is lost or reordered.

Listens on 127.0.0.1 only, on a free port unless one is given. Threads: one accepting, two
per connection. Any thread may call any method. :meth:`~FreezableProxy.close` (or leaving the
``with`` block) closes every connection, which ends whatever a client still had blocked.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType
from urllib.parse import urlsplit

__all__ = ["FreezableProxy"]

HOST = "127.0.0.1"
_BUF = 64 * 1024


class FreezableProxy:
    """See the module docstring. ``upstream``: ``http://host:port``, ``host:port`` or a
    ``(host, port)`` pair."""

    def __init__(self, upstream: str | tuple[str, int], *, port: int = 0) -> None:
        if isinstance(upstream, tuple):
            self._scheme, self._upstream = "http", upstream
        else:
            parts = urlsplit(upstream if "://" in upstream else f"tcp://{upstream}")
            if parts.hostname is None or parts.port is None:
                raise ValueError(f"upstream needs a host and a port, got {upstream!r}")
            self._scheme = parts.scheme if parts.scheme != "tcp" else "http"
            self._upstream = (parts.hostname, parts.port)
        self._lock = threading.Condition()
        self._frozen = False
        self._closed = False
        self._budget: dict[str, int | None] = {"up": None, "down": None}
        self._froze = threading.Event()
        self._socks: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self.bytes_up = 0
        self.bytes_down = 0
        self.connections = 0
        self._listener = socket.create_server((HOST, port))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True,
                                          name=f"proxy-accept-{self.port}")
        self._acceptor.start()

    # -- public ---------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """``scheme://127.0.0.1:PORT`` to give clients instead of the upstream's."""
        return f"{self._scheme}://{HOST}:{self.port}"

    @property
    def frozen(self) -> bool:
        return self._frozen

    def freeze(self) -> None:
        """Stop reading and forwarding on every connection (they all stay open)."""
        with self._lock:
            self._frozen = True
            self._froze.set()

    def thaw(self) -> None:
        """Resume forwarding; cancels a pending :meth:`freeze_after`."""
        with self._lock:
            self._frozen = False
            self._budget = {"up": None, "down": None}
            self._froze.clear()
            self._lock.notify_all()

    def freeze_after(self, *, upstream_bytes: int | None = None,
                     downstream_bytes: int | None = None) -> None:
        """Freeze as soon as ``upstream_bytes`` more bytes have been forwarded to the server
        (to freeze mid-upload), or ``downstream_bytes`` more to the clients (mid-download),
        counted over all connections from now. The byte that would exceed it is held."""
        if (upstream_bytes is not None and upstream_bytes < 0) or (
                downstream_bytes is not None and downstream_bytes < 0):
            raise ValueError("byte counts must not be negative")
        with self._lock:
            self._budget = {"up": upstream_bytes, "down": downstream_bytes}

    def wait_frozen(self, timeout: float | None = None) -> bool:
        """Block until the proxy is frozen (by :meth:`freeze` or :meth:`freeze_after`)."""
        return self._froze.wait(timeout)

    def close(self) -> None:
        """Close the listener and every connection; stop all threads (waits briefly)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._lock.notify_all()
            socks = list(self._socks)
        for s in [self._listener, *socks]:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()
        for t in [self._acceptor, *self._threads]:
            if t is not threading.current_thread():
                t.join(timeout=2)

    def __enter__(self) -> FreezableProxy:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "frozen" if self._frozen else "forwarding"
        return (f"FreezableProxy({self.endpoint} -> {self._upstream[0]}:{self._upstream[1]}, "
                f"{state}, up={self.bytes_up}, down={self.bytes_down})")

    # -- internals ------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            try:
                server = socket.create_connection(self._upstream, timeout=10)
            except OSError:
                client.close()  # upstream down: the client sees the connection drop
                continue
            server.settimeout(None)
            client.settimeout(None)
            with self._lock:
                if self._closed:
                    client.close()
                    server.close()
                    return
                self.connections += 1
                self._socks.update((client, server))
                self._threads = [t for t in self._threads if t.is_alive()]
                live = [2]  # pumps of this connection still running
                for src, dst, way in ((client, server, "up"), (server, client, "down")):
                    t = threading.Thread(target=self._pump, args=(src, dst, way, live),
                                         daemon=True,
                                         name=f"proxy-{self.port}-{way}-{self.connections}")
                    self._threads.append(t)
                    t.start()

    def _wait_open(self) -> bool:
        """Wait while frozen; False once closed. Call with the lock held."""
        while self._frozen and not self._closed:
            self._lock.wait()
        return not self._closed

    def _allow(self, way: str, n: int) -> int:
        """How many of ``n`` bytes may be forwarded now (waits while frozen; -1: closed)."""
        with self._lock:
            if not self._wait_open():
                return -1
            budget = self._budget[way]
            if budget is None:
                allowed = n
            else:
                allowed = min(n, budget)
                self._budget[way] = budget - allowed
                if budget - allowed == 0:
                    self._frozen = True
                    self._froze.set()
            if way == "up":
                self.bytes_up += allowed
            else:
                self.bytes_down += allowed
            return allowed

    def _pump(self, src: socket.socket, dst: socket.socket, way: str, conn: list[int]) -> None:
        try:
            while True:
                with self._lock:
                    if not self._wait_open():
                        return
                data = src.recv(_BUF)
                if not data:
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)  # pass the half-close on
                    return
                view = memoryview(data)
                while view:
                    allowed = self._allow(way, len(view))
                    if allowed < 0:
                        return
                    if allowed:
                        dst.sendall(view[:allowed])
                        view = view[allowed:]
        except OSError:
            for s in (src, dst):  # a reset on one side ends both directions
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
        finally:
            with self._lock:
                conn[0] -= 1
                last = conn[0] == 0
                if last:
                    self._socks.difference_update((src, dst))
            if last:  # both directions ended: release the connection
                for s in (src, dst):
                    with contextlib.suppress(OSError):
                        s.close()
